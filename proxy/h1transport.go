package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// h1Transport is tidegate's HTTP/1.1 client to the app for requests without
// a body, most of all traffic. http.Transport hands every request to two
// goroutines of the connection (a writer and a reader) and back, over
// channels; h1Transport writes the request and reads the response on the
// calling goroutine, with one write and usually one read per request.
// Requests with a body (which http.Transport sends while it reads the
// response, so an early answer from the app is not lost), Expect:
// 100-continue and CONNECT go to the fallback http.Transport.
//
// Semantics kept from http.Transport: idle connections are reused newest
// first and closed after IdleConnTimeout; 1xx answers reach httptrace's
// Got1xxResponse; the request's context cancels the exchange at any point,
// body included; ResponseHeaderTimeout bounds the wait for the answer's
// header.
//
// An app that closes keep-alive connections without saying so costs no
// failed request, as with HAProxy and Envoy (the retry policy, shared by
// every path that sends to the app: the fast path, the HTTP/2 direct path,
// RoundTrip and its fallback):
//   - a pooled connection is checked before reuse (h1Conn.alive: one
//     non-blocking peek at its socket); one the app closed, reset or wrote
//     to unasked is discarded, never sent a request;
//   - a request that failed before any byte of the answer is sent once
//     more, on a newly dialled connection (never another pooled one), when
//     none of its bytes can have reached the app (the dial failed, the
//     connection was found closed, or the write failed having written
//     nothing), whatever its method; or when it is idempotent (GET, HEAD,
//     OPTIONS, TRACE, PUT, DELETE, or an Idempotency-Key) and its body, if
//     any, can be sent again (an app may close a new connection too, when
//     the request comes later than its header timeout).
//
// A POST whose bytes reached the app is never sent twice; nor is a request
// whose answer timed out (the app is slow, not gone).
type h1Transport struct {
	dial          func(ctx context.Context) (net.Conn, error)
	host          string // the URL host the fallback dials
	headerTimeout time.Duration
	idleTimeout   time.Duration
	maxIdle       int
	fallback      *http.Transport
	// fresh is fallback without keep-alives: a retry of the fallback's
	// goes out on a connection of its own, never a pooled one.
	fresh   *http.Transport
	metrics *Metrics // retries and stale connections; nil: not counted

	mu     sync.Mutex
	idle   []*h1Conn // newest last
	sweep  *time.Timer
	closed bool
}

// h1Conn is one pooled connection to the app.
type h1Conn struct {
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer // over out
	out    heldWriter
	rc     syscall.RawConn       // nc's descriptor; nil if it has none
	step   func(fd uintptr) bool // writeHeld, bound once per connection
	peekFn func(fd uintptr)      // peek, bound once per connection
	peekOK bool                  // peek's finding
	idleAt time.Time
	reused bool
	// mayHold: send may leave the request's last write to awaitFirst
	// (the connection is new, or was idle less than holdIdleMax).
	mayHold bool
	// deadline is nc's read deadline. The fast paths leave the one of an
	// answer's wait on the connection when the answer needed no further
	// read, for the next request's wait to keep (arm).
	deadline readDeadline
}

// deadlineSlack is how late an armed wait of length wait may end: an
// eighth of it, at most headerSlackMax.
func deadlineSlack(wait time.Duration) time.Duration {
	return min(wait/8, headerSlackMax)
}

// headerSlackMax bounds deadlineSlack. With it, a connection at the
// default response-header timeout (60s) moves its timer at most once a
// second, however many requests it carries.
const headerSlackMax = time.Second

func newH1Transport(dial func(ctx context.Context) (net.Conn, error), fallback *http.Transport, o TransportOptions, m *Metrics) *h1Transport {
	if fallback.DialContext != nil {
		fallback.DialContext = countWrites(fallback.DialContext)
	}
	fresh := fallback.Clone()
	fresh.DisableKeepAlives = true
	return &h1Transport{
		dial:          dial,
		headerTimeout: o.ResponseHeaderTimeout,
		idleTimeout:   fallback.IdleConnTimeout,
		maxIdle:       fallback.MaxIdleConnsPerHost,
		fallback:      fallback,
		fresh:         fresh,
		metrics:       m,
	}
}

