package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// The two-step GOAWAY of RFC 9113 §6.8.
//
// A server that sends its one GOAWAY with the last stream it has seen
// refuses every stream the client opened in the meantime: the race the RFC
// describes. So tidegate first sends a GOAWAY with the largest stream id
// (2^31-1: "stop opening streams, but every stream already on its way will
// be served") followed by a PING, and lets the HTTP/2 server send its own,
// real GOAWAY only once the PING has come back — one round trip later, when
// no stream the client opened before it saw the first GOAWAY can still be
// on the wire.
//
// net/http's HTTP/2 server has no API for a GOAWAY of one's own, so h2Conn
// sits between the server and the connection (above TLS, where the bytes
// are plain frames). It follows the frame boundaries of what the server
// writes, to slip its two frames in between two of the server's, and those
// of what the client writes, to spot the PING's acknowledgement. It never
// changes or holds back a byte of either stream.

const (
	frameHeaderLen = 9
	frameTypePing  = 0x6
	frameTypeGoAwy = 0x7
	frameFlagAck   = 0x1
	maxStreamID    = 1<<31 - 1

	// clientPrefaceLen is the length of "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
	clientPrefaceLen = 24

	// goAwayRTTBound is how long tidegate waits for the PING after the
	// first GOAWAY to come back before it lets the real GOAWAY go anyway
	// (a client that does not answer PINGs, or a very slow path).
	goAwayRTTBound = time.Second
)

// goAwayPingData marks tidegate's PING, so that its ACK is told apart from
// the answers to the server's own PINGs.
var goAwayPingData = [8]byte{'t', 'i', 'd', 'e', 'g', 'a', 't', 'e'}

// firstGoAway is the first step: GOAWAY(last stream 2^31-1, NO_ERROR) and
// a PING to time the round trip.
var firstGoAway = func() []byte {
	b := make([]byte, 0, 2*frameHeaderLen+8+8)
	b = appendFrameHeader(b, 8, frameTypeGoAwy, 0, 0)
	b = binary.BigEndian.AppendUint32(b, maxStreamID)
	b = binary.BigEndian.AppendUint32(b, 0) // NO_ERROR
	b = appendFrameHeader(b, 8, frameTypePing, 0, 0)
	return append(b, goAwayPingData[:]...)
}()

func appendFrameHeader(b []byte, length int, typ, flags byte, stream uint32) []byte {
	b = append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(b, stream&maxStreamID)
}

// frameScanner follows the frame boundaries of one direction of an HTTP/2
// connection, a few bytes of state at a time.
type frameScanner struct {
	skip   int // bytes of the client connection preface still to pass
	hdr    [frameHeaderLen]byte
	hdrN   int   // bytes of the current frame header seen so far
	left   int   // payload bytes of the current frame still to pass
	frames int64 // frames whose header has been seen

	// watchPing, if set, collects the payload of each PING ACK and hands
	// it to onPingAck.
	watchPing bool
	inPing    bool
	ping      [8]byte
	pingN     int
	onPingAck func([8]byte)
}

// atBoundary reports whether the bytes seen so far end exactly between
// two frames, after at least one frame.
func (s *frameScanner) atBoundary() bool {
	return s.frames > 0 && s.skip == 0 && s.hdrN == 0 && s.left == 0
}

// step passes over the start of p up to the end of the current piece
// (preface, frame header or payload) and returns how many bytes it took.
func (s *frameScanner) step(p []byte) int {
	switch {
	case s.skip > 0:
		n := min(s.skip, len(p))
		s.skip -= n
		return n
	case s.left > 0:
		n := min(s.left, len(p))
		if s.inPing {
			s.pingN += copy(s.ping[s.pingN:], p[:n])
		}
		s.left -= n
		if s.left == 0 && s.inPing {
			s.inPing = false
			if s.pingN == len(s.ping) && s.onPingAck != nil {
				s.onPingAck(s.ping)
			}
		}
		return n
	default:
		n := copy(s.hdr[s.hdrN:], p)
		s.hdrN += n
		if s.hdrN == frameHeaderLen {
			s.hdrN = 0
			s.frames++
			s.left = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			s.inPing = s.watchPing && s.hdr[3] == frameTypePing && s.hdr[4]&frameFlagAck != 0 && s.left == len(s.ping)
			s.pingN = 0
		}
		return n
	}
}

// scan passes over all of p.
func (s *frameScanner) scan(p []byte) {
	for len(p) > 0 {
		p = p[s.step(p):]
	}
}

// GOAWAY progress of one connection.
const (
	goAwayNone   int32 = iota
	goAwayQueued       // waiting for a frame boundary
	goAwaySent         // first GOAWAY and PING written; waiting for the ACK
	goAwayAcked        // the PING came back: the real GOAWAY may go
)

// h2Conn is an HTTP/2 server connection that can send the first step of a
// graceful GOAWAY. See the comment at the top of this file.
type h2Conn struct {
	net.Conn

	wmu     sync.Mutex // one writer at a time: the server's or the injection
	w       frameScanner
	pending []byte // frames to write at the next boundary

	r frameScanner // used only by the server's single reading goroutine

	state  atomic.Int32  // goAway*
	sentAt atomic.Int64  // unix nanos of the first GOAWAY's write
	bound  time.Duration // goAwayRTTBound, but in tests
}

