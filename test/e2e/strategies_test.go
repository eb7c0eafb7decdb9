package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// quickDrain is a drain short enough for tests that are not about its
// timing: the slow request in flight keeps it going past the delay.
var quickDrain = []string{"--drain-delay", "200ms", "--drain-quiet", "100ms", "--drain-timeout", "10s"}

// drainAroundSlowRequest sends a 700ms request, sends SIGTERM while the app
// serves it, and checks that the request completes and tidegate exits 0.
// It returns the drain report.
func drainAroundSlowRequest(t *testing.T, tg *tidegate, rec string) map[string]any {
	t.Helper()
	c := newClient(t)
	slow := inBackground(c, tg.URL("/slow?d=700ms"))
	waitEvent(t, rec, waitTimeout, "the app receiving /slow", isEvent("request_start", "/slow"))
	tg.signal(syscall.SIGTERM)
	if o := recv(t, slow, waitTimeout, "the request in flight"); o.err != nil || o.status != http.StatusOK {
		t.Errorf("the request in flight at SIGTERM: %d %q %v, want 200", o.status, o.body, o.err)
	}
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("tidegate exited %d, want 0 (the app is not its child)", code)
	}
	return tg.report()
}

// stoppedAfterLastRequest checks that the stop event came after every
// request the app served (but the stop request itself) had ended.
func stoppedAfterLastRequest(t *testing.T, evs []appEvent, stop appEvent) {
	t.Helper()
	for _, e := range evs {
		if (e.Event == "request_end" || e.Event == "request_start") && e.Path != "/stop" && !e.time().Before(stop.time()) {
			t.Errorf("the app saw %v at or after it was told to stop (%v)", e, stop)
		}
	}
	if len(findEvents(evs, isEvent("request_end", "/slow"))) != 1 {
		t.Errorf("the app did not finish /slow: events %v", evs)
	}
}

