package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// ServerOptions hardens a public listener. The zero value of each field is
// replaced by the default named in its comment, so that a forgotten field
// never means "no timeout" (Go's net/http defaults every timeout to none).
type ServerOptions struct {
	// ReadHeaderTimeout bounds reading a request's headers (slowloris).
	// Zero means 10s.
	ReadHeaderTimeout time.Duration

	// IdleTimeout closes a client keep-alive connection idle for this long.
	// Keep it above the idle timeout of the load balancer in front so that
	// the load balancer, not tidegate, closes idle connections and never
	// sends a request on one tidegate is closing (golang/go#23829).
	// Zero means 620s, above AWS ALB (60s) and Google Cloud LB (600s).
	IdleTimeout time.Duration

	// MaxHeaderBytes caps the request line plus headers; larger requests get
	// 431. Zero means 64 KiB. (net/http reads 4 KiB beyond its own limit;
	// tidegate compensates, so this is the real bound, at least 4 KiB.)
	MaxHeaderBytes int

	// TLS, if set, serves the listener over TLS (ALPN h2 and http/1.1)
	// instead of cleartext; see LoadTLS. Nil means cleartext.
	TLS *tls.Config

	// DisableH2C turns off HTTP/2 with prior knowledge (h2c) on the
	// listener. The zero value serves HTTP/1.1 and h2c on the same port.
	DisableH2C bool

	// NewConnGrace is how long, once Shutdown has closed the listener, a
	// connection that has not sent a request yet may take to send one
	// before it is closed. net/http itself waits 5s, which holds a drain
	// hostage to load balancers that pre-open connections. Zero means 500ms.
	NewConnGrace time.Duration

	// Logger receives the server's own errors (accept failures, bad TLS
	// handshakes). Nil means no logs.
	Logger *zap.Logger
}

// Server serves the proxy on one listener and counts its connections.
type Server struct {
	srv      *http.Server
	ln       *trackedListener
	grace    time.Duration
	draining atomic.Bool
	busy     atomic.Int64 // connections that are new or serving a request
	tls      *tls.Config  // nil: cleartext

	mu    sync.Mutex
	fresh map[*trackedConn]time.Time // accepted, no request yet; touched once per connection
}

// Listen binds addr on TCP. The error names the address.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, errors.Unwrap(err))
	}
	return ln, nil
}

// NewServer returns a Server that will serve h on ln (HTTP/1.1 and, unless
// disabled, h2c), counting each client connection in t by protocol.
func NewServer(ln net.Listener, h http.Handler, t *Tracker, o ServerOptions) *Server {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 620 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.NewConnGrace <= 0 {
		o.NewConnGrace = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	s := &Server{ln: &trackedListener{Listener: ln}, grace: o.NewConnGrace, fresh: make(map[*trackedConn]time.Time)}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 {
				to := ProtocolH2C
				if r.TLS != nil {
					to = ProtocolH2
				}
				nc, _ := r.Context().Value(connKey{}).(net.Conn)
				if c := trackedOf(nc); c != nil && c.proto.CompareAndSwap(int32(ProtocolHTTP1), int32(to)) {
					t.ConnMoved(ProtocolHTTP1, to)
				}
			}
			// "Connection: close" also tells HTTP/2 clients to move: net/http
			// answers it with a GOAWAY and closes the connection when idle.
			dw := &drainWriter{ResponseWriter: w, draining: &s.draining}
			h.ServeHTTP(dw, r)
			if !dw.wrote && s.draining.Load() {
				// Nothing written: net/http sends the header after we return.
				w.Header().Set("Connection", "close")
			}
		}),
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    max(o.MaxHeaderBytes-headerSlop, 1),
		ErrorLog:          zap.NewStdLog(o.Logger),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: func(nc net.Conn, cs http.ConnState) {
			if c := trackedOf(nc); c != nil {
				s.transition(c, cs, t)
			}
		},
	}
	s.srv.Protocols = new(http.Protocols)
	s.srv.Protocols.SetHTTP1(true)
	s.srv.Protocols.SetUnencryptedHTTP2(!o.DisableH2C && o.TLS == nil)
	if o.TLS != nil {
		s.srv.Protocols.SetHTTP2(true)
		s.srv.TLSConfig = o.TLS
		s.tls = o.TLS
	}
	return s
}

