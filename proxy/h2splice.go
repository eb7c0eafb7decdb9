package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Splicing: a client stream of tidegate's HTTP/2 server forwarded, frame by
// frame, onto a stream of an h2c connection to the app. Each client
// connection has its own app connection (dialed at its first spliced
// stream, replaced when the app sends GOAWAY), and both share the client
// connection's lock, so a stream's two halves change together without a
// goroutine per stream. Flow control is end to end: tidegate returns a
// window to one side only once the bytes went out to the other, so what it
// holds per stream is bounded by the windows it announced.

// h2uConn is an h2c connection to the app for one client connection's
// spliced streams. Guarded by c.mu.
type h2uConn struct {
	c          *h2sConn
	nc         net.Conn // nil until dialed
	fr         *http2.Framer
	hr         *h2headerReader // reads fr, header blocks decoded
	peer       h2peer
	in         h2inflow
	streams    map[uint32]*h2stream // opened on the app
	waiting    []*h2stream          // for the dial or a free stream
	nextID     uint32
	maxStreams uint32
	first      *firstBytes // what the app sent first, to name an HTTP/1.1 app
	gotFrame   bool        // a frame has been read
	ready      bool        // dialed, preface and SETTINGS written
	gone       bool        // takes no new streams: GOAWAY, failure, ids spent
	dead       bool        // failed or closed
}

// spliceable reports whether a request is spliced to the app rather than
// served by the handler: gRPC (or anything, with upstream h2c), when the
// gate lets requests through and no body limit applies.
func (c *h2sConn) spliceable(rq *h2Request) bool {
	h := c.h
	if h.splice == "" || h.maxBody > 0 || rq.method == http.MethodConnect {
		return false
	}
	if c.s.fastOpen != nil && !c.s.fastOpen() {
		return false
	}
	return (h.splice == UpstreamH2C || isGRPC(rq.contentType)) && !h.loopH2(rq.fields) // a loop: the handler answers 508
}

// startSplice begins a spliced stream; mu is held.
func (c *h2sConn) startSplice(st *h2stream, rq *h2Request) {
	h := c.h
	st.method, st.start = rq.method, h.now()
	st.path, _, _ = strings.Cut(rq.path, "?")
	h.tracker.RequestStarted(h.tracker.IsProbe(rq.userAgent))
	st.reqID, _ = h.requestID(rq.id)
	st.reqFields = c.upstreamFields(rq, st.reqID)
	c.upConn().attach(st)
}

// upstreamFields is the header block sent to the app: the client's, with
// X-Forwarded-* set and the request id, as the handler's rewrite does.
// With RequestIDGenerate, id replaces the client's X-Request-Id, even an
// equal one, so that it goes never-indexed (requestIDField); with
// RequestIDOff, the client's passes as it came.
func (c *h2sConn) upstreamFields(rq *h2Request, id string) []hpack.HeaderField {
	authority := rq.authority
	if authority == "" {
		for _, f := range rq.fields {
			if f.Name == "host" {
				authority = f.Value
				break
			}
		}
	}
	out := make([]hpack.HeaderField, 0, len(rq.fields)+8)
	out = append(out, hpack.HeaderField{Name: ":method", Value: rq.method},
		hpack.HeaderField{Name: ":scheme", Value: "http"})
	if rq.authority != "" {
		out = append(out, hpack.HeaderField{Name: ":authority", Value: rq.authority})
	}
	out = append(out, hpack.HeaderField{Name: ":path", Value: rq.path})
	setXF := c.h.forwarded != ForwardedOff
	for _, f := range rq.fields {
		switch f.Name {
		case "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host":
			if setXF {
				continue // set below
			}
		case "x-request-id":
			if c.h.genID {
				continue // set below
			}
		case "te", "trailer":
			// te: "trailers", the only value parseH2Request lets through.
			// trailer: the trailers this request declares, which an app
			// (net/http's server) may need to take them.
		default:
			if hopByHop([]byte(f.Name)) {
				continue
			}
		}
		out = append(out, f)
	}
	if setXF {
		xff, xfp, xfh := c.forwarded(rq.fields, authority)
		if xff != "" {
			out = append(out, hpack.HeaderField{Name: "x-forwarded-for", Value: xff})
		}
		out = append(out, hpack.HeaderField{Name: "x-forwarded-proto", Value: xfp},
			hpack.HeaderField{Name: "x-forwarded-host", Value: xfh})
	}
	if c.h.genID {
		out = append(out, requestIDField(id))
	}
	return c.h.appendViaH2(out)
}

