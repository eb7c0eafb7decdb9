package proxy

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// tidegate's own HTTP/2 server, for connections that open with the h2c
// preface (prior knowledge) on a cleartext listener with the fast path.
//
// Why: golang.org/x/net/http2 reads every frame with two system calls,
// runs a goroutine per stream and writes each response on its own, and
// its client side does the same again. Here one goroutine reads the
// client's frames through a buffer, one writes what a batch of streams
// produced in one system call, and gRPC streams are spliced frame by
// frame onto a connection to the app (h2splice.go) with no goroutine per
// stream at all. Every other stream is served by the server's handler
// (h2handler.go), like net/http would, so the gate, CONNECT, body limits
// and HTTP/1.1 apps keep working.
//
// What it keeps from the net/http path: the two-step GOAWAY on drain
// (goaway.go), connection states for Shutdown, request ids, X-Forwarded-*
// and hop-by-hop hygiene, metrics and access-log lines.

const (
	// h2MaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS, as net/http's.
	h2MaxStreams = 250
	// h2StreamWindow and h2ConnWindow are the receive windows tidegate
	// announces: what a client may send ahead on one stream and on the
	// connection before tidegate has passed it on.
	h2StreamWindow = 256 << 10
	h2ConnWindow   = 1 << 20
	// h2RecentResets is how many streams a connection remembers having
	// reset while the client could still send on them (refused at their
	// HEADERS, or reset later), after they are gone: frames the client
	// had already sent on them are ignored (RFC 9113 §5.1), not taken for
	// a reused stream id. 64 ids, 256 bytes; a frame on an older one is a
	// connection error, as RFC 9113 §5.1 allows after "a significant
	// time".
	h2RecentResets = 64
)

// recentResets is the ring of the last h2RecentResets stream ids tidegate
// reset while the client's side was open.
type recentResets struct {
	ids  [h2RecentResets]uint32
	next int
}

func (r *recentResets) add(id uint32) {
	r.ids[r.next] = id
	r.next = (r.next + 1) % len(r.ids)
}

func (r *recentResets) has(id uint32) bool {
	if id == 0 {
		return false
	}
	for _, x := range r.ids {
		if x == id {
			return true
		}
	}
	return false
}

// h2sConn is one client connection served by tidegate's HTTP/2 server.
type h2sConn struct {
	s      *Server
	h      *Handler
	tc     *trackedConn
	fr     *http2.Framer
	hr     *h2headerReader // reads fr, header blocks decoded
	remote string
	ip     string
	ctx    context.Context // the base of the handler's request contexts
	cancel context.CancelFunc

	mu      sync.Mutex
	cond    sync.Cond // on mu: windows grew, a stream or the connection ended
	down    h2peer    // writes to the client
	in      h2inflow  // the connection's receive window
	streams map[uint32]*h2stream
	maxID   uint32       // the highest stream the client opened
	resets  recentResets // gone streams whose late frames are ignored
	active  int          // streams not finished
	closed  bool         // the client connection is gone
	final   bool         // the real GOAWAY went out: no new streams
	idle    *time.Timer  // the idle timeout; before the first stream, the read-header timeout
	up      *h2uConn     // the app connection of new spliced streams

	// A header block the client has begun and not ended (CONTINUATION
	// frames to come) must end within the read-header timeout
	// (partialBlock); blockSince is when it began, 0 if none.
	blockSince atomic.Int64
	slowBlock  *time.Timer // the reader's; fires blockTimeout

	activeN  atomic.Int32 // active, for syncState
	handlers atomic.Int32 // handler goroutines running
	work     chan func()  // to a stream goroutine waiting for the next stream
	waiting  atomic.Int32 // stream goroutines waiting on work
	parallel atomic.Bool  // two ran at once since the connection was last idle
	linger   *time.Timer  // releases them when the connection stays idle
	stateMu  sync.Mutex   // orders connection-state changes

	// For the direct path's response header blocks, under mu.
	strs   h2strings
	fields []hpack.HeaderField

	goAwayState atomic.Int32 // goAway* of goaway.go
	sentAt      atomic.Int64 // unix nanos of the first GOAWAY
}

