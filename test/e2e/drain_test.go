package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// startWithChild starts tidegate supervising the fakeapp binary on a fixed
// port, and waits until the app listens (tidegate serves as soon as the
// child runs; the app binds a moment later). appArgs are added to the
// fakeapp's own.
func startWithChild(t *testing.T, tgArgs []string, appArgs ...string) *tidegate {
	t.Helper()
	return startWithChildEnv(t, nil, tgArgs, appArgs...)
}

// startWithChildEnv is startWithChild with extra environment variables.
func startWithChildEnv(t *testing.T, env, tgArgs []string, appArgs ...string) *tidegate {
	t.Helper()
	app := hostPort(freePort(t))
	args := append([]string{"--upstream", app}, tgArgs...)
	args = append(args, "--", fakeappBinary, "--listen", app)
	tg := startEnv(t, env, append(args, appArgs...)...)
	tg.waitAppListening()
	return tg
}

// waitAppListening waits for the child fakeapp's "listening" line, which it
// prints on the stdout it shares with tidegate.
func (tg *tidegate) waitAppListening() {
	tg.t.Helper()
	tg.waitLog(startTimeout, "the app listening", func(m map[string]any) bool { return m["event"] == "listening" })
}

// onlyEvent returns the one event that matches, or fails the test.
func onlyEvent(t *testing.T, evs []appEvent, what string, match func(appEvent) bool) appEvent {
	t.Helper()
	got := findEvents(evs, match)
	if len(got) != 1 {
		t.Fatalf("%s: %d matching events, want 1; all events: %v", what, len(got), evs)
	}
	return got[0]
}

// TestAppStoppedAfterLastRequest: in child mode, a 3s request that started
// just before SIGTERM completes with 200; the app gets its stop signal only
// after that request ended; tidegate exits with the app's own exit code.
func TestAppStoppedAfterLastRequest(t *testing.T) {
	t.Parallel()
	rec := filepath.Join(t.TempDir(), "app.jsonl")
	tg := startWithChild(t,
		[]string{"--drain-delay", "200ms", "--drain-quiet", "100ms", "--drain-timeout", "10s"},
		"--on-term", "graceful", "--exit-code", "7", "--record", rec)
	c := newClient(t)

	slow := inBackground(c, tg.URL("/slow?d=3s"))
	waitEvent(t, rec, waitTimeout, "the app receiving /slow", isEvent("request_start", "/slow"))
	tg.signal(syscall.SIGTERM)

	o := recv(t, slow, 10*time.Second, "the 3s request")
	if o.err != nil || o.status != http.StatusOK || o.body != "slept 3s\n" {
		t.Errorf("the request in flight at SIGTERM: status %d body %q err %v; want 200 slept 3s", o.status, o.body, o.err)
	}
	if code := tg.waitExit(exitTimeout); code != 7 {
		t.Errorf("tidegate exited %d, want 7 (the app's exit code)", code)
	}
	evs := readEvents(t, rec)
	end := onlyEvent(t, evs, "the end of /slow", isEvent("request_end", "/slow"))
	sig := onlyEvent(t, evs, "the app's stop signal", isEvent("signal", ""))
	if sig.Signal != "SIGTERM" {
		t.Errorf("the app got %s, want SIGTERM", sig.Signal)
	}
	if !sig.time().After(end.time()) {
		t.Errorf("the app got its stop signal %s before its last request ended: events %v",
			end.time().Sub(sig.time()), evs)
	}
	for _, e := range findEvents(evs, isEvent("request_start", "")) {
		if e.time().After(sig.time()) {
			t.Errorf("the app received a request after its stop signal: %v", e)
		}
	}
	rep := tg.report()
	if rep["trigger"] != "SIGTERM" || rep["result"] != "complete" || rep["cut"] != 0.0 ||
		rep["app_stop"] != "child" || rep["app_status"] != "exited" || rep["app_code"] != 7.0 {
		t.Errorf("drain report %v: want trigger SIGTERM, result complete, cut 0, app child exited 7", rep)
	}
}

