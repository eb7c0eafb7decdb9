package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// Socket is one bound listening socket that servers take turns accepting
// from. A server replaced on a config reload closes only its own view of
// the socket (the Listener that View returned); the socket stays open while
// another view is open, so a connection waiting in the kernel's backlog is
// never refused or reset by a reload. Open the new server's view before
// the old server closes its own.
//
// The socket itself closes when its last view closes, or on Close.
//
// Bounds: one accept goroutine per socket, started by the first Accept,
// which holds at most one accepted connection while no view is accepting;
// it ends when the socket closes.
type Socket struct {
	ln      net.Listener
	handoff chan accepted // unbuffered: the accept goroutine waits for a view
	done    chan struct{} // closed when the socket closes

	start sync.Once
	mu    sync.Mutex
	views int
	shut  bool
	err   error // of closing ln
}

type accepted struct {
	c   net.Conn
	err error
}

// NewSocket takes ownership of ln.
func NewSocket(ln net.Listener) *Socket {
	return &Socket{ln: ln, handoff: make(chan accepted), done: make(chan struct{})}
}

// Addr returns the socket's address.
func (s *Socket) Addr() net.Addr { return s.ln.Addr() }

// View returns a new Listener on the socket: its Accept takes the socket's
// next connection, and its Close ends this view only (the socket closes
// with its last view). The error is net.ErrClosed once the socket is
// closed.
func (s *Socket) View() (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut {
		return nil, s.closedErr()
	}
	s.views++
	return &socketView{s: s, closed: make(chan struct{})}, nil
}

// Close closes the socket and ends every view's Accept with net.ErrClosed,
// for example when start-up fails after binding.
func (s *Socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *Socket) closeLocked() error {
	if !s.shut {
		s.shut = true
		close(s.done)
		s.err = s.ln.Close()
	}
	return s.err
}

func (s *Socket) closedErr() error {
	return &net.OpError{Op: "accept", Net: s.ln.Addr().Network(), Addr: s.ln.Addr(), Err: net.ErrClosed}
}

// acceptLoop accepts connections and hands each to whichever view takes
// it. An accept error (EMFILE, say) is handed on too, so that the server
// behind the view backs off and counts it as it would without a Socket.
func (s *Socket) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil && errors.Is(err, net.ErrClosed) {
			return // Close: done is closed, the views answer ErrClosed
		}
		s.give(accepted{c, err})
	}
}

// give waits until a view takes a, or the socket closes.
func (s *Socket) give(a accepted) {
	select {
	case s.handoff <- a:
	case <-s.done:
		if a.c != nil {
			_ = a.c.Close()
		}
	}
}

// socketView is one server's Listener on a Socket.
type socketView struct {
	s        *Socket
	closed   chan struct{}
	isClosed atomic.Bool
	once     sync.Once
}

func (v *socketView) Accept() (net.Conn, error) {
	v.s.start.Do(func() { go v.s.acceptLoop() })
	if v.isClosed.Load() {
		return nil, v.s.closedErr()
	}
	select {
	case a := <-v.s.handoff:
		if v.isClosed.Load() {
			// Taken as the view closed: the connection is another view's.
			go v.s.give(a)
			return nil, v.s.closedErr()
		}
		return a.c, a.err
	case <-v.closed:
	case <-v.s.done:
	}
	return nil, v.s.closedErr()
}

// Close ends this view; the last view to close closes the socket.
func (v *socketView) Close() error {
	var err error
	v.once.Do(func() {
		v.isClosed.Store(true)
		close(v.closed)
		s := v.s
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.views--; s.views == 0 {
			err = s.closeLocked()
		}
	})
	return err
}

func (v *socketView) Addr() net.Addr { return v.s.ln.Addr() }
