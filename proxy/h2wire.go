package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The write side of tidegate's own HTTP/2 connections (h2serve.go,
// h2splice.go): frames are appended to a buffer under the owner's lock and
// a writer goroutine per connection sends what has gathered in one write.
// A goroutine that serves many streams (the reader of a connection that
// carries a batch of requests) so writes the whole batch's frames with one
// system call, and no reader ever blocks on a peer that does not read.

// HTTP/2 frame types and flags tidegate writes (RFC 9113 §6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4

	// h2DefaultMaxFrame is SETTINGS_MAX_FRAME_SIZE until the peer says
	// otherwise, and the largest frame tidegate reads.
	h2DefaultMaxFrame = 16 << 10
	// h2DefaultWindow is the initial flow-control window of RFC 9113.
	h2DefaultWindow = 65535
	// h2MaxWindow is the largest flow-control window (2^31-1).
	h2MaxWindow = 1<<31 - 1
)

// frameOut gathers the frames written to one connection. Writers append
// under mu, the owner's lock; run writes them out.
type frameOut struct {
	mu     *sync.Mutex
	nc     net.Conn
	buf    []byte // frames not yet handed to the writer; guarded by mu
	spare  []byte // the writer's previous buffer, for reuse; guarded by mu
	poke   chan struct{}
	done   chan struct{} // closed when the connection is finished with
	exited chan struct{} // closed when run returns
	close  bool          // close nc once buf is written; guarded by mu
	yield  *atomic.Int32 // handler goroutines writing here; nil: none ever
	// linger, when set, makes the close after the last write a half-close
	// (finish): the owner's reader reads on and closes nc at the peer's
	// EOF, or after linger at most. Zero: nc is closed at once.
	linger time.Duration
}

func newFrameOut(mu *sync.Mutex, nc net.Conn) *frameOut {
	return &frameOut{mu: mu, nc: nc, poke: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
}

// wake tells the writer there is something to write; mu is held.
func (o *frameOut) wake() {
	select {
	case o.poke <- struct{}{}:
	default:
	}
}

// closeAfterFlush closes the connection once what is buffered is written;
// mu is held.
func (o *frameOut) closeAfterFlush() {
	o.close = true
	o.wake()
}

// run writes until the connection fails or done is closed. failed is
// called, without mu, when a write fails.
func (o *frameOut) run(failed func(error)) {
	defer close(o.exited)
	for {
		select {
		case <-o.poke:
		case <-o.done:
			return
		}
		// While handlers run, let those ready to run (whose answers came
		// in the same poll) add their frames first: one write for all of
		// them instead of one each. (A splicing reader batches by itself.)
		if o.yield != nil && o.yield.Load() > 0 {
			runtime.Gosched()
		}
		o.mu.Lock()
		b, closeAfter := o.buf, o.close
		o.buf = o.spare[:0]
		o.spare = nil
		o.mu.Unlock()
		if len(b) > 0 {
			if _, err := o.nc.Write(b); err != nil {
				failed(err)
				return
			}
		}
		if closeAfter {
			o.finish()
			return
		}
		if cap(b) <= 64<<10 { // keep a buffer of usual size, not a burst's
			o.mu.Lock()
			if o.spare == nil {
				o.spare = b[:0]
			}
			o.mu.Unlock()
		}
	}
}

// finish ends nc once the last frames are written. A full close while
// the peer's bytes sit unread in the socket (a WINDOW_UPDATE for the last
// DATA, a stream opened after GOAWAY) makes the kernel answer with a
// reset instead of a FIN, and drop what of the last frames it has not
// sent yet: the peer may lose the end of the last answer. So with linger
// set, and a connection that can, finish sends a FIN and leaves the close
// to the owner's reader, which reads (and drops) what still comes until
// the peer's EOF, or until the read deadline set here.
func (o *frameOut) finish() {
	cw, ok := o.nc.(interface{ CloseWrite() error })
	if o.linger <= 0 || !ok || cw.CloseWrite() != nil {
		_ = o.nc.Close()
		return
	}
	_ = o.nc.SetReadDeadline(time.Now().Add(o.linger))
}

// h2peer is the sending side of one HTTP/2 connection: its frame buffer,
// header encoder and the flow-control limits the peer set. Its methods are
// called with the owner's lock held.
type h2peer struct {
	out        *frameOut
	enc        *hpack.Encoder
	encBuf     bytes.Buffer
	window     int64  // the connection's send window
	initWindow int32  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame   uint32 // the peer's SETTINGS_MAX_FRAME_SIZE

	recvUnacked int32 // connection-level bytes received and used, not yet returned
}

func (p *h2peer) init(out *frameOut) {
	p.out = out
	p.enc = hpack.NewEncoder(&p.encBuf)
	p.window = h2DefaultWindow
	p.initWindow = h2DefaultWindow
	p.maxFrame = h2DefaultMaxFrame
}

func (p *h2peer) frameHeader(length int, typ, flags byte, stream uint32) {
	p.out.buf = appendFrameHeader(p.out.buf, length, typ, flags, stream)
	p.out.wake()
}

// settings writes a SETTINGS frame.
func (p *h2peer) settings(ss ...http2.Setting) {
	p.frameHeader(6*len(ss), frameSettings, 0, 0)
	for _, s := range ss {
		p.out.buf = binary.BigEndian.AppendUint16(p.out.buf, uint16(s.ID))
		p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, s.Val)
	}
}