// trackedOf finds the trackedConn under a connection net/http hands out:
// the conn itself, or the one under a *tls.Conn.
func trackedOf(c net.Conn) *trackedConn {
	if c == nil {
		return nil
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

// connKey finds a request's connection in its context.
type connKey struct{}

// transition accounts for one connection state change: two atomic
// operations per request, and the fresh-set lock once per connection.
func (s *Server) transition(c *trackedConn, to http.ConnState, t *Tracker) {
	from := http.ConnState(c.state.Swap(int32(to)))
	wasBusy := from == http.StateNew || from == http.StateActive
	isBusy := to == http.StateNew || to == http.StateActive
	switch {
	case to == http.StateNew:
		// from is the zero value, StateNew itself: counted below.
		t.ConnOpened(ProtocolHTTP1)
		s.busy.Add(1)
		s.mu.Lock()
		s.fresh[c] = time.Now()
		s.mu.Unlock()
		return
	case wasBusy && !isBusy:
		s.busy.Add(-1)
	case !wasBusy && isBusy:
		s.busy.Add(1)
	}
	if from == http.StateNew {
		s.mu.Lock()
		delete(s.fresh, c)
		s.mu.Unlock()
	}
	if to == http.StateHijacked || to == http.StateClosed {
		t.ConnClosed(Protocol(c.proto.Load()))
	}
}

// trackedListener hands out trackedConns and remembers being closed; Close
// may be called more than once.
type trackedListener struct {
	net.Listener
	once   sync.Once
	closed atomic.Bool
	err    error
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &trackedConn{Conn: c}, nil
}

func (l *trackedListener) Close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		l.err = l.Listener.Close()
	})
	return l.err
}

// trackedConn carries its last http.ConnState, so that state changes are
// counted without a shared map. It passes on the optional methods net/http
// looks for on a connection: CloseWrite (a rejected request's response is
// read before the close, not reset) and ReadFrom (sendfile/splice).
type trackedConn struct {
	net.Conn
	state atomic.Int32 // http.ConnState; 0 is StateNew
	proto atomic.Int32 // Protocol: HTTP/1.1 until an HTTP/2 request shows otherwise
}

func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// drainWriter adds "Connection: close" to a response whose header is
// written while the server drains, whenever the request arrived; net/http
// then closes the connection after the response.
type drainWriter struct {
	http.ResponseWriter
	draining *atomic.Bool
	wrote    bool
}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.wrote = true
		if code != http.StatusSwitchingProtocols && w.draining.Load() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// headerSlop is what net/http reads beyond Server.MaxHeaderBytes.
const headerSlop = 4096

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown or Close; then it returns nil.
func (s *Server) Serve() error {
	var ln net.Listener = s.ln
	if s.tls != nil {
		ln = tls.NewListener(s.ln, s.tls)
	}
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// BeginDrain tells clients to move: from now on every response carries
// "Connection: close", so each keep-alive connection closes right after its
// next answer. The listener keeps accepting. Idle connections are left open
// until Shutdown: closing them now, while load balancers have not noticed
// the drain, races with a request being written to them (golang/go#23829).
func (s *Server) BeginDrain() { s.draining.Store(true) }

// EndDrain undoes BeginDrain: keep-alive is allowed again.
func (s *Server) EndDrain() { s.draining.Store(false) }

// Shutdown stops accepting, closes idle connections and waits for the
// others until ctx ends; then it returns ctx's error and the rest stay open
// until Close. It returns as soon as no connection is serving a request
// (net/http's own Shutdown may notice up to 500ms later), and closes
// connections that sent no request within NewConnGrace (net/http would wait
// 5s). Upgraded connections are not waited for: their requests stay counted
// in the Tracker, which the caller watches.
func (s *Server) Shutdown(ctx context.Context) error {
	// Canceling sctx wakes net/http's Shutdown from its backoff sleep.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(sctx) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
		}
		s.closeStaleFresh()
		// net/http closes the listener first (after marking itself shut
		// down, so Serve returns ErrServerClosed rather than an error).
		if s.ln.closed.Load() && s.busy.Load() == 0 {
			// The listener is closed and nothing is being read or served:
			// what is left is idle, and net/http is closing it. Close
			// finishes that now.
			_ = s.srv.Close()
			cancel()
			<-done
			return nil
		}
	}
}

// closeStaleFresh closes connections that have waited longer than the
// grace for their first request.
func (s *Server) closeStaleFresh() {
	cutoff := time.Now().Add(-s.grace)
	var stale []*trackedConn
	s.mu.Lock()
	for c, at := range s.fresh {
		if at.Before(cutoff) {
			stale = append(stale, c)
			delete(s.fresh, c)
		}
	}
	s.mu.Unlock()
	for _, c := range stale {
		_ = c.Close()
	}
}

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.srv.Close() }
