package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidegate/tidegate/test/wait"
)

// limitKind is one way to serve a public listener with a ConnLimit.
type limitKind string

const (
	kindFast    limitKind = "fast path" // Server with tidegate's HTTP/1.1 fast path and own h2c server
	kindNetHTTP limitKind = "net/http"  // Server without the fast path: net/http and x/net/http2
	kindTLS     limitKind = "tls"       // Server over TLS (ALPN h2 and http/1.1)
	kindTCP     limitKind = "tcp"       // TCPServer in front of a line echo app
	waitLimit             = 5 * time.Second
)

// limitFront is a server of one kind with a ConnLimit, serving until the
// test ends.
type limitFront struct {
	kind    limitKind
	addr    string
	limit   *ConnLimit
	served  chan error
	srv     *Server    // nil for tcp
	tcp     *TCPServer // nil unless tcp
	netHTTP atomic.Int64
}

// limitApp answers "ok" to HTTP requests and echoes WebSocket messages
// on /ws.
func limitApp(t *testing.T) string {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			_, _ = io.WriteString(w, "ok")
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
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	return app.Listener.Addr().String()
}

func startLimited(t *testing.T, kind limitKind, limit *ConnLimit) *limitFront {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveLimited(t, kind, ln, limit)
}

// serveLimited serves ln with a new server of the given kind.
func serveLimited(t *testing.T, kind limitKind, ln net.Listener, limit *ConnLimit) *limitFront {
	t.Helper()
	f := &limitFront{kind: kind, addr: ln.Addr().String(), limit: limit, served: make(chan error, 1)}
	tr := NewTracker(TrackerOptions{})
	if kind == kindTCP {
		up, _ := ParseUpstream(echoApp(t).Addr().String())
		f.tcp = NewTCPServer(ln, up, tr, TCPOptions{DialTimeout: time.Second, ConnLimit: limit})
		go func() { f.served <- f.tcp.Serve() }()
		t.Cleanup(func() {
			_ = f.tcp.Close()
			if err := f.serveResult(); err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
		return f
	}
	up, _ := ParseUpstream(limitApp(t))
	h, err := NewHandler(Options{Upstream: up, Tracker: tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.CloseIdleConnections)
	so := ServerOptions{ConnLimit: limit}
	switch kind {
	case kindFast:
		so.FastPath = h
	case kindTLS:
		cert, key := writeCert(t, t.TempDir(), 1)
		if so.TLS, err = LoadTLS(TLSOptions{CertFile: cert, KeyFile: key}); err != nil {
			t.Fatal(err)
		}
	}
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.netHTTP.Add(1)
		h.ServeHTTP(w, r)
	})
	f.srv = NewServer(ln, counted, tr, so)
	go func() { f.served <- f.srv.Serve() }()
	t.Cleanup(func() {
		_ = f.srv.Close()
		if err := f.serveResult(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
	})
	return f
}

// serveResult waits (at most 5s) for Serve to return, once.
func (f *limitFront) serveResult() error {
	select {
	case err, ok := <-f.served:
		if !ok {
			return nil
		}
		close(f.served)
		return err
	case <-time.After(waitLimit):
		return errors.New("Serve did not return within 5s")
	}
}

// limitClient is one client connection to a limitFront.
type limitClient struct {
	c    net.Conn
	br   *bufio.Reader
	kind limitKind
}

func (f *limitFront) dial(t *testing.T) *limitClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", f.addr, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &limitClient{c: c, br: bufio.NewReader(c), kind: f.kind}
}

// send writes one request: an HTTP/1.1 GET, or a line for tcp.
func (lc *limitClient) send(t *testing.T) {
	t.Helper()
	msg := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	if lc.kind == kindTCP {
		msg = "ping\n"
	}
	if _, err := io.WriteString(lc.c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// answer reads the answer to send's request within 5s.
func (lc *limitClient) answer(t *testing.T) {
	t.Helper()
	_ = lc.c.SetReadDeadline(time.Now().Add(waitLimit))
	if lc.kind == kindTCP {
		line, err := lc.br.ReadString('\n')
		if err != nil || line != "echo: ping\n" {
			t.Fatalf("tcp answer %q, %v; want the echo", line, err)
		}
		return
	}
	resp, err := http.ReadResponse(lc.br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Fatalf("response %d %q, %v; want 200 ok", resp.StatusCode, b, err)
	}
}

func (lc *limitClient) roundTrip(t *testing.T) {
	t.Helper()
	lc.send(t)
	lc.answer(t)
}

// expectNoAnswer checks that nothing arrives on the connection for a
// while: the server has not accepted it.
func (lc *limitClient) expectNoAnswer(t *testing.T, d time.Duration) {
	t.Helper()
	_ = lc.c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := lc.c.Read(b[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection beyond the limit read %d bytes, %v; want nothing until the deadline", n, err)
	}
}

// waitBlocked waits until the accept loops wait for a slot waits times in
// all, with open connections open.
func (f *limitFront) waitBlocked(t *testing.T, waits uint64, open int64) {
	t.Helper()
	wait.Until(t, waitLimit, "the accept loop waits at the limit", func() (bool, string) {
		w, o := f.limit.waits.Load(), f.limit.Open()
		return w == waits && o == open, fmt.Sprintf("%d waits, %d open; want %d, %d", w, o, waits, open)
	})
}

// TestConnLimitHoldsNewConnectionsUntilOneCloses: at the limit a new
// client's connection completes in the kernel but is not accepted, so it
// gets no answer, until a connection closes; then it is served.
func TestConnLimitHoldsNewConnectionsUntilOneCloses(t *testing.T) {
	for _, kind := range []limitKind{kindFast, kindNetHTTP, kindTCP} {
		t.Run(string(kind), func(t *testing.T) {
			f := startLimited(t, kind, NewConnLimit(2))
			a, b := f.dial(t), f.dial(t)
			a.roundTrip(t)
			b.roundTrip(t)
			f.waitBlocked(t, 1, 2)

			c := f.dial(t) // completes: the kernel queues it in the listen backlog
			c.send(t)
			c.expectNoAnswer(t, 200*time.Millisecond)
			if n := f.limit.Open(); n != 2 {
				t.Fatalf("%d connections open at a limit of 2", n)
			}

			a.c.Close()
			c.answer(t)
			b.roundTrip(t)
			f.waitBlocked(t, 2, 2)
			b.c.Close()
			c.c.Close()
			wait.Until(t, waitLimit, "every connection closed", func() (bool, string) {
				return f.limit.Open() == 0, fmt.Sprintf("%d open", f.limit.Open())
			})
		})
	}
}

// TestConnLimitCloseUnblocksWaitingAccept: an accept loop waiting for a
// slot ends at Close and at Shutdown, without a connection closing first.
func TestConnLimitCloseUnblocksWaitingAccept(t *testing.T) {
	for _, kind := range []limitKind{kindFast, kindNetHTTP, kindTCP} {
		t.Run(string(kind)+"/Close", func(t *testing.T) {
			f := startLimited(t, kind, NewConnLimit(1))
			a := f.dial(t)
			a.roundTrip(t)
			f.waitBlocked(t, 1, 1)
			if f.tcp != nil {
				_ = f.tcp.Close()
			} else {
				_ = f.srv.Close()
			}
			if err := f.serveResult(); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			wait.Until(t, waitLimit, "every slot given back", func() (bool, string) {
				return len(f.limit.slots) == 0 && f.limit.Open() == 0,
					fmt.Sprintf("%d slots taken, %d open", len(f.limit.slots), f.limit.Open())
			})
		})
		t.Run(string(kind)+"/Shutdown", func(t *testing.T) {
			f := startLimited(t, kind, NewConnLimit(1))
			a := f.dial(t)
			a.roundTrip(t)
			f.waitBlocked(t, 1, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			if f.tcp != nil {
				// A session keeps a TCP Shutdown waiting, but not its
				// accept loop.
				go func() { shut <- f.tcp.Shutdown(ctx) }()
				if err := f.serveResult(); err != nil {
					t.Fatalf("Serve: %v", err)
				}
				a.roundTrip(t)
				a.c.Close()
			} else {
				go func() { shut <- f.srv.Shutdown(ctx) }()
				if err := f.serveResult(); err != nil {
					t.Fatalf("Serve: %v", err)
				}
			}
			if err := recv(t, shut, "Shutdown's return"); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			wait.Until(t, waitLimit, "every slot given back", func() (bool, string) {
				return len(f.limit.slots) == 0 && f.limit.Open() == 0,
					fmt.Sprintf("%d slots taken, %d open", len(f.limit.slots), f.limit.Open())
			})
		})
	}
}

// TestConnLimitCountReturnsToZero: every kind of connection gives its slot
// back exactly once when it closes: keep-alive HTTP/1.1, one the fast path
// hands to net/http, h2c or h2, a hijacked WebSocket, one that never sends a
// request, one closed for a bad request, and TCP sessions.
func TestConnLimitCountReturnsToZero(t *testing.T) {
	for _, kind := range []limitKind{kindFast, kindNetHTTP, kindTLS, kindTCP} {
		t.Run(string(kind), func(t *testing.T) {
			f := startLimited(t, kind, NewConnLimit(64))
			if kind == kindTCP {
				var cs []*limitClient
				for range 5 {
					c := f.dial(t)
					c.roundTrip(t)
					cs = append(cs, c)
				}
				if n := f.limit.Open(); n != 5 {
					t.Fatalf("%d open with 5 sessions", n)
				}
				for i, c := range cs {
					if i%2 == 0 {
						_ = c.c.(*net.TCPConn).CloseWrite() // the session ends once the app says bye
						continue
					}
					c.c.Close()
				}
			} else {
				exerciseHTTP(t, f)
			}
			wait.Until(t, waitLimit, "every connection's slot given back", func() (bool, string) {
				// One slot stays with the accept loop, which waits in accept(2).
				return f.limit.Open() == 0 && len(f.limit.slots) == 1,
					fmt.Sprintf("%d open, %d slots taken", f.limit.Open(), len(f.limit.slots))
			})
		})
	}
}

// exerciseHTTP opens every kind of HTTP connection to f, uses it and closes
// it.
func exerciseHTTP(t *testing.T, f *limitFront) {
	t.Helper()
	scheme := "http"
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	if f.kind == kindTLS {
		scheme = "https"
	}
	base := scheme + "://" + f.addr

	// Keep-alive HTTP/1.1: three requests on one connection.
	h1 := &http.Transport{TLSClientConfig: tlsConf, Protocols: new(http.Protocols)}
	h1.Protocols.SetHTTP1(true)
	defer h1.CloseIdleConnections()
	var conns atomic.Int64
	h1.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	for range 3 {
		_, body := get(t, &http.Client{Transport: h1, Timeout: waitLimit}, base+"/", nil)
		if body != "ok" {
			t.Fatalf("HTTP/1.1 body %q", body)
		}
	}
	if conns.Load() != 1 {
		t.Fatalf("three keep-alive requests took %d connections", conns.Load())
	}
	if f.kind != kindTLS {
		// A request head too large for the fast path's buffer: handed
		// to net/http, which answers it on the same connection.
		before := f.netHTTP.Load()
		rc := f.dial(t)
		_, _ = io.WriteString(rc.c, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("p", 6000)+"\r\n\r\n")
		rc.answer(t)
		rc.roundTrip(t)
		if f.netHTTP.Load() == before {
			t.Fatal("the large head did not reach net/http")
		}
		rc.c.Close()
		// Never a request; then a bad one.
		f.dial(t).c.Close()
		// (Longer than the h2c preface, which net/http waits for whole
		// before it looks at a request line.)
		bad := f.dial(t)
		_, _ = io.WriteString(bad.c, "NOT HTTP AT ALL, NOT EVEN CLOSE\r\n\r\n")
		_ = bad.c.SetReadDeadline(time.Now().Add(waitLimit))
		if b, err := io.ReadAll(bad.c); err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 400 ") {
			t.Fatalf("a bad request got %q, %v; want a 400 and the close", b, err)
		}
		bad.c.Close()
	}

	// HTTP/2: h2c with prior knowledge, or h2 by ALPN.
	h2 := &http.Transport{TLSClientConfig: tlsConf, Protocols: new(http.Protocols)}
	if f.kind == kindTLS {
		h2.Protocols.SetHTTP2(true)
	} else {
		h2.Protocols.SetUnencryptedHTTP2(true)
	}
	defer h2.CloseIdleConnections()
	for range 3 {
		resp, body := get(t, &http.Client{Transport: h2, Timeout: waitLimit}, base+"/", nil)
		if body != "ok" || resp.ProtoMajor != 2 {
			t.Fatalf("HTTP/2 answer %s %q", resp.Proto, body)
		}
	}

	// A WebSocket: the connection is hijacked.
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ws := &http.Transport{TLSClientConfig: tlsConf}
	defer ws.CloseIdleConnections()
	wc, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws",
		&websocket.DialOptions{HTTPClient: &http.Client{Transport: ws}})
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	if err := wc.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := wc.Read(ctx); err != nil || string(msg) != "hi" {
		t.Fatalf("websocket echo %q, %v", msg, err)
	}
	if n := f.limit.Open(); n < 1 {
		t.Fatalf("%d open with a WebSocket up", n)
	}
	_ = wc.Close(websocket.StatusNormalClosure, "")
}

// TestConnLimitIsSharedByTheServersOfOneSocket: two servers accepting on one
// socket share its limit; each accept loop holds a slot while it waits in
// accept(2), and the connections open never exceed the limit.
func TestConnLimitIsSharedByTheServersOfOneSocket(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	limit := NewConnLimit(3)
	f := serveLimited(t, kindFast, ln, limit)
	serveLimited(t, kindFast, ln, limit)
	var cs []*limitClient
	for range 3 {
		c := f.dial(t)
		c.roundTrip(t)
		cs = append(cs, c)
	}
	f.waitBlocked(t, 2, 3) // both loops wait: three connections hold every slot
	extra := f.dial(t)
	extra.send(t)
	extra.expectNoAnswer(t, 200*time.Millisecond)
	cs[0].c.Close()
	extra.answer(t)
	if n := limit.Open(); n != 3 {
		t.Fatalf("%d open at a shared limit of 3", n)
	}
}

// TestConnLimitMetrics: the limit, the waits and the accept errors appear
// per listener. Accept errors come from a real listener whose deadline has
// passed; each one makes net/http back off and try again.
func TestConnLimitMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, NewTracker(TrackerOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	limited := NewConnLimit(1)
	m.WatchConnLimit("public", limited)
	f := startLimited(t, kindNetHTTP, limited)
	f.dial(t).roundTrip(t)
	f.waitBlocked(t, 1, 1)

	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ln.(*net.TCPListener).SetDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	failing := NewConnLimit(0)
	m.WatchConnLimit("second", failing)
	serveLimited(t, kindNetHTTP, ln, failing)
	wait.Until(t, waitLimit, "two failed accepts", func() (bool, string) {
		n := failing.acceptErr[acceptOther].Load()
		return n >= 2, fmt.Sprintf("%d", n)
	})

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   func(float64) bool
	}{
		{"tidegate_connections_limit", map[string]string{"listener": "public"}, func(v float64) bool { return v == 1 }},
		{"tidegate_connections_limit", map[string]string{"listener": "second"}, func(v float64) bool { return v == 0 }},
		{"tidegate_accept_waits_total", map[string]string{"listener": "public"}, func(v float64) bool { return v == 1 }},
		{"tidegate_accept_waits_total", map[string]string{"listener": "second"}, func(v float64) bool { return v == 0 }},
		{"tidegate_accept_errors_total", map[string]string{"listener": "public", "reason": "emfile"}, func(v float64) bool { return v == 0 }},
		{"tidegate_accept_errors_total", map[string]string{"listener": "second", "reason": "other"}, func(v float64) bool { return v >= 2 }},
		{"tidegate_accept_errors_total", map[string]string{"listener": "second", "reason": "enfile"}, func(v float64) bool { return v == 0 }},
	} {
		v, ok := gathered(t, reg, c.name, c.labels)
		if !ok || !c.want(v) {
			t.Errorf("%s%v = %v (present %v)", c.name, c.labels, v, ok)
		}
	}
}

// gathered finds one series in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			if g := s.GetGauge(); g != nil {
				return g.GetValue(), true
			}
			return s.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestAcceptErrorReasons: accept(2)'s errors as net.Listener returns them
// map to the reason label.
func TestAcceptErrorReasons(t *testing.T) {
	for errno, want := range map[syscall.Errno]string{syscall.EMFILE: "emfile", syscall.ENFILE: "enfile", syscall.ENOBUFS: "other"} {
		l := NewConnLimit(0)
		l.acceptFailed(&net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)})
		got := ""
		for kind, reason := range acceptErrorReasons {
			if n := l.acceptErr[kind].Load(); n == 1 {
				got += reason
			} else if n != 0 {
				t.Fatalf("%v counted %d times as %s", errno, n, reason)
			}
		}
		if got != want {
			t.Errorf("%v counted as %q, want %q", errno, got, want)
		}
	}
	var nilLimit *ConnLimit
	nilLimit.acceptFailed(syscall.EMFILE) // no limit: nothing to count, no panic
}

