package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tidegate/tidegate/test/wait"
)

// Tests of loop detection (loop.go): real tidegate servers pointed at each
// other or at themselves, on every path a request can take, and the Via
// entry an ordinary request carries to the app.

// loopNode is a tidegate (Handler and Server) on a listener made before
// it, so that two can point at each other.
type loopNode struct {
	h       *Handler
	srv     *Server
	tr      *Tracker
	access  *observer.ObservedLogs
	netHTTP atomic.Int64 // requests that reached the server's handler
}

// startLoopNode serves ln with a Handler whose app is upstream; fast puts
// the Handler on the fast path (and tidegate's own HTTP/2 server).
func startLoopNode(t *testing.T, ln net.Listener, upstream string, fast bool, opts func(*Options)) *loopNode {
	t.Helper()
	up, err := ParseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	n := &loopNode{tr: NewTracker(TrackerOptions{})}
	var o Options
	o, n.access = rigOptions(t, up, n.tr, prometheus.NewRegistry())
	if opts != nil {
		opts(&o)
	}
	if n.h, err = NewHandler(o); err != nil {
		t.Fatal(err)
	}
	n.serve(t, ln, fast)
	return n
}

// serve serves ln with n's Handler too: a second listener of one tidegate.
func (n *loopNode) serve(t *testing.T, ln net.Listener, fast bool) *Server {
	t.Helper()
	var so ServerOptions
	if fast {
		so.FastPath = n.h
	}
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.netHTTP.Add(1)
		n.h.ServeHTTP(w, r)
	})
	srv := NewServer(ln, counted, n.tr, so)
	if n.srv == nil {
		n.srv = srv
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		n.h.CloseIdleConnections()
		waitFor(t, func() bool { return n.tr.ConnectionsTotal() == 0 })
	})
	return srv
}

// loopListener listens on 127.0.0.1 and stops after loopBudget
// connections: a loop the proxy failed to detect then ends in refused
// connections (and a failed test), not in a machine out of files.
func loopListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &budgetListener{Listener: ln}
	b.left.Store(loopBudget)
	return b
}

// loopBudget is more connections than any test here opens to one
// listener.
const loopBudget = 16

type budgetListener struct {
	net.Listener
	left atomic.Int64
}

func (l *budgetListener) Accept() (net.Conn, error) {
	if l.left.Add(-1) < 0 {
		_ = l.Listener.Close()
		return nil, fmt.Errorf("over the budget of %d connections: a loop went undetected", loopBudget)
	}
	return l.Listener.Accept()
}

// openFDs counts this process's open files; ok is false where /proc is
// not there to count them.
func openFDs() (n int, ok bool) {
	es, err := os.ReadDir("/proc/self/fd")
	return len(es), err == nil
}

// expectLoopAnswer checks that a client got tidegate's 508.
func expectLoopAnswer(t *testing.T, status int, reason string, took time.Duration) {
	t.Helper()
	if status != http.StatusLoopDetected || reason != string(ReasonLoop) {
		t.Fatalf("answer %d, reason %q; want 508, reason loop", status, reason)
	}
	if took > 5*time.Second {
		t.Fatalf("the 508 took %s", took)
	}
}

// loopPath is one way a request reaches tidegate.
type loopPath struct {
	name  string
	fast  bool             // the fast path and tidegate's own HTTP/2 server
	proto UpstreamProtocol // how requests reach the app
	h2    bool             // the client speaks h2c; method says which request
	// method is the h2c request's method (POST: with a body); head the
	// HTTP/1.1 request's line and fields, to which the body "x" is added
	// when it has a Content-Length.
	method, head string
	// netHTTP: the request goes through the server's handler.
	netHTTP bool
}

const (
	loopGET     = "GET /p HTTP/1.1\r\nHost: front.example\r\n"
	loopPOST    = "POST /p HTTP/1.1\r\nHost: front.example\r\nContent-Length: 1\r\n"
	loopWS      = "GET /p HTTP/1.1\r\nHost: front.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	loopCONNECT = "CONNECT backend.example:443 HTTP/1.1\r\nHost: backend.example:443\r\n"
)