// h2stream is one client stream: spliced to the app (up != nil) or served
// by the handler (rw != nil). Its fields are guarded by c.mu.
type h2stream struct {
	c        *h2sConn
	id       uint32
	out      h2flow   // to the client
	in       h2inflow // from the client
	reqEnded bool     // the client sent END_STREAM, or the stream was reset
	rstSent  bool     // tidegate reset it while the client's side was open: its late frames are ignored
	reqCL    int64    // the request's content-length; -1 if none
	reqBytes int64    // request body bytes received
	finished bool

	// A spliced stream (h2splice.go).
	up        *h2uConn
	uid       uint32 // its stream on up; 0 until opened
	upOut     h2flow
	upIn      h2inflow
	reqFields []hpack.HeaderField // until opened
	respSeen  bool                // the app's final response headers came
	upEnded   bool                // the app ended its response
	method    string
	path      string
	reqID     string
	start     time.Time
	sent      time.Time
	headers   time.Time
	status    int
	bytes     int64
	failure   *failure
	clientRst bool
	aborted   bool // the app's side failed after its answer began

	// A stream on the direct path (h2direct.go), and its app connection
	// while the answer is awaited.
	direct   bool
	directUC *h1Conn

	// A stream served by the handler (h2handler.go).
	rw          *h2rw
	body        *h2body
	cancel      context.CancelFunc
	handlerDone bool
}

// serveH2Fast serves c, whose preface has been read, with tidegate's own
// HTTP/2 server until it closes.
func (s *Server) serveH2Fast(fc *fastConn) {
	tc := fc.nc.(*trackedConn)
	if tc.proto.CompareAndSwap(int32(ProtocolHTTP1), int32(ProtocolH2C)) {
		s.t.ConnMoved(ProtocolHTTP1, ProtocolH2C)
	}
	_ = tc.SetReadDeadline(time.Time{})
	c := &h2sConn{s: s, h: s.fast, tc: tc, remote: fc.remote, ip: fc.ip, streams: make(map[uint32]*h2stream), work: make(chan func())}
	c.cond.L = &c.mu
	c.fr = http2.NewFramer(nil, fc.br)
	c.hr = newH2HeaderReader(c.fr, uint32(s.maxHeaderBytes))
	c.hr.partial = c.partialBlock
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(h2DefaultMaxFrame)
	c.down.init(newFrameOut(&c.mu, tc))
	c.down.out.yield = &c.handlers
	c.down.out.linger = h2CloseLinger
	c.down.out.room = c.pumpAll
	c.down.out.stall = max(tc.ws.bound, 0) // ServerOptions.WriteStallTimeout
	ctx := context.WithValue(context.Background(), connKey{}, fc.nc)
	ctx = context.WithValue(ctx, h2Key{}, h2Drainer(c))
	ctx = context.WithValue(ctx, http.ServerContextKey, s.srv)
	c.ctx, c.cancel = context.WithCancel(ctx)

	s.mu.Lock()
	s.h2conns[c] = struct{}{}
	closing := s.closing.Load()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.h2conns, c)
		s.mu.Unlock()
	}()

	go c.down.out.run(func(error) { _ = tc.Close() })
	c.mu.Lock()
	c.down.settings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(s.maxHeaderBytes)},
	)
	c.down.windowUpdate(0, h2ConnWindow-h2DefaultWindow)
	c.in.avail = h2ConnWindow
	// Until its first stream, a connection is a request whose head has
	// not come: the read-header timeout bounds it, as it does an HTTP/1.1
	// connection's first request (a client that sent only the preface).
	c.idle = time.AfterFunc(min(s.readHeaderTimeout, s.idleTimeout), c.idleTimeout)
	c.linger = time.AfterFunc(h2WorkerLinger, c.releaseIfIdle)
	if closing {
		c.shutdownLocked()
	}
	c.mu.Unlock()

	for {
		f, err := c.hr.readFrame()
		if err != nil {
			if c.readError(err) {
				continue
			}
			break
		}
		c.mu.Lock()
		ok := true
		if !c.down.out.close {
			ok = c.process(f) && !c.controlFlood()
		} // else the connection is ending, with no stream left (frameOut.finish): read and dropped
		c.mu.Unlock()
		c.syncState()
		if !ok {
			break
		}
	}
	c.teardown()
}

