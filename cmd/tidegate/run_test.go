package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/proxy"
	"github.com/tidegate/tidegate/test/wait"
)

// startSidecar runs an in-process sidecar in front of app with the given
// extra flags; it returns the sidecar, its signal channel and its result.
func startSidecar(t *testing.T, app *httptest.Server, flags ...string) (*sidecar, chan os.Signal, <-chan drain.Report) {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String()}, flags...)
	sc, sig, reports, _ := runSidecar(t, func(string) string { return "" }, args...)
	return sc, sig, reports
}

// runSidecar loads args with getenv and runs the sidecar in-process; done
// closes when run has returned (after its report was sent).
func runSidecar(t *testing.T, getenv func(string) string, args ...string) (sc *sidecar, sig chan os.Signal, reports <-chan drain.Report, done <-chan struct{}) {
	t.Helper()
	l, err := loadConfig(args, getenv)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := newLoggers(&l.cfg, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	sc, err = newSidecar(l, logs, readBuildInfo())
	if err != nil {
		t.Fatal(err)
	}
	sig = make(chan os.Signal, 8)
	reps := make(chan drain.Report, 1)
	stopped := make(chan struct{})
	go func() { _, rep := sc.run(sig); reps <- rep; close(stopped) }()
	return sc, sig, reps, stopped
}

// echoServer is a TCP app that echoes every connection until the test
// ends.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return echo
}

// waitServing waits until the sidecar serves: its implicit upstream check
// (no readiness probe is configured) has found the app listening.
func waitServing(t *testing.T, sc *sidecar) {
	t.Helper()
	wait.Until(t, 5*time.Second, "the sidecar serving", func() (bool, string) {
		p := sc.life.Phase()
		return p == drain.Serving, "phase " + p.String()
	})
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
	waitServing(t, sc)
	public := "http://" + sc.publicAddr()

	result := make(chan int, 1)
	go func() {
		code, _ := oneShot(public)
		result <- code
	}()
	eventually(t, "the request in flight", func() bool { return sc.tracker.InFlight() == 1 })
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
	waitServing(t, sc)
	cut := make(chan struct{})
	defer func() { <-cut }()
	go func() {
		_, _ = oneShot("http://" + sc.publicAddr())
		close(cut)
	}()
	eventually(t, "the request in flight", func() bool { return sc.tracker.InFlight() == 1 })
	sig <- syscall.SIGTERM
	sig <- syscall.SIGINT
	rep := waitReport(t, reports)
	if rep.Result != "forced" || rep.Cut != 1 || rep.Duration() > 2*time.Second {
		t.Fatalf("report %+v", rep)
	}
}

