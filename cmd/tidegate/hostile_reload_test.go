package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/tidegate/tidegate/proxy"
	"github.com/tidegate/tidegate/test/wait"
)

// A hostile second look at reloads: races with the drain, sockets shared
// by address, handlers shared by upstream, refused reloads that leave
// something behind, and a reload storm.

// TestHostileReplaceAfterShutdownStartsNothing: a reload that passed its
// "no drain under way" check and then took a moment (binding, reading TLS
// files) may reach frontends.replace after the drain has shut the
// listeners down. The server it adds must not start serving: the drain
// would never stop it, run would wait for its Serve forever (frontends.wait)
// and the socket would keep accepting after the drain.
func TestHostileReplaceAfterShutdownStartsNothing(t *testing.T) {
	app := namedApp(t, "a", nil)
	up, err := proxy.ParseUpstream(app.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := proxy.NewSocket(ln)
	addr := sock.Addr().String()
	tracker := proxy.NewTracker(proxy.TrackerOptions{})
	mk := func() *publicListener {
		view, err := sock.View()
		if err != nil {
			t.Fatal(err)
		}
		return &publicListener{spec: listenerSpec{Name: "web", Address: addr, Protocol: "tcp"}, sock: sock,
			srv: proxy.NewTCPServer(view, up, tracker, proxy.TCPOptions{})}
	}
	f := newFrontends(zap.NewNop())
	old := mk()
	f.live = []*publicListener{old}
	f.serve(old)

	next := mk() // built by the reload before the drain began
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.Shutdown(ctx); err != nil { // the drain's closing phase
		t.Fatal(err)
	}
	f.replace([]*publicListener{next}, 0, time.Second) // the reload, a moment late

	done := make(chan struct{})
	go func() { f.wait(); close(done) }()
	t.Cleanup(func() { _ = f.Close(); _ = next.srv.Close(); <-done })
	wait.Until(t, 5*time.Second, "every Serve returned after the drain's Shutdown (run waits for them)", func() (bool, string) {
		select {
		case <-done:
			return true, ""
		default:
			return false, "a server added by the reload after Shutdown is still serving"
		}
	})
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("%s still accepts connections after the drain's Shutdown", addr)
	}
}

// wsEcho is an app that echoes WebSocket messages.
func wsEcho(t *testing.T) *httptest.Server {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(w, "plain")
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if c.Write(r.Context(), typ, msg) != nil {
				return
			}
		}
	}))
	t.Cleanup(app.Close)
	return app
}

// waitRetired waits until no old server is retiring.
func waitRetired(t *testing.T, sc *sidecar) {
	t.Helper()
	wait.Until(t, 10*time.Second, "every old server retired", func() (bool, string) {
		sc.front.mu.Lock()
		defer sc.front.mu.Unlock()
		return len(sc.front.retiring) == 0, fmt.Sprintf("%d retiring", len(sc.front.retiring))
	})
}

// TestHostileReloadKeepsTheOtherListenersWebSockets: two listeners in
// front of one app; a reload edits only the first. The second keeps its
// server, so its WebSocket sessions must live on: the retirement of the
// first listener's old server must neither wait for them nor cut them at
// drain.timeout.
func TestHostileReloadKeepsTheOtherListenersWebSockets(t *testing.T) {
	app, other := wsEcho(t), wsEcho(t)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(firstUpstream string) string {
		return "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() +
			"\ndrain: {delay: 0s, timeout: 500ms}\nlisteners:\n" +
			"  - {name: first, address: \"127.0.0.1:0\", upstream: \"" + firstUpstream + "\"}\n" +
			"  - {name: second, address: \"127.0.0.1:0\"}\n"
	}
	writeConfig(t, file, conf(app.Listener.Addr().String()))
	sc, sig, _ := startWith(t, "--config", file)
	second := sc.front.list()[1]

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+second.srv.Addr().String()+"/", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	echo := func(msg string) error {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	writeConfig(t, file, conf(other.Listener.Addr().String()))
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	if sc.front.list()[1] != second {
		t.Fatal("the second listener did not change but lost its server")
	}
	start := time.Now()
	waitRetired(t, sc)
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("the first listener's old server (nothing open on it) took %s to retire: it waited for the second listener's WebSocket", d)
	}
	if err := echo("after"); err != nil {
		t.Fatalf("the second listener's WebSocket, untouched by the reload, ended when the first listener's old server retired: %v (close status %v)",
			err, websocket.CloseStatus(err))
	}
}