var loopPaths = []loopPath{
	{name: "HTTP/1.1 fast path", fast: true, head: loopGET},
	{name: "HTTP/1.1 net/http only", head: loopGET, netHTTP: true},
	{name: "HTTP/1.1 with a body", fast: true, head: loopPOST, netHTTP: true},
	{name: "WebSocket", fast: true, head: loopWS, netHTTP: true},
	{name: "CONNECT", fast: true, head: loopCONNECT, netHTTP: true},
	{name: "h2c direct", fast: true, h2: true, method: http.MethodGet},
	{name: "h2c handler", fast: true, h2: true, method: http.MethodPost, netHTTP: true},
	{name: "h2c spliced to an h2 app", fast: true, proto: UpstreamH2C, h2: true, method: http.MethodPost},
	{name: "h2c net/http only", h2: true, method: http.MethodGet, netHTTP: true},
}

// loopAnswer is what a client of a loopPath got.
type loopAnswer struct {
	status       int
	reason, body string
	via          string // the answer's Via
}

// do sends one request of p's kind to addr on a new connection, with Via
// via unless "".
func (p loopPath) do(t *testing.T, addr, via string) loopAnswer {
	t.Helper()
	if p.h2 {
		c := dialOwn(t, addr)
		var fields []string
		if via != "" {
			fields = []string{"via", via}
		}
		var body []byte
		if p.method == http.MethodPost {
			body = []byte("x")
			fields = append(fields, "content-type", "text/plain")
		}
		r := c.do(1, p.method, "/p", body, fields...)
		var status int
		if _, err := fmt.Sscan(r.status, &status); err != nil {
			t.Fatalf("status %q (reset %v %v)", r.status, r.reset, r.code)
		}
		return loopAnswer{status, r.header.Get("X-Tidegate-Reason"), string(r.body), r.header.Get("Via")}
	}
	rc := dialRaw(t, addr)
	req := p.head
	if via != "" {
		req += "Via: " + via + "\r\n"
	}
	req += "\r\n"
	if strings.Contains(p.head, "Content-Length: 1") {
		req += "x"
	}
	resp, body := rc.do(t, req)
	return loopAnswer{resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"), body, resp.Header.Get("Via")}
}

// okStatus is what the viaApp answers p's request with.
func (p loopPath) okStatus() int {
	if p.head == loopCONNECT {
		return http.StatusForbidden
	}
	return http.StatusOK
}

// TestLoopTwoTidegatesPointingAtEachOther: issue 20 found two tidegates
// pointed at each other passing one request back and forth until each held
// ~6,000 files and 5,800 goroutines. The first request now comes back 508
// after three hops (A, B, A), on every path, and nothing piles up.
func TestLoopTwoTidegatesPointingAtEachOther(t *testing.T) {
	for _, p := range loopPaths {
		t.Run(p.name, func(t *testing.T) {
			lnA, lnB := loopListener(t), loopListener(t)
			opts := func(o *Options) { o.Protocol = p.proto }
			a := startLoopNode(t, lnA, lnB.Addr().String(), p.fast, opts)
			b := startLoopNode(t, lnB, lnA.Addr().String(), p.fast, opts)
			goroutines := runtime.NumGoroutine()
			fds, haveFDs := openFDs()

			start := time.Now()
			a0 := p.do(t, lnA.Addr().String(), "")
			expectLoopAnswer(t, a0.status, a0.reason, time.Since(start))

			// A forwarded it, B forwarded it, A refused it: A logs two
			// requests and B one, all 508 (relayed on the way back).
			waitFor(t, func() bool { return a.access.Len() == 2 && b.access.Len() == 1 })
			for _, e := range append(a.access.All(), b.access.All()...) {
				if st := e.ContextMap()["status"]; st != int64(http.StatusLoopDetected) {
					t.Errorf("access log status %v, want 508", st)
				}
			}
			var refused int
			for _, e := range a.access.All() {
				if e.ContextMap()["reason"] == string(ReasonLoop) {
					refused++
				}
			}
			if refused != 1 {
				t.Errorf("%d access-log lines of A with reason loop, want 1", refused)
			}
			// B only forwarded: by the path under test.
			if p.netHTTP != (b.netHTTP.Load() == 1) || b.netHTTP.Load() > 1 {
				t.Errorf("B's server handler served %d requests; want one: %v", b.netHTTP.Load(), p.netHTTP)
			}

			// Nothing is left: the test's client connection closes at
			// its cleanup, the pooled ones here.
			a.h.CloseIdleConnections()
			b.h.CloseIdleConnections()
			if p.fast && !p.netHTTP && p.proto == UpstreamHTTP1 {
				// The fast path keeps no goroutine per idle connection
				// beyond the connection's own.
				wait.Until(t, 5*time.Second, "goroutines back", func() (bool, string) {
					n := runtime.NumGoroutine()
					return n <= goroutines+4, fmt.Sprintf("%d goroutines, %d before the request", n, goroutines)
				})
			}
			wait.Until(t, 5*time.Second, "goroutines bounded", func() (bool, string) {
				n := runtime.NumGoroutine()
				return n <= goroutines+16, fmt.Sprintf("%d goroutines, %d before the request", n, goroutines)
			})
			if haveFDs {
				wait.Until(t, 5*time.Second, "open files bounded", func() (bool, string) {
					n, _ := openFDs()
					return n <= fds+8, fmt.Sprintf("%d open files, %d before the request", n, fds)
				})
			}
		})
	}
}

// TestLoopSelfThroughASecondListener: one tidegate whose app address is
// its own second listener (a name the static check cannot see through)
// refuses the request the second time it sees it.
func TestLoopSelfThroughASecondListener(t *testing.T) {
	ln1, ln2 := loopListener(t), loopListener(t)
	n := startLoopNode(t, ln1, ln2.Addr().String(), true, nil)
	n.serve(t, ln2, true)
	start := time.Now()
	a := loopPaths[0].do(t, ln1.Addr().String(), "")
	expectLoopAnswer(t, a.status, a.reason, time.Since(start))
	waitFor(t, func() bool { return n.access.Len() == 2 })
}

// viaApp is an app that answers with the Via values it got, "|" between
// field lines, and counts its requests; a CONNECT is declined with 403
// (its answer relayed), an upgrade answered 200 (relayed too).
type viaApp struct {
	addr string
	n    atomic.Int64
}

func viaHandler(a *viaApp) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.n.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodConnect {
			w.WriteHeader(http.StatusForbidden)
		}
		_, _ = io.WriteString(w, strings.Join(r.Header.Values("Via"), "|"))
	}
}

