//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
)

// Tests of the retry policy (h1transport.go, h1fallback.go) against apps
// that close keep-alive connections without saying so: on the fast path,
// the net/http path and the HTTP/2 direct path, 2,000 requests each. Linux
// only: the app corks its socket (TCP_CORK) so that "at once" is exact.

// closingApp is an HTTP/1.1 app on 127.0.0.1 that answers every request
// "ok" without "Connection: close" and then closes the connection: at
// once (idle 0: the answer and the close leave together, corked), or
// after idle without a request. It records how often it read each
// request whole, by X-Test-Id.
type closingApp struct {
	addr     string
	accepted *atomic.Int64
	// raced counts connections closed after idle on which a request came
	// after all: tidegate wrote it before it could see the close.
	raced atomic.Int64

	mu   sync.Mutex
	seen map[string]int
}

func newClosingApp(t *testing.T, idle time.Duration) *closingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &closingApp{addr: ln.Addr().String(), seen: make(map[string]int)}
	a.accepted = acceptAll(t, ln, func(c net.Conn, _ int64) {
		tc := c.(*net.TCPConn)
		if idle == 0 {
			cork(t, tc)
		}
		br := bufio.NewReader(c)
		for {
			if idle > 0 {
				// A request begun within idle is served whole.
				_ = c.SetReadDeadline(time.Now().Add(idle))
				if _, err := br.Peek(1); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						a.closeIdle(tc, br)
					}
					return
				}
				_ = c.SetReadDeadline(time.Time{})
			}
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			a.mu.Lock()
			a.seen[req.Header.Get("X-Test-Id")]++
			a.mu.Unlock()
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil || idle == 0 {
				return // closed by acceptAll: corked, the answer and the FIN leave together
			}
		}
	})
	return a
}

// closeIdle closes an idle connection as an app's keep-alive timeout does:
// the FIN first, then whatever tidegate wrote before it saw the FIN is
// counted (raced) and not read, which draws a reset.
func (a *closingApp) closeIdle(c *net.TCPConn, br *bufio.Reader) {
	_ = c.CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := br.Peek(1); err == nil {
		a.raced.Add(1)
	}
}

// reads returns how often the app read the request with id.
func (a *closingApp) reads(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[id]
}

// cork holds what c writes until it is closed (or the cork is full): the
// answer and the close reach tidegate together.
func cork(t *testing.T, c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Error(err)
		return
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, 1)
	}); err != nil || serr != nil {
		t.Errorf("TCP_CORK: %v %v", err, serr)
	}
}

// retryFront is tidegate in front of an app, reached one of three ways.
type retryFront struct {
	name     string
	url      string // tidegate's
	reg      *prometheus.Registry
	handler  *Handler
	clients  []*http.Client // one per kind of request: GET, empty POST, POST with a body
	cleanups []func()
}

// frontKinds are the ways clients reach tidegate in these tests.
var frontKinds = []string{"fast", "nethttp", "h2"}

func newRetryFront(t *testing.T, kind, app string) *retryFront {
	t.Helper()
	up, err := ParseUpstream(app)
	if err != nil {
		t.Fatal(err)
	}
	f := &retryFront{name: kind, reg: prometheus.NewRegistry()}
	tracker := NewTracker(TrackerOptions{})
	o, _ := rigOptions(t, up, tracker, f.reg)
	o.AccessLog = nil
	if f.handler, err = NewHandler(o); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	so := ServerOptions{FastPath: f.handler}
	if kind == "nethttp" {
		so.FastPath = nil // every request through net/http and ReverseProxy
	}
	srv := NewServer(ln, f.handler, tracker, so)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		for _, c := range f.clients {
			c.CloseIdleConnections()
		}
		_ = srv.Close()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		f.handler.CloseIdleConnections()
		waitFor(t, func() bool { return tracker.ConnectionsTotal() == 0 })
	})
	addr := srv.Addr().String()
	f.url = "http://" + addr + "/x"
	for range 3 {
		var rt http.RoundTripper
		if kind == "h2" {
			rt = &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}}
		} else {
			rt = &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
		}
		f.clients = append(f.clients, &http.Client{Transport: rt, Timeout: 10 * time.Second})
	}
	return f
}