func (p *h2peer) settingsAck() { p.frameHeader(0, frameSettings, frameFlagAck, 0) }

func (p *h2peer) ping(ack bool, data [8]byte) {
	var flags byte
	if ack {
		flags = frameFlagAck
	}
	p.frameHeader(8, frameTypePing, flags, 0)
	p.out.buf = append(p.out.buf, data[:]...)
}

func (p *h2peer) goAway(last uint32, code http2.ErrCode) {
	p.frameHeader(8, frameTypeGoAwy, 0, 0)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, last)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, uint32(code))
}

func (p *h2peer) rst(stream uint32, code http2.ErrCode) {
	p.frameHeader(4, frameRSTStream, 0, stream)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, uint32(code))
}

func (p *h2peer) windowUpdate(stream uint32, n uint32) {
	p.frameHeader(4, frameWindowUpdate, 0, stream)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, n)
}

// headers encodes fields into a HEADERS frame and as many CONTINUATION
// frames as the peer's frame size needs.
func (p *h2peer) headers(stream uint32, fields []hpack.HeaderField, end bool) {
	p.encBuf.Reset()
	for _, f := range fields {
		_ = p.enc.WriteField(f) // writes to a bytes.Buffer: no error
	}
	block := p.encBuf.Bytes()
	typ := byte(frameHeaders)
	var flags byte
	if end {
		flags = flagEndStream
	}
	for {
		n := min(len(block), int(p.maxFrame))
		f := flags
		if n == len(block) {
			f |= flagEndHeaders
		}
		p.frameHeader(n, typ, f, stream)
		p.out.buf = append(p.out.buf, block[:n]...)
		block = block[n:]
		if len(block) == 0 {
			return
		}
		typ, flags = frameContinuation, 0
	}
}

// h2flow is one direction of a stream on the sending side: its window at
// the receiver and what waits for that window to open.
type h2flow struct {
	window   int64
	pend     []byte // data waiting for the window
	end      bool   // END_STREAM goes after pend
	trailers []hpack.HeaderField
	done     bool // END_STREAM sent, or the stream was reset
}

// data sends what of b the windows allow, in frames of the peer's size,
// and keeps the rest until pump; end ends the stream after b. It returns
// how many bytes of b went out now.
func (p *h2peer) data(stream uint32, f *h2flow, b []byte, end bool) int {
	if f.done {
		return 0
	}
	if len(f.pend) > 0 {
		f.pend = append(f.pend, b...)
		f.end = f.end || end
		return 0
	}
	sent := p.sendData(stream, f, b, end)
	if rest := b[sent:]; len(rest) > 0 {
		f.pend = append(f.pend[:0], rest...)
		f.end = end
		return sent
	}
	if end && !f.done {
		p.finishFlow(stream, f)
	}
	return sent
}