// readError handles an error of ReadFrame; true to go on reading.
func (c *h2sConn) readError(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case errors.As(err, &se):
		// A malformed header block of a new stream, or a bad frame on
		// one stream: that stream fails, the connection goes on.
		opened := se.StreamID > c.maxID && se.StreamID%2 == 1
		if opened {
			c.maxID = se.StreamID
		}
		if st := c.streams[se.StreamID]; st != nil {
			c.resetStream(st, se.Code, true)
		} else {
			c.down.rst(se.StreamID, se.Code)
			if opened {
				// Refused at its header block, whose END_STREAM flag is
				// not known here: what the client sends on it later is
				// ignored.
				c.resets.add(se.StreamID)
			}
		}
		return !c.controlFlood()
	case errors.As(err, &ce):
		c.logH2("http2: the client broke the protocol; connection closed with GOAWAY", err)
		c.connError(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.logH2("http2: the client sent a frame over SETTINGS_MAX_FRAME_SIZE; connection closed with GOAWAY", err)
		c.connError(http2.ErrCodeFrameSize)
	}
	return false
}

// controlFlood ends the connection when the client let more than
// h2MaxQueuedControl frames it made tidegate answer pile up unread (ACKs
// of its SETTINGS and PINGs, resets, window updates): it would grow the
// writer's buffer without end. mu is held; true: the connection ends.
func (c *h2sConn) controlFlood() bool {
	if !c.down.out.controlFlood() {
		return false
	}
	c.s.log.Debug("http2: the client does not read the control frames it makes tidegate send; connection closed with GOAWAY",
		zap.String("remote_addr", c.remote), zap.String("reason", "control_flood"), zap.Int("queued", h2MaxQueuedControl))
	c.connError(http2.ErrCodeEnhanceYourCalm)
	return true
}

// waitRoom waits until the writer's buffer has room, before a stream
// goroutine queues a header block; mu is held. false: st or the
// connection ended meanwhile.
func (c *h2sConn) waitRoom(st *h2stream) bool {
	for c.down.out.full() {
		if st.out.done || c.closed {
			return false
		}
		c.down.out.starved = true
		c.cond.Wait()
	}
	return !st.out.done && !c.closed
}

// partialBlock is called by the header reader when a header block does
// not end in its first frame (open), and when it has ended: the rest must
// come within the read-header timeout, as an HTTP/1.1 head's must. Only
// the reader's goroutine calls it.
func (c *h2sConn) partialBlock(open bool) {
	if !open {
		c.blockSince.Store(0)
		return
	}
	c.blockSince.Store(time.Now().UnixNano())
	if c.slowBlock == nil {
		c.slowBlock = time.AfterFunc(c.s.readHeaderTimeout, c.blockTimeout)
		return
	}
	c.slowBlock.Reset(c.s.readHeaderTimeout)
}

// blockTimeout closes a connection whose header block has not ended
// within the read-header timeout: GOAWAY, and the reader stops (teardown).
func (c *h2sConn) blockTimeout() {
	since := c.blockSince.Load()
	if since == 0 || time.Duration(time.Now().UnixNano()-since) < c.s.readHeaderTimeout {
		return // ended, or a later block's timer is armed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.s.log.Debug("http2: the client did not end a header block within the read-header timeout; connection closed",
		zap.String("remote_addr", c.remote), zap.String("reason", "slow_header"))
	c.down.out.linger = 0 // the close must not wait on a client still sending the block
	if !c.final {
		c.final = true
		c.down.goAway(c.maxID, http2.ErrCodeNo)
	}
	_ = c.tc.SetReadDeadline(time.Unix(1, 0)) // the reader waits in the block: it stops
}

// connError ends the connection with a GOAWAY carrying code; mu is held.
func (c *h2sConn) connError(code http2.ErrCode) {
	if !c.closed {
		c.down.goAway(c.maxID, code)
		c.down.out.closeAfterFlush()
	}
}

