package proxy

import (
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// The write-stall bound of HTTP/1.1 and of tunnels: each write to a peer
// must finish within a bound (ServerOptions.WriteStallTimeout, 60s by
// default, the HTTP/2 server's h2WriteStall), as nginx's send_timeout
// bounds each of its writes. A client that asks for a large body and never
// reads is cut after the bound, and its request in flight and its app
// connection go with it, instead of pinning all three until the client
// leaves. net/http's WriteTimeout does not do it: it bounds the whole
// response, which cuts a long download or stream that progresses.
//
// The bound is on progress, as nginx's is "between two successive write
// operations": a write whose deadline passes after the peer took some of
// its bytes gets another bound for the rest (writeStall.write), so a slow
// reader that keeps reading is never cut, whatever the size of the write;
// a peer that takes nothing for the bound is. (tidegate's HTTP/2 server is
// stricter: a batch of at most 256 KiB must go within h2WriteStall.)
//
// A write that goes through in time costs a clock read and an atomic load:
// the connection's write deadline is moved only when it would fall
// within the bound, to the bound plus an eighth (writeStall.arm), so a
// busy connection calls SetWriteDeadline about once per bound/8. A
// write thus gets between the bound and 9/8 of it. An idle connection
// (an idle tunnel, a keep-alive connection between requests) writes
// nothing, and nothing cuts it: the deadline is moved before the next
// write.

// ReasonClientWriteTimeout is the access log's reason (and the write-stall
// log line's) for a request cut because the client did not take the
// response's bytes within the write-stall bound; its status is 499.
const ReasonClientWriteTimeout Reason = "client_write_timeout"

// ReasonAppWriteTimeout is the write-stall log line's reason for a raw
// TCP session cut because the app did not take the client's bytes within
// the write-stall bound.
const ReasonAppWriteTimeout Reason = "app_write_timeout"

// defaultWriteStall is the write-stall bound when none is configured: the
// HTTP/2 server's, so that every protocol cuts a peer that does not read
// after the same time.
const defaultWriteStall = h2WriteStall

// writeStall is the write-deadline policy of one connection. Writes call
// arm before and wrote after; the owner's SetWriteDeadline goes through
// setDeadline. A deadline a caller sets (net/http's TLS handshake bound,
// the HTTP/2 server's own stall and close bounds, a handler's
// ResponseController) holds as set, and arm leaves it alone until the
// caller clears it with the zero time.
//
// state is all of it, in one word, so that Write and SetWriteDeadline may
// race (the HTTP/2 server's reader sets deadlines while its writer
// writes) without a lock: 0, no deadline on the connection; > 0, the
// deadline arm set (Unix ns); < 0, a caller's deadline (minus Unix ns).
// Whoever changes state sets the connection's deadline after, and sets it
// again from state until state is what it set (apply): the last to set
// the connection's deadline saw state unchanged after, so the two agree
// once the racers are done.
type writeStall struct {
	bound  time.Duration // zero or less: no bound
	state  atomic.Int64
	fired  atomic.Bool // a write failed on arm's deadline
	log    *zap.Logger // nil: none
	reason Reason      // logged when the bound cuts the connection
}

// arm makes sure c's write deadline is at least the bound away, unless a
// caller's deadline holds.
func (w *writeStall) arm(c net.Conn) {
	if w.bound <= 0 {
		return
	}
	s := w.state.Load()
	if s < 0 {
		return
	}
	now := time.Now().UnixNano()
	if s-now >= int64(w.bound) {
		return
	}
	d := now + int64(w.bound) + int64(w.bound/8)
	if w.state.CompareAndSwap(s, d) {
		w.apply(c, d)
	}
}

// write writes p to c under the bound: each part of it the peer takes
// within the bound gives the rest another bound.
func (w *writeStall) write(c net.Conn, p []byte) (int, error) {
	n := 0
	for {
		w.arm(c)
		m, err := c.Write(p[n:])
		n += m
		if err == nil {
			return n, nil
		}
		if m == 0 || !w.ours(err) {
			w.wrote(c, err)
			return n, err
		}
	}
}

// ours reports whether err is the passing of a deadline arm set.
func (w *writeStall) ours(err error) bool {
	return w.bound > 0 && errors.Is(err, os.ErrDeadlineExceeded) && w.state.Load() > 0
}

// wrote notes a write's error: a deadline that arm set means the peer
// stalled, which is logged once.
func (w *writeStall) wrote(c net.Conn, err error) {
	if !w.ours(err) {
		return
	}
	if w.fired.CompareAndSwap(false, true) && w.log != nil {
		w.log.Info("write stalled; connection cut", zap.String("reason", string(w.reason)),
			zap.Duration("bound", w.bound), zap.String("remote_addr", c.RemoteAddr().String()))
	}
}

// stalled reports whether the bound cut the connection.
func (w *writeStall) stalled() bool { return w.fired.Load() }

// setDeadline is c's SetWriteDeadline(t) under the policy: a time is the
// caller's and holds; the zero time gives the bound back. A zero time
// while arm's deadline is on keeps it: the bound is in force, and a
// request after another (net/http clears the deadline after each) spares
// the call.
func (w *writeStall) setDeadline(c net.Conn, t time.Time) error {
	if w.bound <= 0 {
		return c.SetWriteDeadline(t)
	}
	var s int64
	if t.IsZero() {
		if w.state.Load() > 0 {
			return nil
		}
	} else {
		s = -unixNano(t)
	}
	w.state.Store(s)
	return w.apply(c, s)
}

// apply sets c's write deadline to what state s says, and again while
// state has changed meanwhile.
func (w *writeStall) apply(c net.Conn, s int64) error {
	for {
		var t time.Time
		switch {
		case s > 0:
			t = time.Unix(0, s)
		case s < 0:
			t = time.Unix(0, -s)
		}
		err := c.SetWriteDeadline(t)
		cur := w.state.Load()
		if cur == s || err != nil {
			return err
		}
		s = cur
	}
}

// unixNano is t in Unix ns, at least 1 (a time before 1970 is past as
// well) and at most math.MaxInt64.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, 1)):
		return 1
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// stallConn is a connection whose writes are bounded by a writeStall: the
// two sides of a raw TCP session (tcp.go). It hides the connection's
// ReadFrom and WriteTo, so that io.Copy writes through Write (no splice,
// which would wait for the source with the destination's deadline
// ticking). CloseWrite is passed on.
type stallConn struct {
	net.Conn
	ws writeStall
}

func newStallConn(c net.Conn, bound time.Duration, log *zap.Logger, reason Reason) *stallConn {
	s := &stallConn{Conn: c}
	s.ws.bound, s.ws.log, s.ws.reason = bound, log, reason
	return s
}

func (c *stallConn) Write(p []byte) (int, error) { return c.ws.write(c.Conn, p) }

func (c *stallConn) SetWriteDeadline(t time.Time) error { return c.ws.setDeadline(c.Conn, t) }

func (c *stallConn) SetDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	if err2 := c.ws.setDeadline(c.Conn, t); err == nil {
		err = err2
	}
	return err
}

func (c *stallConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// connOf returns the client connection a request of the server came on;
// nil if unknown.
func connOf(r *http.Request) net.Conn {
	nc, _ := r.Context().Value(connKey{}).(net.Conn)
	return nc
}

// writerOnly hides a writer's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }
