// Package wait is how tidegate's tests wait for a condition: poll it with
// a deadline, never sleep for a guessed time.
package wait

import (
	"testing"
	"time"
)

// Every is how often a condition is polled.
const Every = 2 * time.Millisecond

// Until polls cond every Every until it holds; after timeout it fails t
// with what and cond's last explanation.
func Until(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	UntilEvery(t, Every, timeout, what, cond)
}

// UntilEvery is Until polling every every: a slower pace for conditions
// that cost the other side work (an API server's list, a process's /proc).
func UntilEvery(t testing.TB, every, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if detail != "" {
				t.Fatalf("%s: not true within %s: %s", what, timeout, detail)
			}
			t.Fatalf("%s: not true within %s", what, timeout)
		}
		<-tick.C
	}
}

// For is Until with a 5s timeout and a condition without explanation.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Until(t, 5*time.Second, what, func() (bool, string) { return cond(), "" })
}