// forwarded returns the X-Forwarded-For, -Proto and -Host values for the
// app, from the client's fields, by the rules of setForwardedHeaders. xff
// is "" when the client's address is unknown.
func (c *h2sConn) forwarded(fields []hpack.HeaderField, authority string) (xff, xfp, xfh string) {
	var list []string
	for _, f := range fields {
		switch f.Name {
		case "x-forwarded-for":
			list = append(list, f.Value)
		case "x-forwarded-proto":
			if xfp == "" {
				xfp = f.Value
			}
		case "x-forwarded-host":
			if xfh == "" {
				xfh = f.Value
			}
		}
	}
	appendMode := c.h.forwarded == ForwardedAppend
	switch {
	case c.ip == "":
	case appendMode && len(list) > 0:
		xff = joinComma(list) + ", " + c.ip
	default:
		xff = c.ip
	}
	if !appendMode || xfp == "" {
		xfp = "http"
	}
	if !appendMode || xfh == "" {
		xfh = authority
	}
	return xff, xfp, xfh
}

// upConn returns the app connection for a new stream, dialing one if
// there is none that takes streams; mu is held.
func (c *h2sConn) upConn() *h2uConn {
	if c.up != nil && !c.up.gone {
		return c.up
	}
	up := &h2uConn{c: c, streams: make(map[uint32]*h2stream), nextID: 1, maxStreams: math.MaxUint32}
	c.up = up
	go up.dial()
	return up
}

// dial connects to the app and starts the connection's reader.
func (up *h2uConn) dial() {
	c, h := up.c, up.c.h
	ctx, cancel := context.WithTimeout(c.ctx, h.dialTimeout)
	nc, err := h.dial(ctx)
	cancel()
	c.mu.Lock()
	if err == nil && (c.closed || up.dead) {
		_ = nc.Close()
		err = errConnGone
	}
	if err != nil {
		up.fail(err)
		c.mu.Unlock()
		c.syncState()
		return
	}
	up.nc = nc
	up.first = &firstBytes{r: nc}
	up.fr = http2.NewFramer(nil, bufio.NewReaderSize(up.first, 16<<10))
	up.hr = newH2HeaderReader(up.fr, 1<<20) // as the HTTP/1.1 transport's MaxResponseHeaderBytes
	up.fr.SetReuseFrames()
	up.fr.SetMaxReadFrameSize(h2DefaultMaxFrame)
	up.peer.init(newFrameOut(&c.mu, nc))
	up.peer.out.room = up.roomFreed
	up.peer.out.buf = append(up.peer.out.buf, http2.ClientPreface...)
	up.peer.settings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 1 << 20},
	)
	up.peer.windowUpdate(0, h2ConnWindow-h2DefaultWindow)
	up.in.avail = h2ConnWindow
	up.ready = true
	up.startWaiting()
	c.mu.Unlock()
	go up.peer.out.run(func(error) { _ = nc.Close() })
	up.readLoop()
}

// attach opens st on up, or queues it until up can take it; mu is held.
func (up *h2uConn) attach(st *h2stream) {
	st.up = up
	if !up.canOpen() {
		up.waiting = append(up.waiting, st)
		return
	}
	up.open(st)
}

