package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// connectApp is an app that serves CONNECT itself: it reports each
// request, refuses the authority "refuse.internal:1" with 403, and
// otherwise answers 200 and echoes the tunnel until the client's EOF,
// then writes "bye" and closes.
type connectApp struct {
	ln   net.Listener
	seen chan *http.Request
	wg   sync.WaitGroup
}

func newConnectApp(t *testing.T) *connectApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &connectApp{ln: ln, seen: make(chan *http.Request, 8)}
	a.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.wg.Go(func() { a.serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); a.wg.Wait() })
	return a
}

func (a *connectApp) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	a.seen <- req
	if req.Host == "refuse.internal:1" {
		_, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
		return
	}
	_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Tunnel: yes\r\n\r\n")
	_, _ = io.Copy(c, br)
	_, _ = io.WriteString(c, "bye")
}

// dialConnect opens a connection to the proxy, sends CONNECT authority
// and reads the answer's header.
func dialConnect(t *testing.T, r *rig, authority string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", r.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\nX-Request-Id: tunnel-1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return c, br, resp
}

// TestConnectTunnelsToTheApp: CONNECT over HTTP/1.1 reaches the app with
// the client's authority; the tunnel echoes both ways, is in flight and
// counted as a connect connection for its life, and passes half-closes on.
func TestConnectTunnelsToTheApp(t *testing.T) {
	app := newConnectApp(t)
	r := newRig(t, app.ln.Addr().String(), nil)
	c, br, resp := dialConnect(t, r, "db.internal:5432")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Tunnel") != "yes" || resp.Header.Get("Content-Length") != "" {
		t.Fatalf("CONNECT answer: %d %v", resp.StatusCode, resp.Header)
	}
	req := <-app.seen
	if req.Method != http.MethodConnect || req.Host != "db.internal:5432" || req.RequestURI != "db.internal:5432" ||
		req.Header.Get(RequestIDHeader) != "tunnel-1" || req.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Fatalf("the app saw %s %s (host %s) %v", req.Method, req.RequestURI, req.Host, req.Header)
	}
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	if r.tracker.InFlight() != 1 || r.tracker.Connections(ProtocolConnect) != 1 {
		t.Fatalf("open tunnel: in flight %d, connect connections %d; want 1 and 1", r.tracker.InFlight(), r.tracker.Connections(ProtocolConnect))
	}
	// The client's half-close reaches the app, whose last words and EOF
	// come back.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after the half-close: %q %v", rest, err)
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolConnect) == 0 })
}

// TestConnectRefusedByTheAppIsRelayed: the app's non-2xx answer goes back
// as a response, and nothing stays open.
func TestConnectRefusedByTheAppIsRelayed(t *testing.T) {
	app := newConnectApp(t)
	r := newRig(t, app.ln.Addr().String(), nil)
	_, _, resp := dialConnect(t, r, "refuse.internal:1")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || string(body) != "no" {
		t.Fatalf("refused CONNECT: %d %q", resp.StatusCode, body)
	}
	<-app.seen
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolConnect) == 0 })
}

// TestConnectTunnelIsCutByCloseUpgraded: the drain's deadline closes a
// tunnel; net/http alone would never see it (golang/go#17721).
func TestConnectTunnelIsCutByCloseUpgraded(t *testing.T) {
	app := newConnectApp(t)
	r := newRig(t, app.ln.Addr().String(), nil)
	_, br, resp := dialConnect(t, r, "db.internal:5432")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	<-app.seen
	waitFor(t, func() bool { return r.tracker.Connections(ProtocolConnect) == 1 })
	r.handler.CloseUpgraded()
	if b, err := io.ReadAll(br); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after the cut: %q %v", b, err)
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolConnect) == 0 })
}

// TestConnectOverHTTP2: an HTTP/2 CONNECT (RFC 9113 §8.5) from Go's client
// is tunnelled to the app over HTTP/1.1; the stream carries the bytes.
func TestConnectOverHTTP2(t *testing.T) {
	app := newConnectApp(t)
	r := newRig(t, app.ln.Addr().String(), nil)
	s, _ := startServer(t, r.handler, ServerOptions{})

	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "http://"+s.Addr().String(), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "db.internal:5432"
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("CONNECT over HTTP/2: %d %s", resp.StatusCode, resp.Proto)
	}
	if seen := <-app.seen; seen.Host != "db.internal:5432" {
		t.Fatalf("the app was asked for %q", seen.Host)
	}
	if _, err := io.WriteString(pw, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	if r.tracker.Connections(ProtocolConnect) != 1 {
		t.Fatalf("connect connections %d; want 1", r.tracker.Connections(ProtocolConnect))
	}
	pw.Close() // END_STREAM: the app sees EOF
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after the client's end: %q %v", rest, err)
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolConnect) == 0 })
}
