//go:build linux

package attack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rc is what a hostile client gets to work with in one row.
type rc struct {
	ctx     context.Context // ends when the memory bound is crossed or the row's time is up
	tg      *tidegate
	app     *app
	n       int           // connections
	streams int           // HTTP/2 streams per connection, where it applies
	hold    time.Duration // how long a client that holds a request keeps it
	frames  int           // cap of a control-frame flood
	flood   time.Duration // time cap of a control-frame flood
}

// outcome is what a row's clients saw.
type outcome struct {
	// lifetimes holds, for each connection tidegate closed by itself, the
	// time from the row's reference point (connect, or the last answer) to
	// the close.
	lifetimes []time.Duration
	openAtEnd int       // connections tidegate still counted when the clients went
	gone      time.Time // when the clients closed their connections
	note      string    // what else the clients saw, for the report line
}

// dial connects to tidegate's public port with a small receive buffer, so
// that a client that does not read stops tidegate's writes after a few
// KiB instead of after the kernel's megabytes.
func (r *rc) dial() (net.Conn, error) {
	d := &net.Dialer{Timeout: httpTimeout, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		return errors.Join(err, serr)
	}}
	return d.DialContext(r.ctx, "tcp", r.tg.Listen)
}

// dialAll opens n connections, 16 dials at a time, and calls each(i, c)
// on each right after its connect.
func (r *rc) dialAll(each func(i int, c net.Conn) error) ([]net.Conn, error) {
	conns := make([]net.Conn, r.n)
	errs := make([]error, r.n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range r.n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := r.dial()
			if err == nil && each != nil {
				err = each(i, c)
			}
			conns[i], errs[i] = c, err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
}

// untilClosed reads c until tidegate closes it (EOF, reset) and sends the
// time from start on ch; a read deadline of limit bounds the wait, and a
// connection still open then sends nothing.
func untilClosed(c net.Conn, start time.Time, limit time.Duration, ch chan<- time.Duration, wg *sync.WaitGroup) {
	defer wg.Done()
	_ = c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	ch <- time.Since(start)
}

// holdOpen waits for the row's hold (or its end), then counts the
// connections tidegate still has, closes the client side and says when.
func (r *rc) holdOpen(conns []net.Conn, out *outcome) error {
	t := time.NewTimer(r.hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.ctx.Done():
	}
	m, err := r.tg.metrics(connsActive)
	if err == nil {
		out.openAtEnd = int(m[connsActive])
	}
	closeAll(conns)
	out.gone = time.Now()
	return err
}

// h1NoRead asks for the 1 GiB body on each connection over HTTP/1.1 and
// never reads a byte of the answer.
func h1NoRead(r *rc) (outcome, error) {
	var out outcome
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		_, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: attack\r\n\r\n")
		return err
	})
	if err != nil {
		return out, err
	}
	return out, r.holdOpen(conns, &out)
}

// h2Preface is the client connection preface of HTTP/2.
const h2Preface = http2.ClientPreface

// h2Start writes the preface and the client's SETTINGS on c through a
// framer that buffers into bw.
func h2Start(c net.Conn, settings ...http2.Setting) (*http2.Framer, *bufio.Writer, error) {
	bw := bufio.NewWriterSize(c, 16<<10)
	fr := http2.NewFramer(bw, c)
	if _, err := bw.WriteString(h2Preface); err != nil {
		return nil, nil, err
	}
	if err := fr.WriteSettings(settings...); err != nil {
		return nil, nil, err
	}
	return fr, bw, bw.Flush()
}

// h2Headers is a request header block for GET path.
func h2Headers(path string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "attack"}, {":path", path}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return b.Bytes()
}

// h2WindowAbuse opens the largest windows HTTP/2 allows (2^31-1 on every
// stream and on the connection) and the largest frames, asks for the 1 GiB
// body on r.streams streams of each connection, and never reads.
func h2WindowAbuse(r *rc) (outcome, error) {
	var out outcome
	block := h2Headers("/big")
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		fr, bw, err := h2Start(c,
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: math.MaxInt32},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1<<24 - 1})
		if err != nil {
			return err
		}
		if err := fr.WriteWindowUpdate(0, math.MaxInt32-65535); err != nil {
			return err
		}
		for s := range r.streams {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: uint32(2*s + 1), BlockFragment: block, EndStream: true, EndHeaders: true,
			}); err != nil {
				return err
			}
		}
		return bw.Flush()
	})
	if err != nil {
		return out, err
	}
	return out, r.holdOpen(conns, &out)
}

