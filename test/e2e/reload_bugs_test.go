package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestForwardSignalsList: --forward-signals takes a comma-separated list,
// as its --help says ("comma-separated: some of SIGHUP, SIGUSR1, ...") and
// as TIDEGATE_FORWARD_SIGNALS does.
func TestForwardSignalsList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"env", []string{"TIDEGATE_FORWARD_SIGNALS=SIGHUP,SIGUSR1"}, nil},
		{"flag", nil, []string{"--forward-signals", "SIGHUP,SIGUSR1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tg := startWithChildEnv(t, tc.env, append([]string{"--drain-delay", "100ms", "--drain-quiet", "50ms"}, tc.args...), "--on-hup", "record")
			c := newClient(t)
			if got := readStatus(t, c, tg).Config["app.forward_signals"]; got != "SIGHUP,SIGUSR1" {
				t.Errorf("app.forward_signals %q, want SIGHUP,SIGUSR1", got)
			}
			tg.stop()
		})
	}
}

// TestReloadKeepsReadiness: a reload that changes the readiness probe, or
// (with the implicit upstream check) the upstream, while the app stays
// healthy never makes /readyz fail: a load balancer checking at that moment
// (haproxy with fall 1, as in the rolling tests) would take a healthy
// instance out of rotation because of a config edit.
func TestReloadKeepsReadiness(t *testing.T) {
	t.Parallel()
	a := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a")
	b := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "b")
	const reloads = 10
	for _, tc := range []struct {
		name   string
		conf   func(i int) string
		target func(i int) string // the readiness check's target after reload i
	}{
		{"readiness probe changed",
			func(i int) string {
				return fmt.Sprintf("upstream: %s\nprobe:\n  readiness: http://%s/readyz?v=%d\n  period: 1s\n", a.Addr, a.Addr, i)
			},
			func(int) string { return "http://" + a.Addr + "/readyz" }}, // a target has no query: it may carry a token
		{"upstream changed, implicit check",
			func(i int) string { return "upstream: " + []string{a.Addr, b.Addr}[i%2] + "\n" },
			func(i int) string { return "tcp://" + []string{a.Addr, b.Addr}[i%2] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "tidegate.yaml")
			conf := func(i int) string { return tc.conf(i) + "drain:\n  delay: 100ms\n  quiet: 50ms\n" }
			writeConfig(t, file, conf(0))
			tg := start(t, "--config", file)
			c := newClient(t)

			// Poll /readyz without pause from before the first reload to
			// after the last one.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var polled int
			var failed []string
			first := make(chan struct{}, 1)
			wg.Go(func() {
				defer close(first)
				pc := newClient(t)
				deadline := time.Now().Add(30 * time.Second)
				for n := 0; n < 200000 && time.Now().Before(deadline); n++ {
					select {
					case <-stop:
						return
					default:
					}
					code, body, err := statusCode(pc, "http://"+tg.Health+"/readyz?verbose")
					mu.Lock()
					polled++
					if err != nil || code != http.StatusOK {
						failed = append(failed, fmt.Sprintf("%s %d %v %s", time.Now().Format("15:04:05.000000"), code, err, strings.TrimSpace(body)))
					}
					mu.Unlock()
					if n == 0 {
						first <- struct{}{}
					}
				}
			})
			recv(t, first, waitTimeout, "the first /readyz poll")
			for i := 1; i <= reloads; i++ {
				writeConfig(t, file, conf(i))
				tg.signal(syscall.SIGHUP)
				tg.waitNthLog(i, fmt.Sprintf("reload %d", i), isReloaded)
				waitStatus(t, c, tg, fmt.Sprintf("the check of reload %d passing", i), func(st reloadStatus) bool {
					return len(st.Probes) == 1 && st.Probes[0].Target == tc.target(i) && st.Probes[0].Healthy && st.ConfigVersion == int64(i+1)
				})
			}
			close(stop)
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			if polled == 0 {
				t.Fatalf("/readyz was never polled")
			}
			if len(failed) > 0 {
				t.Errorf("/readyz failed %d of %d times across %d reloads that left the app healthy, want 0; first:\n%s",
					len(failed), polled, reloads, strings.Join(failed[:min(len(failed), 5)], "\n"))
			}
			tg.stop()
		})
	}
}