// fastPath reports whether h1Transport takes req itself.
func fastPath(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.Method != http.MethodConnect &&
		req.Header.Get("Expect") == "" && len(req.Trailer) == 0
}

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !fastPath(req) {
		return t.roundTripFallback(req)
	}
	ctx := req.Context()
	idem := idempotent(req.Method, req.Header)
	for attempt := 0; ; attempt++ {
		c, err := t.get(ctx, time.Now(), attempt > 0)
		if err == nil {
			var resp *http.Response
			if resp, err = t.exchange(ctx, c, req); err == nil {
				return resp, nil
			}
		}
		if !t.retryOnNew(ctx, attempt, c, err, idem) {
			return nil, err
		}
	}
}

// RetryReason says why a request was sent to the app once more. Its string
// is the reason label of tidegate_upstream_retries_total.
type RetryReason string

// The retry reasons.
const (
	// RetryConnectFailed: dialling the app failed, other than by a timeout
	// (which would double the wait): nothing was sent.
	RetryConnectFailed RetryReason = "connect_failed"
	// RetryConnClosed: the app closed or reset the connection before any
	// byte of the answer, and the request either never reached it or is
	// idempotent.
	RetryConnClosed RetryReason = "conn_closed"
)

// RetryReasons lists the retry reasons, so that their counters start at 0.
func RetryReasons() []RetryReason { return []RetryReason{RetryConnectFailed, RetryConnClosed} }

// retryOnNew is the retry policy of the paths that send a request without
// a body on an h1Conn: it reports whether a request whose attempt (0 for
// the first) on c ended in err may be sent once more on a new connection,
// and counts it. c is nil when getting a connection failed; idem says the
// request is idempotent.
func (t *h1Transport) retryOnNew(ctx context.Context, attempt int, c *h1Conn, err error, idem bool) bool {
	if attempt > 0 || ctx.Err() != nil {
		return false
	}
	if c == nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false // the app accepts slowly: a second dial would double the wait
		}
		t.metrics.upstreamRetry(RetryConnectFailed)
		return true
	}
	var nothing errNothingRead
	if !errors.As(err, &nothing) {
		return false
	}
	if errors.Is(err, errStaleAppConn) {
		t.metrics.staleConn()
	}
	if !c.out.sentNothing() && !idem {
		return false
	}
	t.metrics.upstreamRetry(RetryConnClosed)
	return true
}

// errNothingRead wraps an error that came before any byte of the answer,
// other than a timeout.
type errNothingRead struct{ error }

func (e errNothingRead) Unwrap() error { return e.error }

// idempotent reports whether a request may be sent again although it may
// have reached the app: its method is idempotent (RFC 9110 9.2.2), or it
// carries an Idempotency-Key, as net/http's Transport has it.
func idempotent(method string, h http.Header) bool {
	if idempotentMethod(method) {
		return true
	}
	_, a := h["Idempotency-Key"]
	_, b := h["X-Idempotency-Key"]
	return a || b
}