// TestDrainTimeoutCutsRequest: a request that would run past
// --drain-timeout is cut at the deadline; the client sees its connection
// closed, and the report and /metrics count one cut request.
func TestDrainTimeoutCutsRequest(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	hold := newStopHold(t) // keeps the admin listener up in stopping_app, for a scrape
	tg := start(t, append([]string{"--upstream", app.Addr, "--drain-delay", "0", "--drain-timeout", "1s"}, hold.args()...)...)
	c := newClient(t)

	slow := inBackground(c, tg.URL("/slow?d=10s"))
	recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow")
	signalled := time.Now()
	tg.signal(syscall.SIGTERM)

	o := recv(t, slow, waitTimeout, "the request to be cut")
	cutAfter := time.Since(signalled)
	if o.err == nil {
		t.Errorf("the request running past the drain timeout got a response (%d %q), want its connection closed", o.status, o.body)
	}
	if cutAfter < 900*time.Millisecond || cutAfter > 3*time.Second {
		t.Errorf("the request was cut %s after SIGTERM, want at the 1s drain timeout", cutAfter)
	}

	tg.waitPhase("stopping_app")
	m := scrape(t, newClient(t), tg)
	if v, ok := m.get("tidegate_drain_cut_requests_total"); !ok || v != 1 {
		t.Errorf("tidegate_drain_cut_requests_total = %v (present %v), want 1", v, ok)
	}
	if v := m.value("tidegate_drains_total", "trigger", "SIGTERM", "result", "timeout"); v != 1 {
		t.Errorf("tidegate_drains_total{trigger=SIGTERM,result=timeout} = %v, want 1", v)
	}
	if v := m.value("tidegate_phase", "phase", "stopping_app"); v != 1 {
		t.Errorf("tidegate_phase{phase=stopping_app} = %v while the app stop is held, want 1", v)
	}
	hold.release(t)

	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	rep := tg.report()
	if rep["result"] != "timeout" || rep["cut"] != 1.0 || rep["completed"] != 0.0 || rep["inflight_at_trigger"] != 1.0 {
		t.Errorf("drain report %v: want result timeout, cut 1, completed 0, inflight_at_trigger 1", rep)
	}
}

// TestSecondSIGTERMStopsChildNow: with a long drain delay and a long
// request in flight, a second SIGTERM makes tidegate cut the request, stop
// its child and exit within a second.
func TestSecondSIGTERMStopsChildNow(t *testing.T) {
	t.Parallel()
	rec := filepath.Join(t.TempDir(), "app.jsonl")
	// A race-built binary (TIDEGATE_E2E_RACE=1) would otherwise sleep 1s
	// at exit, which is not tidegate's time.
	tg := startWithChildEnv(t, []string{"GORACE=atexit_sleep_ms=0"}, []string{"--drain-delay", "5s", "--drain-timeout", "30s"},
		"--on-term", "graceful", "--record", rec)
	c := newClient(t)

	slow := inBackground(c, tg.URL("/slow?d=20s"))
	waitEvent(t, rec, waitTimeout, "the app receiving /slow", isEvent("request_start", "/slow"))
	tg.signal(syscall.SIGTERM)
	tg.waitPhase("draining")
	second := time.Now()
	tg.signal(syscall.SIGTERM)
	code := tg.waitExit(exitTimeout)
	if took := time.Since(second); took > time.Second {
		t.Errorf("tidegate exited %s after the second SIGTERM, want within 1s", took)
	}
	if code != 0 {
		t.Errorf("exit code %d, want 0 (the app's own, after a graceful stop)", code)
	}
	if o := recv(t, slow, waitTimeout, "the cut request to end"); o.err == nil {
		t.Errorf("the request in flight at the second SIGTERM got a response (%d %q), want it cut", o.status, o.body)
	}
	rep := tg.report()
	if rep["trigger"] != "SIGTERM" || rep["result"] != "forced" || rep["cut"] != 1.0 || rep["app_status"] != "exited" {
		t.Errorf("drain report %v: want trigger SIGTERM, result forced, cut 1, app exited", rep)
	}
	onlyEvent(t, readEvents(t, rec), "the app's stop signal", isEvent("signal", ""))
}