// h2Flood sends SETTINGS (ping false) or PING (ping true) frames as fast
// as tidegate takes them, up to r.frames or r.flood, and never reads the
// acknowledgements.
func h2Flood(ping bool) func(r *rc) (outcome, error) {
	return func(r *rc) (outcome, error) {
		var out outcome
		type result struct {
			sent  int
			took  time.Duration
			ended string
		}
		results := make(chan result, r.n)
		conns, err := r.dialAll(nil)
		if err != nil {
			return out, err
		}
		for _, c := range conns {
			go func() {
				start := time.Now()
				res := result{ended: "cap"}
				defer func() { res.took = time.Since(start); results <- res }()
				_ = c.SetWriteDeadline(start.Add(r.flood))
				fr, bw, err := h2Start(c)
				if err != nil {
					res.ended = "closed by tidegate"
					return
				}
				var data [8]byte
				for res.sent < r.frames && r.ctx.Err() == nil {
					if ping {
						err = fr.WritePing(false, data)
					} else {
						err = fr.WriteSettings()
					}
					if err == nil && bw.Buffered() > 8<<10 {
						err = bw.Flush()
					}
					if err != nil {
						res.ended = floodEnd(err, r.ctx)
						return
					}
					res.sent++
				}
				if r.ctx.Err() != nil {
					res.ended = "row stopped"
				}
				_ = bw.Flush()
			}()
		}
		total, closedAt := 0, []time.Duration{}
		ends := map[string]int{}
		for range conns {
			res := <-results
			total += res.sent
			ends[res.ended]++
			if res.ended == "closed by tidegate" {
				closedAt = append(closedAt, res.took)
			}
		}
		out.lifetimes = closedAt
		out.note = fmt.Sprintf("frames_sent=%d ended=%q", total, fmt.Sprint(ends))
		return out, r.holdOpen(conns, &out)
	}
}

// headerLimit is how long a connection without a request may live.
const headerLimit = readHeaderTimeout + lifetimeSlack

// lateAt is when a slow head sends its late part: most of the way through
// --read-header-timeout, so that a server that starts a fresh timeout when
// another reader takes over the head (net/http after the fast path) shows
// it in the lifetime.
const lateAt = readHeaderTimeout * 9 / 10

// stalled opens r.n connections and writes first on each; then, if
// trickle is not empty, one byte of it every 50ms, and late (if not nil)
// once at lateAt, until tidegate closes the connection. Each connection's
// lifetime counts from its connect.
func stalled(first, late []byte, trickle string) func(r *rc) (outcome, error) {
	return func(r *rc) (outcome, error) {
		var out outcome
		closed := make(chan time.Duration, r.n)
		var readers, writers sync.WaitGroup
		stop := make(chan struct{})
		conns, err := r.dialAll(func(_ int, c net.Conn) error {
			start := time.Now()
			if _, err := c.Write(first); err != nil {
				return err
			}
			readers.Add(1)
			go untilClosed(c, start, headerLimit+time.Second, closed, &readers)
			if trickle == "" && late == nil {
				return nil
			}
			writers.Add(1)
			go func() {
				defer writers.Done()
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				lateC := (<-chan time.Time)(nil)
				if late != nil {
					lt := time.NewTimer(time.Until(start.Add(lateAt)))
					defer lt.Stop()
					lateC = lt.C
				}
				for i := 0; ; i++ {
					var b []byte
					select {
					case <-stop:
						return
					case <-r.ctx.Done():
						return
					case <-lateC:
						b = late
					case <-tick.C:
						if trickle == "" {
							continue
						}
						b = []byte{trickle[i%len(trickle)]}
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
			return nil
		})
		if err != nil {
			close(stop)
			writers.Wait()
			readers.Wait()
			return out, err
		}
		readers.Wait()
		close(stop)
		writers.Wait()
		close(closed)
		for d := range closed {
			out.lifetimes = append(out.lifetimes, d)
		}
		m, err := r.tg.metrics(connsActive)
		if err == nil {
			out.openAtEnd = int(m[connsActive])
		}
		closeAll(conns)
		out.gone = time.Now()
		return out, err
	}
}

// h2Frames returns the bytes of a preface, an empty SETTINGS frame and,
// with headers, a HEADERS frame of GET / without END_HEADERS: the header
// block never ends.
func h2Frames(headers bool) []byte {
	var b bytes.Buffer
	b.WriteString(h2Preface)
	fr := http2.NewFramer(&b, nil)
	_ = fr.WriteSettings()
	if headers {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Headers("/fast"), EndStream: true})
	}
	return b.Bytes()
}

// slowD is what /slow waits in the half-open row.
const slowD = 300 * time.Millisecond

// halfOpen sends GET /slow on each connection and shuts down its write
// side at once (a FIN after the request), then reads what comes until
// tidegate closes. The lifetime counts from the shutdown.
func halfOpen(r *rc) (outcome, error) {
	var out outcome
	type result struct {
		d      time.Duration
		status int
		closed bool
	}
	results := make(chan result, r.n)
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		if _, err := io.WriteString(c, "GET /slow?d="+slowD.String()+" HTTP/1.1\r\nHost: attack\r\n\r\n"); err != nil {
			return err
		}
		start := time.Now()
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		go func() {
			res := result{}
			defer func() { res.d = time.Since(start); results <- res }()
			_ = c.SetReadDeadline(start.Add(slowD + lifetimeSlack + time.Second))
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err == nil {
				res.status = resp.StatusCode
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			_, err := io.Copy(io.Discard, br)
			res.closed = !errors.Is(err, os.ErrDeadlineExceeded)
		}()
		return nil
	})
	if err != nil {
		return out, err
	}
	statuses := map[int]int{}
	for range conns {
		res := <-results
		statuses[res.status]++
		if res.closed {
			out.lifetimes = append(out.lifetimes, res.d)
		}
	}
	started, cancelled, _ := r.app.counts()
	// status 0: cut without an answer
	out.note = fmt.Sprintf("answers=%q app_started=%d app_cancelled=%d", fmt.Sprint(statuses), started, cancelled)
	m, err := r.tg.metrics(connsActive)
	if err == nil {
		out.openAtEnd = int(m[connsActive])
	}
	closeAll(conns)
	out.gone = time.Now()
	return out, err
}

