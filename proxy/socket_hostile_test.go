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
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// A hostile second look at Socket: views that close while a connection
// arrives, a Close racing new views, servers built on a view and closed
// before they serve, accept errors.

// TestHostileUnservedServerLetsGoOfTheSocket: a config reload builds a
// server on a socket's new view and, when a later step of the reload
// fails, closes it without ever serving. Close must close the view, or
// the socket never closes: its port keeps accepting connections that
// nobody serves after its last real server is gone.
func TestHostileUnservedServerLetsGoOfTheSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(ln net.Listener) interface{ Close() error }
	}{
		{"net/http only", func(ln net.Listener) interface{ Close() error } {
			return NewServer(ln, http.NotFoundHandler(), NewTracker(TrackerOptions{}), ServerOptions{})
		}},
		{"tcp", func(ln net.Listener) interface{ Close() error } {
			return NewTCPServer(ln, Upstream{Network: "tcp", Address: "127.0.0.1:1"}, NewTracker(TrackerOptions{}), TCPOptions{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			sock := NewSocket(ln)
			addr := sock.Addr().String()
			serving, err := sock.View() // the server in place
			if err != nil {
				t.Fatal(err)
			}
			view, err := sock.View() // the refused reload's
			if err != nil {
				t.Fatal(err)
			}
			_ = tc.make(view).Close()
			_ = serving.Close() // the last server goes: the socket must close
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				_ = c.Close()
				_ = sock.Close()
				t.Fatalf("%s still accepts connections: the server closed before serving kept its view open", addr)
			}
		})
	}
}

// TestHostileViewClosingAsAConnectionArrives: one view closes at the very
// moment a connection arrives, 200 times, while another view accepts. Every
// connection is answered by the view that took it while open, or by the
// other one: none is lost or left hanging.
func TestHostileViewClosingAsAConnectionArrives(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := NewSocket(ln)
	addr := sock.Addr().String()
	stay, err := sock.View()
	if err != nil {
		t.Fatal(err)
	}
	var byStay atomic.Int64
	stayDone := make(chan error, 1)
	go func() { stayDone <- serveEcho(stay, "s", &byStay) }()
	defer func() { _ = stay.Close(); <-stayDone }()

	const rounds = 200
	var byGoing atomic.Int64
	for i := range rounds {
		going, err := sock.View()
		if err != nil {
			t.Fatal(err)
		}
		goingDone := make(chan error, 1)
		go func() { goingDone <- serveEcho(going, "g", &byGoing) }()
		answer := make(chan error, 1)
		go func() {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				answer <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			if err == nil && len(b) != 1 {
				err = fmt.Errorf("answer %q", b)
			}
			answer <- err
		}()
		_ = going.Close()
		if err := <-answer; err != nil {
			t.Fatalf("round %d: the connection that arrived as a view closed got no answer: %v", i, err)
		}
		if err := <-goingDone; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("round %d: the closed view's Accept ended with %v", i, err)
		}
	}
	if got := byStay.Load() + byGoing.Load(); got != rounds {
		t.Fatalf("answered %d connections, want %d", got, rounds)
	}
}

// TestHostileSocketCloseRacesViews: Close races new views, their Accepts
// and their Closes. Afterwards every Accept has ended with net.ErrClosed,
// View refuses, and the port refuses connections.
func TestHostileSocketCloseRacesViews(t *testing.T) {
	for round := range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sock := NewSocket(ln)
		addr := sock.Addr().String()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 16 {
			wg.Go(func() {
				v, err := sock.View()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						errs <- fmt.Errorf("View: %w", err)
					}
					return
				}
				if i%2 == 0 {
					defer v.Close()
				}
				c, err := v.Accept()
				if err == nil {
					_ = c.Close()
					return
				}
				if !errors.Is(err, net.ErrClosed) {
					errs <- fmt.Errorf("Accept: %w", err)
				}
			})
		}
		wg.Go(func() { _ = sock.Close() })
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: an Accept still blocked 10s after the socket closed", round)
		}
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
		if _, err := sock.View(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("round %d: View after Close: %v", round, err)
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Fatalf("round %d: %s accepts after Close", round, addr)
		}
	}
}