// process handles one frame from the client; mu is held. false ends the
// connection.
func (c *h2sConn) process(f http2.Frame) bool {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if !growWindow(&c.down.window, f.Increment) {
				c.connError(http2.ErrCodeFlowControl)
				return false
			}
			c.pumpAll()
			return true
		}
		if f.StreamID > c.maxID {
			c.connError(http2.ErrCodeProtocol)
			return false
		}
		if st := c.streams[f.StreamID]; st != nil {
			if !growWindow(&st.out.window, f.Increment) {
				c.resetStream(st, http2.ErrCodeFlowControl, true)
				return true
			}
			c.pumpStream(st)
			c.cond.Broadcast()
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return true
		}
		err := c.down.applySettings(f, func(delta int64) {
			for _, st := range c.streams {
				st.out.window += delta
			}
		})
		if err != nil {
			var ce http2.ConnectionError
			code := http2.ErrCodeProtocol
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			c.connError(code)
			return false
		}
		c.down.settingsAck()
		c.pumpAll()
	case *http2.PingFrame:
		if f.IsAck() {
			if f.Data == goAwayPingData {
				c.goAwayState.CompareAndSwap(goAwaySent, goAwayAcked)
			}
			return true
		}
		c.down.ping(true, f.Data)
	case *http2.RSTStreamFrame:
		if f.StreamID > c.maxID {
			c.connError(http2.ErrCodeProtocol)
			return false
		}
		if st := c.streams[f.StreamID]; st != nil {
			c.clientReset(st)
		}
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			if st := c.streams[f.StreamID]; st != nil {
				c.resetStream(st, http2.ErrCodeProtocol, true)
			} else {
				c.down.rst(f.StreamID, http2.ErrCodeProtocol)
			}
		}
	case *http2.PushPromiseFrame:
		c.connError(http2.ErrCodeProtocol)
		return false
	case *http2.GoAwayFrame:
		// The client will open no more streams; those open finish.
	}
	// PRIORITY and unknown frames are ignored, as RFC 9113 allows.
	return true
}

// onHeaders opens a stream, or takes a request's trailers; mu is held.
func (c *h2sConn) onHeaders(f *http2.MetaHeadersFrame) bool {
	id := f.StreamID
	if id%2 == 0 {
		c.connError(http2.ErrCodeProtocol)
		return false
	}
	if st := c.streams[id]; st != nil {
		if st.rstSent {
			return true // sent before the client saw the RST_STREAM: ignored
		}
		if st.reqEnded {
			c.closedStream(st)
			return true
		}
		// Trailers end the request: its DATA must have matched its
		// content-length (RFC 9113 §8.1.1), as onData checks at an
		// END_STREAM on DATA.
		short := st.reqCL >= 0 && st.reqBytes != st.reqCL
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 || f.Truncated || short || !validTrailers(f.RegularFields()) {
			c.resetStream(st, http2.ErrCodeProtocol, true)
			return true
		}
		c.requestTrailers(st, f.RegularFields())
		return true
	}
	if id <= c.maxID {
		if c.resets.has(id) {
			return true // trailers of a stream tidegate reset: ignored
		}
		c.connError(http2.ErrCodeStreamClosed)
		return false
	}
	c.maxID = id
	if c.final || c.closed {
		return true // after the real GOAWAY: ignored, the client retries elsewhere
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.refuse(id, http2.ErrCodeProtocol, f.StreamEnded())
		return true
	}
	if c.active >= h2MaxStreams {
		c.refuse(id, http2.ErrCodeRefusedStream, f.StreamEnded())
		return true
	}
	if f.Truncated {
		// Over MaxHeaderBytes: 431, as net/http answers.
		c.tooLarge(id)
		if !f.StreamEnded() {
			// The answer is complete and the client is still sending:
			// tell it to stop (RFC 9113 §8.1), as x/net does.
			c.refuse(id, http2.ErrCodeNo, false)
		}
		return true
	}
	rq, ok := parseH2Request(f)
	if !ok {
		c.refuse(id, http2.ErrCodeProtocol, f.StreamEnded())
		return true
	}
	st := &h2stream{c: c, id: id, reqEnded: f.StreamEnded(), reqCL: rq.contentLength}
	st.out.window = int64(c.down.initWindow)
	st.in.avail = h2StreamWindow
	c.streams[id] = st
	c.active++
	c.activeN.Store(int32(c.active))
	c.idle.Stop()
	switch {
	case c.spliceable(&rq):
		c.startSplice(st, &rq)
	case c.directable(st, &rq):
		c.startDirect(st, &rq)
	default:
		c.startHandler(st, &rq)
	}
	return true
}