// TestMaxConnectionsFor: the automatic limit leaves the reserve and two
// files per connection.
func TestMaxConnectionsFor(t *testing.T) {
	for _, c := range []struct {
		nofile    uint64
		listeners int
		want      int
	}{
		{256, 1, 96},                  // reserve 64
		{100, 1, 18},                  // reserve 64
		{640, 1, 288},                 // reserve 64
		{650, 1, 292},                 // reserve 65
		{1024, 1, 461},                // reserve 102
		{1024, 0, 461},                // no listener counts as one
		{10_000, 3, 1500},             // reserve 1000, shared by three listeners
		{65536, 2, 14745},             // reserve 6553, shared by two listeners
		{1 << 20, 1, 471859},          // reserve 104857
		{math.MaxInt32, 1, 966367641}, // the largest limit taken into account
		{64, 1, 1},                    // nothing left: still one
		{10_000, 1_000_000, 1},        // more listeners than files: still one
		{math.MaxInt32 + 1, 1, 0},     // too large to matter: no limit
		{math.MaxUint64, 1, 0},        // RLIM_INFINITY
	} {
		if got := MaxConnectionsFor(c.nofile, c.listeners); got != c.want {
			t.Errorf("MaxConnectionsFor(%d, %d) = %d, want %d", c.nofile, c.listeners, got, c.want)
		}
	}
}