// exchange sends req on c and reads the answer's header. On success the
// response's body owns c; on error c is closed.
func (t *h1Transport) exchange(ctx context.Context, c *h1Conn, req *http.Request) (*http.Response, error) {
	// The answer's head is awaited under the header timeout. Set before
	// the cancel below is armed, so that a cancel is never overwritten.
	if t.headerTimeout > 0 {
		c.deadline.set(time.Now().Add(t.headerTimeout))
	} else {
		c.deadline.set(time.Time{})
	}
	// Cancel by deadline: it wakes a blocked read or write at once.
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.nc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := writeRequest(c.bw, req); err != nil {
		return fail(err) // the request's fault: another connection would not help
	}
	if err := c.send(); err != nil {
		return fail(errNothingRead{err})
	}
	if err := c.awaitFirst(); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return fail(err) // the app is slow, not gone: no retry
		}
		return fail(errNothingRead{err})
	}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.Got1xxResponse != nil {
			if err := tr.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail(err)
			}
		}
	}
	if t.headerTimeout > 0 {
		c.deadline.set(time.Time{})
		if ctx.Err() != nil {
			return fail(ctx.Err()) // canceled just before: the reset above undid its deadline
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Upgrades are proxied by serveUpgrade, never through here.
		return fail(fmt.Errorf("app switched protocols on a plain request"))
	}
	reuse := !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		t.release(c, stop, reuse)
		return resp, nil
	}
	resp.Body = &h1Body{rc: resp.Body, t: t, c: c, stop: stop, reuse: reuse}
	return resp, nil
}