// TestAppStopStrategies: each way of stopping an app that is not tidegate's
// child, with real processes: the app is told to stop only after the last
// request it served has ended, and it does stop.
func TestAppStopStrategies(t *testing.T) {
	t.Parallel()

	t.Run("pid", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		rec, pidfile := filepath.Join(dir, "app.jsonl"), filepath.Join(dir, "app.pid")
		app := startFakeapp(t, "--record", rec, "--pidfile", pidfile, "--on-term", "graceful")
		tg := start(t, append([]string{"--upstream", app.Addr, "--app-stop", "pid", "--app-pidfile", pidfile}, quickDrain...)...)

		rep := drainAroundSlowRequest(t, tg, rec)
		if code := app.waitExit(exitTimeout); code != 0 {
			t.Errorf("the app exited %d, want 0 after its graceful stop", code)
		}
		evs := readEvents(t, rec)
		sig := onlyEvent(t, evs, "the app's stop signal", isEvent("signal", ""))
		if sig.Signal != "SIGTERM" {
			t.Errorf("the app got %s, want SIGTERM", sig.Signal)
		}
		stoppedAfterLastRequest(t, evs, sig)
		if rep["app_stop"] != "pid" || rep["app_status"] != "exited" || rep["result"] != "complete" {
			t.Errorf("drain report %v: want app_stop pid, app_status exited, result complete", rep)
		}
	})

	t.Run("http", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		// The app ignores signals: only the POST can stop it.
		app := startFakeapp(t, "--record", rec, "--on-term", "ignore")
		tg := start(t, append([]string{"--upstream", app.Addr, "--app-stop", "http",
			"--app-stop-url", "http://" + app.Addr + "/stop"}, quickDrain...)...)

		rep := drainAroundSlowRequest(t, tg, rec)
		if code := app.waitExit(exitTimeout); code != 0 {
			t.Errorf("the app exited %d, want 0 after its graceful stop", code)
		}
		evs := readEvents(t, rec)
		stop := onlyEvent(t, evs, "the stop request", isEvent("stop", ""))
		stoppedAfterLastRequest(t, evs, stop)
		if sigs := findEvents(evs, isEvent("signal", "")); len(sigs) != 0 {
			t.Errorf("the app got signals %v with the http strategy, want none", sigs)
		}
		if rep["app_stop"] != "http" || rep["app_status"] != "stopped" || rep["app_code"] != 200.0 {
			t.Errorf("drain report %v: want app_stop http, app_status stopped, app_code 200", rep)
		}
	})

	t.Run("command", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		app := startFakeapp(t, "--record", rec, "--on-term", "graceful")
		tg := start(t, append([]string{"--upstream", app.Addr, "--app-stop", "command",
			"--app-stop-command", fmt.Sprintf("kill -TERM %d", app.PID)}, quickDrain...)...)

		rep := drainAroundSlowRequest(t, tg, rec)
		if code := app.waitExit(exitTimeout); code != 0 {
			t.Errorf("the app exited %d, want 0 after its graceful stop", code)
		}
		evs := readEvents(t, rec)
		sig := onlyEvent(t, evs, "the app's stop signal", isEvent("signal", ""))
		stoppedAfterLastRequest(t, evs, sig)
		if rep["app_stop"] != "command" || rep["app_status"] != "stopped" {
			t.Errorf("drain report %v: want app_stop command, app_status stopped", rep)
		}
	})

	t.Run("command fails", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		app := startFakeapp(t, "--record", rec)
		tg := start(t, append([]string{"--upstream", app.Addr, "--app-stop", "command",
			"--app-stop-command", "exit 9"}, quickDrain...)...)
		rep := drainAroundSlowRequest(t, tg, rec)
		if rep["app_status"] != "failed" || rep["app_code"] != 9.0 || !strings.Contains(fmt.Sprint(rep["app_detail"]), "exit 9") {
			t.Errorf("drain report %v: want app_status failed, app_code 9, a detail naming the command", rep)
		}
		if !app.running() {
			t.Errorf("the app exited although its stop command failed")
		}
	})

	t.Run("none and the preStop endpoint", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		app := startFakeapp(t, "--record", rec)
		tg := start(t, append([]string{"--upstream", app.Addr, "--drain-token", "s3cret"}, quickDrain...)...)
		c := newClient(t)
		preStop := func(token string) (*http.Response, []byte) {
			req, err := http.NewRequest(http.MethodGet, "http://"+tg.Health+"/drain?wait=10s", nil)
			if err != nil {
				t.Fatal(err)
			}
			if token != "" {
				req.Header.Set("X-Tidegate-Drain-Token", token)
			}
			return do(t, c, req)
		}

		for _, token := range []string{"wrong", ""} {
			if resp, body := preStop(token); resp.StatusCode != http.StatusForbidden {
				t.Errorf("GET /drain with token %q: %d %s, want 403", token, resp.StatusCode, body)
			}
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz after refused drain requests: %d %s, want 200 (no drain started)", resp.StatusCode, body)
		}
		if p := phaseOf(t, c, tg); p != "serving" {
			t.Errorf("phase %q after refused drain requests, want serving", p)
		}

		slow := inBackground(newClient(t), tg.URL("/slow?d=700ms"))
		waitEvent(t, rec, waitTimeout, "the app receiving /slow", isEvent("request_start", "/slow"))
		resp, body := preStop("s3cret")
		returned := time.Now()
		var ans struct {
			Phase string `json:"phase"`
		}
		decodeJSON(t, body, &ans)
		if resp.StatusCode != http.StatusOK || (ans.Phase != "stopping_app" && ans.Phase != "stopped") {
			t.Errorf("GET /drain?wait=10s with the token: %d %s, want 200 once the drain reached stopping_app", resp.StatusCode, body)
		}
		if o := recv(t, slow, waitTimeout, "the request in flight"); o.err != nil || o.status != http.StatusOK {
			t.Errorf("the request in flight during the preStop drain: %d %v, want 200", o.status, o.err)
		}
		end := onlyEvent(t, readEvents(t, rec), "the end of /slow", isEvent("request_end", "/slow"))
		if !returned.After(end.time()) {
			t.Errorf("the preStop hook returned %s before the request in flight ended: the kubelet would signal the app too early",
				end.time().Sub(returned))
		}
		if code := tg.waitExit(exitTimeout); code != 0 {
			t.Errorf("tidegate exited %d, want 0", code)
		}
		rep := tg.report()
		if rep["trigger"] != "prestop" || rep["app_stop"] != "none" || rep["app_status"] != "none" {
			t.Errorf("drain report %v: want trigger prestop, app_stop none, app_status none", rep)
		}
		if !app.running() {
			t.Errorf("the app exited: with --app-stop none tidegate must leave it alone")
		}
		if sigs := findEvents(readEvents(t, rec), isEvent("signal", "")); len(sigs) != 0 {
			t.Errorf("the app got signals %v with --app-stop none", sigs)
		}
	})

	t.Run("no token, no preStop endpoint", func(t *testing.T) {
		t.Parallel()
		app := startFakeapp(t)
		tg := start(t, "--upstream", app.Addr)
		c := newClient(t)
		req, _ := http.NewRequest(http.MethodGet, "http://"+tg.Health+"/drain?wait=1s", nil)
		req.Header.Set("X-Tidegate-Drain-Token", "anything")
		if resp, body := do(t, c, req); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /drain without --drain-token: %d %s, want 404", resp.StatusCode, body)
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz: %d %s, want 200 (no drain started)", resp.StatusCode, body)
		}
	})
}
