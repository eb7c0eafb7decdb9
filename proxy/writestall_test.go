package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tidegate/tidegate/test/wait"
)

// testStall is the write-stall bound of these tests.
const testStall = 300 * time.Millisecond

// firehoseApp answers /big with a 1 GiB body written until a write fails
// (tidegate closed the app connection), and then sends on released; /delay
// answers "late" after 4 stall bounds; anything else answers "ok". A
// request body is read first.
func firehoseApp(t *testing.T) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	released := make(chan struct{}, 8)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(1<<30))
			chunk := make([]byte, 32<<10)
			for sent := 0; sent < 1<<30; sent += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					break
				}
			}
			released <- struct{}{}
		case "/delay":
			timer := time.NewTimer(4 * testStall) // the scenario: an app slower than the bound
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-r.Context().Done():
			}
			_, _ = io.WriteString(w, "late")
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	t.Cleanup(app.Close)
	return app, released
}

// stallRig is a fast-path server with the test's write-stall bound in
// front of a firehoseApp.
func stallRig(t *testing.T) (*fastRig, <-chan struct{}) {
	t.Helper()
	app, released := firehoseApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) {
		o.WriteStallTimeout = testStall
		o.Logger = zap.NewNop()
	})
	return r, released
}

// nonReader sends req on a new connection with a small receive buffer and
// never reads.
func nonReader(t *testing.T, addr, req string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// expectAccessReason waits for an access-log line with the reason and
// status given.
func expectAccessReason(t *testing.T, logs *observer.ObservedLogs, reason string, status int64) {
	t.Helper()
	wait.Until(t, 5*time.Second, "access-log line with reason "+reason, func() (bool, string) {
		var seen []string
		for _, e := range logs.FilterMessage("request").All() {
			m := e.ContextMap()
			if m["reason"] == reason && m["status"] == status {
				return true, ""
			}
			seen = append(seen, fmt.Sprintf("%v/%v", m["status"], m["reason"]))
		}
		return false, fmt.Sprintf("lines: %v", seen)
	})
}

func TestWriteStallCutsNonReadingClient(t *testing.T) {
	for _, tc := range []struct {
		name    string
		req     string
		netHTTP int64
	}{
		{"fast path", "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 0},
		{"net/http", "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, released := stallRig(t)
			nonReader(t, r.addr, tc.req)
			// The app's write fails: tidegate let go of its connection.
			recv(t, released, "release of the app connection")
			wait.For(t, "no request in flight", func() bool { return r.tracker.InFlight() == 0 })
			expectAccessReason(t, r.access, string(ReasonClientWriteTimeout), StatusClientClosed)
			// tidegate closed the client connection (what it had sent stays
			// queued to the client, which reads none of it).
			wait.For(t, "the client connection closed", func() bool { return r.tracker.ConnectionsTotal() == 0 })
			r.expectNetHTTP(t, tc.netHTTP)
		})
	}
}

func TestWriteStallSparesIdleKeepAliveAndSlowApp(t *testing.T) {
	r, _ := stallRig(t)
	rc := dialRaw(t, r.addr)
	if _, body := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); body != "ok" {
		t.Fatalf("first answer %q", body)
	}
	// The connection waits 4 bounds for the app: the deadline the first
	// answer left has passed when the second is written.
	if _, body := rc.do(t, "GET /delay HTTP/1.1\r\nHost: x\r\n\r\n"); body != "late" {
		t.Fatalf("second answer %q", body)
	}
	if _, body := rc.do(t, "POST /delay HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"); body != "late" {
		t.Fatalf("third answer (net/http) %q", body)
	}
}

// wsFloodApp floods each WebSocket client with 16 KiB messages until a
// write fails, then sends on released. On /idle it sends one message
// after 4 stall bounds and then echoes.
func wsFloodApp(t *testing.T) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	released := make(chan struct{}, 4)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		if r.URL.Path == "/idle" {
			timer := time.NewTimer(4 * testStall) // the scenario: a tunnel idle for 4 bounds
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
			if c.Write(ctx, websocket.MessageText, []byte("after a while")) != nil {
				return
			}
			typ, msg, err := c.Read(ctx)
			if err == nil {
				_ = c.Write(ctx, typ, msg)
			}
			_, _, _ = c.Read(ctx) // until the client closes
			return
		}
		msg := make([]byte, 16<<10)
		for c.Write(ctx, websocket.MessageBinary, msg) == nil {
		}
		released <- struct{}{}
	}))
	t.Cleanup(app.Close)
	return app, released
}

func TestWriteStallCutsWebSocketClientThatStopsReading(t *testing.T) {
	app, released := wsFloodApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.WriteStallTimeout = testStall })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+r.addr+"/flood", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	// The client reads nothing: tidegate cuts the tunnel, and the app's
	// writes fail.
	recv(t, released, "release of the app connection")
	wait.For(t, "the session ended", func() bool { return r.handler.Upgraded() == 0 })
	wait.For(t, "no request in flight", func() bool { return r.tracker.InFlight() == 0 })
}

func TestWriteStallSparesIdleWebSocket(t *testing.T) {
	app, _ := wsFloodApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.WriteStallTimeout = testStall })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+r.addr+"/idle", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "after a while" {
		t.Fatalf("first message after the idle time: %q, %v", msg, err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("echo me")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "echo me" {
		t.Fatalf("echo: %q, %v", msg, err)
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// startStallTCP is a TCPServer with the test's write-stall bound in front
// of an app that floods each connection until a write fails (then sends
// on released), or, if the client's first byte is 'i', writes one line
// after 4 bounds and then echoes what it reads.
func startStallTCP(t *testing.T) (*TCPServer, *Tracker, <-chan struct{}) {
	t.Helper()
	released := make(chan struct{}, 4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var first [1]byte
				if _, err := io.ReadFull(c, first[:]); err != nil {
					return
				}
				if first[0] == 'i' {
					timer := time.NewTimer(4 * testStall) // the scenario: an idle session
					<-timer.C
					if _, err := io.WriteString(c, "after a while\n"); err == nil {
						_, _ = io.Copy(c, c)
					}
					return
				}
				chunk := make([]byte, 32<<10)
				for {
					if _, err := c.Write(chunk); err != nil {
						break
					}
				}
				released <- struct{}{}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	front, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	s := NewTCPServer(front, Upstream{Network: "tcp", Address: ln.Addr().String()}, tr,
		TCPOptions{DialTimeout: time.Second, WriteStallTimeout: testStall})
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, tr, released
}

func TestWriteStallCutsTCPClientThatStopsReading(t *testing.T) {
	s, tr, released := startStallTCP(t)
	nonReader(t, s.Addr().String(), "flood")
	recv(t, released, "release of the app connection")
	wait.For(t, "the session ended", func() bool { return tr.InFlight() == 0 && tr.ConnectionsTotal() == 0 })
}

func TestWriteStallSparesIdleTCPSession(t *testing.T) {
	s, _, _ := startStallTCP(t)
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "i"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "after a while\n" {
		t.Fatalf("first line after the idle time: %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "echo me\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "echo me") {
		t.Fatalf("echo: %q, %v", line, err)
	}
}