// canOpen reports whether a stream may be opened on up now: dialed, under
// the app's stream limit, and with room in the writer's buffer for its
// header block (an app that does not read holds the new streams in
// waiting, not their header blocks in the buffer). mu is held.
func (up *h2uConn) canOpen() bool {
	if !up.ready || up.gone || uint32(len(up.streams)) >= up.maxStreams {
		return false
	}
	if up.peer.out.full() {
		up.peer.out.starved = true // roomFreed starts them
		return false
	}
	return true
}

// roomFreed sends on what waited for room in the writer's buffer to the
// app; mu is held.
func (up *h2uConn) roomFreed() {
	c := up.c
	for _, st := range up.streams {
		c.giveBack(st, up.peer.pump(st.uid, &st.upOut))
	}
	up.startWaiting()
}

// startWaiting opens the queued streams that fit; mu is held.
func (up *h2uConn) startWaiting() {
	for len(up.waiting) > 0 && up.canOpen() {
		st := up.waiting[0]
		up.waiting = up.waiting[1:]
		up.open(st)
	}
	if up.gone && len(up.waiting) > 0 {
		// Not sent: they go to a new connection.
		waiting := up.waiting
		up.waiting = nil
		for _, st := range waiting {
			up.c.upConn().attach(st)
		}
	}
}

// open sends st's request headers to the app, and what the client sent
// meanwhile; mu is held.
func (up *h2uConn) open(st *h2stream) {
	c := up.c
	if up.nextID > maxStreamID {
		up.gone = true
		c.upConn().attach(st)
		return
	}
	st.uid = up.nextID
	up.nextID += 2
	up.streams[st.uid] = st
	st.upOut.window = int64(up.peer.initWindow)
	st.upIn.avail = h2StreamWindow
	st.sent = c.h.later(st.start)
	bodyless := st.reqEnded && len(st.upOut.pend) == 0 && st.upOut.trailers == nil
	up.peer.headers(st.uid, st.reqFields, bodyless)
	st.reqFields = nil
	if bodyless {
		st.upOut.done = true
		return
	}
	st.upOut.end = st.upOut.end || st.reqEnded
	c.giveBack(st, up.peer.pump(st.uid, &st.upOut))
}

// spliceData passes a client's DATA to the app; mu is held.
func (c *h2sConn) spliceData(st *h2stream, data []byte, end bool) {
	if st.upOut.done {
		c.giveBack(st, len(data))
		return
	}
	if st.uid == 0 {
		st.upOut.pend = append(st.upOut.pend, data...)
		st.upOut.end = st.upOut.end || end
		return
	}
	c.giveBack(st, st.up.peer.data(st.uid, &st.upOut, data, end))
}

// requestTrailers takes the trailers that end a request; mu is held.
func (c *h2sConn) requestTrailers(st *h2stream, fields []hpack.HeaderField) {
	st.reqEnded = true
	if st.rw != nil {
		c.handlerTrailers(st, slices.Clone(fields)) // kept: fields are the header reader's
		return
	}
	if st.upOut.done {
		return
	}
	fields = filterFields(fields, false)
	if st.uid == 0 {
		st.upOut.trailers, st.upOut.end = fields, true
		return
	}
	st.up.peer.endWith(st.uid, &st.upOut, fields)
}

// filterFields drops the fields a proxy must not pass on (connection-
// specific ones, and hop-by-hop ones as ReverseProxy does); keepTE keeps
// "te: trailers".
func filterFields(fields []hpack.HeaderField, keepTE bool) []hpack.HeaderField {
	out := fields[:0:0]
	for _, f := range fields {
		if hopByHop([]byte(f.Name)) && !(keepTE && f.Name == "te") {
			continue
		}
		out = append(out, f)
	}
	return out
}

