package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/need"
)

// TestRollingChild is the proof that readiness follows the app: two
// tidegates supervising an app that binds its port only a second after it
// starts (fakeapp --listen-delay 1s), behind a real haproxy that health
// checks tidegate's /readyz, under constant load, restarted one after the
// other, five times over. With no probe configured, tidegate's implicit
// upstream check keeps /readyz failing until the app listens, so haproxy
// never sends a request to an app that is not there yet: no request fails.
// The same holds with an explicit readiness probe. With
// --default-readiness none (the old behaviour: ready as soon as tidegate
// is) haproxy sends traffic to a tidegate whose app does not listen yet,
// and requests fail: that run is the baseline that makes the comparison
// mean something. Not parallel, like TestRollingRestart: the numbers are
// the point.
func TestRollingChild(t *testing.T) {
	hap := need.Tool(t, "haproxy", "/usr/sbin/haproxy")
	variants := []struct {
		name  string
		rolls int
		args  func(app int) []string // tidegate flags besides the slot's
		ready bool                   // tidegate must wait for the app before serving
	}{
		{"default readiness", 5, func(int) []string { return nil }, true},
		{"readiness probe", 1, func(app int) []string {
			return []string{"--readiness", "http://" + hostPort(app) + "/readyz", "--probe-period", "100ms"}
		}, true},
		{"default readiness none", 1, func(int) []string { return []string{"--default-readiness", "none"} }, false},
	}
	results := make([]loadResult, len(variants))
	ok := make([]bool, len(variants))
	for i, v := range variants {
		ok[i] = t.Run(v.name, func(t *testing.T) {
			rollingChild(t, hap, v.rolls, v.args, v.ready, &results[i])
		})
	}
	for i, v := range variants {
		line := fmt.Sprintf("ROLLING RESTART (child, app listens after 1s, %s): %d rolls, failed=%d of %d",
			v.name, v.rolls, results[i].failed, results[i].total)
		t.Log(line)
		fmt.Println(line)
	}
	if !ok[0] || !ok[1] || !ok[2] {
		return // the subtest said what went wrong; the numbers above are partial
	}
	for i, v := range variants[:2] {
		if results[i].total == 0 {
			t.Errorf("%s: no load was measured", v.name)
		}
		if results[i].failed != 0 {
			t.Errorf("%s: %d of %d requests failed during the rolling restarts, want 0; first failures:\n%s",
				v.name, results[i].failed, results[i].total, strings.Join(results[i].errs, "\n"))
		}
	}
	none := results[2]
	if none.failed == 0 {
		t.Errorf("with --default-readiness none no request failed either (%d sent): the baseline does not show the problem, so the comparison proves nothing", none.total)
	} else {
		t.Logf("with --default-readiness none haproxy sent requests to apps not listening yet, for example:\n%s", strings.Join(none.errs, "\n"))
	}
}

// The child roll's settings: the app's start-up delay, and a drain short
// enough for 7 rolls to fit in a minute, long enough for haproxy (checking
// every 100ms) to take the server out before tidegate stops accepting.
const (
	childListenDelay = time.Second
	childSettle      = 20 // answers from a new instance before the next step
)

// startChild launches tidegate on the slot's ports supervising a fakeapp
// that listens after childListenDelay, and does not wait for it.
func (s tgSlot) startChild(t *testing.T, id, record string, extra []string) *tidegate {
	t.Helper()
	args := []string{"run",
		"--listen", hostPort(s.listen), "--health-listen", hostPort(s.health), "--admin-listen", "127.0.0.1:0",
		"--upstream", hostPort(s.app),
		"--drain-delay", "600ms", "--drain-quiet", "200ms", "--drain-timeout", "10s"}
	args = append(args, extra...)
	args = append(args, "--", fakeappBinary, "--listen", hostPort(s.app), "--listen-delay", childListenDelay.String(),
		"--on-term", "graceful", "--id", id, "--record", record)
	return launch(t, noEnv, args...)
}