// validTrailers reports whether a request's trailer block has only fields
// a trailer may carry: no connection-specific field (RFC 9113 §8.2.2), none
// of those net/http and x/net refuse in trailers (framing, routing,
// authentication: httpguts.ValidTrailerHeader).
func validTrailers(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		if !httpguts.ValidTrailerHeader(http.CanonicalHeaderKey(f.Name)) {
			return false
		}
	}
	return true
}

// refuse resets stream id at its header block, never opened; ended says
// the block ended the client's side. mu is held.
func (c *h2sConn) refuse(id uint32, code http2.ErrCode, ended bool) {
	c.down.rst(id, code)
	if !ended {
		c.resets.add(id) // its DATA and trailers may be on the way
	}
}

// onData takes request body bytes; mu is held.
func (c *h2sConn) onData(f *http2.DataFrame) bool {
	id := f.StreamID
	if id == 0 || id > c.maxID {
		c.connError(http2.ErrCodeProtocol)
		return false
	}
	n := f.Header().Length // flow control counts the padding too
	if !c.in.take(n) {
		c.connError(http2.ErrCodeFlowControl)
		return false
	}
	data := f.Data()
	st := c.streams[id]
	if (st != nil && st.rstSent) || (st == nil && c.resets.has(id)) {
		c.giveConn(int(n)) // sent before the client saw the RST_STREAM: ignored
		return true
	}
	if st == nil || st.reqEnded {
		c.giveConn(int(n))
		if st != nil {
			c.closedStream(st)
		} else {
			c.down.rst(id, http2.ErrCodeStreamClosed)
		}
		return true
	}
	if !st.in.take(n) {
		c.giveConn(int(n))
		c.resetStream(st, http2.ErrCodeFlowControl, true)
		return true
	}
	if pad := int(n) - len(data); pad > 0 {
		c.giveBack(st, pad)
	}
	st.reqBytes += int64(len(data))
	end := f.StreamEnded()
	if st.reqCL >= 0 && (st.reqBytes > st.reqCL || (end && st.reqBytes != st.reqCL)) {
		c.giveConn(len(data))
		c.resetStream(st, http2.ErrCodeProtocol, true)
		return true
	}
	if end {
		st.reqEnded = true
	}
	if st.rw != nil {
		c.handlerData(st, data, end)
	} else {
		c.spliceData(st, data, end)
	}
	return true
}

// tooLarge answers stream id, whose header block passed MaxHeaderBytes,
// with 431, as net/http does; mu is held. The stream is never opened:
// nothing is counted.
func (c *h2sConn) tooLarge(id uint32) {
	c.down.headers(id, []hpack.HeaderField{
		{Name: ":status", Value: "431"},
		{Name: "content-length", Value: "0"},
		{Name: "date", Value: httpDateString()},
	}, true)
	c.down.out.control() // an answer the client makes tidegate send, as a control frame
}

// giveBack returns n bytes of st's request to the client's windows; mu
// is held.
func (c *h2sConn) giveBack(st *h2stream, n int) {
	if n <= 0 || c.closed {
		return
	}
	c.giveConn(n)
	if st.reqEnded || st.finished {
		return
	}
	c.down.giveBack(&st.in, st.id, n, h2StreamWindow)
}

func (c *h2sConn) giveConn(n int) {
	if !c.closed {
		c.down.giveBack(&c.in, 0, n, h2ConnWindow)
	}
}

// pumpAll sends what waits on every stream after the windows grew.
func (c *h2sConn) pumpAll() {
	for _, st := range c.streams {
		c.pumpStream(st)
	}
	c.cond.Broadcast()
}

// pumpStream sends what waits on st for the client; mu is held.
func (c *h2sConn) pumpStream(st *h2stream) {
	if len(st.out.pend) == 0 && !st.out.end {
		return
	}
	n := c.down.pump(st.id, &st.out)
	if st.up != nil && n > 0 {
		st.up.giveBack(st, n)
	}
	c.maybeFinish(st)
}

// resetStream ends st with RST_STREAM(code) to the client; mu is held.
// For a spliced stream the app's side is cancelled too.
func (c *h2sConn) resetStream(st *h2stream, code http2.ErrCode, protocol bool) {
	open := !st.reqEnded // the client may still send on st
	if (!st.out.done || open) && !c.closed {
		c.down.rst(st.id, code)
		st.rstSent = open
	}
	c.dropOut(st)
	st.reqEnded = true
	if protocol && st.failure == nil && !st.respSeen {
		f := failure{http.StatusBadRequest, "", false, "malformed request"}
		st.failure = &f
	}
	c.streamGone(st, errStreamReset)
	c.maybeFinish(st)
}

