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
//
// What a connection holds for a peer that does not read is bounded
// (frameOut): DATA waits for room in the buffer, the frames a reader must
// answer with (ACKs, resets, window updates) are counted and a peer that
// lets too many of them pile up is cut off, and a write that does not go
// through within h2WriteStall closes the connection.

// The bounds of one connection's writer (frameOut).
const (
	// h2WriteQueueMax bounds the bytes of DATA frames a connection's
	// writer holds: the frames queued plus the batch being written. A
	// DATA frame that does not fit waits (in its stream's pending bytes,
	// bounded by the windows tidegate announces, or in a blocked handler)
	// until the writer has written what it holds. Header blocks and
	// control frames are not held back, but are bounded elsewhere: header
	// blocks by the streams (their senders wait for room before one),
	// control frames by h2MaxQueuedControl. So a connection's writer
	// holds at most h2WriteQueueMax plus h2MaxQueuedControl small frames
	// plus one header block per stream, whatever the peer does.
	h2WriteQueueMax = 256 << 10

	// h2MaxQueuedControl is the most control frames (SETTINGS and PING
	// ACKs, RST_STREAM, WINDOW_UPDATE, and the 431 answers to header
	// blocks over the limit) a connection's writer may hold for a peer:
	// the frames a peer makes tidegate write without reading them. Past
	// it the connection is closed (ENHANCE_YOUR_CALM), as x/net's
	// maxQueuedControlFrames does, with the same number.
	h2MaxQueuedControl = 10000

	// h2WriteStall bounds how long one write of the writer (a batch of
	// frames: at most h2WriteQueueMax of DATA and the control frames
	// queued meanwhile) may take before the connection is closed, as
	// nginx's send_timeout bounds each of its writes: a peer that stops
	// reading does not hold its connection, its streams and what they
	// buffered until the idle timeout. A peer that reads keeps up easily:
	// a write returns once its bytes are in the kernel's send buffer, so
	// only a peer that takes less than about h2WriteQueueMax per
	// h2WriteStall (4 KiB/s) is cut. Progress within a write is not
	// enough: the kernel takes a trickle of bytes into a full send buffer
	// even when the peer reads nothing. The deadline is moved at most
	// once per h2WriteStall/8, so a write gets between 7/8 of it and all
	// of it.
	h2WriteStall = 60 * time.Second

	// h2MinDataCut is the smallest DATA frame cut short to fit the room
	// left in a writer's buffer: below it the frame waits for more room
	// instead, not to fill the wire with slivers.
	h2MinDataCut = 4 << 10
)

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
//
// Bounds (see the constants above): DATA senders (h2peer.sendData) take
// no more than room() leaves, and set starved when it stopped them; the
// writer calls room back, under mu, once it has written what it held, so
// that they send on. Control frames are counted in ctrl; the owner's
// reader checks controlFlood after each frame it answers. Every write has
// a deadline (h2WriteStall).
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
	// EOF, or after linger at most. Zero: nc is closed at once. Guarded
	// by mu.
	linger time.Duration

	// Guarded by mu.
	writing     int           // bytes of the batch being written
	ctrl        int           // control frames in buf
	ctrlWriting int           // control frames in the batch being written
	starved     bool          // a sender waits for room
	room        func()        // called with mu held when room came after starved; nil: none
	stall       time.Duration // h2WriteStall; zero: no write deadline
	armed       time.Time     // the write deadline set on nc
	fixed       bool          // the deadline is closeWithin's: not moved any more
	peak        int           // the most bytes ever held (queued plus being written)
}

func newFrameOut(mu *sync.Mutex, nc net.Conn) *frameOut {
	return &frameOut{mu: mu, nc: nc, poke: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{}),
		stall: h2WriteStall}
}

// wake tells the writer there is something to write; mu is held.
func (o *frameOut) wake() {
	select {
	case o.poke <- struct{}{}:
	default:
	}
}

// held is the bytes the writer holds: queued and being written; mu is
// held.
func (o *frameOut) held() int { return len(o.buf) + o.writing }

// full reports whether the writer holds h2WriteQueueMax bytes or more;
// mu is held. A sender that waits because of it sets starved.
func (o *frameOut) full() bool { return o.held() >= h2WriteQueueMax }

// control counts a control frame just queued; mu is held.
func (o *frameOut) control() { o.ctrl++ }

// controlFlood reports whether the peer let more than h2MaxQueuedControl
// control frames pile up; mu is held.
func (o *frameOut) controlFlood() bool { return o.ctrl+o.ctrlWriting > h2MaxQueuedControl }

// closeAfterFlush closes the connection once what is buffered is written;
// mu is held.
func (o *frameOut) closeAfterFlush() {
	o.close = true
	o.wake()
}

// closeWithin is closeAfterFlush, giving the writes left at most d; mu
// is held.
func (o *frameOut) closeWithin(d time.Duration) {
	o.closeAfterFlush()
	o.fixed = true
	o.armed = time.Now().Add(d)
	_ = o.nc.SetWriteDeadline(o.armed)
}