// h2TLSConn is an h2Conn over TLS: the HTTP/2 server learns the TLS state
// from ConnectionState, so requests carry it.
type h2TLSConn struct {
	*h2Conn
	tc *tls.Conn
}

func (c h2TLSConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// newH2Conn wraps c; sawPreface tells whether the client's connection
// preface has been read from c already.
func newH2Conn(c net.Conn, sawPreface bool, bound time.Duration) *h2Conn {
	h := &h2Conn{Conn: c, bound: bound}
	if !sawPreface {
		h.r.skip = clientPrefaceLen
	}
	h.r.watchPing = true
	h.r.onPingAck = func(data [8]byte) {
		if data == goAwayPingData {
			h.state.CompareAndSwap(goAwaySent, goAwayAcked)
		}
	}
	return h
}

func (c *h2Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.r.scan(p[:n])
	return n, err
}

func (c *h2Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.pending == nil {
		c.w.scan(p)
		return c.Conn.Write(p)
	}
	off := 0
	for off < len(p) && !c.w.atBoundary() {
		off += c.w.step(p[off:])
	}
	if !c.w.atBoundary() {
		return c.Conn.Write(p) // the frame goes on past p
	}
	// One write: the server's bytes up to the boundary, ours, the rest.
	ours := len(c.pending)
	b := make([]byte, 0, len(p)+ours)
	b = append(append(append(b, p[:off]...), c.pending...), p[off:]...)
	c.w.scan(p[off:])
	c.markSent()
	n, err := c.Conn.Write(b)
	if err != nil {
		// Count only the server's bytes among those that went out.
		n = min(n, off) + max(0, n-off-ours)
		return n, err
	}
	return len(p), nil
}

// markSent records that the pending frames went out; wmu is held.
func (c *h2Conn) markSent() {
	c.pending = nil
	c.sentAt.Store(time.Now().UnixNano())
	c.state.CompareAndSwap(goAwayQueued, goAwaySent)
}

// beginGoAway starts the first step, once: the frames go out at the next
// frame boundary, now if the server is not writing. It never blocks.
func (c *h2Conn) beginGoAway() {
	if !c.state.CompareAndSwap(goAwayNone, goAwayQueued) {
		return
	}
	c.wmu.Lock()
	c.pending = firstGoAway
	c.wmu.Unlock()
	// Written from a goroutine: a client that does not read may block the
	// write, until the connection is closed.
	go c.flushPending()
}

func (c *h2Conn) flushPending() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.pending == nil || !c.w.atBoundary() {
		return // the server's next write carries it
	}
	c.markSent()
	_, _ = c.Conn.Write(firstGoAway)
}

// readyForFinalGoAway reports whether the server's own GOAWAY may go: the
// first step is done, and its PING came back or went unanswered for
// goAwayRTTBound.
func (c *h2Conn) readyForFinalGoAway(now time.Time) bool {
	switch c.state.Load() {
	case goAwayAcked:
		return true
	case goAwaySent:
		return now.UnixNano()-c.sentAt.Load() >= int64(c.bound)
	}
	return false
}

// h2Key finds a request's h2Conn in its context.
type h2Key struct{}

// h2Drainer is an HTTP/2 connection that takes the two-step GOAWAY:
// net/http's under an h2Conn, or tidegate's own (h2serve.go).
type h2Drainer interface {
	beginGoAway()
	readyForFinalGoAway(now time.Time) bool
}

// h2ConnOf returns the HTTP/2 connection a request arrived on, or nil.
func h2ConnOf(r *http.Request) h2Drainer {
	c, _ := r.Context().Value(h2Key{}).(h2Drainer)
	return c
}

// serveH2 is what the server runs for a connection that speaks HTTP/2:
// it wraps the connection in an h2Conn, registers it for the drain and
// serves it with the HTTP/2 server until it closes.
//
// x/net has no header timeout: a connection that sent only its preface,
// or a header block it never ends, would live until the idle timeout. As
// on tidegate's own server, until the first request reaches the handler
// the connection is a request whose head has not come: its read deadline
// is the read-header timeout (x/net then closes it), cleared by the first
// request.
func (s *Server) serveH2(hs *http.Server, c net.Conn, tc *tls.Conn, h http.Handler, sawPreface bool) {
	hc := newH2Conn(c, sawPreface, s.goAwayBound)
	var nc net.Conn = hc
	if tc != nil {
		nc = h2TLSConn{h2Conn: hc, tc: tc}
	}
	ctx := context.Background()
	if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
		ctx = bc.BaseContext()
	}
	ctx = context.WithValue(ctx, h2Key{}, hc)
	if s.readHeaderTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(s.readHeaderTimeout))
		var first atomic.Bool
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !first.Load() && first.CompareAndSwap(false, true) {
				_ = c.SetReadDeadline(time.Time{})
			}
			inner.ServeHTTP(w, r)
		})
	}

	s.mu.Lock()
	s.h2conns[hc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.h2conns, hc)
		s.mu.Unlock()
	}()
	// A connection opened during the drain gets the first step with its
	// first response (drainWriter), not at once: a client that waits for
	// the server's SETTINGS before it sends is still served once.
	s.h2.ServeConn(nc, &http2.ServeConnOpts{
		Context:          ctx,
		Handler:          h,
		BaseConfig:       hs,
		SawClientPreface: sawPreface,
	})
}