// closedStream answers a frame the client sent on a stream it had closed
// (ended or reset) with RST_STREAM(STREAM_CLOSED); mu is held.
func (c *h2sConn) closedStream(st *h2stream) {
	if st.out.done {
		c.down.rst(st.id, http2.ErrCodeStreamClosed)
		return
	}
	c.resetStream(st, http2.ErrCodeStreamClosed, true)
}

// clientReset handles the client's RST_STREAM for st; mu is held.
func (c *h2sConn) clientReset(st *h2stream) {
	st.clientRst = true
	c.dropOut(st)
	st.reqEnded = true
	c.streamGone(st, errClientReset)
	c.maybeFinish(st)
}

var (
	errClientReset = errors.New("client reset the stream")
	errStreamReset = errors.New("stream reset")
	errConnGone    = errors.New("client connection closed")
)

// streamGone tells st's other side that the client's side is gone.
func (c *h2sConn) streamGone(st *h2stream, err error) {
	switch {
	case st.rw != nil:
		c.handlerGone(st, err)
	case st.direct:
		c.directGone(st)
	default:
		c.spliceGone(st)
	}
	c.cond.Broadcast()
}

// maybeFinish finishes st once both directions are done; mu is held.
func (c *h2sConn) maybeFinish(st *h2stream) {
	if st.finished || !st.out.done {
		return
	}
	if !st.reqEnded {
		// The answer is complete and the client is still sending: tell
		// it to stop (RFC 9113 §8.1).
		if !c.closed {
			c.down.rst(st.id, http2.ErrCodeNo)
			st.rstSent = true
		}
		st.reqEnded = true
		c.streamGone(st, errStreamReset)
	}
	if (st.rw != nil || st.direct) && !st.handlerDone {
		return
	}
	st.finished = true
	delete(c.streams, st.id)
	if st.rstSent {
		c.resets.add(st.id)
	}
	c.active--
	c.activeN.Store(int32(c.active))
	switch {
	case st.up != nil:
		c.finishSplice(st)
		c.record(st)
	case st.direct:
		c.record(st)
	}
	if c.active == 0 {
		if c.final {
			c.down.out.closeAfterFlush()
		} else if !c.closed {
			c.idle.Reset(c.s.idleTimeout)
		}
	}
}

// syncState moves the connection between StateActive and StateIdle as its
// streams come and go, for Shutdown; call it without mu.
func (c *h2sConn) syncState() {
	want := http.StateIdle
	if c.activeN.Load() > 0 {
		want = http.StateActive
	}
	if http.ConnState(c.tc.state.Load()) == want {
		return
	}
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	want = http.StateIdle
	if c.activeN.Load() > 0 {
		want = http.StateActive
	}
	if cur := http.ConnState(c.tc.state.Load()); cur != want && cur != http.StateClosed {
		c.s.transition(c.tc, want, c.s.t)
		if want == http.StateIdle && c.ctx.Err() == nil {
			// The stream goroutine that ends the last stream has not
			// begun to wait yet: the timer is armed whether any waits.
			c.linger.Reset(h2WorkerLinger)
		}
	}
}

// releaseIfIdle tells the stream goroutines that wait to leave if the
// connection has no stream.
func (c *h2sConn) releaseIfIdle() {
	c.mu.Lock()
	if c.active == 0 {
		c.parallel.Store(false)
		c.strs = h2strings{} // an idle connection keeps no strings either
		c.fields = nil
	}
	c.mu.Unlock()
	for c.waiting.Load() > 0 && c.activeN.Load() == 0 {
		select {
		case c.work <- nil:
		default:
			// One counted but not yet waiting: it stays until the
			// next stream or the connection's end.
			return
		}
	}
}

// h2IdleWorkers is how many stream goroutines of a connection may wait
// for its next stream.
const h2IdleWorkers = 32

// h2CloseLinger bounds how long a client connection that tidegate ends
// with no stream left (the drain's last GOAWAY, the idle timeout) stays
// half-closed, its bytes read and dropped, before the close: until the
// client's own close, which usually comes at once on the FIN
// (frameOut.finish). A connection ended for an error closes once the
// GOAWAY is written.
const h2CloseLinger = time.Second

