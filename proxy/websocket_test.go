package proxy

import (
	"context"
	"errors"
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