func startViaApp(t *testing.T, proto UpstreamProtocol) *viaApp {
	a := &viaApp{}
	if proto == UpstreamH2C {
		a.addr = h2cApp(t, viaHandler(a))
	} else {
		a.addr = upstreamServer(t, viaHandler(a)).Listener.Addr().String()
	}
	return a
}

// TestLoopViaToTheApp: on every path the app gets tidegate's Via entry
// after the client's, which are kept; the client's answer gets none.
func TestLoopViaToTheApp(t *testing.T) {
	const theirs = "1.0 fred, 1.1 p.example.net (Apache/1.1, with a comma)"
	for _, p := range loopPaths {
		t.Run(p.name, func(t *testing.T) {
			app := startViaApp(t, p.proto)
			n := startLoopNode(t, loopListener(t), app.addr, p.fast, func(o *Options) { o.Protocol = p.proto })
			proto := "1.1"
			if p.h2 {
				proto = "2"
			}
			ours := proto + " " + n.h.ViaName()
			for _, tc := range []struct{ client, want string }{
				{"", ours},
				{theirs, theirs + "|" + ours},
			} {
				a := p.do(t, n.srv.Addr().String(), tc.client)
				if a.status != p.okStatus() || a.via != "" {
					t.Fatalf("client Via %q: status %d, Via %q on the answer; want %d and none", tc.client, a.status, a.via, p.okStatus())
				}
				if a.body != tc.want {
					t.Errorf("client Via %q: the app saw %q, want %q", tc.client, a.body, tc.want)
				}
			}
			if got := app.n.Load(); got != 2 {
				t.Errorf("the app got %d requests, want 2", got)
			}
			if want := map[bool]int64{true: 2}[p.netHTTP]; n.netHTTP.Load() != want {
				t.Errorf("the server's handler served %d requests, want %d", n.netHTTP.Load(), want)
			}
		})
	}
}