// h2WorkerLinger is how long stream goroutines wait on a connection
// without streams. Clients that send their requests in rounds (h2load,
// batching gRPC clients) leave a connection idle between two rounds.
const h2WorkerLinger = time.Second

// goStream runs f, a stream's work on the direct or the handler path, on a
// stream goroutine of c that waits for one, or on a new one; mu is held.
//
// A goroutine started per stream grows its stack from the minimum on every
// request: copying stacks was 9% of the CPU of an h2c request on the direct
// path (perf, under make bench's h2c load). A stream goroutine instead
// stays, with its stack, for the connection's next stream, as grpc-go's
// stream workers do. They wait only on a connection that has run two
// streams at once (a client that sends one request at a time gains little
// and would hold a goroutine per connection), at most h2IdleWorkers at a
// time; when the connection has had no stream for h2WorkerLinger they
// leave, so that an idle connection holds no goroutine but its reader and
// writer.
func (c *h2sConn) goStream(f func()) {
	if c.handlers.Load() > 1 {
		c.parallel.Store(true)
	}
	select {
	case c.work <- f:
	default:
		go c.streamWorker(f)
	}
}

func (c *h2sConn) streamWorker(f func()) {
	for {
		f()
		if !c.parallel.Load() {
			return
		}
		if c.waiting.Add(1) > h2IdleWorkers {
			c.waiting.Add(-1)
			return
		}
		select {
		case f = <-c.work:
			c.waiting.Add(-1)
			if f == nil {
				return // the connection went idle
			}
		case <-c.ctx.Done():
			return
		}
	}
}

// idleTimeout closes a connection without streams for the idle timeout.
func (c *h2sConn) idleTimeout() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active == 0 && !c.closed {
		c.final = true
		c.down.goAway(c.maxID, http2.ErrCodeNo)
		if c.maxID == 0 || c.blockSince.Load() != 0 {
			// No answer was ever sent (a preface alone), or a header block
			// is still coming: no last answer for the linger to protect,
			// and a client still sending would keep the connection open
			// for the linger past the read-header timeout.
			c.down.out.linger = 0
		}
		c.down.out.closeAfterFlush()
	}
}

// teardown ends every stream once the client connection is gone.
func (c *h2sConn) teardown() {
	c.mu.Lock()
	c.closed = true
	c.idle.Stop()
	if c.slowBlock != nil {
		c.slowBlock.Stop()
	}
	for _, st := range c.streams {
		if !st.out.done {
			st.clientRst = true
		}
		c.dropOut(st)
		st.reqEnded = true
		c.streamGone(st, errConnGone)
		c.maybeFinish(st)
	}
	if c.up != nil {
		c.up.closeWhenIdle()
	}
	// What is queued (a GOAWAY saying why) goes out before the close, if
	// the client takes it within a second.
	c.down.out.closeWithin(time.Second)
	c.cond.Broadcast()
	c.mu.Unlock()
	c.cancel() // stream goroutines that wait leave
	<-c.down.out.exited
	c.mu.Lock()
	c.down.out.release() // what was queued after the writer's end
	c.mu.Unlock()
	_ = c.tc.Close()
	c.syncState()
	c.linger.Stop()
}

// beginGoAway takes the first step of the two-step GOAWAY (goaway.go):
// GOAWAY(2^31-1) and a PING. It never blocks on the network.
func (c *h2sConn) beginGoAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.firstGoAwayLocked()
}

// beginGoAwayLocked asks the client to move when a response's header goes
// out during the drain, as drainWriter does for the handler's answers: the
// first step of the two-step GOAWAY, or, once its PING came back (or the
// bound passed), the real GOAWAY. mu is held.
func (c *h2sConn) beginGoAwayLocked() {
	if c.readyForFinalGoAway(time.Now()) {
		c.shutdownLocked()
		return
	}
	c.firstGoAwayLocked()
}

func (c *h2sConn) firstGoAwayLocked() {
	if !c.goAwayState.CompareAndSwap(goAwayNone, goAwayQueued) {
		return
	}
	c.sentAt.Store(time.Now().UnixNano())
	c.goAwayState.Store(goAwaySent)
	if !c.closed && !c.final {
		c.down.out.buf = append(c.down.out.buf, firstGoAway...)
		c.down.out.wake()
	}
}

