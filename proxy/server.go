package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
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
	// 431. Zero means 64 KiB.
	MaxHeaderBytes int

	// Logger receives the server's own errors (accept failures, bad TLS
	// handshakes). Nil means no logs.
	Logger *zap.Logger
}

// Server serves the proxy on one listener and counts its connections.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr on TCP. The error names the address.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, errors.Unwrap(err))
	}
	return ln, nil
}

// NewServer returns a Server that will serve h on ln, counting each client
// connection in t as HTTP/1.1.
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
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(o.Logger),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				t.ConnOpened(ProtocolHTTP1)
			case http.StateHijacked, http.StateClosed:
				t.ConnClosed(ProtocolHTTP1)
			}
		},
	}
	return &Server{srv: srv, ln: ln}
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown or Close; then it returns nil.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// SetKeepAlives turns client keep-alives on or off. Off, idle connections
// are closed and every response carries "Connection: close".
func (s *Server) SetKeepAlives(on bool) { s.srv.SetKeepAlivesEnabled(on) }

// Shutdown stops accepting, closes idle connections and waits for active
// ones until ctx ends; then it returns ctx's error and the rest stay open
// until Close.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.srv.Close() }