// failingListener fails every Accept with EMFILE, as a process out of open
// files does; after 1000 calls it blocks until closed, so that a spinning
// caller ends.
type failingListener struct {
	calls  atomic.Int64
	once   sync.Once
	closed chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.calls.Add(1) > 1000 {
		<-l.closed
	}
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

func (l *failingListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *failingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// TestHostileAcceptErrorsBackOffThroughTheSocket: out of open files, the
// socket's accept goroutine hands each error to the server, which backs
// off; neither spins. In 3s (fake time): a handful of accept(2) calls, not
// thousands.
func TestHostileAcceptErrorsBackOffThroughTheSocket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fl := &failingListener{closed: make(chan struct{})}
		sock := NewSocket(fl)
		view, err := sock.View()
		if err != nil {
			t.Fatal(err)
		}
		limit := NewConnLimit(0)
		srv := NewTCPServer(view, Upstream{Network: "tcp", Address: "127.0.0.1:1"}, NewTracker(TrackerOptions{}), TCPOptions{ConnLimit: limit})
		done := make(chan error, 1)
		go func() { done <- srv.Serve() }()
		time.Sleep(3 * time.Second)
		calls := fl.calls.Load()
		_ = srv.Close()
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		// 5ms doubling to 1s: 9 backoffs fill 3s; one more call waits in
		// the socket's hand-off.
		if calls > 15 {
			t.Fatalf("%d accept calls in 3s of EMFILE: the accept loop spins", calls)
		}
		if calls < 3 {
			t.Fatalf("%d accept calls in 3s: the server stopped retrying", calls)
		}
	})
}

// TestHostileServerOnAClosedSocket: a server whose socket was closed under
// it (a failed start) returns from Serve at once, without error.
func TestHostileServerOnAClosedSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := NewSocket(ln)
	view, err := sock.View()
	if err != nil {
		t.Fatal(err)
	}
	srv := NewTCPServer(view, Upstream{Network: "tcp", Address: "127.0.0.1:1"}, NewTracker(TrackerOptions{}), TCPOptions{})
	_ = sock.Close()
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	var serveErr error
	wait.For(t, "Serve returned", func() bool {
		select {
		case serveErr = <-done:
			return true
		default:
			return false
		}
	})
	if serveErr != nil {
		t.Fatalf("Serve on a closed socket: %v, want nil", serveErr)
	}
}

// TestHostileStopAcceptingServesTheConnectionsItHas: a server replaced on
// its socket by a reload stops accepting at once, but its keep-alive
// connection still gets an answer to its next request, a POST that the
// fast path hands to net/http included, with Connection: close after
// BeginDrain. New connections go to the socket's other view, and Serve
// returns nil (by Shutdown at the latest).
func TestHostileStopAcceptingServesTheConnectionsItHas(t *testing.T) {
	app := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "app")
	}))
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast path %v", fast), func(t *testing.T) {
			up, err := ParseUpstream(app)
			if err != nil {
				t.Fatal(err)
			}
			tr := NewTracker(TrackerOptions{})
			h, err := NewHandler(Options{Upstream: up, Tracker: tr})
			if err != nil {
				t.Fatal(err)
			}
			defer h.CloseIdleConnections()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			sock := NewSocket(ln)
			view, err := sock.View()
			if err != nil {
				t.Fatal(err)
			}
			so := ServerOptions{}
			if fast {
				so.FastPath = h
			}
			srv := NewServer(view, h, tr, so)
			served := make(chan error, 1)
			go func() { served <- srv.Serve() }()
			defer func() { _ = srv.Close() }()

			c, err := net.Dial("tcp", sock.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufioReader(c)
			ask := func(req string) *http.Response {
				t.Helper()
				if _, err := io.WriteString(c, req); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("the connection the old server had: %v", err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp
			}
			if resp := ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || resp.Close {
				t.Fatalf("before: %d close=%v", resp.StatusCode, resp.Close)
			}

			next, err := sock.View() // the new server's
			if err != nil {
				t.Fatal(err)
			}
			var byNext atomic.Int64
			nextDone := make(chan error, 1)
			go func() { nextDone <- serveEcho(next, "n", &byNext) }()
			defer func() { _ = next.Close(); <-nextDone }()
			srv.BeginDrain()
			srv.StopAccepting()
			resp := ask("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
			if resp.StatusCode != 200 || !resp.Close {
				t.Fatalf("the next request on the kept connection: %d close=%v, want 200 with Connection: close", resp.StatusCode, resp.Close)
			}
			nc, err := net.DialTimeout("tcp", sock.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(nc)
			_ = nc.Close()
			if string(b) != "n" {
				t.Fatalf("a new connection after StopAccepting got %q, want the new view's answer", b)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			var serveErr error
			wait.For(t, "Serve returned", func() bool {
				select {
				case serveErr = <-served:
					return true
				default:
					return false
				}
			})
			if serveErr != nil {
				t.Fatalf("Serve after StopAccepting: %v, want nil", serveErr)
			}
		})
	}
}

func httptestServer(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