// readLoop reads the app's frames until the connection fails.
func (up *h2uConn) readLoop() {
	c := up.c
	for {
		f, err := up.hr.readFrame()
		c.mu.Lock()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if st := up.streams[se.StreamID]; st != nil {
					up.peer.rst(se.StreamID, se.Code)
					up.remove(st)
					c.upstreamFailed(st, errUpstream, err)
				}
				c.mu.Unlock()
				c.syncState()
				continue
			}
			if !up.gotFrame && bytes.HasPrefix(up.first.b, []byte("HTTP/1.")) {
				err = errAppSpeaksHTTP1
			}
			up.fail(err)
			c.mu.Unlock()
			c.syncState()
			return
		}
		up.gotFrame = true
		// What the app sends goes on to the client: while the client's
		// writer holds h2WriteQueueMax, the app's frames wait in its
		// socket (and its windows), not in tidegate.
		for c.down.out.full() && !c.closed && !up.dead {
			c.down.out.starved = true
			c.cond.Wait()
		}
		if up.dead {
			c.mu.Unlock()
			c.syncState()
			return
		}
		if ok := up.process(f); !ok || up.peer.out.controlFlood() {
			err := errUpstreamProtocol
			if ok {
				err = errAppControlFlood
			}
			up.fail(err)
			c.mu.Unlock()
			c.syncState()
			return
		}
		c.mu.Unlock()
		c.syncState()
	}
}

var (
	errUpstreamProtocol = errors.New("the app broke the HTTP/2 protocol")
	errAppControlFlood  = errors.New("the app does not read the control frames it makes tidegate send " +
		"(ACKs of its SETTINGS and PINGs, resets, window updates)")
	errAppSpeaksHTTP1 = errors.New("the app answered in HTTP/1.1, not h2c: point the upstream at the gRPC server, " +
		"or use --upstream-protocol http1 if the app is not gRPC")
)

// firstBytes keeps the first bytes read from the app's connection.
type firstBytes struct {
	r io.Reader
	b []byte
}

func (f *firstBytes) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if len(f.b) < 16 && n > 0 {
		f.b = append(f.b, p[:min(n, 16-len(f.b))]...)
	}
	return n, err
}

// process handles one frame from the app; mu is held. false: the app
// broke the protocol and the connection is dropped.
func (up *h2uConn) process(f http2.Frame) bool {
	c := up.c
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if st := up.streams[f.StreamID]; st != nil {
			c.onUpHeaders(st, f)
		}
	case *http2.DataFrame:
		n := f.Header().Length
		if !up.in.take(n) {
			return false
		}
		data := f.Data()
		st := up.streams[f.StreamID]
		if st == nil || st.out.done {
			up.giveConn(int(n))
			return true
		}
		if !st.upIn.take(n) || !st.respSeen {
			up.giveConn(int(n))
			up.peer.rst(st.uid, http2.ErrCodeProtocol)
			up.remove(st)
			c.upstreamFailed(st, errUpstream, errUpstreamProtocol)
			return true
		}
		if pad := int(n) - len(data); pad > 0 {
			up.giveBack(st, pad)
		}
		st.bytes += int64(len(data))
		up.giveBack(st, c.down.data(st.id, &st.out, data, f.StreamEnded()))
		if f.StreamEnded() {
			up.responseEnded(st)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if !growWindow(&up.peer.window, f.Increment) {
				return false
			}
			for _, st := range up.streams {
				c.giveBack(st, up.peer.pump(st.uid, &st.upOut))
			}
			return true
		}
		if st := up.streams[f.StreamID]; st != nil {
			if !growWindow(&st.upOut.window, f.Increment) {
				up.peer.rst(st.uid, http2.ErrCodeFlowControl)
				up.remove(st)
				c.upstreamFailed(st, errUpstream, errUpstreamProtocol)
				return true
			}
			c.giveBack(st, up.peer.pump(st.uid, &st.upOut))
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return true
		}
		err := up.peer.applySettings(f, func(delta int64) {
			for _, st := range up.streams {
				st.upOut.window += delta
			}
		})
		if err != nil {
			return false
		}
		if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
			up.maxStreams = v
		}
		up.peer.settingsAck()
		for _, st := range up.streams {
			c.giveBack(st, up.peer.pump(st.uid, &st.upOut))
		}
		up.startWaiting()
	case *http2.PingFrame:
		if !f.IsAck() {
			up.peer.ping(true, f.Data)
		}
	case *http2.RSTStreamFrame:
		if st := up.streams[f.StreamID]; st != nil {
			up.remove(st)
			c.upstreamReset(st, f.ErrCode)
		}
	case *http2.GoAwayFrame:
		up.goAway(f.LastStreamID, f.ErrCode)
	case *http2.PushPromiseFrame:
		return false // push is off (SETTINGS_ENABLE_PUSH 0)
	}
	return true
}

