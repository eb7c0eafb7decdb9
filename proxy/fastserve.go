package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// fastReadBuffer is the read buffer of a client connection on the fast
// path, and so the largest request head it serves itself; a larger head
// goes to net/http, which allows up to ServerOptions.MaxHeaderBytes.
const fastReadBuffer = 4 << 10

// serveWithFastPath accepts connections itself and serves each on the fast
// path; net/http serves the ones handed to it through s.handoff.
func (s *Server) serveWithFastPath() error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.handoff) }()
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ln.closed.Load() || errors.Is(err, net.ErrClosed) {
				break
			}
			// Out of file descriptors and the like: back off, as net/http
			// does, rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed; retrying", zap.Duration("retry_in", delay), zap.Error(err))
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.stopped:
				t.Stop()
			}
			continue
		}
		delay = 0
		go s.serveFastConn(nc.(*trackedConn))
	}
	if s.acceptStopped.Load() {
		// The connections are still served: net/http keeps taking the
		// ones the fast path hands over until Shutdown or Close.
		<-s.stopped
	}
	s.handoff.Close()
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// serveFastConn serves one client connection until it closes, or until a
// request the fast path does not take, when it hands the connection, that
// request unread, to net/http.
func (s *Server) serveFastConn(c *trackedConn) {
	s.transition(c, http.StateNew, s.t)
	fc := &fastConn{nc: c, deadline: readDeadline{nc: c}, remote: c.RemoteAddr().String()}
	s.mu.Lock()
	s.fastConns[c] = fc
	s.mu.Unlock()
	if ip, _, err := net.SplitHostPort(fc.remote); err == nil {
		fc.ip = ip
	}
	fc.src.nc = c
	fc.br = bufio.NewReaderSize(&fc.src, fastReadBuffer)
	fc.head.fields = make([]h1field, 0, 24)
	fc.resp.fields = make([]h1field, 0, 16)
	handed := false
	defer func() {
		s.mu.Lock()
		delete(s.fastConns, c)
		s.mu.Unlock()
		if !handed {
			_ = c.Close()
			s.transition(c, http.StateClosed, s.t)
		}
	}()
	idle := false
	for {
		if idle {
			fc.awaitIdle(s.idleTimeout)
		} else {
			fc.deadline.set(time.Now().Add(s.readHeaderTimeout))
		}
		if _, err := fc.br.Peek(1); err != nil {
			return
		}
		// Active from the first byte, as net/http counts it: Shutdown
		// then waits for this request instead of closing a connection
		// that has not sent one.
		s.transition(c, http.StateActive, s.t)
		n, ok, err := s.readRequestHead(fc, idle)
		if err != nil {
			return // a timeout or a close half way: net/http would close too
		}
		if ok && !idle && s.h2own && n == len(prefaceHead) && string(peekN(fc.br, n)) == prefaceHead {
			if !consumePreface(fc.br) {
				return // not HTTP/2 after all, nor HTTP/1.1: RFC 9113 §3.4
			}
			s.mu.Lock()
			delete(s.fastConns, c) // Shutdown and Close reach it as an HTTP/2 connection
			s.mu.Unlock()
			s.serveH2Fast(fc)
			return
		}
		if !ok || !s.fastH1 || !parseRequestHead(peekN(fc.br, n), &fc.head) || !takeFast(fc) || (s.fastOpen != nil && !s.fastOpen()) {
			handed = s.handOff(c, fc)
			return
		}
		// The head stays in the buffer, where fc.head points, until the
		// next read from fc.br: nothing reads it while the request is
		// served, so that a byte buffered now is the next request's.
		_, _ = fc.br.Discard(n)
		bw := clientBufs.Get().(*bufio.Writer)
		bw.Reset(c)
		keep := s.fast.serveFast(fc, bw, s.closingNow)
		bw.Reset(nil)
		clientBufs.Put(bw)
		if !keep {
			if fc.br.Buffered() > 0 {
				c.lingerOnClose() // pipelined bytes unread: no reset over the answer
			}
			return
		}
		s.transition(c, http.StateIdle, s.t)
		if s.closing.Load() {
			return
		}
		idle = true
	}
}