// TestLivenessThroughDrain: from SIGTERM until the health listener closes,
// /livez answers 200 (a drain is not a liveness failure), while /readyz
// fails within 100ms of the signal. Not parallel: it measures how soon
// readiness fails.
func TestLivenessThroughDrain(t *testing.T) {
	rec := filepath.Join(t.TempDir(), "app.jsonl")
	tg := startWithChild(t, []string{"--drain-delay", "500ms", "--drain-quiet", "100ms", "--drain-timeout", "10s"},
		"--on-term", "graceful", "--record", rec)
	c := newClient(t)
	slow := inBackground(c, tg.URL("/slow?d=800ms"))
	waitEvent(t, rec, waitTimeout, "the app receiving /slow", isEvent("request_start", "/slow"))

	type answer struct {
		at     time.Time
		status int
		body   string
	}
	type livezRun struct {
		answers []answer
		end     error // what ended the polling
	}
	started := make(chan struct{})
	polled := make(chan livezRun, 1)
	lc := newClient(t)
	go func() {
		var run livezRun
		deadline := time.Now().Add(15 * time.Second)
		for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
			code, body, err := statusCode(lc, "http://"+tg.Health+"/livez?verbose")
			if i == 0 {
				close(started)
			}
			if err != nil {
				run.end = err
				break
			}
			run.answers = append(run.answers, answer{time.Now(), code, body})
		}
		polled <- run
	}()
	recv(t, started, waitTimeout, "the /livez poller starting")

	signalled := time.Now()
	tg.signal(syscall.SIGTERM)
	health := newClient(t)
	var failedAfter time.Duration
	eventually(t, 2*time.Second, "/readyz failing after SIGTERM", func() (bool, string) {
		code, body, err := statusCode(health, "http://"+tg.Health+"/readyz")
		if err != nil {
			return false, err.Error()
		}
		if code == http.StatusServiceUnavailable {
			failedAfter = time.Since(signalled)
			return true, ""
		}
		return false, fmt.Sprintf("%d %s", code, body)
	})
	if failedAfter > readinessBudget {
		t.Errorf("/readyz failed %s after SIGTERM, want within %s", failedAfter, readinessBudget)
	}

	if o := recv(t, slow, waitTimeout, "the in-flight request"); o.err != nil || o.status != http.StatusOK {
		t.Errorf("the request in flight at SIGTERM: %d %v, want 200", o.status, o.err)
	}
	run := recv(t, polled, 20*time.Second, "the /livez poller to end")
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	closing := tg.waitPhase("closing")
	closingAt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(closing["ts"]))
	if err != nil {
		t.Fatalf("the closing line's ts %v: %v", closing["ts"], err)
	}

	var lastOK time.Time
	okDuringDrain := 0
	for _, a := range run.answers {
		switch {
		case a.status == http.StatusOK:
			lastOK = a.at
			if a.at.After(signalled) {
				okDuringDrain++
			}
		default:
			t.Errorf("/livez answered %d %q at %s after SIGTERM, want 200 throughout the drain",
				a.status, strings.TrimSpace(a.body), a.at.Sub(signalled))
		}
	}
	t.Logf("/livez: %d answers of 200 during the drain; polling ended %s after SIGTERM with %v",
		okDuringDrain, time.Since(signalled), run.end)
	if okDuringDrain < 10 {
		t.Errorf("/livez answered only %d times during the drain; the poller did not cover it", okDuringDrain)
	}
	if !lastOK.After(closingAt) {
		t.Errorf("the last 200 from /livez came at %s, before the listeners closed at %s: liveness failed during the drain",
			lastOK.Format(time.StampMicro), closingAt.Format(time.StampMicro))
	}
}