// endWith queues trailers, which end the stream after any pending data.
func (p *h2peer) endWith(stream uint32, f *h2flow, trailers []hpack.HeaderField) {
	if f.done {
		return
	}
	f.trailers, f.end = trailers, true
	if len(f.pend) == 0 {
		p.finishFlow(stream, f)
	}
}

// pump sends what is pending on f as far as the windows allow and returns
// the bytes sent.
func (p *h2peer) pump(stream uint32, f *h2flow) int {
	if f.done || (len(f.pend) == 0 && !f.end) {
		return 0
	}
	sent := p.sendData(stream, f, f.pend, f.end)
	n := copy(f.pend, f.pend[sent:])
	f.pend = f.pend[:n]
	if n == 0 {
		if cap(f.pend) > 64<<10 {
			f.pend = nil
		}
		if f.end && !f.done {
			p.finishFlow(stream, f)
		}
	}
	return sent
}

// sendData writes DATA frames of b within the windows and returns how
// much went. end puts END_STREAM on the frame that carries the last of b,
// if it goes and no trailers follow.
func (p *h2peer) sendData(stream uint32, f *h2flow, b []byte, end bool) int {
	sent := 0
	for len(b) > 0 {
		n := int64(len(b))
		n = min(n, f.window, p.window, int64(p.maxFrame))
		if n <= 0 {
			break
		}
		var flags byte
		if end && n == int64(len(b)) && f.trailers == nil {
			flags, f.done = flagEndStream, true
		}
		p.frameHeader(int(n), frameData, flags, stream)
		p.out.buf = append(p.out.buf, b[:n]...)
		f.window -= n
		p.window -= n
		b = b[n:]
		sent += int(n)
	}
	return sent
}

// finishFlow ends the stream: its trailers, or END_STREAM on an empty DATA
// frame.
func (p *h2peer) finishFlow(stream uint32, f *h2flow) {
	f.done = true
	if f.trailers != nil {
		p.headers(stream, f.trailers, true)
		f.trailers = nil
		return
	}
	p.frameHeader(0, frameData, flagEndStream, stream)
}

// applySettings takes the peer's SETTINGS. grow is called for each open
// stream's flow when the initial window changes, with the difference.
func (p *h2peer) applySettings(sf *http2.SettingsFrame, grow func(delta int64)) error {
	return sf.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(p.initWindow)
			p.initWindow = int32(s.Val)
			if delta != 0 {
				grow(delta)
			}
		case http2.SettingMaxFrameSize:
			p.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			p.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
}

// growWindow adds n to a send window; false if it would pass 2^31-1, a
// FLOW_CONTROL_ERROR.
func growWindow(w *int64, n uint32) bool {
	*w += int64(n)
	return *w <= h2MaxWindow
}

// h2inflow is the receiving side of a stream's window: what the peer may
// still send, and what has been used but not yet given back.
type h2inflow struct {
	avail   int32
	unacked int32
}

// take accounts for n bytes received; false if the peer sent more than its
// window, a FLOW_CONTROL_ERROR.
func (f *h2inflow) take(n uint32) bool {
	if int64(n) > int64(f.avail) {
		return false
	}
	f.avail -= int32(n)
	return true
}

// giveBack returns n used bytes of a receive window to the peer (stream
// 0: the connection's). Small amounts wait until a quarter of the window
// has gathered, so that small messages cost no WINDOW_UPDATE each.
func (p *h2peer) giveBack(in *h2inflow, stream uint32, n int, window int32) {
	in.unacked += int32(n)
	if in.unacked < window/4 {
		return
	}
	p.windowUpdate(stream, uint32(in.unacked))
	in.avail += in.unacked
	in.unacked = 0
}

// requestIDField is an X-Request-Id field, sent never-indexed: a value
// that never repeats would only churn the peer's HPACK table (and ours).
func requestIDField(id string) hpack.HeaderField {
	return hpack.HeaderField{Name: "x-request-id", Value: id, Sensitive: true}
}
