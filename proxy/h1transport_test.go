package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
		NewTransport(up, o), o)
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
// connection; a GET on it is retried once on a new one, a bodiless POST is
// not (it may have been processed).
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
	if _, _, err := roundTrip(t, h1, context.Background(), http.MethodPost, app.URL); err == nil {
		t.Fatal("a POST on a connection the app closed succeeded; it must not be replayed")
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