// vanish sends GET /slow?d=10s on each connection, waits until the app has
// every request, and closes the connections: tidegate must see the client
// go, cancel the request to the app and close its side.
func vanish(r *rc) (outcome, error) {
	var out outcome
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		_, err := io.WriteString(c, "GET /slow?d=10s HTTP/1.1\r\nHost: attack\r\n\r\n")
		return err
	})
	if err != nil {
		return out, err
	}
	if !r.app.waitCounts(5*time.Second, func(s, _ int) bool { return s >= r.n }) {
		closeAll(conns)
		s, _, _ := r.app.counts()
		return out, fmt.Errorf("the app saw %d of %d requests within 5s", s, r.n)
	}
	m, err := r.tg.metrics(connsActive)
	if err == nil {
		out.openAtEnd = int(m[connsActive])
	}
	closeAll(conns)
	out.gone = time.Now()
	ok := r.app.waitCounts(releaseBound+lifetimeSlack, func(_, c int) bool { return c >= r.n })
	_, c, _ := r.app.counts()
	out.note = fmt.Sprintf("app_cancelled=%d/%d app_cancel_ms=%d", c, r.n, time.Since(out.gone).Milliseconds())
	if !ok {
		err = errors.Join(err, fmt.Errorf("the app saw %d of %d requests cancelled within %s of the clients going", c, r.n, releaseBound+lifetimeSlack))
	}
	return out, err
}

// idleKeepAlive makes one request on each connection, reads the answer and
// stays idle; the lifetime counts from the answer.
func idleKeepAlive(r *rc) (outcome, error) {
	var out outcome
	closed := make(chan time.Duration, r.n)
	var readers sync.WaitGroup
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		if _, err := io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: attack\r\n\r\n"); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(httpTimeout))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("GET /fast: %w", err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /fast: %s %v", resp.Status, err)
		}
		readers.Add(1)
		go untilClosed(c, time.Now(), idleTimeout+lifetimeSlack+time.Second, closed, &readers)
		return nil
	})
	if err != nil {
		readers.Wait()
		return out, err
	}
	// Every connection is open and idle: the memory is measured now.
	m, merr := r.tg.metrics(connsActive)
	if merr == nil {
		out.openAtEnd = int(m[connsActive])
	}
	readers.Wait()
	close(closed)
	for d := range closed {
		out.lifetimes = append(out.lifetimes, d)
	}
	out.note = fmt.Sprintf("open_while_idle=%d", out.openAtEnd)
	m, err = r.tg.metrics(connsActive)
	if err == nil {
		out.openAtEnd = int(m[connsActive])
	}
	closeAll(conns)
	out.gone = time.Now()
	return out, errors.Join(merr, err)
}