// An HTTP and a TCP listener side by side; the drain keeps the TCP session
// through the delay and cuts it, counted, at the deadline.
func TestTCPListenerThroughTheDrain(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "http ok") }))
	defer app.Close()
	echo := echoServer(t)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	if err := os.WriteFile(file, []byte("listeners:\n  - {name: web, address: \"127.0.0.1:0\", upstream: \""+app.Listener.Addr().String()+
		"\"}\n  - {name: echo, address: \"127.0.0.1:0\", protocol: tcp, upstream: \""+echo.Addr().String()+"\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := loadConfig([]string{"--config", file, "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--drain-delay", "300ms", "--drain-quiet", "0s", "--drain-timeout", "1s"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var log lockedLog // to see the drain delay end
	logs, _ := newLoggers(&l.cfg, &log, io.Discard)
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		t.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	reports := make(chan drain.Report, 1)
	go func() { _, rep := sc.run(sig); reports <- rep }()
	waitServing(t, sc)

	if code, _ := oneShot("http://" + sc.front.list()[0].srv.Addr().String()); code != 200 {
		t.Fatalf("http listener: %d", code)
	}
	c, err := net.Dial("tcp", sc.front.list()[1].srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	say := func(s string) error {
		if _, err := io.WriteString(c, s+"\n"); err != nil {
			return err
		}
		got, err := br.ReadString('\n')
		if err == nil && got != s+"\n" {
			err = fmt.Errorf("echo %q", got)
		}
		return err
	}
	if err := say("before"); err != nil {
		t.Fatal(err)
	}
	// The HTTP request's client may have its answer before the handler has
	// counted it done: poll.
	eventually(t, "the tcp session counted alone", func() bool {
		return sc.tracker.Connections(proxy.ProtocolTCP) == 1 && sc.tracker.InFlight() == 1
	})
	sig <- syscall.SIGTERM
	// Past the 300ms delay (the drainer says so), before the 1s deadline.
	eventually(t, "the drain delay over", func() bool { return strings.Contains(log.String(), "drain delay over") })
	if err := say("during the drain"); err != nil {
		t.Fatalf("the TCP session did not survive the drain delay: %v", err)
	}
	rep := waitReport(t, reports)
	if rep.Result != "timeout" || rep.Cut != 1 {
		t.Fatalf("report %+v: want the TCP session cut at the deadline", rep)
	}
	if err := say("after"); err == nil {
		t.Fatal("the TCP session outlived the drain")
	}
}

// A WebSocket session open at the drain deadline ends with close 1001 at
// the client, and is counted as cut.
func TestWebSocketGoesAwayAtTheDeadline(t *testing.T) {
	app := wsEcho(t)
	sc, sig, reports := startSidecar(t, app, "--drain-delay", "100ms", "--drain-quiet", "0s", "--drain-timeout", "700ms")
	waitServing(t, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+sc.publicAddr()+"/", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "hi" {
		t.Fatalf("echo: %q %v", msg, err)
	}
	start := time.Now()
	sig <- syscall.SIGTERM
	_, _, err = c.Read(ctx)
	if st := websocket.CloseStatus(err); st != websocket.StatusGoingAway {
		t.Fatalf("client saw %v (%v), want close 1001 going away", st, err)
	}
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Fatalf("closed after %s: before the 700ms deadline", d)
	}
	if rep := waitReport(t, reports); rep.Result != "timeout" || rep.Cut != 1 {
		t.Fatalf("report %+v: want the session cut at the deadline", rep)
	}
}

// GET /drain?wait= on the health listener: 504 while the drain has not
// reached stopping_app within the wait, 200 once it has; bad input refused.
func TestPreStopDrainAnswers(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	sc, _, reports := startSidecar(t, app, "--drain-token", "s3cret", "--drain-delay", "800ms", "--drain-quiet", "0s")
	waitServing(t, sc)
	url := "http://" + sc.aux[0].ln.Addr().String() + "/drain"
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	call := func(method, query, token string) int {
		t.Helper()
		req, _ := http.NewRequest(method, url+query, nil)
		if token != "" {
			req.Header.Set(DrainTokenHeader, token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := call(http.MethodGet, "?wait=soon", "s3cret"); code != http.StatusBadRequest {
		t.Fatalf("bad wait: %d, want 400", code)
	}
	if code := call(http.MethodHead, "?wait=1s", "s3cret"); code != http.StatusMethodNotAllowed {
		t.Fatalf("HEAD: %d, want 405", code)
	}
	if code := call(http.MethodGet, "?wait=1s", "wrong"); code != http.StatusForbidden || sc.life.Phase() != drain.Serving {
		t.Fatalf("wrong token: %d, phase %s; want 403 and no drain", code, sc.life.Phase())
	}
	if code := call(http.MethodGet, "?wait=100ms", "s3cret"); code != http.StatusGatewayTimeout {
		t.Fatalf("wait shorter than the 800ms delay: %d, want 504", code)
	}
	if p := sc.life.Phase(); p != drain.Draining {
		t.Fatalf("after the first preStop call: phase %s, want draining", p)
	}
	if code := call(http.MethodGet, "?wait=5s", "s3cret"); code != http.StatusOK {
		t.Fatalf("wait past the delay: %d, want 200 at stopping_app", code)
	}
	if rep := waitReport(t, reports); rep.Trigger != "prestop" || rep.Result != "complete" {
		t.Fatalf("report %+v", rep)
	}
}

// lockedLog is a log sink a test reads while the sidecar writes to it.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