// writeRequest writes req's request line and header; it has no body.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	uri := req.URL.RequestURI()
	if !validHostOrTarget(host) || uri == "" || !validHostOrTarget(uri) {
		return fmt.Errorf("invalid request target %q or host %q", uri, host)
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vs := range req.Header {
		if k == "Host" || (k == "User-Agent" && len(vs) == 1 && vs[0] == "") {
			continue
		}
		for _, v := range vs {
			if !validHeaderValue(v) {
				return fmt.Errorf("invalid value for header %s", k)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// validHostOrTarget rejects spaces and control bytes, which would split
// or bend the request line or the Host header.
func validHostOrTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// validHeaderValue rejects what would split the request: CR, LF and NUL.
func validHeaderValue(v string) bool {
	return !strings.ContainsAny(v, "\r\n\x00")
}

// h1Body returns its connection to the pool at EOF, and closes it if the
// body is abandoned before.
type h1Body struct {
	rc    io.ReadCloser
	t     *h1Transport
	c     *h1Conn
	stop  func() bool
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.done = true
		b.t.release(b.c, b.stop, b.reuse)
	} else if err != nil {
		b.done = true
		b.stop()
		b.c.nc.Close()
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.done = true
		b.stop()
		b.c.nc.Close()
	}
	return nil
}

// get returns the newest idle connection younger than the idle timeout
// at now that the app has not closed, or dials a new one; fresh: dials.
// Connections found closed are discarded (tidegate_upstream_stale_conns_total).
func (t *h1Transport) get(ctx context.Context, now time.Time, fresh bool) (*h1Conn, error) {
	for !fresh {
		t.mu.Lock()
		n := len(t.idle)
		if n == 0 {
			t.mu.Unlock()
			break
		}
		c := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		idle := now.Sub(c.idleAt)
		if idle >= t.idleTimeout {
			c.nc.Close()
			continue
		}
		c.mayHold = c.rc != nil && idle < holdIdleMax
		if c.mayHold {
			// Checked by writeHeld, inside the wait for the answer:
			// a close after the check is then seen by the wait.
			c.out.check = true
		} else if !c.alive() {
			c.nc.Close()
			t.metrics.staleConn()
			continue
		}
		c.reused = true
		return c, nil
	}
	nc, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	return newH1Conn(nc), nil
}

// alive reports whether c, idle, may carry a request: the app has
// neither closed nor reset it, nor written to it unasked. One system call
// (rawPeekAlive); a connection without a descriptor is taken on trust.
func (c *h1Conn) alive() bool {
	if c.rc == nil {
		return true
	}
	c.peekOK = false
	if err := c.rc.Control(c.peekFn); err != nil {
		return false
	}
	return c.peekOK
}

func (c *h1Conn) peek(fd uintptr) { c.peekOK = rawPeekAlive(fd) }

func newH1Conn(nc net.Conn) *h1Conn {
	c := &h1Conn{nc: nc, deadline: readDeadline{nc: nc}}
	c.out.nc, c.out.alive = nc, c.alive
	c.bw = bufio.NewWriterSize(&c.out, 4<<10)
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc, c.step, c.peekFn, c.mayHold = rc, c.writeHeld, c.peek, true
			// A new connection too: an app may close it before the
			// first request (an accept or header timeout), and a held
			// send must not wait on a close it cannot see.
			c.out.check = true
		}
	}
	return c
}

// holdIdleMax: a pooled connection idle this long or longer sends its
// request the plain way (write, then read). A held send waits for
// readability, and that wait cannot see a close by the app that came
// before it (Go's poller forgets readiness when a read begins): a full
// close still ends it, by the reset that the request's write draws, but
// a half close would leave it to the response-header timeout. Apps close
// idle connections after seconds, when the read-first way costs nothing
// that shows.
const holdIdleMax = time.Second

// heldWriter is the writer under an h1Conn's bufio.Writer: it writes
// through, but while hold is set it keeps the next write (the flush of
// the request's end) for awaitFirst instead.
type heldWriter struct {
	nc   net.Conn
	hold bool
	held []byte // what is left to write (nil once written); aliases bw's buffer until the wait ends
	err  error  // writeHeld's write failed
	// wrote counts the bytes of the request in progress written to nc.
	wrote int
	// check: the connection, reused, is to be checked (h1Conn.alive)
	// before the first byte of the request is written.
	check bool
	alive func() bool // h1Conn.alive
}

// errStaleAppConn: the pooled connection had been closed by the app (or
// held bytes it sent unasked); nothing was written on it.
var errStaleAppConn = errors.New("pooled app connection closed by the app before reuse")

func (w *heldWriter) Write(p []byte) (int, error) {
	if w.hold {
		w.hold = false
		w.held = p
		return len(p), nil
	}
	if w.check {
		w.check = false
		if !w.alive() {
			return 0, errStaleAppConn
		}
	}
	n, err := w.nc.Write(p)
	w.wrote += n
	return n, err
}

// sentNothing reports whether no byte of the request in progress has been
// written to the connection: the app cannot have seen it.
func (w *heldWriter) sentNothing() bool { return w.wrote == 0 }

// send flushes the request in bw. Its last write may be held for
// awaitFirst, which must come next, before anything else writes to bw.
func (c *h1Conn) send() error {
	c.out.held, c.out.wrote = nil, 0
	c.out.hold = c.mayHold
	err := c.bw.Flush()
	c.out.hold = false
	return err
}

// awaitFirst waits for the first byte of the answer in br, under the
// read deadline set before. What send held it writes from inside the
// wait (RawConn.Read's callback), which begins by clearing the poller's
// readiness: so the answer to that write cannot be missed, and no read
// is tried before it can have come. That saves the read that fails with
// EAGAIN which Go's net.Conn makes before every wait: one system call
// in six per request on the HTTP/1.1 fast path.
//
// Errors are br.Peek's: a timeout when the deadline passed, any other
// before a byte of the answer (a failed write included).
func (c *h1Conn) awaitFirst() error {
	if c.out.held != nil {
		err := c.rc.Read(c.step)
		rest, werr := c.out.held, c.out.err
		c.out.err = nil
		if err != nil && rest != nil {
			// The wait failed before the callback ran (a deadline
			// already past: a stall of the process, or a cancel; or a
			// close): nothing was written. The request stays held for
			// the next call, after the caller's next deadline.
			return err
		}
		c.out.held = nil
		switch {
		case werr == errStaleAppConn:
			return werr
		case werr != nil:
			return &net.OpError{Op: "write", Net: c.nc.RemoteAddr().Network(), Source: c.nc.LocalAddr(),
				Addr: c.nc.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
		case err != nil:
			return err
		case len(rest) > 0: // the socket's buffer was full: the rest the plain way
			if _, err := c.out.Write(rest); err != nil {
				return err
			}
		}
	}
	if c.br == nil {
		// Taken now, when the answer is there (a held send): the
		// buffer most recently given back, which the cache still holds.
		br := h1Readers.Get().(*bufio.Reader)
		br.Reset(c.nc)
		c.br = br
	}
	_, err := c.br.Peek(1)
	return err
}

// h1Readers holds the read buffers of app connections between requests.
// A connection takes one when its answer comes (awaitFirst) and gives it
// back once it has read the answer whole (recycleReader): so a few
// buffers serve many connections, rather than each of a hundred waiting
// connections owning 16 KiB that it touches once a request. Besides the
// memory, that keeps what the proxy touches per request small enough to
// stay in the cache it shares with the app on a busy core.
var h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1ReadBuffer) }}