// h2RapidReset opens streams of GET /slow and resets each at once
// (CVE-2023-44487), r.frames/2 pairs per connection or until r.flood; it
// reads what tidegate sends, so that only the resets are hostile. The app
// should see few of them, at most the streams a connection may hold open.
func h2RapidReset(r *rc) (outcome, error) {
	var out outcome
	block := h2Headers("/slow?d=10s")
	type result struct {
		pairs int
		ended string
	}
	results := make(chan result, r.n)
	var readers sync.WaitGroup
	conns, err := r.dialAll(func(_ int, c net.Conn) error {
		readers.Add(1)
		go func() {
			defer readers.Done()
			_, _ = io.Copy(io.Discard, c)
		}()
		return nil
	})
	if err != nil {
		readers.Wait()
		return out, err
	}
	pairs := r.frames / 2
	for _, c := range conns {
		go func() {
			res := result{ended: "cap"}
			defer func() { results <- res }()
			_ = c.SetWriteDeadline(time.Now().Add(r.flood))
			fr, bw, err := h2Start(c)
			for id := uint32(1); err == nil && res.pairs < pairs && r.ctx.Err() == nil && id < 1<<31-2; id += 2 {
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true})
				if err == nil {
					err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
				}
				if err == nil && bw.Buffered() > 8<<10 {
					err = bw.Flush()
				}
				if err == nil {
					res.pairs++
				}
			}
			if res.ended = floodEnd(err, r.ctx); res.ended == "" {
				err = bw.Flush()
			}
		}()
	}
	total := 0
	ends := map[string]int{}
	for range conns {
		res := <-results
		total += res.pairs
		ends[res.ended]++
	}
	// The hold gives a request that did reach the app time to be counted.
	herr := r.holdOpen(conns, &out)
	readers.Wait()
	started, _, _ := r.app.counts()
	out.note = fmt.Sprintf("streams_reset=%d app_saw=%d ended=%q", total, started, fmt.Sprint(ends))
	if started > r.n*h2MaxStreams {
		err = fmt.Errorf("the app saw %d of %d reset streams, more than %d streams a connection may hold open × %d connections", started, total, h2MaxStreams, r.n)
	}
	return out, errors.Join(err, herr)
}

// h2MaxStreams is proxy's h2MaxStreams: SETTINGS_MAX_CONCURRENT_STREAMS.
const h2MaxStreams = 250

// h2ContinuationFlood opens a header block and never ends it: CONTINUATION
// frames of fragment bytes each (a literal header field after another, or
// nothing at all when fragment is 0) until tidegate closes the connection
// or the header timeout is well past (r.frames frames or r.flood at most).
// The lifetime counts from the connect.
func h2ContinuationFlood(fragment int) func(r *rc) (outcome, error) {
	return func(r *rc) (outcome, error) {
		var out outcome
		type result struct {
			frames int
			took   time.Duration
			ended  string
		}
		// One literal header field without indexing, new name "x" and a
		// value of fragment-3 bytes (the length fits in 7 bits up to 126,
		// so build it with the encoder).
		var frag []byte
		if fragment > 0 {
			var b bytes.Buffer
			_ = hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: "x", Value: string(bytes.Repeat([]byte("v"), fragment)), Sensitive: true})
			frag = b.Bytes()
		}
		results := make(chan result, r.n)
		var readers sync.WaitGroup
		conns, err := r.dialAll(func(_ int, c net.Conn) error {
			readers.Add(1)
			go func() {
				defer readers.Done()
				_, _ = io.Copy(io.Discard, c)
			}()
			return nil
		})
		if err != nil {
			readers.Wait()
			return out, err
		}
		for _, c := range conns {
			go func() {
				start := time.Now()
				res := result{ended: "cap"}
				defer func() { res.took = time.Since(start); results <- res }()
				_ = c.SetWriteDeadline(start.Add(min(r.flood, headerLimit+time.Second)))
				fr, bw, err := h2Start(c)
				if err == nil {
					err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: h2Headers("/fast"), EndStream: true})
				}
				for err == nil && res.frames < r.frames && r.ctx.Err() == nil && time.Since(start) < headerLimit+time.Second {
					err = fr.WriteContinuation(1, false, frag)
					if err == nil && bw.Buffered() > 8<<10 {
						err = bw.Flush()
					}
					if err == nil {
						res.frames++
					}
				}
				switch res.ended = floodEnd(err, r.ctx); {
				case res.ended != "":
				case res.frames < r.frames:
					res.ended = "time"
				default:
					_ = bw.Flush()
				}
			}()
		}
		total := 0
		ends := map[string]int{}
		for range conns {
			res := <-results
			total += res.frames
			ends[res.ended]++
			if res.ended == "closed by tidegate" {
				out.lifetimes = append(out.lifetimes, res.took)
			}
		}
		out.note = fmt.Sprintf("continuation_frames=%d fragment_bytes=%d ended=%q", total, len(frag), fmt.Sprint(ends))
		err = r.holdOpen(conns, &out)
		readers.Wait()
		return out, err
	}
}

// floodEnd says why a flooding client stopped: the write timed out
// (tidegate stopped reading), failed (tidegate closed the connection), or
// the row's context ended; "" when none of these (err nil, ctx live).
func floodEnd(err error, ctx context.Context) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "tidegate stopped reading"
	case err != nil:
		return "closed by tidegate"
	case ctx.Err() != nil:
		return "row stopped"
	}
	return ""
}