// armStall moves the write deadline to h2WriteStall from now, unless the
// one set falls late enough; mu is held.
func (o *frameOut) armStall() {
	if o.stall <= 0 || o.fixed {
		return
	}
	now := time.Now()
	if o.armed.Sub(now) >= o.stall-o.stall/8 {
		return
	}
	o.armed = now.Add(o.stall)
	_ = o.nc.SetWriteDeadline(o.armed)
}

// run writes until the connection fails or done is closed. failed is
// called, without mu, when a write fails.
func (o *frameOut) run(failed func(error)) {
	defer o.exit()
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
		b, closeAfter, linger := o.buf, o.close, o.linger
		o.buf = o.spare[:0]
		o.spare = nil
		o.writing, o.ctrlWriting, o.ctrl = len(b), o.ctrl, 0
		o.peak = max(o.peak, len(b))
		if len(b) > 0 {
			o.armStall()
		}
		o.mu.Unlock()
		if len(b) > 0 {
			if err := o.write(b); err != nil {
				failed(err)
				return
			}
		}
		if closeAfter {
			o.finish(linger)
			return
		}
		o.mu.Lock()
		o.peak = max(o.peak, o.held())
		o.writing, o.ctrlWriting = 0, 0
		if o.spare == nil && cap(b) <= 64<<10 { // keep a buffer of usual size, not a burst's
			o.spare = b[:0]
		}
		if o.starved {
			o.starved = false
			if o.room != nil {
				o.room()
			}
		}
		o.mu.Unlock()
	}
}

// write writes b within the deadline armStall set.
func (o *frameOut) write(b []byte) error {
	_, err := o.nc.Write(b)
	return err
}

// exit lets go of the buffers once the writer is done: a connection that
// failed holding a full buffer keeps none of it.
func (o *frameOut) exit() {
	o.mu.Lock()
	o.release()
	o.mu.Unlock()
	close(o.exited)
}

// release drops what the writer holds; mu is held. The owner calls it
// again once it has stopped queueing, for frames queued after exit.
func (o *frameOut) release() {
	o.buf, o.spare = nil, nil
	o.writing, o.ctrlWriting, o.ctrl = 0, 0, 0
}

// finish ends nc once the last frames are written. A full close while
// the peer's bytes sit unread in the socket (a WINDOW_UPDATE for the last
// DATA, a stream opened after GOAWAY) makes the kernel answer with a
// reset instead of a FIN, and drop what of the last frames it has not
// sent yet: the peer may lose the end of the last answer. So with linger
// set, and a connection that can, finish sends a FIN and leaves the close
// to the owner's reader, which reads (and drops) what still comes until
// the peer's EOF, or until the read deadline set here.
func (o *frameOut) finish(linger time.Duration) {
	cw, ok := o.nc.(interface{ CloseWrite() error })
	if linger <= 0 || !ok || cw.CloseWrite() != nil {
		_ = o.nc.Close()
		return
	}
	_ = o.nc.SetReadDeadline(time.Now().Add(linger))
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

func (p *h2peer) settingsAck() {
	p.frameHeader(0, frameSettings, frameFlagAck, 0)
	p.out.control()
}

func (p *h2peer) ping(ack bool, data [8]byte) {
	var flags byte
	if ack {
		flags = frameFlagAck
	}
	p.frameHeader(8, frameTypePing, flags, 0)
	p.out.buf = append(p.out.buf, data[:]...)
	if ack {
		p.out.control()
	}
}

func (p *h2peer) goAway(last uint32, code http2.ErrCode) {
	p.frameHeader(8, frameTypeGoAwy, 0, 0)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, last)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, uint32(code))
}

func (p *h2peer) rst(stream uint32, code http2.ErrCode) {
	p.frameHeader(4, frameRSTStream, 0, stream)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, uint32(code))
	p.out.control()
}

func (p *h2peer) windowUpdate(stream uint32, n uint32) {
	p.frameHeader(4, frameWindowUpdate, 0, stream)
	p.out.buf = binary.BigEndian.AppendUint32(p.out.buf, n)
	p.out.control()
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

// sendData writes DATA frames of b within the windows and the room left
// in the writer's buffer (h2WriteQueueMax), and returns how much went. end
// puts END_STREAM on the frame that carries the last of b, if it goes and
// no trailers follow. When the room, not a window, held b back, the
// writer's room callback comes once it has written what it holds.
func (p *h2peer) sendData(stream uint32, f *h2flow, b []byte, end bool) int {
	if f.done {
		return 0 // ended or reset while its sender waited
	}
	sent := 0
	for len(b) > 0 {
		want := min(int64(len(b)), f.window, p.window, int64(p.maxFrame))
		if want <= 0 {
			break
		}
		n := min(want, int64(h2WriteQueueMax-frameHeaderLen-p.out.held()))
		if n < want && n < h2MinDataCut {
			p.out.starved = true
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