// h1ReadBuffer is the size of an app connection's read buffer: the
// largest response head the fast paths read themselves (larger ones go
// through net/http).
const h1ReadBuffer = 16 << 10

// recycleReader gives c's read buffer back to h1Readers before c goes
// idle, when it holds nothing and nothing else refers to it: the fast
// paths, which read br themselves (not through an http.Response body,
// which keeps a reference).
func (c *h1Conn) recycleReader() {
	if c.br == nil || c.br.Buffered() > 0 {
		return
	}
	c.br.Reset(nil)
	h1Readers.Put(c.br)
	c.br = nil
}

// writeHeld is awaitFirst's RawConn.Read callback. Its first call writes
// the held request and asks to wait for readability; once woken, it ends
// the wait, and br's read finds the answer. A write the socket's buffer
// cannot take whole, or that fails, ends the wait at once.
func (c *h1Conn) writeHeld(fd uintptr) bool {
	if c.out.held == nil {
		return true // written: woken by the answer
	}
	p := c.out.held
	if c.out.check {
		// Here, and not before the wait began (which forgets what
		// the socket said until then), so that a close by the app
		// after this check ends the wait.
		c.out.check = false
		if !rawPeekAlive(fd) {
			c.out.err = errStaleAppConn
			return true
		}
	}
	for len(p) > 0 {
		n, errno := rawWrite(fd, p)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			if errno != syscall.EAGAIN {
				c.out.err = errno
			}
			c.out.held = p
			return true
		}
		c.out.wrote += n
		p = p[n:]
	}
	c.out.held = nil
	return false
}

// release puts c back in the pool, or closes it.
func (t *h1Transport) release(c *h1Conn, stop func() bool, reuse bool) {
	if !stop() || !reuse || c.br.Buffered() > 0 {
		// Canceled (the deadline is set), closing, or the app sent more
		// than the answer: not reusable.
		c.nc.Close()
		return
	}
	t.put(c, time.Now())
}

// put puts c, idle and healthy since now, back in the pool, or closes it
// when the pool is full or closed.
func (t *h1Transport) put(c *h1Conn, now time.Time) {
	c.idleAt = now
	t.mu.Lock()
	if t.closed || len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		c.nc.Close()
		return
	}
	t.idle = append(t.idle, c)
	if t.sweep == nil {
		t.sweep = time.AfterFunc(t.idleTimeout, t.sweepIdle)
	}
	t.mu.Unlock()
}

// sweepIdle closes connections idle longer than the idle timeout, and
// comes back while any are left.
func (t *h1Transport) sweepIdle() {
	cutoff := time.Now().Add(-t.idleTimeout)
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.idle { // oldest first
		if c.idleAt.After(cutoff) {
			t.idle[n] = c
			n++
			continue
		}
		c.nc.Close()
	}
	clear(t.idle[n:])
	t.idle = t.idle[:n]
	t.sweep = nil
	if n > 0 && !t.closed {
		t.sweep = time.AfterFunc(t.idleTimeout/2, t.sweepIdle)
	}
}

// CloseIdleConnections closes the idle connections of both paths.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, c := range idle {
		c.nc.Close()
	}
	t.fallback.CloseIdleConnections()
}