// idleSlack is how much longer than the idle timeout an idle connection
// may stay open: its read deadline is set to the timeout plus the slack,
// and set again only when it would otherwise fall short of the timeout,
// so that on a busy connection most requests spare the call (and the
// runtime's timer work). Never earlier than the timeout: a load balancer
// reusing a connection it believes open must not find it closed.
func idleSlack(idle time.Duration) time.Duration { return min(idle/8, 10*time.Second) }

// awaitIdle makes sure the connection closes idle timeout after now, or
// at most idleSlack(idle) later, if no request comes.
func (fc *fastConn) awaitIdle(idle time.Duration) {
	fc.deadline.arm(time.Now().Add(idle), idleSlack(idle))
}

// prefaceHead is the part of the HTTP/2 client preface that reads as a
// request head.
const prefaceHead = "PRI * HTTP/2.0\r\n\r\n"

// readRequestHead waits until fc.br holds a complete request head and
// returns its size. ok is false for a head the fast path leaves to
// net/http: too large for the buffer, or with bare LF line ends.
func (s *Server) readRequestHead(fc *fastConn, idle bool) (n int, ok bool, err error) {
	var more func() // a new connection's deadline is the header timeout already
	if idle {
		more = func() { fc.deadline.set(time.Now().Add(s.readHeaderTimeout)) }
	}
	n, err = readHead(fc.br, more)
	switch {
	case errors.Is(err, errHeadTooLarge), errors.Is(err, errBareLF):
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	return n, true, nil
}

// closingNow reports whether responses should ask the client to go.
func (s *Server) closingNow() bool { return s.draining.Load() || s.closing.Load() }

// handOff gives c, and the bytes of it already read, to net/http. c is new
// or active, and counted as busy; net/http's StateNew for it is not
// counted again.
// The head's deadline travels with c: the time the fast path waited for
// the head counts against net/http's ReadHeaderTimeout (handedConn).
func (s *Server) handOff(c *trackedConn, fc *fastConn) bool {
	// The fast path's deadline for this head: from accept on a new
	// connection, from the head's first read it waited for on an idle
	// one; an idle connection's own deadline is later, and then the head
	// arrived in one read, just now.
	head := time.Now().Add(s.readHeaderTimeout)
	if at := fc.deadline.at; !at.IsZero() && at.Before(head) {
		head = at
	}
	_ = c.SetReadDeadline(head)
	c.handedOff.Store(true)
	// Only the bytes read ahead travel with c, not fc's buffer.
	pending := append(append([]byte(nil), peekN(fc.br, fc.br.Buffered())...), fc.src.pending...)
	hc := &handedConn{trackedConn: c, pending: pending, headDeadline: head}
	hc.clamping.Store(true)
	if !s.handoff.hand(hc) {
		c.handedOff.Store(false)
		return false // shutting down: closed as if never read
	}
	return true
}

// closeIdleFast closes fast-path connections waiting for a request.
func (s *Server) closeIdleFast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.fastConns {
		if http.ConnState(c.state.Load()) == http.StateIdle {
			_ = c.Close()
		}
	}
}

// closeAllFast closes every fast-path connection.
func (s *Server) closeAllFast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, fc := range s.fastConns {
		_ = c.Close()
		// A request blocked on the app (a stream that has gone quiet)
		// would not notice its client's close: cut its side too.
		if u := fc.upstream.Swap(nil); u != nil {
			_ = u.nc.Close()
		}
	}
}

// handedConn is a connection handed to net/http: its reads start with the
// bytes the fast path read but did not use. Until net/http has read the
// request head, its read deadline is never later than headDeadline, the
// one the fast path read the head under: net/http sets its own
// ReadHeaderTimeout from the handoff, and a slow head would otherwise get
// the timeout twice. net/http clears the deadline once it has the head;
// that ends the clamp.
type handedConn struct {
	*trackedConn
	pending      []byte
	headDeadline time.Time
	clamping     atomic.Bool // net/http has not cleared the deadline since the handoff
}

func (c *handedConn) SetReadDeadline(t time.Time) error {
	if c.clamping.Load() {
		switch {
		case t.IsZero():
			c.clamping.Store(false)
		case t.After(c.headDeadline):
			t = c.headDeadline
		}
	}
	return c.trackedConn.SetReadDeadline(t)
}

func (c *handedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.trackedConn.Read(p)
}

// handoffListener is the listener net/http serves: it yields the
// connections the fast path hands over.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// hand gives c to net/http's accept loop; false once the listener is
// closed.
func (l *handoffListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
