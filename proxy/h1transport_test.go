package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// countedApp is an httptest server that counts the connections it accepts.
func countedApp(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	n := new(atomic.Int32)
	s := httptest.NewUnstartedServer(h)
	s.Listener = countingListener{Listener: s.Listener, n: n}
	s.Start()
	t.Cleanup(s.Close)
	return s, n
}

func newTestH1(t *testing.T, addr string, o TransportOptions) *h1Transport {
	t.Helper()
	up, err := ParseUpstream(addr)
	if err != nil {
		t.Fatal(err)
	}
	if o.IdleConnTimeout == 0 {
		o.IdleConnTimeout = time.Minute
	}
	var d net.Dialer
	h1 := newH1Transport(func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		NewTransport(up, o), o, nil)
	t.Cleanup(h1.CloseIdleConnections)
	return h1
}

func roundTrip(t *testing.T, rt http.RoundTripper, ctx context.Context, method, url string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// TestH1TransportReusesOneConnection: sequential requests share one
// connection to the app, whatever the answer's framing.
func TestH1TransportReusesOneConnection(t *testing.T) {
	app, conns := countedApp(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			_, _ = io.WriteString(w, "a")
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "b")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = io.WriteString(w, "hello "+r.Host+" "+r.Header.Get("X-Test"))
		}
	})
	h1 := newTestH1(t, app.Listener.Addr().String(), TransportOptions{})
	for i := range 20 {
		path := []string{"/", "/chunked", "/empty"}[i%3]
		req, _ := http.NewRequest(http.MethodGet, app.URL+path, nil)
		req.Host = "svc.example"
		req.Header.Set("X-Test", "v")
		resp, err := h1.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"/": "hello svc.example v", "/chunked": "ab", "/empty": ""}[path]
		if string(b) != want {
			t.Fatalf("%s: %q, want %q", path, b, want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 requests used %d connections to the app; want 1", n)
	}
}

// TestH1TransportRetriesAConnectionTheAppClosed: the app closes an idle
// connection; neither a GET nor a bodiless POST is sent on it (the check
// before reuse finds it closed): both go out on a new one. A POST that
// reached the app is never sent twice: TestRetryPolicyPOSTThatReachedTheApp.
func TestH1TransportRetriesAConnectionTheAppClosed(t *testing.T) {
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	app.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}
	app.Start()
	t.Cleanup(app.Close)
	h1 := newTestH1(t, app.Listener.Addr().String(), TransportOptions{})
	closeAppSide := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	if _, body, err := roundTrip(t, h1, context.Background(), http.MethodGet, app.URL); err != nil || body != "ok" {
		t.Fatalf("first GET: %q %v", body, err)
	}
	closeAppSide()
	if _, body, err := roundTrip(t, h1, context.Background(), http.MethodGet, app.URL); err != nil || body != "ok" {
		t.Fatalf("GET on a connection the app closed: %q %v; want a retry", body, err)
	}
	closeAppSide()
	if _, body, err := roundTrip(t, h1, context.Background(), http.MethodPost, app.URL); err != nil || body != "ok" {
		t.Fatalf("POST after the app closed the pooled connection: %q %v; want it sent on a new one", body, err)
	}
}

