package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// TCPOptions configures a TCPServer.
type TCPOptions struct {
	// DialTimeout bounds connecting to the app. Zero means 5s.
	DialTimeout time.Duration
	// Logger receives connection errors at debug level and dial failures at
	// warn. Nil means no logs.
	Logger *zap.Logger
	// Metrics counts failed dials in tidegate_upstream_errors_total. Nil
	// means none.
	Metrics *Metrics
	// ConnLimit bounds the sessions open at once on the listener's socket
	// (see ConnLimit): at the limit, the server stops accepting until one
	// ends. Every server of one socket shares the socket's ConnLimit. Nil
	// means no limit.
	ConnLimit *ConnLimit
	// WriteStallTimeout bounds each write to either side of a session: a
	// peer that takes none of the bytes the other side sent it for this
	// long ends the session (logged with reason client_write_timeout or
	// app_write_timeout). An idle session is not cut. Zero means 60s, as
	// ServerOptions.WriteStallTimeout; negative means no bound.
	WriteStallTimeout time.Duration
}

// TCPServer proxies raw TCP connections to the app, bytes both ways with
// half-close. Each connection is counted in the Tracker as one request in
// flight and one connection of protocol "tcp", for its whole life.
//
// Drain semantics: a raw byte stream has no way to tell a client to move, so
// BeginDrain changes nothing; Shutdown stops accepting and waits for the
// connections to end by themselves until its context ends; Close cuts them.
type TCPServer struct {
	ln      *trackedListener
	up      Upstream
	tracker *Tracker
	log     *zap.Logger
	metrics *Metrics
	dialer  net.Dialer
	stall   time.Duration // each write's bound (stallConn); zero or less: none

	mu       sync.Mutex
	conns    map[net.Conn]struct{} // client and app sides of live sessions
	closed   bool
	shutting bool           // Shutdown began: no new session (wg.Add must happen before its Wait)
	wg       sync.WaitGroup // sessions; added under mu
}

// NewTCPServer returns a TCPServer that will proxy connections accepted on
// ln to up.
func NewTCPServer(ln net.Listener, up Upstream, t *Tracker, o TCPOptions) *TCPServer {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.WriteStallTimeout == 0 {
		o.WriteStallTimeout = defaultWriteStall
	}
	return &TCPServer{ln: newTrackedListener(ln, o.ConnLimit, o.Logger, 0), up: up, tracker: t, log: o.Logger, metrics: o.Metrics,
		stall:  o.WriteStallTimeout,
		dialer: net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}, conns: map[net.Conn]struct{}{}}
}

// Addr returns the listening address.
func (s *TCPServer) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown or Close; then it returns nil.
// At the connection limit it waits for a session to end before it accepts
// the next one. The session gives the limit's slot back when it ends. Its
// copies go through a buffer, not splice(2), so that each write has the
// write-stall bound (stallConn) and an idle session holds no deadline.
func (s *TCPServer) Serve() error {
	var backoff time.Duration
	for {
		c, err := s.ln.accept()
		if err != nil {
			if s.ln.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() { // EMFILE and friends: back off, as net/http does
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; backing off", zap.Error(err), zap.Duration("backoff", backoff))
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.ln.done:
					t.Stop()
				}
				continue
			}
			return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
		}
		backoff = 0
		if !s.trackSession(c) {
			_ = c.Close()
			s.ln.limit.closed()
			continue
		}
		go func() {
			defer s.wg.Done()
			s.session(c)
		}()
	}
}

// trackSession registers a new session's client conn and counts the
// session in wg, under the lock that Shutdown and Close take before they
// wait for wg; false once either has begun.
func (s *TCPServer) trackSession(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.shutting {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// track registers a live conn; false once the server is closed.
func (s *TCPServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *TCPServer) untrack(cs ...net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		delete(s.conns, c)
	}
}

func (s *TCPServer) session(client net.Conn) {
	s.tracker.ConnOpened(ProtocolTCP)
	s.tracker.RequestStarted(false)
	defer func() {
		s.tracker.RequestDone()
		s.tracker.ConnClosed(ProtocolTCP)
	}()
	defer s.ln.limit.closed() // after the close: the slot stands for the client's file
	defer client.Close()
	defer s.untrack(client)

	network := "tcp"
	if s.up.Network == "unix" {
		network = "unix"
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.dialer.Timeout)
	app, err := s.dialer.DialContext(ctx, network, s.up.Address)
	cancel()
	if err != nil {
		reason := classify(context.Background(), err).reason
		if s.metrics != nil {
			s.metrics.upstreamError(reason)
		}
		s.log.Warn("tcp: dial upstream failed", zap.String("reason", string(reason)),
			zap.String("remote_addr", client.RemoteAddr().String()), zap.Error(err))
		return
	}
	if !s.track(app) {
		_ = app.Close()
		return
	}
	defer app.Close()
	defer s.untrack(app)

	// Each side's writes are bounded: a peer that stops reading while the
	// other side sends ends the session.
	clientW := newStallConn(client, s.stall, s.log, ReasonClientWriteTimeout)
	appW := newStallConn(app, s.stall, s.log, ReasonAppWriteTimeout)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			// src said EOF: pass the half-close on, keep the other way open.
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		} else {
			// An error on either side ends the session.
			s.log.Debug("tcp: session ended by error", zap.Error(err))
			_ = dst.Close()
			_ = src.Close()
		}
		done <- struct{}{}
	}
	go pipe(appW, client)
	go pipe(clientW, app)
	<-done
	<-done
}

// BeginDrain does nothing: a raw TCP stream cannot be told to move.
func (s *TCPServer) BeginDrain() {}

// EndDrain does nothing.
func (s *TCPServer) EndDrain() {}

// Shutdown stops accepting and waits for the sessions to end until ctx
// ends; then it returns ctx's error and the sessions stay open until Close.
func (s *TCPServer) Shutdown(ctx context.Context) error {
	_ = s.ln.Close()
	s.mu.Lock()
	s.shutting = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StopAccepting closes the listener; the sessions go on until Shutdown or
// Close, and Serve returns nil.
func (s *TCPServer) StopAccepting() { _ = s.ln.Close() }

// Close stops accepting, cuts every session and waits for them to unwind.
func (s *TCPServer) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