// BenchmarkProxyHTTP1NewConn is BenchmarkProxyHTTP1 with a new client
// connection for each request, so that every request goes through the
// accept path; without a connection limit.
func BenchmarkProxyHTTP1NewConn(b *testing.B) {
	app := benchApp(b)
	benchNewConns(b, benchFront(b, app.Listener.Addr().String(), true, nil))
}

// BenchmarkProxyHTTP1NewConnLimited is BenchmarkProxyHTTP1NewConn with a
// connection limit far above the load: the cost of taking and giving back
// a slot.
func BenchmarkProxyHTTP1NewConnLimited(b *testing.B) {
	app := benchApp(b)
	up, _ := ParseUpstream(app.Listener.Addr().String())
	tr := NewTracker(TrackerOptions{})
	h, err := NewHandler(Options{Upstream: up, Tracker: tr, TransportOptions: TransportOptions{IdleConnTimeout: time.Minute}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(ln, h, tr, ServerOptions{FastPath: h, ConnLimit: NewConnLimit(1 << 16)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	b.Cleanup(func() { _ = srv.Close(); <-served; h.CloseIdleConnections() })
	benchNewConns(b, ln.Addr().String())
}

func benchNewConns(b *testing.B, addr string) {
	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	benchGet(b, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "http://"+addr+"/")
}
