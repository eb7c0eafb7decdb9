package e2e

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// post sends an empty POST and reads the whole response.
func post(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

// TestDrainTriggers: the other ways into the drain than a signal.
func TestDrainTriggers(t *testing.T) {
	t.Parallel()

	// `tidegate drain --wait` (an exec preStop hook) returns 0 once the
	// drain has reached stopping_app: after the request in flight ended,
	// and before the app is stopped.
	t.Run("drain command", func(t *testing.T) {
		t.Parallel()
		app := fakeapp.Start(t)
		hold := newStopHold(t)
		tg := start(t, append(append([]string{"--upstream", app.Addr}, quickDrain...), hold.args()...)...)
		c := newClient(t)

		type done struct {
			at time.Time
			o  outcome
		}
		slowDone := make(chan done, 1)
		go func() {
			o := <-inBackground(c, tg.URL("/slow?d=700ms"))
			slowDone <- done{time.Now(), o}
		}()
		recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow")

		r := runOnce(t, nil, "drain", "--admin", tg.Admin, "--wait", "10s")
		returned := time.Now()
		if r.code != 0 || !strings.Contains(r.stdout, "stopping_app") {
			t.Errorf("tidegate drain --wait 10s: exit %d, stdout %q, stderr %q; want 0 and phase stopping_app", r.code, r.stdout, r.stderr)
		}
		slow := recv(t, slowDone, waitTimeout, "the request in flight")
		if slow.o.err != nil || slow.o.status != http.StatusOK {
			t.Errorf("the request in flight during the drain: %d %v, want 200", slow.o.status, slow.o.err)
		}
		if !returned.After(slow.at) {
			t.Errorf("tidegate drain returned before the request in flight ended")
		}
		// The app stop is held: the drain is exactly at stopping_app.
		if p := phaseOf(t, c, tg); p != "stopping_app" {
			t.Errorf("phase %q when tidegate drain returned, want stopping_app", p)
		}
		hold.release(t)
		if code := tg.waitExit(exitTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if rep := tg.report(); rep["trigger"] != "admin" || rep["result"] != "complete" {
			t.Errorf("drain report %v: want trigger admin, result complete", rep)
		}
	})

	// POST /drain then POST /undrain: readiness comes back, the listener
	// keeps serving past the drain delay, keep-alive is allowed again.
	t.Run("undrain", func(t *testing.T) {
		t.Parallel()
		app := fakeapp.Start(t)
		tg := start(t, "--upstream", app.Addr, "--drain-delay", "1s", "--drain-quiet", "100ms", "--drain-timeout", "10s")
		c := newClient(t)

		drained := time.Now()
		if resp, body := post(t, c, "http://"+tg.Admin+"/drain"); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /drain: %d %s, want 202", resp.StatusCode, body)
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz after POST /drain: %d %s, want 503", resp.StatusCode, body)
		}
		if resp, body := post(t, c, "http://"+tg.Admin+"/undrain"); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "serving") {
			t.Fatalf("POST /undrain while draining: %d %s, want 200 and phase serving", resp.StatusCode, body)
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz after POST /undrain: %d %s, want 200", resp.StatusCode, body)
		}
		// Serve on, past the moment the canceled drain would have closed
		// the listener (delay 1s + quiet).
		pace := time.NewTicker(20 * time.Millisecond)
		defer pace.Stop()
		n := 0
		for ; n < 200 && time.Since(drained) < 1500*time.Millisecond; n++ {
			resp, body := get(t, c, tg.URL("/status?code=200"))
			if resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("request %d after the undrain: %d close=%v %q; want 200 with keep-alive", n, resp.StatusCode, resp.Close, body)
			}
			<-pace.C
		}
		if time.Since(drained) < 1500*time.Millisecond {
			t.Fatalf("only %d requests were checked", n)
		}
		if p := phaseOf(t, c, tg); p != "serving" {
			t.Errorf("phase %q after the undrain, want serving", p)
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz after the canceled drain's delay: %d %s, want 200", resp.StatusCode, body)
		}
		// The next drain is a whole new one.
		tg.signal(syscall.SIGTERM)
		if code := tg.waitExit(exitTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if rep := tg.report(); rep["trigger"] != "SIGTERM" {
			t.Errorf("drain report %v: want trigger SIGTERM (the admin drain was canceled)", rep)
		}
	})

	// Once the listeners have closed there is no way back: 409.
	t.Run("undrain too late", func(t *testing.T) {
		t.Parallel()
		app := fakeapp.Start(t)
		hold := newStopHold(t)
		tg := start(t, append([]string{"--upstream", app.Addr, "--drain-delay", "0", "--drain-quiet", "0"}, hold.args()...)...)
		c := newClient(t)

		if resp, body := post(t, c, "http://"+tg.Admin+"/drain?wait=10s"); resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /drain?wait=10s: %d %s, want 200 at stopping_app", resp.StatusCode, body)
		}
		resp, body := post(t, c, "http://"+tg.Admin+"/undrain")
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "stopping_app") {
			t.Errorf("POST /undrain after closing: %d %s, want 409 naming phase stopping_app", resp.StatusCode, body)
		}
		if resp, body := get(t, c, "http://"+tg.Health+"/readyz"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz after a refused undrain: %d %s, want 503", resp.StatusCode, body)
		}
		hold.release(t)
		if code := tg.waitExit(exitTimeout); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
	})
}