// TestH1TransportClosesIdleConnections: connections idle longer than the
// idle timeout are closed, not kept open until the next request.
func TestH1TransportClosesIdleConnections(t *testing.T) {
	closed := make(chan struct{}, 1)
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	app.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	app.Start()
	t.Cleanup(app.Close)
	h1 := newTestH1(t, app.Listener.Addr().String(), TransportOptions{IdleConnTimeout: 50 * time.Millisecond})
	if _, _, err := roundTrip(t, h1, context.Background(), http.MethodGet, app.URL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	h1.mu.Lock()
	defer h1.mu.Unlock()
	if len(h1.idle) != 0 {
		t.Fatalf("%d connections still pooled", len(h1.idle))
	}
}

// TestH1TransportHeaderTimeoutAndCancel: the response-header timeout and
// the request's context end the exchange, and the connection is not reused.
func TestH1TransportHeaderTimeoutAndCancel(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	bodyStarted := make(chan struct{}, 1)
	var slowSeen atomic.Int32
	app, conns := countedApp(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fast":
			return
		case "/slow":
			slowSeen.Add(1)
		case "/body":
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "12345")
			http.NewResponseController(w).Flush()
			bodyStarted <- struct{}{}
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	h1 := newTestH1(t, app.Listener.Addr().String(), TransportOptions{ResponseHeaderTimeout: 100 * time.Millisecond})
	// On a reused connection, so that a retry would be possible: a slow
	// app is not retried.
	if _, _, err := roundTrip(t, h1, context.Background(), http.MethodGet, app.URL+"/fast"); err != nil {
		t.Fatal(err)
	}
	_, _, err := roundTrip(t, h1, context.Background(), http.MethodGet, app.URL+"/slow")
	if f := classify(context.Background(), err); f.reason != ReasonResponseTimeout {
		t.Fatalf("header timeout: %v classified %s; want %s", err, f.reason, ReasonResponseTimeout)
	}
	if n := slowSeen.Load(); n != 1 {
		t.Fatalf("the app saw /slow %d times; a timeout must not be retried", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, app.URL+"/body", nil)
	resp, err := h1.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	<-bodyStarted
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := resp.Body.Read(buf); err == nil {
		t.Fatal("a canceled request's body went on reading")
	}
	resp.Body.Close()
	before := conns.Load()
	if _, _, err := roundTrip(t, h1, context.Background(), http.MethodHead, app.URL+"/fast"); err != nil {
		t.Fatal(err)
	}
	if conns.Load() == before {
		t.Fatal("a connection whose exchange was canceled was reused")
	}
}

// TestH1TransportRelays1xx: 103 Early Hints reach the client's trace hook
// (ReverseProxy uses it to pass them on), then the final answer.
func TestH1TransportRelays1xx(t *testing.T) {
	app, _ := countedApp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "final")
	})
	h1 := newTestH1(t, app.Listener.Addr().String(), TransportOptions{})
	var got []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got = append(got, h.Get("Link"))
			return nil
		},
	})
	resp, body, err := roundTrip(t, h1, ctx, http.MethodGet, app.URL)
	if err != nil || resp.StatusCode != 200 || body != "final" {
		t.Fatalf("final answer: %v %q %v", resp, body, err)
	}
	if len(got) != 1 || got[0] != "</style.css>; rel=preload" {
		t.Fatalf("1xx seen: %q", got)
	}
}

// TestWriteRequestRefusesSplitting: a value with CR or LF never reaches the
// wire as two header lines.
func TestWriteRequestRefusesSplitting(t *testing.T) {
	for _, mutate := range []func(*http.Request){
		func(r *http.Request) { r.Header.Set("X-A", "v\r\nX-Injected: 1") },
		func(r *http.Request) { r.Host = "a\nb" },
		func(r *http.Request) { r.URL.RawQuery = "a b" },
	} {
		req, _ := http.NewRequest(http.MethodGet, "http://app/", nil)
		mutate(req)
		var sb strings.Builder
		bw := bufio.NewWriter(&sb)
		if err := writeRequest(bw, req); err == nil {
			t.Fatalf("request %v %q %v written", req.URL, req.Host, req.Header)
		}
	}
}

// heldPair returns the two ends of a loopback TCP connection: tidegate's,
// as the pool makes it, and the app's.
func heldPair(t *testing.T) (*h1Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	app, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	c := newH1Conn(nc)
	if c.rc == nil || !c.mayHold {
		t.Fatal("a TCP connection to the app holds no send")
	}
	return c, app.(*net.TCPConn)
}

// answerOnce is the app of the held-send tests: it reads n bytes, sends
// what it read on the channel, and answers 204 when it read them all.
func answerOnce(app net.Conn, n int) <-chan string {
	got := make(chan string, 1)
	go func() {
		b := make([]byte, n)
		n, err := io.ReadFull(app, b)
		got <- string(b[:n])
		if err == nil {
			_, _ = io.WriteString(app, "HTTP/1.1 204 No Content\r\n\r\n")
		}
	}()
	return got
}

