package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
	"golang.org/x/net/http2"
)

// Tests of what tidegate's own HTTP/2 server holds for a peer that
// misbehaves (h2wire.go's frameOut): a client or an app that does not
// read, a client that floods control frames, and heads that never end.

// writerHeld returns the bytes the client connection's writer holds now
// (queued and being written), the most it ever held, and the capacity of
// its buffers.
func (c *h2sConn) writerHeld() (held, peak, capacity int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.down.out
	return o.held(), max(o.peak, o.held()), cap(o.buf) + cap(o.spare)
}

// setWriteStall sets the stall bound of the client connection's writer,
// effective from its next write.
func (c *h2sConn) setWriteStall(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down.out.stall, c.down.out.armed = d, time.Time{}
}

// appWriter waits for the app connection of c's spliced streams to be
// dialed, sets its writer's stall bound to stall, and returns it.
func (c *h2sConn) appWriter(t *testing.T, stall time.Duration) *h2uConn {
	t.Helper()
	var up *h2uConn
	wait.For(t, "the app connection is dialed", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.up != nil && c.up.ready {
			up = c.up
			up.peer.out.stall, up.peer.out.armed = stall, time.Time{}
		}
		return up != nil
	})
	return up
}

// appWriterHeld is writerHeld for the app connection up.
func (c *h2sConn) appWriterHeld(up *h2uConn) (held, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := up.peer.out
	return o.held(), max(o.peak, o.held())
}

// writerSlack is what a writer may hold beyond h2WriteQueueMax in these
// tests: a response header block and a few window updates, which are
// not held back.
const writerSlack = 4 << 10

// dialNotReading dials addr with a small receive buffer, for a client
// that will stop reading: the kernel then holds little of what tidegate
// writes, and tidegate's writer soon blocks.
func dialNotReading(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	return nc
}

// streamingApp writes size bytes in 32 KiB writes, counting in wrote what
// it has written, until a write fails.
func streamingApp(size int64, wrote *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		chunk := make([]byte, 32<<10)
		for n := int64(0); n < size; n += int64(len(chunk)) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			wrote.Add(int64(len(chunk)))
		}
	}
}

// TestH2OwnNonReadingClientIsBounded: a client that opens the largest
// windows HTTP/2 allows, asks for a large download and never reads
// makes tidegate hold at most h2WriteQueueMax (plus a header block) in
// its writer, holds the app back, and loses its connection once a write
// has not gone through within the stall bound; the buffers are let go.
// On every path: spliced to an h2c app, the handler, and the direct path.
func TestH2OwnNonReadingClientIsBounded(t *testing.T) {
	const (
		appBody = 256 << 20
		stall   = time.Second
	)
	for _, p := range []h2Path{splicedPath, handlerPath, directPath} {
		t.Run(p.name, func(t *testing.T) {
			var wrote atomic.Int64
			r := p.rig(t, streamingApp(appBody, &wrote))
			c := ownClientOn(t, dialNotReading(t, r.addr), http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2MaxWindow})
			if err := c.fr.WriteWindowUpdate(0, h2MaxWindow-h2DefaultWindow); err != nil {
				t.Fatal(err)
			}
			sc := onlyH2Conn(t, r.srv)
			sc.setWriteStall(stall)
			c.open(1, p.method, "/big", p.body() == nil)
			if b := p.body(); b != nil {
				if err := c.fr.WriteData(1, true, b); err != nil {
					t.Fatal(err)
				}
			}
			// The client reads nothing more.
			start := time.Now()
			peak := 0
			wait.Until(t, 60*time.Second, "the connection of the client that does not read is closed", func() (bool, string) {
				_, pk, _ := sc.writerHeld()
				peak = max(peak, pk)
				if peak > h2WriteQueueMax+writerSlack {
					t.Fatalf("the writer held %d bytes; the bound is %d (the app wrote %d)", peak, h2WriteQueueMax, wrote.Load())
				}
				return len(r.srv.ownH2Conns()) == 0, fmt.Sprintf("the app wrote %d bytes, the writer held at most %d", wrote.Load(), peak)
			})
			lifetime := time.Since(start)
			if w := wrote.Load(); w >= appBody/4 {
				t.Fatalf("the app wrote %d of %d bytes for a client that reads nothing: it was not held back", w, appBody)
			}
			if held, _, capacity := sc.writerHeld(); held != 0 || capacity != 0 {
				t.Fatalf("after the close the writer holds %d bytes in buffers of %d", held, capacity)
			}
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
			t.Logf("the app wrote %d bytes; the writer held at most %d; closed %s after the request (stall bound %s)",
				wrote.Load(), peak, lifetime.Round(time.Millisecond), stall)
		})
	}
}