// onUpHeaders relays the app's response headers or trailers; mu is held.
func (c *h2sConn) onUpHeaders(st *h2stream, f *http2.MetaHeadersFrame) {
	up := st.up
	if st.out.done {
		return
	}
	if f.Truncated {
		// Over the 1 MiB the HTTP/1.1 transport allows too.
		up.peer.rst(st.uid, http2.ErrCodeCancel)
		up.remove(st)
		c.upstreamFailed(st, errUpstream, errors.New("the app's header block is over 1 MiB"))
		return
	}
	if st.respSeen {
		if !f.StreamEnded() {
			up.peer.rst(st.uid, http2.ErrCodeProtocol)
			up.remove(st)
			c.upstreamFailed(st, errUpstream, errUpstreamProtocol)
			return
		}
		c.down.endWith(st.id, &st.out, filterFields(f.RegularFields(), false))
		up.responseEnded(st)
		return
	}
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if err != nil || code < 100 || code > 999 || code == http.StatusSwitchingProtocols {
		up.peer.rst(st.uid, http2.ErrCodeProtocol)
		up.remove(st)
		c.upstreamFailed(st, errUpstream, errUpstreamProtocol)
		return
	}
	if code < 200 {
		c.down.headers(st.id, c.responseFields(status, f.RegularFields(), ""), false)
		return
	}
	st.respSeen, st.status, st.headers = true, code, c.h.later(st.start)
	if c.s.draining.Load() {
		c.beginGoAwayLocked()
	}
	id := st.reqID
	if !c.h.genID {
		id = "" // adds none
	}
	c.down.headers(st.id, c.responseFields(status, f.RegularFields(), id), f.StreamEnded())
	if f.StreamEnded() {
		st.out.done = true
		up.responseEnded(st)
	}
}

// responseFields is the app's response header block for the client:
// hop-by-hop fields dropped, the request id and a Date added if absent.
func (c *h2sConn) responseFields(status string, fields []hpack.HeaderField, id string) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fields)+3)
	out = append(out, hpack.HeaderField{Name: ":status", Value: status})
	hasID, hasDate := id == "", false
	for _, f := range fields {
		switch f.Name {
		case "x-request-id":
			hasID = true
		case "date":
			hasDate = true
		case "trailer":
			// The trailers announced, as ReverseProxy's answers have it.
		default:
			if hopByHop([]byte(f.Name)) {
				continue
			}
		}
		out = append(out, f)
	}
	if !hasID {
		out = append(out, requestIDField(id))
	}
	if !hasDate {
		out = append(out, hpack.HeaderField{Name: "date", Value: httpDateString()})
	}
	return out
}

// responseEnded notes that the app ended st's response; mu is held.
func (up *h2uConn) responseEnded(st *h2stream) {
	st.upEnded = true
	if st.upOut.done {
		up.remove(st) // both halves closed on the app's side
	}
	up.c.maybeFinish(st)
}