// TestH1ConnHeldSend: send keeps the request's last write, awaitFirst
// makes it and returns once the answer's first byte is there; the app
// sees the request byte for byte. The large case holds 4 MiB, more than
// the sockets' buffers take at once: the rest goes the plain way.
func TestH1ConnHeldSend(t *testing.T) {
	for _, size := range []int{0, 4 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			c, app := heldPair(t)
			req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
			if size > 0 {
				_ = c.nc.(*net.TCPConn).SetWriteBuffer(64 << 10)
				_ = app.SetReadBuffer(64 << 10)
				req = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("p", size) + "\r\n\r\n"
			}
			got := answerOnce(app, len(req))
			if size == 0 {
				_, _ = c.bw.WriteString(req)
				if err := c.send(); err != nil {
					t.Fatal(err)
				}
				if string(c.out.held) != req {
					t.Fatalf("held %q, want the request", c.out.held)
				}
			} else {
				c.out.held = []byte(req) // as send leaves it, without bw's 4 KiB bound
			}
			_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
			if err := c.awaitFirst(); err != nil {
				t.Fatalf("awaitFirst: %v", err)
			}
			if s := <-got; s != req {
				t.Fatalf("the app read %d bytes, want the %d of the request", len(s), len(req))
			}
			if line, _ := c.br.ReadString('\n'); line != "HTTP/1.1 204 No Content\r\n" {
				t.Fatalf("answer %q", line)
			}
			if c.out.held != nil || c.out.err != nil {
				t.Fatalf("state left behind: %+v", c.out)
			}
		})
	}
}

// TestH1ConnHeldSendAfterAPastDeadline: a wait that fails before it
// began (the read deadline passed already, as after a stall of the
// process) writes nothing, and the next awaitFirst, under a new deadline,
// sends the request then: none is lost.
func TestH1ConnHeldSendAfterAPastDeadline(t *testing.T) {
	c, app := heldPair(t)
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	_, _ = c.bw.WriteString(req)
	if err := c.send(); err != nil {
		t.Fatal(err)
	}
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	if err := c.awaitFirst(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("awaitFirst past its deadline: %v, want a timeout", err)
	}
	got := answerOnce(app, len(req))
	_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.awaitFirst(); err != nil {
		t.Fatalf("awaitFirst under a new deadline: %v", err)
	}
	if s := <-got; s != req {
		t.Fatalf("the app read %q, want the request", s)
	}
}

// TestH1ConnHeldSendToAClosedApp: the app closed the connection before
// the held write (by FIN, or by reset). The wait must end with an error at
// once, not at the read deadline: a FIN's readiness is forgotten when the
// wait begins, but the write draws a reset that ends it.
func TestH1ConnHeldSendToAClosedApp(t *testing.T) {
	for _, reset := range []bool{false, true} {
		t.Run(fmt.Sprintf("reset=%v", reset), func(t *testing.T) {
			c, app := heldPair(t)
			if reset {
				_ = app.SetLinger(0)
			}
			app.Close()
			// Our end sees the close before the request goes.
			wait.For(t, "the app's close to arrive", func() bool {
				_ = c.nc.SetReadDeadline(time.Now().Add(time.Millisecond))
				_, err := c.nc.Read(make([]byte, 1)) // the connection has no read buffer before awaitFirst
				return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
			})
			_, _ = c.bw.WriteString("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			err := c.send()
			if err == nil {
				_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
				err = c.awaitFirst()
			}
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("awaitFirst on a closed connection: %v, want an error before the deadline", err)
			}
		})
	}
}

// TestH1TransportHalfClosedIdleConnection: the app half-closes a
// connection idle in the pool for holdIdleMax and keeps reading. The
// request on it, sent the plain way, sees the close at once and is
// retried on a new connection; there is no header timeout to end a wait.
func TestH1TransportHalfClosedIdleConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	halfClosed := make(chan struct{}, 1)
	go func() {
		for first := true; ; first = false {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, first bool) {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				if first {
					_ = c.(*net.TCPConn).CloseWrite()
					halfClosed <- struct{}{}
				}
				_, _ = io.Copy(io.Discard, br) // reads on, until tidegate closes
			}(c, first)
		}
	}()
	h1 := newTestH1(t, ln.Addr().String(), TransportOptions{})
	url := "http://" + ln.Addr().String() + "/"
	if _, body, err := roundTrip(t, h1, context.Background(), http.MethodGet, url); err != nil || body != "ok" {
		t.Fatalf("first GET: %q %v", body, err)
	}
	recv(t, halfClosed, "the app's half close")
	h1.mu.Lock()
	if len(h1.idle) != 1 {
		h1.mu.Unlock()
		t.Fatalf("%d idle connections, want 1", len(h1.idle))
	}
	h1.idle[0].idleAt = h1.idle[0].idleAt.Add(-holdIdleMax) // idle that long
	h1.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, body, err := roundTrip(t, h1, ctx, http.MethodGet, url); err != nil || body != "ok" {
		t.Fatalf("GET on the half-closed connection: %q %v; want a retry", body, err)
	}
}
