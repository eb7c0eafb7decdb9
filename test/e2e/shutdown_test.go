package e2e

import (
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// readinessBudget is how soon after SIGTERM /readyz must fail (the promise:
// "readiness fails within 100 ms").
const readinessBudget = 100 * time.Millisecond

type outcome struct {
	status int
	body   string
	close  bool // the response said Connection: close
	err    error
}

// inBackground sends a GET and reports its outcome.
func inBackground(c *http.Client, url string) <-chan outcome {
	out := make(chan outcome, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			out <- outcome{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		out <- outcome{resp.StatusCode, string(body), resp.Close, err}
	}()
	return out
}

// TestSIGTERMDrainsInFlight: after SIGTERM readiness fails at once, the
// listener keeps accepting for the drain delay, a request running at the
// signal completes, every response says Connection: close, and tidegate then
// exits 0 with a drain report. Not parallel: it measures how soon readiness
// fails.
func TestSIGTERMDrainsInFlight(t *testing.T) {
	app := fakeapp.Start(t)
	// The delay keeps the listener open at least until the new request
	// below is sent; the slow request keeps it open past the delay.
	tg := start(t, "--upstream", app.Addr, "--drain-delay", "1s", "--drain-quiet", "100ms", "--drain-timeout", "20s")
	c := newClient(t)
	health := newClient(t)

	if resp, body := get(t, health, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz before SIGTERM: %d %s", resp.StatusCode, body)
	}
	// A client with a keep-alive connection, idle at the signal.
	idle := dialRaw(t, tg.Listen)
	idle.send(t, "GET /status?code=200 HTTP/1.1\r\nHost: app.test\r\n\r\n")
	if resp, body := idle.readResponse(t, http.MethodGet); resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("keep-alive request before SIGTERM: %d close=%v %q", resp.StatusCode, resp.Close, body)
	}
	slow := inBackground(c, tg.URL("/slow?d=1500ms"))
	recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow")

	signalled := time.Now()
	tg.signal(syscall.SIGTERM)
	var failedAfter time.Duration
	eventually(t, 2*time.Second, "/readyz failing after SIGTERM", func() (bool, string) {
		resp, err := health.Get("http://" + tg.Health + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			failedAfter = time.Since(signalled)
			return true, ""
		}
		return false, resp.Status + " " + string(body)
	})
	if failedAfter > readinessBudget {
		t.Errorf("/readyz failed %s after SIGTERM, want within %s", failedAfter, readinessBudget)
	}
	// Liveness is not affected by a drain.
	if resp, body := get(t, health, "http://"+tg.Health+"/livez"); resp.StatusCode != http.StatusOK {
		t.Errorf("/livez during the drain: %d %s, want 200", resp.StatusCode, body)
	}

	// A keep-alive connection that was idle at the signal still works
	// during the delay (closing it then would race with a request being
	// written on it, golang/go#23829); its next answer says Connection:
	// close, and then it is closed.
	idle.send(t, "GET /status?code=200 HTTP/1.1\r\nHost: app.test\r\n\r\n")
	if resp, body := idle.readResponse(t, http.MethodGet); resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("request on a kept-alive connection during the drain: %d close=%v %q; want 200 with Connection: close",
			resp.StatusCode, resp.Close, body)
	}
	if err := idle.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := idle.r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("kept-alive connection after its Connection: close answer: read %d bytes, %v; want EOF", n, err)
	}

	// A client that has not noticed yet still gets served, on a new
	// connection, and is told to go away.
	late := newClient(t)
	resp, body := get(t, late, tg.URL("/status?code=200"))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("new request during the drain delay: %d %q, want 200", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("response during the drain lacks Connection: close")
	}

	o := recv(t, slow, waitTimeout, "the in-flight request to finish")
	if o.err != nil || o.status != http.StatusOK || o.body != "slept 1.5s\n" {
		t.Errorf("in-flight request: status %d body %q err %v; want 200 slept 1.5s", o.status, o.body, o.err)
	}
	if !o.close {
		t.Errorf("the response to the request in flight at SIGTERM, written during the drain, lacks Connection: close: the client keeps a connection tidegate will close as idle")
	}
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("exit code %d after the drain, want 0", code)
	}
	rep := tg.waitLog(waitTimeout, "the drain report", func(m map[string]any) bool { return m["msg"] == "drain report" })
	if rep["trigger"] != "SIGTERM" || rep["result"] != "complete" || rep["inflight_at_trigger"] != 1.0 ||
		rep["completed"] != 3.0 || rep["cut"] != 0.0 {
		t.Errorf("drain report %v: want trigger SIGTERM, result complete, inflight_at_trigger 1, completed 3, cut 0", rep)
	}
}

// TestSecondSIGTERMStopsNow: a second SIGTERM during the drain makes
// tidegate exit promptly, cutting the request still running.
func TestSecondSIGTERMStopsNow(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr, "--drain-timeout", "60s")
	c := newClient(t)

	hang := inBackground(c, tg.URL("/hang"))
	recv(t, app.HangStarted(), waitTimeout, "the app receiving /hang")
	tg.signal(syscall.SIGTERM)
	tg.waitLog(waitTimeout, "the drain to start", func(m map[string]any) bool {
		return m["msg"] == "phase changed" && m["phase"] == "draining"
	})
	second := time.Now()
	tg.signal(syscall.SIGTERM)
	tg.waitExit(exitTimeout)
	if took := time.Since(second); took > 3*time.Second {
		t.Errorf("exited %s after the second SIGTERM, want promptly", took)
	}
	if o := recv(t, hang, waitTimeout, "the cut request to end"); o.err == nil {
		t.Errorf("the request running at the second SIGTERM got a response (%d %q), want it cut", o.status, o.body)
	}
	recv(t, app.HangCanceled(), waitTimeout, "the app's request being cancelled")
	rep := tg.waitLog(waitTimeout, "the drain report", func(m map[string]any) bool { return m["msg"] == "drain report" })
	if rep["result"] != "forced" || rep["cut"] != 1.0 {
		t.Errorf("drain report %v: want result forced, cut 1", rep)
	}
}