// servedAfterListening checks when tidegate began to serve: at least
// childListenDelay after it started the app (less a margin for the app's
// own start-up, which happens after the "app started" line's moment of
// fork) when ready is true, as the app cannot have listened before. With
// ready false it only logs what it sees.
func servedAfterListening(t *testing.T, tg *tidegate, id string, ready bool) {
	t.Helper()
	var started, serving time.Time
	for _, m := range tg.stdout.jsonLines() {
		ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["ts"]))
		switch {
		case m["msg"] == "app started" && started.IsZero():
			started = ts
		case m["msg"] == "phase changed" && m["phase"] == "serving" && serving.IsZero():
			serving = ts
		}
	}
	if started.IsZero() || serving.IsZero() {
		t.Errorf("instance %s: no app started line (%v) or no phase serving line (%v)", id, started, serving)
		return
	}
	after := serving.Sub(started)
	switch {
	case ready && after < childListenDelay-100*time.Millisecond:
		t.Errorf("instance %s: tidegate served %s after starting its app, which listens only after %s", id, after, childListenDelay)
	case !ready:
		t.Logf("instance %s: with --default-readiness none tidegate served %s after starting its app", id, after.Round(time.Millisecond))
	}
}

// rollingChild runs rolls rolling restarts of two child-mode tidegates
// behind haproxy under one constant load, and stores what the load saw in
// res, even when the test fails half way.
func rollingChild(t *testing.T, hap string, rolls int, extra func(app int) []string, ready bool, res *loadResult) {
	began := time.Now()
	dir := t.TempDir()
	slots := []tgSlot{
		{freePort(t), freePort(t), freePort(t)},
		{freePort(t), freePort(t), freePort(t)},
	}
	names := []string{"a", "b"}
	id := func(slot, gen int) string { return fmt.Sprintf("%s%d", names[slot], gen) }
	tgs := make([]*tidegate, len(slots))
	for i, s := range slots {
		tgs[i] = s.startChild(t, id(i, 1), recordPath(dir, id(i, 1)), extra(s.app))
	}
	var servers []hapServer
	for i, s := range slots {
		tgs[i].waitServing()
		servedAfterListening(t, tgs[i], id(i, 1), ready)
		// The load starts once both apps listen, so that what fails
		// in the baseline fails during the rolls, not at the first start.
		tgs[i].waitAppListening()
		servers = append(servers, hapServer{name: fmt.Sprintf("s%d", i+1), addr: hostPort(s.listen), checkPort: s.health})
	}
	hp := startHAProxy(t, hap, servers, "/readyz")

	// One load for every roll: 8 workers, stopped by finish; the bound
	// is far above a healthy run (about 7s a roll) and fails the test
	// (an instance stops getting answers) rather than hiding a slow one.
	l := startLoad(t, "http://"+hp.front, rollingWorkers, time.Duration(rolls)*15*time.Second+10*time.Second)
	defer func() { *res = l.finish() }()
	for i := range slots {
		l.waitAnswers(t, id(i, 1), childSettle, waitTimeout)
	}

	for roll := 1; roll <= rolls; roll++ {
		for i, s := range slots {
			old, next := id(i, roll), id(i, roll+1)
			waitSlowInFlight(t, recordPath(dir, old))
			tgs[i].signal(syscall.SIGTERM)
			if code := tgs[i].waitExit(exitTimeout); code != 0 {
				t.Errorf("roll %d, instance %s: tidegate exited %d after SIGTERM, want 0 (the app's graceful exit)", roll, old, code)
			}
			if rep := tgs[i].report(); rep["result"] != "complete" || rep["cut"] != 0.0 || rep["app_status"] != "exited" {
				t.Errorf("roll %d, instance %s: drain report %v, want result complete, cut 0, app exited", roll, old, rep)
			}
			started := time.Now()
			tgs[i] = s.startChild(t, next, recordPath(dir, next), extra(s.app))
			tgs[i].waitServing()
			servedAfterListening(t, tgs[i], next, ready)
			// haproxy sends it traffic again: it saw /readyz healthy twice.
			l.waitAnswers(t, next, childSettle, waitTimeout)
			t.Logf("roll %d: %s replaced %s, answering %s after its start", roll, next, old, time.Since(started).Round(time.Millisecond))
		}
	}
	// haproxy took each server out because its readiness failed (a 503
	// from /readyz during the drain), never because its port was closed.
	for i := range slots {
		prefix := fmt.Sprintf("Server be/s%d is DOWN, reason: ", i+1)
		downs := 0
		for _, line := range strings.Split(hp.out.String(), "\n") {
			if !strings.Contains(line, prefix) {
				continue
			}
			downs++
			if !strings.Contains(line, "Layer7 wrong status, code: 503") {
				t.Errorf("haproxy took s%d out for another reason than its failed readiness: %q", i+1, line)
			}
		}
		if downs < rolls {
			t.Errorf("haproxy logged %d DOWN lines for s%d over %d rolls, want at least one a roll", downs, i+1, rolls)
		}
	}
	t.Logf("%d rolls in %s", rolls, time.Since(began).Round(time.Millisecond))
}