// counter reads a counter of tidegate's registry by name and label value.
func (f *retryFront) counter(t *testing.T, name, label string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == label) {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// loadResult is what 2,000 requests through tidegate met.
type loadResult struct {
	failed map[string][]string // by method: what the failures were
	posts  []string            // ids of the POSTs that got 200
}

// runMixedLoad sends n requests, a third each GET, POST without a body and
// POST with one, from 8 workers; with pace, each worker pauses between
// bursts of 5 so that connections sit idle about as long as pace. Bounded
// by 90s in all.
func runMixedLoad(t *testing.T, f *retryFront, url string, n int, pace time.Duration) loadResult {
	t.Helper()
	const workers = 8
	res := loadResult{failed: make(map[string][]string)}
	var mu sync.Mutex
	deadline := time.Now().Add(90 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick *time.Ticker
			if pace > 0 {
				tick = time.NewTicker(pace + time.Duration(w)*pace/40) // spread the workers apart
				defer tick.Stop()
			}
			for i := w; i < n; i += workers {
				if time.Now().After(deadline) {
					mu.Lock()
					res.failed["deadline"] = append(res.failed["deadline"], "90s passed")
					mu.Unlock()
					return
				}
				if tick != nil && (i/workers)%5 == 0 {
					<-tick.C
				}
				id := fmt.Sprintf("%s-%d", f.name, i)
				kind := i % 3
				method, body := http.MethodGet, io.Reader(nil)
				switch kind {
				case 1:
					method = http.MethodPost
				case 2:
					method, body = http.MethodPost, strings.NewReader("a small body")
				}
				req, err := http.NewRequest(method, url, body)
				if err != nil {
					t.Error(err)
					return
				}
				req.Header.Set("X-Test-Id", id)
				status, got := "", ""
				resp, err := f.clients[kind].Do(req)
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					status, got, err = resp.Status, string(b), rerr
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s %s (reason %s)", status, strings.TrimSpace(got), resp.Header.Get("X-Tidegate-Reason"))
					}
				}
				mu.Lock()
				switch {
				case err != nil:
					res.failed[method] = append(res.failed[method], fmt.Sprintf("%s %v", id, err))
				case method == http.MethodPost:
					res.posts = append(res.posts, id)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// TestAppClosingAtOnceCostsNoRequest: the app closes every keep-alive
// connection right after its answer. Of 2,000 GETs and POSTs (with and
// without a body) none fails on any path: the close is always there before
// tidegate writes the next request, and every request goes out on a
// connection the app has not closed.
func TestAppClosingAtOnceCostsNoRequest(t *testing.T) {
	for _, kind := range frontKinds {
		t.Run(kind, func(t *testing.T) {
			app := newClosingApp(t, 0)
			f := newRetryFront(t, kind, app.addr)
			res := runMixedLoad(t, f, f.url, 2000, 0)
			checkLoad(t, f, app, res, 0)
			if n := f.counter(t, "tidegate_upstream_stale_conns_total", ""); n == 0 {
				t.Errorf("tidegate_upstream_stale_conns_total = 0: the check before reuse found no closed connection")
			}
		})
	}
}

// TestAppClosingWhenIdleCostsNoRequest: the app closes a keep-alive
// connection 30 ms after its answer unless another request came. No GET
// fails; a POST fails only if tidegate wrote it before the close reached
// it (the app counts those), never when the close came first.
func TestAppClosingWhenIdleCostsNoRequest(t *testing.T) {
	for _, kind := range frontKinds {
		t.Run(kind, func(t *testing.T) {
			app := newClosingApp(t, 30*time.Millisecond)
			f := newRetryFront(t, kind, app.addr)
			res := runMixedLoad(t, f, f.url, 2000, 30*time.Millisecond)
			checkLoad(t, f, app, res, int(app.raced.Load()))
			t.Logf("%s: %d connections, %d closed as a request came, %v stale connections discarded, %v retries",
				kind, app.accepted.Load(), app.raced.Load(), f.counter(t, "tidegate_upstream_stale_conns_total", ""),
				f.counter(t, "tidegate_upstream_retries_total", ""))
		})
	}
}

// checkLoad fails t on any failed GET, on more failed POSTs than
// postsRaced, and on a POST the app read twice.
func checkLoad(t *testing.T, f *retryFront, app *closingApp, res loadResult, postsRaced int) {
	t.Helper()
	if fails := res.failed["deadline"]; len(fails) > 0 {
		t.Fatalf("the load did not end within its bound")
	}
	if fails := res.failed[http.MethodGet]; len(fails) > 0 {
		t.Errorf("%d of the GETs failed, want 0; first: %s", len(fails), fails[0])
	}
	if fails := res.failed[http.MethodPost]; len(fails) > postsRaced {
		t.Errorf("%d of the POSTs failed, want at most %d (written before the app's close reached tidegate); first: %s",
			len(fails), postsRaced, fails[0])
	}
	for _, id := range res.posts {
		if n := app.reads(id); n != 1 {
			t.Errorf("the app read POST %s %d times, want once", id, n)
		}
	}
	if n := f.counter(t, "tidegate_upstream_errors_total", ""); n > float64(postsRaced) {
		t.Errorf("tidegate_upstream_errors_total = %v", n)
	}
}

// dyingApp reads each request whole and answers it, but dies without
// answering on the first read of a request marked X-Test-Id that comes
// second (or later) on a connection: the request reached it, on a
// connection tidegate reused.
type dyingApp struct {
	addr string

	mu    sync.Mutex
	reads map[string]int
	died  map[string]bool
}

func newDyingApp(t *testing.T) *dyingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &dyingApp{addr: ln.Addr().String(), reads: make(map[string]int), died: make(map[string]bool)}
	acceptAll(t, ln, func(c net.Conn, _ int64) {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			id := req.Header.Get("X-Test-Id")
			a.mu.Lock()
			a.reads[id]++
			die := id != "" && i > 0 && a.reads[id] == 1
			a.died[id] = a.died[id] || die
			a.mu.Unlock()
			if die {
				return // closed by acceptAll, nothing answered
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	return a
}

// outcome reports how often the app read the request id, and whether it
// died on it.
func (a *dyingApp) outcome(id string) (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reads[id], a.died[id]
}

// TestPOSTThatReachedTheAppIsNotRetried: a POST (with a body, and without)
// that the app read whole on a reused connection before it died is
// answered 502 and not sent again, on every path; a PUT (idempotent, with
// a small body) is sent again on a new connection.
func TestPOSTThatReachedTheAppIsNotRetried(t *testing.T) {
	for _, kind := range frontKinds {
		for _, tc := range []struct {
			method, body string
			want         int // status
			reads        int // times the app read it
		}{
			{http.MethodPost, "", http.StatusBadGateway, 1},
			{http.MethodPost, "payload", http.StatusBadGateway, 1},
			{http.MethodPut, "payload", http.StatusOK, 2},
		} {
			t.Run(fmt.Sprintf("%s/%s-%d", kind, tc.method, len(tc.body)), func(t *testing.T) {
				app := newDyingApp(t)
				f := newRetryFront(t, kind, app.addr)
				c := f.clients[0]
				send := func(id string) *http.Response {
					req, err := http.NewRequest(tc.method, f.url, bytes.NewReader([]byte(tc.body)))
					if err != nil {
						t.Fatal(err)
					}
					req.Header.Set("X-Test-Id", id)
					resp, err := c.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					return resp
				}
				// The first of each pair, alike, leaves its app connection
				// in the pool for the second, unless tidegate had not put
				// it back yet when the second came: then again, at most 20
				// times.
				for attempt := range 20 {
					if resp := send(""); resp.StatusCode != http.StatusOK {
						t.Fatalf("first %s: %s", tc.method, resp.Status)
					}
					id := strconv.Itoa(attempt)
					resp := send(id)
					reads, died := app.outcome(id)
					if !died {
						continue // it went out on a new connection
					}
					if resp.StatusCode != tc.want {
						t.Errorf("%s: %s (reason %s), want %d", tc.method, resp.Status, resp.Header.Get("X-Tidegate-Reason"), tc.want)
					}
					if reads != tc.reads {
						t.Errorf("the app read the %s %d times, want %d", tc.method, reads, tc.reads)
					}
					retries := f.counter(t, "tidegate_upstream_retries_total", string(RetryConnClosed))
					if want := float64(tc.reads - 1); retries != want {
						t.Errorf("tidegate_upstream_retries_total{reason=conn_closed} = %v, want %v", retries, want)
					}
					return
				}
				t.Fatal("in 20 tries, no request went out on a reused app connection")
			})
		}
	}
}