// TestLoopRefusedOnEveryPath: a request that carries this tidegate's own
// entry, or more tidegate entries than MaxHops, is answered 508 and never
// reaches the app, whatever path it takes; MaxHops entries pass.
func TestLoopRefusedOnEveryPath(t *testing.T) {
	others := func(n int) string {
		vs := make([]string, n)
		for i := range vs {
			vs[i] = fmt.Sprintf("1.1 tidegate-other%d", i)
		}
		return strings.Join(vs, ", ")
	}
	for _, p := range loopPaths {
		t.Run(p.name, func(t *testing.T) {
			app := startViaApp(t, p.proto)
			n := startLoopNode(t, loopListener(t), app.addr, p.fast, func(o *Options) { o.Protocol = p.proto })
			addr := n.srv.Addr().String()
			for _, via := range []string{
				"1.1 " + n.h.ViaName(),
				"1.0 fred, 2 " + n.h.ViaName() + " (comment, with commas)",
				others(DefaultMaxHops + 1),
			} {
				a := p.do(t, addr, via)
				expectLoopAnswer(t, a.status, a.reason, 0)
			}
			if got := app.n.Load(); got != 0 {
				t.Fatalf("the app got %d looping requests", got)
			}
			if a := p.do(t, addr, others(DefaultMaxHops)); a.status != p.okStatus() {
				t.Errorf("%d tidegate entries: status %d, want %d", DefaultMaxHops, a.status, p.okStatus())
			}
			waitFor(t, func() bool { return n.access.Len() == 4 })
			var loops int
			for _, e := range n.access.All() {
				if e.ContextMap()["reason"] == string(ReasonLoop) {
					loops++
				}
			}
			if loops != 3 {
				t.Errorf("%d access-log lines with reason loop, want 3", loops)
			}
		})
	}
}

// TestLoopOptions: a configured id names the tidegate, a bad one or a
// negative bound is refused with the value, and Off adds and checks
// nothing.
func TestLoopOptions(t *testing.T) {
	app := startViaApp(t, UpstreamHTTP1)
	n := startLoopNode(t, loopListener(t), app.addr, true, func(o *Options) { o.Loop = LoopOptions{ID: "pod-7.ns", MaxHops: 1} })
	if n.h.ViaName() != "tidegate-pod-7.ns" {
		t.Errorf("ViaName %q", n.h.ViaName())
	}
	p := loopPaths[0]
	if a := p.do(t, n.srv.Addr().String(), "1.1 tidegate-a"); a.status != http.StatusOK || a.body != "1.1 tidegate-a|1.1 tidegate-pod-7.ns" {
		t.Errorf("one hop, MaxHops 1: %d, the app saw Via %q", a.status, a.body)
	}
	if a := p.do(t, n.srv.Addr().String(), "1.1 tidegate-a, 1.1 tidegate-b"); a.status != http.StatusLoopDetected {
		t.Errorf("two hops over MaxHops 1: %d", a.status)
	}

	off := startLoopNode(t, loopListener(t), app.addr, true, func(o *Options) { o.Loop.Off = true })
	if off.h.ViaName() != "" {
		t.Errorf("ViaName %q with Off", off.h.ViaName())
	}
	rc := dialRaw(t, off.srv.Addr().String())
	many := "1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x, 1.1 tidegate-x"
	if resp, body := rc.do(t, "GET /p HTTP/1.1\r\nHost: x\r\nVia: "+many+"\r\n\r\n"); resp.StatusCode != http.StatusOK || body != many {
		t.Errorf("Off: %s, the app saw Via %q", resp.Status, body)
	}

	if a, b := startLoopNode(t, loopListener(t), app.addr, true, nil), startLoopNode(t, loopListener(t), app.addr, true, nil); a.h.ViaName() == b.h.ViaName() ||
		!strings.HasPrefix(a.h.ViaName(), "tidegate-") || len(a.h.ViaName()) != len("tidegate-")+16 {
		t.Errorf("random names %q and %q: want two different tidegate-<16 hex digits>", a.h.ViaName(), b.h.ViaName())
	}

	up, _ := ParseUpstream(app.addr)
	for _, tc := range []struct {
		lo   LoopOptions
		want string
	}{
		{LoopOptions{ID: "has space"}, `"has space"`},
		{LoopOptions{ID: "a,b"}, `"a,b"`},
		{LoopOptions{ID: strings.Repeat("x", 65)}, "at most 64"},
		{LoopOptions{MaxHops: -1}, "-1"},
	} {
		_, err := NewHandler(Options{Upstream: up, Tracker: NewTracker(TrackerOptions{}), Loop: tc.lo})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one naming %s", tc.lo, err, tc.want)
		}
	}
}