// dropOut ends what st sends to the client, discarding what waits; the
// app's windows get the discarded bytes back. mu is held.
func (c *h2sConn) dropOut(st *h2stream) {
	if n := len(st.out.pend); n > 0 && st.up != nil {
		st.up.giveConn(n)
	}
	st.out.done, st.out.pend = true, nil
}

// readyForFinalGoAway is h2Conn's: the PING came back, or goAwayRTTBound
// passed.
func (c *h2sConn) readyForFinalGoAway(now time.Time) bool {
	switch c.goAwayState.Load() {
	case goAwayAcked:
		return true
	case goAwaySent:
		return now.UnixNano()-c.sentAt.Load() >= int64(c.s.goAwayBound)
	}
	return false
}

// shutdown sends the real GOAWAY and closes the connection once its
// streams are done; Shutdown calls it after the first step.
func (c *h2sConn) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shutdownLocked()
}

func (c *h2sConn) shutdownLocked() {
	if c.final || c.closed {
		return
	}
	c.final = true
	c.down.goAway(c.maxID, http2.ErrCodeNo)
	if c.active == 0 {
		c.down.out.closeAfterFlush()
	}
}

// closeNow closes the connection at once (Server.Close).
func (c *h2sConn) closeNow() {
	_ = c.tc.Close()
	c.mu.Lock()
	if c.up != nil {
		_ = c.up.nc.Close()
	}
	c.mu.Unlock()
}

// h2Request is what a request's header block says.
type h2Request struct {
	method, scheme, authority, path string
	fields                          []hpack.HeaderField // the regular fields
	contentType, userAgent, id      string
	contentLength                   int64 // -1: none
}

// parseH2Request checks a request's header block (RFC 9113 §8.3.1 and
// §8.2.2): the pseudo-fields a request needs, no connection-specific
// fields, a valid content-length. false means a malformed request.
func parseH2Request(f *http2.MetaHeadersFrame) (h2Request, bool) {
	rq := h2Request{contentLength: -1}
	for _, hf := range f.PseudoFields() {
		var dst *string
		switch hf.Name {
		case ":method":
			dst = &rq.method
		case ":scheme":
			dst = &rq.scheme
		case ":authority":
			dst = &rq.authority
		case ":path":
			dst = &rq.path
		default:
			return rq, false // :protocol (extended CONNECT is not offered), :status
		}
		if *dst != "" || hf.Value == "" {
			return rq, false
		}
		*dst = hf.Value
	}
	if rq.method == "" {
		return rq, false
	}
	if rq.method == http.MethodConnect {
		if rq.authority == "" || rq.scheme != "" || rq.path != "" {
			return rq, false
		}
	} else if rq.scheme == "" || rq.path == "" {
		return rq, false
	}
	// A copy: f's fields are the header reader's, for the next block too.
	rq.fields = slices.Clone(f.RegularFields())
	for _, hf := range rq.fields {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return rq, false
		case "te":
			if hf.Value != "trailers" {
				return rq, false
			}
		case "content-length":
			n, err := strconv.ParseUint(hf.Value, 10, 63)
			if err != nil || (rq.contentLength >= 0 && int64(n) != rq.contentLength) {
				return rq, false
			}
			rq.contentLength = int64(n)
		case "content-type":
			rq.contentType = hf.Value
		case "user-agent":
			rq.userAgent = hf.Value
		case "x-request-id":
			rq.id = hf.Value
		}
	}
	if f.StreamEnded() && rq.contentLength > 0 || !validH2Target(&rq) {
		return rq, false
	}
	return rq, true
}

// logH2 logs a connection-level problem at debug level: clients that
// misbehave are normal on the internet.
func (c *h2sConn) logH2(msg string, err error) {
	c.s.log.Debug(msg, zap.String("remote_addr", c.remote), zap.Error(err))
}

// consumePreface reports whether br starts with the HTTP/2 client
// preface, and consumes it if so. The caller has seen "PRI * HTTP/2.0\r\n\r\n" already.
func consumePreface(br *bufio.Reader) bool {
	b, err := br.Peek(clientPrefaceLen)
	if err != nil || string(b) != http2.ClientPreface {
		return false
	}
	_, _ = br.Discard(clientPrefaceLen)
	return true
}
