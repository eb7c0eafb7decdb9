package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsApp echoes every message and reports the close status it saw.
func wsApp(t *testing.T, closed chan<- websocket.StatusCode) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			http.Error(w, "no websockets here", http.StatusForbidden)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				closed <- websocket.CloseStatus(err)
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestWebSocketProxiedAndEndedWithGoingAway(t *testing.T) {
	appClosed := make(chan websocket.StatusCode, 1)
	app := wsApp(t, appClosed)
	r := newRig(t, app.Listener.Addr().String(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.front.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial through tidegate: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	c.SetReadLimit(4 << 20)
	for _, msg := range []string{"hello", strings.Repeat("x", 1<<20)} {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	if r.tracker.Connections(ProtocolWebSocket) != 1 || r.tracker.InFlight() != 1 {
		t.Fatalf("live session: %d websocket connections, %d in flight; want 1, 1",
			r.tracker.Connections(ProtocolWebSocket), r.tracker.InFlight())
	}

	// The drain deadline: both ends hear 1001 before the TCP connections close.
	readErr := make(chan error, 1)
	go func() { _, _, err := c.Read(ctx); readErr <- err }()
	r.handler.CloseUpgraded()
	if st := websocket.CloseStatus(<-readErr); st != websocket.StatusGoingAway {
		t.Fatalf("client saw close status %v, want 1001 going away", st)
	}
	select {
	case st := <-appClosed:
		if st != websocket.StatusGoingAway {
			t.Fatalf("app saw close status %v, want 1001 going away", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the app never saw the close")
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolWebSocket) == 0 })
	if len(r.handler.ws.all()) != 0 {
		t.Fatal("a session is still registered")
	}
}

func TestWebSocketRefusedByTheApp(t *testing.T) {
	app := wsApp(t, make(chan websocket.StatusCode, 1))
	r := newRig(t, app.Listener.Addr().String(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.front.URL, "http")+"/refuse", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("refused upgrade: %v, %v", resp, err)
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
}

func TestWebSocketToADeadApp(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	addr := dead.Listener.Addr().String()
	dead.Close()
	r := newRig(t, addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.front.URL, "http")+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Tidegate-Reason") != string(ReasonConnectRefused) {
		t.Fatalf("upgrade to a dead app: %v, %v", resp, errors.Unwrap(err))
	}
}

// Any other Upgrade is passed through as bytes, recorded as 101, counted,
// and closed when upgraded sessions are cut.
func TestOtherUpgradeClosedAtTheCut(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "tea/1" {
			http.Error(w, "no", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tea/1\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(c, brw) // echo
	})
	r := newRig(t, app.Listener.Addr().String(), nil)
	c, err := net.Dial("tcp", r.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /tea HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tea/1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	if _, err := io.WriteString(c, "earl grey\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "earl grey\n" {
		t.Fatalf("bytes through the upgrade: %q, %v", line, err)
	}
	if r.tracker.Connections(ProtocolUpgrade) != 1 || r.tracker.InFlight() != 1 {
		t.Fatalf("upgrade counted as %d connections, %d in flight", r.tracker.Connections(ProtocolUpgrade), r.tracker.InFlight())
	}
	r.handler.CloseUpgraded()
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("the upgraded connection survived the cut")
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.tracker.Connections(ProtocolUpgrade) == 0 })
	waitFor(t, func() bool { return len(r.access.All()) == 1 })
	if f := r.access.All()[0].ContextMap(); f["status"] != int64(101) {
		t.Fatalf("access log status %v, want 101", f["status"])
	}
}
