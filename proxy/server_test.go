package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func startServer(t *testing.T, h http.Handler, o ServerOptions) (*Server, *Tracker) {
	t.Helper()
	return startServerWith(t, h, o, nil)
}

// startServerWith lets a test adjust the Server before it serves.
func startServerWith(t *testing.T, h http.Handler, o ServerOptions, adjust func(*Server)) (*Server, *Tracker) {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	s := NewServer(ln, h, tr, o)
	if adjust != nil {
		adjust(s)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		// Connection goroutines outlive Close (net/http lingers up to
		// 500ms after a rejected request); they are gone once counted closed.
		waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
	})
	return s, tr
}

// TestShutdownClosesConnectionsThatNeverSentARequest: a load balancer's
// pre-opened connection must not hold the drain for net/http's 5s.
func TestShutdownClosesConnectionsThatNeverSentARequest(t *testing.T) {
	s, tr := startServer(t, http.NotFoundHandler(), ServerOptions{NewConnGrace: 100 * time.Millisecond})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return tr.ConnectionsTotal() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %s with one idle new connection", d)
	}
	waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
}

func TestDrainModeAnswersWithConnectionClose(t *testing.T) {
	s, tr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ServerOptions{})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func() *http.Response {
		t.Helper()
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(); resp.Close {
		t.Fatal("Connection: close before the drain")
	}
	s.BeginDrain()
	// The idle connection is still open: a request written to it now is
	// answered, with Connection: close, and then the server closes it.
	if resp := get(); !resp.Close { // ReadResponse turns the header into resp.Close
		t.Fatalf("no Connection: close while draining: %v", resp.Header)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the connection stayed open after Connection: close")
	}
	waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })

	s.EndDrain()
	c2, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c, br = c2, bufio.NewReader(c2)
	if resp := get(); resp.Close {
		t.Fatal("Connection: close after EndDrain")
	}
}

// A request that started before the drain and answers during it must carry
// Connection: close too.
func TestDrainReachesRequestsAlreadyInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	s, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = w.Write([]byte("done"))
	}), ServerOptions{})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	<-entered
	s.BeginDrain()
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Close {
		t.Fatal("a request in flight at the drain got a keep-alive response")
	}
}

func TestMaxHeaderBytesIsExact(t *testing.T) {
	s, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ServerOptions{MaxHeaderBytes: 8 << 10})
	send := func(n int) int {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", n) + "\r\n\r\n"
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send(7 << 10); code != 200 {
		t.Fatalf("7 KiB of headers under an 8 KiB limit: %d", code)
	}
	if code := send(9 << 10); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("9 KiB of headers over an 8 KiB limit: %d, want 431", code)
	}
	// Far over the limit, the client is still writing when the server
	// answers: the 431 must still be readable (half-close, not reset).
	for range 5 {
		if code := send(256 << 10); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("256 KiB of headers: %d, want 431", code)
		}
	}
}

// TestShutdownReturnsWhenTheLastRequestEnds: net/http's own Shutdown polls
// with a backoff of up to 500ms; the app must not wait for that poll.
func TestShutdownReturnsWhenTheLastRequestEnds(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	s, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	}), ServerOptions{})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	<-entered
	done := make(chan time.Time, 1)
	go func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		done <- time.Now()
	}()
	timer := time.NewTimer(1200 * time.Millisecond) // long enough for net/http's poll to back off to 500ms
	<-timer.C
	select {
	case <-done:
		t.Fatal("Shutdown returned while a request was being served")
	default:
	}
	released := time.Now()
	close(release)
	if d := (<-done).Sub(released); d > 100*time.Millisecond {
		t.Fatalf("Shutdown returned %s after the last request ended", d)
	}
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		t.Fatalf("the last response was lost: %v", err)
	}
}
