package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// echoApp answers each line with "echo: line"; on EOF from the client it
// writes "bye" and closes (so half-close must reach it).
func echoApp(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptAll(t, ln, func(c net.Conn, _ int64) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if _, err := io.WriteString(c, "echo: "+sc.Text()+"\n"); err != nil {
				return
			}
		}
		_, _ = io.WriteString(c, "bye\n")
	})
	return ln
}

func startTCP(t *testing.T, upstream string) (*TCPServer, *Tracker) {
	s, tr, _ := startTCPMetrics(t, upstream)
	return s, tr
}

func startTCPMetrics(t *testing.T, upstream string) (*TCPServer, *Tracker, *Metrics) {
	t.Helper()
	up, err := ParseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	m, err := NewMetrics(prometheus.NewRegistry(), tr)
	if err != nil {
		t.Fatal(err)
	}
	s := NewTCPServer(ln, up, tr, TCPOptions{DialTimeout: time.Second, Metrics: m})
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, tr, m
}

func TestTCPProxyBothWaysWithHalfClose(t *testing.T) {
	app := echoApp(t)
	s, tr := startTCP(t, app.Addr().String())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, line := range []string{"one", "two"} {
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			t.Fatal(err)
		}
		if got, err := br.ReadString('\n'); err != nil || got != "echo: "+line+"\n" {
			t.Fatalf("echo %q: %q, %v", line, got, err)
		}
	}
	waitFor(t, func() bool { return tr.InFlight() == 1 && tr.Connections(ProtocolTCP) == 1 })
	// Half-close: the app sees EOF and still answers on the other half.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "bye\n" {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	waitFor(t, func() bool { return tr.InFlight() == 0 && tr.Connections(ProtocolTCP) == 0 })
}

func TestTCPShutdownWaitsThenCloseCuts(t *testing.T) {
	app := echoApp(t)
	s, tr := startTCP(t, app.Addr().String())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned nil while a session was open")
	}
	// Stopped accepting, the open session still works.
	if _, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts after Shutdown")
	}
	if _, err := io.WriteString(c, "still\n"); err != nil {
		t.Fatal(err)
	}
	if got, _ := br.ReadString('\n'); got != "echo: still\n" {
		t.Fatalf("open session during shutdown: %q", got)
	}
	_ = s.Close()
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("the session survived Close")
	}
	waitFor(t, func() bool { return tr.InFlight() == 0 && tr.ConnectionsTotal() == 0 })
}

func TestTCPDeadUpstreamClosesTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	s, tr, m := startTCPMetrics(t, dead)
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client of a dead upstream: %q, %v; want a clean close", b, err)
	}
	waitFor(t, func() bool { return tr.InFlight() == 0 })
	if got := testutil.ToFloat64(m.upstreamErrors[ReasonConnectRefused]); got != 1 {
		t.Fatalf("tidegate_upstream_errors_total{reason=connect_refused} = %v, want 1", got)
	}
}

// TestTCPListenerPassesAnH2CPrefaceToTheApp: a tcp listener does not speak
// HTTP. An HTTP/2 client that dials it by mistake reaches the app byte for
// byte and gets whatever the app answers; the session is counted, and ends
// when both sides have closed.
func TestTCPListenerPassesAnH2CPrefaceToTheApp(t *testing.T) {
	app := echoApp(t)
	s, tr := startTCP(t, app.Addr().String())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return tr.Connections(ProtocolTCP) == 1 && tr.InFlight() == 1 })
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "echo: PRI * HTTP/2.0\necho: \necho: SM\necho: \nbye\n"; string(got) != want {
		t.Fatalf("the client got %q; want %q", got, want)
	}
	c.Close()
	waitFor(t, func() bool { return tr.Connections(ProtocolTCP) == 0 && tr.InFlight() == 0 })
}