// TestH2OwnControlFloodClosesTheConnection: a client that makes tidegate
// answer frame after frame (PINGs, SETTINGS, PRIORITY frames that earn a
// RST_STREAM) and reads none of the answers loses its connection once
// h2MaxQueuedControl answers wait, instead of growing tidegate's buffer.
func TestH2OwnControlFloodClosesTheConnection(t *testing.T) {
	const maxFrames = 3_000_000
	for _, tc := range []struct {
		name  string
		write func(fr *http2.Framer) error
	}{
		{"ping", func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'f', 'l', 'o', 'o', 'd'}) }},
		{"settings", func(fr *http2.Framer) error { return fr.WriteSettings() }},
		{"reset", func(fr *http2.Framer) error {
			return fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 15})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No stream is opened: the read-header timeout would close the
			// connection too; only the control-frame bound may here.
			r := ownRig(t, deadUpstream(t), UpstreamH2C, func(o *ServerOptions) { o.ReadHeaderTimeout = time.Hour })
			nc := dialNotReading(t, r.addr)
			t.Cleanup(func() { nc.Close() })
			if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
				t.Fatal(err)
			}
			var chunk bytes.Buffer
			fr := http2.NewFramer(&chunk, nil)
			if err := fr.WriteSettings(); err != nil {
				t.Fatal(err)
			}
			if _, err := nc.Write(chunk.Bytes()); err != nil {
				t.Fatal(err)
			}
			chunk.Reset()
			perChunk := 0
			for chunk.Len() < 64<<10 {
				if err := tc.write(fr); err != nil {
					t.Fatal(err)
				}
				perChunk++
			}
			waitFor(t, func() bool { return len(r.srv.ownH2Conns()) == 1 })
			// Write until the server closes the connection: a write fails,
			// or stops for a while once the server has gone (how soon the
			// kernel says so varies); never more than maxFrames. A write
			// may wait long on a busy machine: once the server's window
			// was shut, the client's kernel probes it with a backoff that
			// reaches tens of seconds.
			//
			// A write that waits 5s while the connection is still there
			// is usually that backoff: the client then reads a few bytes
			// (at most 12 times, 4 KiB each: nothing like reading the
			// answers), which makes tidegate's kernel send a segment that
			// tells the client's kernel the window is open again.
			sent, nudges := 0, 0
			full := chunk.Bytes()
			pending := full
			var err error
			for sent < maxFrames && len(r.srv.ownH2Conns()) == 1 {
				_ = nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
				var n int
				n, err = nc.Write(pending)
				if pending = pending[n:]; len(pending) == 0 {
					pending = full
					sent += perChunk
				}
				if err == nil {
					continue
				}
				if !errors.Is(err, os.ErrDeadlineExceeded) || nudges == 12 || len(r.srv.ownH2Conns()) == 0 {
					break
				}
				nudges++
				_ = nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				var b [4 << 10]byte
				_, _ = nc.Read(b[:])
				err = nil
			}
			if sent >= maxFrames {
				t.Fatalf("tidegate took %d %s frames from a client that reads none of the answers, and kept the connection", sent, tc.name)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && len(r.srv.ownH2Conns()) > 0 {
				buf := make([]byte, 1<<20)
				t.Fatalf("after %d frames tidegate stopped reading instead of closing the connection: %v\n%s", sent, err, buf[:runtime.Stack(buf, true)])
			}
			waitFor(t, func() bool { return len(r.srv.ownH2Conns()) == 0 && r.tracker.ConnectionsTotal() == 0 })
			t.Logf("closed after %d %s frames, %d nudges (%v)", sent, tc.name, nudges, err)
		})
	}
}

// TestH2OwnNonReadingAppIsBounded: the mirror case on a spliced stream:
// an app that opens the largest windows and stops reading makes tidegate
// hold at most h2WriteQueueMax for it and hold the client's upload back
// (the client's windows are not given back); once the writer to the app
// has not gone through within the stall bound, the app connection is dropped and
// the client gets its answer (502).
func TestH2OwnNonReadingAppIsBounded(t *testing.T) {
	const upload = 256 << 20
	stop := make(chan struct{})
	app := newRawH2App(t, func(c *rawH2Conn) {
		_ = c.nc.(*net.TCPConn).SetReadBuffer(4 << 10)
		if c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2MaxWindow}) != nil ||
			c.fr.WriteWindowUpdate(0, h2MaxWindow-h2DefaultWindow) != nil {
			return
		}
		if _, _, ok := c.request(); ok {
			<-stop // reads nothing more
		}
	})
	t.Cleanup(func() { close(stop) })
	r := ownRig(t, app.addr, UpstreamH2C, nil)
	c := dialOwn(t, r.addr)
	sc := onlyH2Conn(t, r.srv)
	c.open(1, http.MethodPost, "/upload", false)
	up := sc.appWriter(t, time.Second)

	chunk := pattern(16 << 10)
	sent, peak := 0, 0
	var answer h2Resp
	for sent < upload {
		_, pk := sc.appWriterHeld(up)
		peak = max(peak, pk)
		if peak > h2WriteQueueMax+writerSlack {
			t.Fatalf("the writer to the app held %d bytes; the bound is %d", peak, h2WriteQueueMax)
		}
		if n := min(int64(upload-sent), c.sendConn, c.sendStream[1], int64(len(chunk))); n > 0 {
			if err := c.fr.WriteData(1, false, chunk[:n]); err != nil {
				t.Fatal(err)
			}
			c.sendConn -= n
			c.sendStream[1] -= n
			sent += int(n)
			continue
		}
		f, err := c.frame()
		if err != nil {
			t.Fatalf("after %d bytes sent: %v", sent, err)
		}
		if f.Header().StreamID != 1 {
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			answer.headers(f)
		case *http2.RSTStreamFrame:
			answer.reset, answer.code = true, f.ErrCode
		}
		if answer.status != "" || answer.reset {
			break
		}
	}
	if sent >= upload {
		t.Fatalf("the client sent all %d bytes to an app that reads nothing: nothing held it back (the writer held at most %d)", sent, peak)
	}
	if answer.status != "502" {
		t.Fatalf("stream 1 got status %q (reset %v %v); want 502 once the app connection is dropped", answer.status, answer.reset, answer.code)
	}
	t.Logf("the client was held back after %d bytes; the writer to the app held at most %d", sent, peak)
}