// upstreamReset relays the app's RST_STREAM; mu is held.
func (c *h2sConn) upstreamReset(st *h2stream, code http2.ErrCode) {
	st.upOut.done = true
	if st.out.done {
		c.maybeFinish(st)
		return
	}
	switch {
	case code == http2.ErrCodeNo && st.upEnded:
		// The app answered in full and does not want the rest of the
		// request: the client's stream ends when the answer has gone.
		return
	case code == http2.ErrCodeRefusedStream && !st.respSeen:
		// Not processed: the client may retry it.
		f := failure{http.StatusServiceUnavailable, ReasonUpstreamReset, true, "upstream refused the stream"}
		st.failure = &f
		c.resetStream(st, http2.ErrCodeRefusedStream, false)
		return
	}
	c.upstreamFailed(st, failure{http.StatusBadGateway, ReasonUpstreamReset, true,
		"upstream closed the connection before responding"}, errors.New("app reset the stream: "+code.String()))
}

// upstreamFailed answers a stream whose app side failed: a 502 or 504 if
// no response began (its text as DATA, but for a HEAD), else
// RST_STREAM(INTERNAL_ERROR); mu is held.
func (c *h2sConn) upstreamFailed(st *h2stream, f failure, err error) {
	st.upOut.done = true
	if st.out.done || st.finished {
		c.maybeFinish(st)
		return
	}
	h := c.h
	if st.respSeen {
		st.aborted = true
		c.resetStream(st, http2.ErrCodeInternal, false)
		return
	}
	st.failure = &f
	if h.metrics != nil {
		h.metrics.upstreamError(f.reason)
	}
	h.log.Warn("upstream request failed",
		zap.String("reason", string(f.reason)), zap.Int("status", f.status),
		zap.String("method", st.method), zap.String("path", st.path),
		zap.String("request_id", st.reqID), zap.Error(err))
	body := f.body()
	fields := []hpack.HeaderField{
		{Name: ":status", Value: strconv.Itoa(f.status)},
		{Name: "content-type", Value: "text/plain; charset=utf-8"},
		{Name: "x-content-type-options", Value: "nosniff"},
		{Name: "x-tidegate-reason", Value: string(f.reason)},
		{Name: "content-length", Value: strconv.Itoa(len(body))},
		{Name: "date", Value: httpDateString()},
	}
	if st.reqID != "" {
		fields = append(fields, requestIDField(st.reqID))
	}
	if st.method == http.MethodHead {
		// No content in an answer to HEAD (RFC 9110 §9.3.2): the header
		// block, whose content-length is the GET's, ends the stream.
		c.down.headers(st.id, fields, true)
		st.out.done = true
		c.maybeFinish(st)
		return
	}
	c.down.headers(st.id, fields, false)
	st.bytes += int64(len(body))
	c.down.data(st.id, &st.out, []byte(body), true)
	c.maybeFinish(st)
}

// spliceGone cancels st's app side after the client's side ended early;
// mu is held.
func (c *h2sConn) spliceGone(st *h2stream) {
	up := st.up
	if up == nil {
		return
	}
	if st.uid != 0 && up.streams[st.uid] == st {
		if !up.dead {
			up.peer.rst(st.uid, http2.ErrCodeCancel)
		}
		up.remove(st)
		return
	}
	if n := len(st.upOut.pend); n > 0 {
		c.giveConn(n)
	}
	st.upOut.done, st.upOut.pend = true, nil
}

// finishSplice lets go of a finished spliced stream's app side; mu is
// held.
func (c *h2sConn) finishSplice(st *h2stream) {
	up := st.up
	if st.uid != 0 && up.streams[st.uid] == st {
		if !up.dead {
			up.peer.rst(st.uid, http2.ErrCodeCancel)
		}
		up.remove(st)
	}
	for i, w := range up.waiting {
		if w == st {
			up.waiting = append(up.waiting[:i], up.waiting[i+1:]...)
			break
		}
	}
}