// TestHostileReloadEphemeralListenersKeepTheirSockets: two listeners on
// port 0 (each its own port) share an address string. A reload that edits
// the second must give its new server the second's socket, not the first's:
// else the first's port answers for both upstreams and the second's port
// closes.
func TestHostileReloadEphemeralListenersKeepTheirSockets(t *testing.T) {
	a, b, c := namedApp(t, "a", nil), namedApp(t, "b", nil), namedApp(t, "c", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(second string) string {
		return "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + a.Listener.Addr().String() +
			"\ndrain: {delay: 0s, timeout: 1s}\nlisteners:\n" +
			"  - {name: first, address: \"127.0.0.1:0\"}\n" +
			"  - {name: second, address: \"127.0.0.1:0\", upstream: \"" + second + "\"}\n"
	}
	writeConfig(t, file, conf(b.Listener.Addr().String()))
	sc, sig, _ := startWith(t, "--config", file)
	first, second := sc.front.list()[0].srv.Addr().String(), sc.front.list()[1].srv.Addr().String()

	writeConfig(t, file, conf(c.Listener.Addr().String()))
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	waitRetired(t, sc)
	for i := range 20 {
		if code, body := oneShotBody("http://" + first + "/"); code != "200" || body != "a" {
			t.Fatalf("request %d to the first listener (%s), which the reload did not touch: %s %q, want 200 \"a\"", i, first, code, body)
		}
		if code, body := oneShotBody("http://" + second + "/"); code != "200" || body != "c" {
			t.Fatalf("request %d to the second listener (%s), edited to upstream c: %s %q, want 200 \"c\"", i, second, code, body)
		}
	}
}

// TestHostileReloadRefusesTwoListenersOnOneAddress: a file that puts a
// second listener on the address of a running one cannot start tidegate
// (the bind fails); a reload must refuse it too, instead of letting two
// servers with different upstreams take turns on one socket.
func TestHostileReloadRefusesTwoListenersOnOneAddress(t *testing.T) {
	a, b := namedApp(t, "a", nil), namedApp(t, "b", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	port := freePort(t)
	base := "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + a.Listener.Addr().String() +
		"\nlisteners:\n  - {name: first, address: \"" + port + "\"}\n"
	writeConfig(t, file, base)
	sc, sig, _ := startWith(t, "--config", file)

	writeConfig(t, file, base+"  - {name: second, address: \""+port+"\", upstream: \""+b.Listener.Addr().String()+"\"}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "the reload done", func() bool {
		return sc.version.Load() == 2 || testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == 1
	})
	if out := sc.lastReload.Load(); out.Result != "failure" || !strings.Contains(out.Error, port) {
		t.Fatalf("a second listener on %s (the first's address) was not refused naming the address: %+v", port, out)
	}
	for i := range 20 {
		if code, body := oneShotBody("http://" + port + "/"); code != "200" || body != "a" {
			t.Fatalf("request %d to %s: %s %q, want 200 \"a\" (the first listener only)", i, port, code, body)
		}
	}
}

// TestHostileRefusedReloadReleasesTheSocket: a reload that edits a TLS
// listener and then fails on another listener is refused whole; the new
// server it had made on the TLS listener's socket must let go of the
// socket. Otherwise the socket never closes: moving the listener away later
// leaves the old port accepting connections that nobody serves.
func TestHostileRefusedReloadReleasesTheSocket(t *testing.T) {
	a, b := namedApp(t, "a", nil), namedApp(t, "b", nil)
	dir := t.TempDir()
	certFile, keyFile := writeTestCert(t, dir, 1)
	file := filepath.Join(dir, "tidegate.yaml")
	p1, p2 := freePort(t), freePort(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	conf := func(addr, upstream, extra string) string {
		return "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + upstream +
			"\ndrain: {delay: 0s, timeout: 1s}\nlisteners:\n" +
			"  - {name: web, address: \"" + addr + "\", tls: {cert: " + certFile + ", key: " + keyFile + "}}\n" + extra
	}
	writeConfig(t, file, conf(p1, a.Listener.Addr().String(), ""))
	sc, sig, _ := startWith(t, "--config", file)

	// Edit web (new upstream) and add a listener whose address is taken.
	writeConfig(t, file, conf(p1, b.Listener.Addr().String(), "  - {name: x, address: \""+taken.Addr().String()+"\"}\n"))
	sig <- syscall.SIGHUP
	wait.For(t, "the reload refused", func() bool { return testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == 1 })

	// Move web away: p1 must close.
	writeConfig(t, file, conf(p2, a.Listener.Addr().String(), ""))
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	waitRetired(t, sc)
	wait.Until(t, 5*time.Second, "the old address closed", func() (bool, string) {
		c, err := net.DialTimeout("tcp", p1, time.Second)
		if err != nil {
			return true, ""
		}
		_ = c.Close()
		return false, p1 + " still accepts connections (the refused reload's server kept the socket open)"
	})
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a self-signed test certificate
	resp, err := hc.Get("https://" + p2 + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "a" {
		t.Fatalf("the moved listener answered %q, want a", body)
	}
}

// openFDs counts this process's open files.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestHostileReloadStorm: 60 reloads in a row, each moving the upstream,
// under load with a short drain.timeout. No request fails, the old servers
// all retire, and goroutines and open files come back to where they were.
func TestHostileReloadStorm(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts open files in /proc/self/fd") // runs on the CI's Linux
	}
	a, b := namedApp(t, "a", nil), namedApp(t, "b", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(i int) string {
		up := []string{a.Listener.Addr().String(), b.Listener.Addr().String()}[i%2]
		return "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + up +
			"\ndrain: {delay: 0s, timeout: 300ms}\n"
	}
	writeConfig(t, file, conf(0))
	sc, sig, _ := startWith(t, "--config", file)
	public := "http://" + sc.publicAddr() + "/"
	if code, err := oneShot(public); code != 200 {
		t.Fatalf("first request: %d %v", code, err)
	}
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	ld := startLoad(public, 4)
	wait.For(t, "load on a", func() bool { return ld.saw("a") })
	const reloads = 60
	for i := 1; i <= reloads; i++ {
		writeConfig(t, file, conf(i))
		sig <- syscall.SIGHUP
		wait.For(t, fmt.Sprintf("config version %d", i+1), func() bool { return sc.version.Load() == int64(i+1) })
	}
	ld.end(t)
	if !ld.saw("b") {
		t.Fatal("the load never reached b")
	}
	waitRetired(t, sc)
	wait.Until(t, 10*time.Second, "goroutines and open files back to where they were", func() (bool, string) {
		g, f := runtime.NumGoroutine(), openFDs(t)
		// Slack: pooled app connections (each with its read and write
		// goroutines), which close after upstream.idle_timeout.
		return g <= goroutines+8 && f <= fds+4,
			fmt.Sprintf("goroutines %d (%d before), open files %d (%d before)", g, goroutines, f, fds)
	})
}

// TestHostileReloadUnderPostLoad: keep-alive clients POST without pause
// while 10 reloads move the upstream. The old server, whose socket the new
// one takes over, must answer each connection's next request (with
// Connection: close) rather than close the connection under a request
// already on the wire: a POST is not retried by clients (nor by nginx or
// HAProxy in front), so each such close is a failed request. Before the
// fix about two POSTs failed per reload (EOF, connection reset).
func TestHostileReloadUnderPostLoad(t *testing.T) {
	for _, tc := range []struct{ name, extra string }{
		{"fast path", ""},
		{"net/http only", "server: {net_http_only: true}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := namedApp(t, "a", nil), namedApp(t, "b", nil)
			file := filepath.Join(t.TempDir(), "tidegate.yaml")
			conf := func(i int) string {
				up := []string{a.Listener.Addr().String(), b.Listener.Addr().String()}[i%2]
				return "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + up +
					"\ndrain: {delay: 500ms, timeout: 2s}\n" + tc.extra
			}
			writeConfig(t, file, conf(0))
			sc, sig, _ := startWith(t, "--config", file)
			public := "http://" + sc.publicAddr() + "/"

			stop := make(chan struct{})
			var ok, failed atomic.Int64
			var mu sync.Mutex
			var errs []string
			var wg sync.WaitGroup
			deadline := time.Now().Add(30 * time.Second)
			for range 8 {
				wg.Go(func() {
					c := &http.Client{Timeout: 10 * time.Second}
					defer c.CloseIdleConnections()
					for time.Now().Before(deadline) {
						select {
						case <-stop:
							return
						default:
						}
						resp, err := c.Post(public, "text/plain", strings.NewReader("hello"))
						if err == nil {
							_, err = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							if err == nil && resp.StatusCode != 200 {
								err = fmt.Errorf("status %d", resp.StatusCode)
							}
						}
						if err == nil {
							ok.Add(1)
							continue
						}
						failed.Add(1)
						mu.Lock()
						if len(errs) < 5 {
							errs = append(errs, err.Error())
						}
						mu.Unlock()
					}
				})
			}
			const reloads = 10
			for i := 1; i <= reloads; i++ {
				n := ok.Load()
				wait.For(t, "50 more answers", func() bool { return ok.Load() >= n+50 })
				writeConfig(t, file, conf(i))
				sig <- syscall.SIGHUP
				wait.For(t, fmt.Sprintf("config version %d", i+1), func() bool { return sc.version.Load() == int64(i+1) })
			}
			n := ok.Load()
			wait.For(t, "50 more answers", func() bool { return ok.Load() >= n+50 })
			close(stop)
			wg.Wait()
			if f := failed.Load(); f > 0 {
				t.Fatalf("%d of %d POSTs failed across %d reloads; first: %v", f, f+ok.Load(), reloads, errs)
			}
			waitRetired(t, sc)
		})
	}
}

// TestHostileReloadTakesOverARemovedListenersAddress: listener a moves to
// the address of listener b, which the same reload removes. a's new server
// takes b's socket over (no connection refused on that port in between),
// a's old port closes after drain.delay, and nothing of b answers anymore.
func TestHostileReloadTakesOverARemovedListenersAddress(t *testing.T) {
	appA, appB := namedApp(t, "a", nil), namedApp(t, "b", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	p1, p2 := freePort(t), freePort(t)
	base := "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + appA.Listener.Addr().String() +
		"\ndrain: {delay: 200ms, timeout: 1s}\nlisteners:\n"
	writeConfig(t, file, base+"  - {name: a, address: \""+p1+"\"}\n  - {name: b, address: \""+p2+"\", upstream: \""+appB.Listener.Addr().String()+"\"}\n")
	sc, sig, _ := startWith(t, "--config", file)
	sockB := sc.front.list()[1].sock

	ld := startLoad("http://"+p2+"/", 2)
	wait.For(t, "load on b", func() bool { return ld.saw("b") })
	writeConfig(t, file, base+"  - {name: a, address: \""+p2+"\"}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	wait.For(t, "load on a at b's old address", func() bool { return ld.saw("a") })
	ld.end(t)
	if live := sc.front.list(); len(live) != 1 || live[0].sock != sockB {
		t.Fatal("listener a did not take over the socket of b's address")
	}
	waitRetired(t, sc)
	for range 10 {
		if code, body := oneShotBody("http://" + p2 + "/"); code != "200" || body != "a" {
			t.Fatalf("%s after the reload: %s %q, want 200 a", p2, code, body)
		}
	}
	if c, err := net.DialTimeout("tcp", p1, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("a's old address %s still accepts after its retirement", p1)
	}
}

// TestHostileReloadTurnsATCPListenerIntoHTTP: a tcp listener becomes an
// http one on the same address. New connections speak HTTP at once; the
// TCP session open across the reload goes on until drain.timeout, then is
// cut.
func TestHostileReloadTurnsATCPListenerIntoHTTP(t *testing.T) {
	app := namedApp(t, "a", nil)
	echo := echoServer(t)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	port := freePort(t)
	base := "health_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndrain: {delay: 100ms, timeout: 700ms}\n"
	writeConfig(t, file, base+"upstream: "+echo.Addr().String()+"\nlisteners:\n  - {name: web, address: \""+port+"\", protocol: tcp}\n")
	sc, sig, _ := startWith(t, "--config", file)

	session, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	_ = session.SetDeadline(time.Now().Add(10 * time.Second))
	say := func(s string) error {
		if _, err := io.WriteString(session, s); err != nil {
			return err
		}
		b := make([]byte, len(s))
		if _, err := io.ReadFull(session, b); err != nil {
			return err
		}
		if string(b) != s {
			return fmt.Errorf("echo %q, want %q", b, s)
		}
		return nil
	}
	if err := say("before"); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, file, base+"upstream: "+app.Listener.Addr().String()+"\nlisteners:\n  - {name: web, address: \""+port+"\", protocol: http}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	if code, body := oneShotBody("http://" + port + "/"); code != "200" || body != "a" {
		t.Fatalf("HTTP on the address after the reload: %s %q", code, body)
	}
	if err := say("across"); err != nil {
		t.Fatalf("the TCP session open across the reload ended before drain.timeout: %v", err)
	}
	waitRetired(t, sc)
	wait.Until(t, 5*time.Second, "the TCP session cut at drain.timeout", func() (bool, string) {
		if err := say("after"); err != nil {
			return true, ""
		}
		return false, "still open"
	})
}
