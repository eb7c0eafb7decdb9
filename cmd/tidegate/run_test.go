package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/drain"
)

// startSidecar runs an in-process sidecar in front of app with the given
// extra flags; it returns the sidecar, its signal channel and its result.
func startSidecar(t *testing.T, app *httptest.Server, flags ...string) (*sidecar, chan os.Signal, <-chan drain.Report) {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String()}, flags...)
	l, err := loadConfig(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	logs, err := newLoggers(&l.cfg, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		t.Fatal(err)
	}
	sig := make(chan os.Signal, 2)
	reports := make(chan drain.Report, 1)
	go func() {
		_, rep := sc.run(sig)
		reports <- rep
	}()
	return sc, sig, reports
}

// oneShot is a client that keeps no connection after a request.
func oneShot(url string) (int, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func waitReport(t *testing.T, reports <-chan drain.Report) drain.Report {
	t.Helper()
	select {
	case rep := <-reports:
		return rep
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar did not stop")
		return drain.Report{}
	}
}

// The kubelet runs the app's preStop hook (GET /drain) and sends tidegate
// SIGTERM at the same moment: whichever comes first, the SIGTERM must not
// count as the "second signal" that cuts everything.
func TestSignalAfterPreStopDrainIsNotASecondSignal(t *testing.T) {
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer app.Close()
	sc, sig, reports := startSidecar(t, app, "--drain-delay", "100ms", "--drain-quiet", "0s")
	public := "http://" + sc.public.Addr().String()

	result := make(chan int, 1)
	go func() {
		code, _ := oneShot(public)
		result <- code
	}()
	deadline := time.Now().Add(5 * time.Second)
	for sc.tracker.InFlight() == 0 && time.Now().Before(deadline) {
		<-time.After(2 * time.Millisecond)
	}
	sc.drainer.Trigger("prestop")
	sig <- syscall.SIGTERM
	<-time.After(300 * time.Millisecond) // past the delay: a forced drain would have cut by now
	close(release)
	if code := <-result; code != http.StatusOK {
		t.Fatalf("the request in flight got %d, want 200", code)
	}
	rep := waitReport(t, reports)
	if rep.Trigger != "prestop" || rep.Result != "complete" || rep.Cut != 0 {
		t.Fatalf("report %+v: the SIGTERM after a preStop drain forced it", rep)
	}
}

func TestSecondSignalForces(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer app.Close()
	sc, sig, reports := startSidecar(t, app, "--drain-delay", "5s")
	cut := make(chan struct{})
	defer func() { <-cut }()
	go func() {
		_, _ = oneShot("http://" + sc.public.Addr().String())
		close(cut)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for sc.tracker.InFlight() == 0 && time.Now().Before(deadline) {
		<-time.After(2 * time.Millisecond)
	}
	sig <- syscall.SIGTERM
	sig <- syscall.SIGINT
	rep := waitReport(t, reports)
	if rep.Result != "forced" || rep.Cut != 1 || rep.Duration() > 2*time.Second {
		t.Fatalf("report %+v", rep)
	}
}