// record accounts for a finished stream that the handler did not serve
// (spliced or direct), as finishFast does; mu is held.
func (c *h2sConn) record(st *h2stream) {
	h := c.h
	h.tracker.RequestDone()
	end := h.later(st.start)
	status := st.status
	reason := ""
	switch {
	case st.failure != nil:
		status, reason = st.failure.status, string(st.failure.reason)
	case st.clientRst:
		status, reason = StatusClientClosed, string(ReasonClientCanceled)
	case st.aborted:
		reason = "aborted"
	}
	if h.metrics != nil {
		h.metrics.observe(st.method, status, end.Sub(st.start).Seconds())
	}
	if h.access == nil {
		return
	}
	var upstream time.Duration
	if !st.sent.IsZero() && !st.headers.IsZero() {
		upstream = st.headers.Sub(st.sent)
	}
	h.logAccess(accessEntry{method: st.method, path: st.path, proto: "HTTP/2.0", status: status,
		bytes: st.bytes, duration: end.Sub(st.start), upstream: upstream, id: st.reqID, remote: c.remote, reason: reason})
}

// remove forgets st's stream on the app; mu is held.
func (up *h2uConn) remove(st *h2stream) {
	if up.streams[st.uid] != st {
		return
	}
	delete(up.streams, st.uid)
	if n := len(st.upOut.pend); n > 0 {
		up.c.giveConn(n) // never sent: the client's window gets it back
	}
	st.upOut.done, st.upOut.pend = true, nil
	up.startWaiting()
	if up.gone && len(up.streams) == 0 && len(up.waiting) == 0 {
		up.close()
	}
}

// goAway handles the app's GOAWAY: streams above last were not processed
// and are refused to the client, which may retry them; new streams go to
// a new connection; mu is held.
func (up *h2uConn) goAway(last uint32, code http2.ErrCode) {
	c := up.c
	up.gone = true
	if c.up == up {
		c.up = nil
	}
	if code != http2.ErrCodeNo {
		c.s.log.Warn("the app sent GOAWAY", zap.String("code", code.String()))
	}
	for id, st := range up.streams {
		if id > last {
			up.remove(st)
			c.upstreamReset(st, http2.ErrCodeRefusedStream)
		}
	}
	up.startWaiting()
	if len(up.streams) == 0 {
		up.close()
	}
}

// fail ends up after an error: its streams get 502 (or 504), or a reset
// if their answer had begun; mu is held.
func (up *h2uConn) fail(err error) {
	if up.dead {
		return
	}
	up.close()
	c := up.c
	f := classify(context.Background(), err)
	if !f.upstream {
		f = failure{http.StatusBadGateway, ReasonUpstreamReset, true, "upstream closed the connection before responding"}
	}
	streams := make([]*h2stream, 0, len(up.streams)+len(up.waiting))
	for _, st := range up.streams {
		streams = append(streams, st)
	}
	streams = append(streams, up.waiting...)
	up.streams, up.waiting = map[uint32]*h2stream{}, nil
	for _, st := range streams {
		c.upstreamFailed(st, f, err)
	}
}

// close drops the connection to the app; mu is held.
func (up *h2uConn) close() {
	if up.dead {
		return
	}
	up.dead, up.gone = true, true
	if up.c.up == up {
		up.c.up = nil
	}
	up.c.cond.Broadcast() // its reader may wait for room on the client's side
	if up.nc != nil {
		_ = up.nc.Close()
		close(up.peer.out.done)
	}
}

// closeWhenIdle closes up once its streams are done (they are being torn
// down with the client connection); mu is held.
func (up *h2uConn) closeWhenIdle() {
	up.gone = true
	if len(up.streams) == 0 {
		up.close()
	}
}

// giveBack returns n bytes of st's response to the app's windows; mu is
// held.
func (up *h2uConn) giveBack(st *h2stream, n int) {
	if n <= 0 || up.dead {
		return
	}
	up.giveConn(n)
	if up.streams[st.uid] != st {
		return
	}
	up.peer.giveBack(&st.upIn, st.uid, n, h2StreamWindow)
}

func (up *h2uConn) giveConn(n int) {
	if !up.dead {
		up.peer.giveBack(&up.in, 0, n, h2ConnWindow)
	}
}