// TestScanVia: the Via parser counts tidegate entries and finds its own,
// through blanks, empty elements and comments with commas; a lookalike in
// a comment or a prefix of the name does not count.
func TestScanVia(t *testing.T) {
	g, err := newLoopGuard(LoopOptions{ID: "me"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		v    string
		own  bool
		hops int
	}{
		{"", false, 0},
		{"1.1 tidegate-me", true, 1},
		{"2 tidegate-me", true, 1},
		{"HTTP/1.1 tidegate-me", true, 1},
		{"1.0 fred, 1.1 p.example.net", false, 0},
		{"1.0 fred (tidegate-me, 1.1 tidegate-me), 1.1 x", false, 0},
		{"1.0 fred (a \\) 1.1 tidegate-me), 1.1 tidegate-me", true, 1},
		{" ,, 1.1   tidegate-a ,\t1.1 tidegate-b(c)", false, 2},
		{"1.1 tidegate-mex, 1.1 tidegate-", false, 1},
		{"1.1 tidegate-me:8080", false, 1},
		{"tidegate-me", false, 0}, // no protocol: not an entry naming tidegate
	} {
		var s viaState
		scanVia(&g, tc.v, &s)
		var sb viaState
		scanVia(&g, []byte(tc.v), &sb)
		if s != sb || s.own != tc.own || s.hops != tc.hops {
			t.Errorf("%q: own %v hops %d (bytes: %+v); want own %v hops %d", tc.v, s.own, s.hops, sb, tc.own, tc.hops)
		}
	}
}

// TestLoopCheckCostsNoAllocation: reading Via and deciding allocates
// nothing, on the fast path's fields and on HTTP/2's.
func TestLoopCheckCostsNoAllocation(t *testing.T) {
	up, _ := ParseUpstream("127.0.0.1:1")
	h, err := NewHandler(Options{Upstream: up, Tracker: NewTracker(TrackerOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	h1 := []h1field{{[]byte("Host"), []byte("x")}, {[]byte("Via"), []byte("1.0 fred, 1.1 tidegate-other (x, y)")}}
	var loop bool
	if n := testing.AllocsPerRun(100, func() { loop = h.loopH1(h1, []byte("GET"), []byte("/"), nil) }); n != 0 || loop {
		t.Errorf("loopH1: %v allocations, loop %v", n, loop)
	}
	h2 := h.appendViaH2(nil)
	if n := testing.AllocsPerRun(100, func() { loop = h.loopH2(h2) }); n != 0 {
		t.Errorf("loopH2: %v allocations", n)
	}
	if !loop {
		t.Error("loopH2 did not see its own entry")
	}
}
