package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
)

// The fallback of h1Transport (requests with a body, Expect, trailers) is
// net/http's Transport, whose own retries are narrower than tidegate's
// policy: it retries a POST only with GetBody, never a PUT with a body,
// and a retry may land on another pooled connection that the app closed
// too. roundTripFallback brings it to the policy of h1Transport: the
// connection net/http picks is checked before the request goes out on it
// (httptrace's GotConn, called before the write begins); one the app
// closed is closed at once, before a byte of the body is read; and a
// request that failed before any answer is sent once more on a newly
// dialled connection (h1Transport.fresh) when nothing of it can have
// reached the app, or it is idempotent and its body can be sent again.

// replayMax is the largest body of an idempotent request that the
// fallback keeps, as it is read, for a retry: a bound per request in
// flight. Larger bodies, and bodies of other methods, are not kept.
const replayMax = 64 << 10

func (t *h1Transport) roundTripFallback(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	idem := idempotent(req.Method, req.Header)
	a := &fallbackAttempt{t: t}
	out := req
	if req.Body != nil && req.Body != http.NoBody {
		a.body = &guardBody{rc: req.Body, size: req.ContentLength,
			keep: idem && req.ContentLength > 0 && req.ContentLength <= replayMax}
		out = new(http.Request)
		*out = *req
		out.Body = a.body
		// net/http sends a request again by itself when it wrote nothing
		// of it (a connection that failed at once, or that gotConn
		// closed), with GetBody for its body.
		out.GetBody = a.body.rewind
	}
	out = out.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: a.gotConn}))
	resp, err := t.fallback.RoundTrip(out)
	if err == nil || ctx.Err() != nil {
		return resp, err
	}
	if a.body != nil {
		if berr := a.body.readErr(); berr != nil {
			return nil, &clientBodyError{berr} // the client's fault: never sent again
		}
	}
	reason, ok := a.retry(err, idem)
	if !ok {
		return nil, err
	}
	again := req
	if a.body != nil {
		body := a.body.replay()
		if body == nil {
			return nil, err
		}
		again = new(http.Request)
		*again = *req
		again.Body = body
		again.GetBody = nil
	}
	t.metrics.upstreamRetry(reason)
	return t.fresh.RoundTrip(again)
}

// fallbackAttempt is what one request through the fallback learned of its
// connection.
type fallbackAttempt struct {
	t      *h1Transport
	body   *guardBody // nil: no body
	got    bool       // net/http had a connection for it
	stale  bool       // the last one was found closed before use
	conn   *countedConn
	before int64 // conn's bytes written when net/http got it
}

// gotConn checks a pooled connection before net/http writes on it. Called
// on the RoundTrip caller's goroutine, before the write.
func (a *fallbackAttempt) gotConn(i httptrace.GotConnInfo) {
	a.got = true
	if a.conn, _ = i.Conn.(*countedConn); a.conn != nil {
		a.before = a.conn.written.Load()
	}
	a.stale = i.Reused && !connAlive(i.Conn)
	if a.body != nil {
		a.body.refuse(a.stale)
	}
	if !a.stale {
		return
	}
	a.t.metrics.staleConn()
	// net/http's write fails, before the body is read (its headers are
	// flushed first), and its reader ends the connection.
	i.Conn.Close()
}

// retry applies h1Transport's policy to a failed attempt.
func (a *fallbackAttempt) retry(err error, idem bool) (RetryReason, bool) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "", false // a slow app (or dial), not a gone one
	}
	if !a.got {
		return RetryConnectFailed, true // nothing was sent
	}
	unread := a.body == nil || !a.body.wasRead()
	nothingWritten := a.conn != nil && a.conn.written.Load() == a.before
	switch {
	case unread && (a.stale || nothingWritten):
		return RetryConnClosed, true // nothing reached the app
	case idem:
		// RoundTrip fails only before the answer's header; replay says
		// whether the body can go again.
		return RetryConnClosed, true
	}
	return "", false
}

// connAlive is h1Conn.alive for a connection net/http owns.
func connAlive(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	if err := rc.Control(func(fd uintptr) { alive = rawPeekAlive(fd) }); err != nil {
		return false
	}
	return alive
}

// guardBody is a request body lent to the fallback for one attempt. It
// remembers whether it was read, refuses to be read once its connection
// was found closed, and keeps what it read of a body small enough to send
// again (keep). Close does not close the client's body: the handler does,
// after the retry if any.
type guardBody struct {
	rc   io.ReadCloser
	size int64 // the request's ContentLength
	keep bool

	mu      sync.Mutex
	read    bool
	refused bool
	eof     bool
	failed  error  // the client's body failed to read (not EOF)
	kept    []byte // what was read, while keep; at most replayMax
}

func (g *guardBody) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused {
		return 0, errStaleAppConn
	}
	g.read = true
	n, err := g.rc.Read(p)
	if g.keep {
		if len(g.kept)+n > replayMax {
			g.keep, g.kept = false, nil
		} else {
			g.kept = append(g.kept, p[:n]...)
		}
	}
	switch {
	case err == io.EOF:
		g.eof = true
	case err != nil:
		g.failed = err
	}
	return n, err
}

// readErr is the error reading the client's body gave, if any.
func (g *guardBody) readErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failed
}

func (g *guardBody) Close() error { return nil }

// refuse makes Read fail (errStaleAppConn) while r, without reading.
func (g *guardBody) refuse(r bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refused = r
}

// rewind is GetBody for net/http's own retries: g itself while unread,
// what it kept once read whole.
func (g *guardBody) rewind() (io.ReadCloser, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.read:
		return g, nil
	case g.keep && (g.eof || int64(len(g.kept)) == g.size):
		return io.NopCloser(bytes.NewReader(g.kept)), nil
	}
	return nil, errors.New("request body already sent in part: it cannot be sent again")
}

func (g *guardBody) wasRead() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.read
}

// replay returns the body for a second attempt: the client's, if nothing
// of it was read; what was kept, if it was read whole; else nil.
func (g *guardBody) replay() io.ReadCloser {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.read:
		return g.rc
	case g.keep && (g.eof || int64(len(g.kept)) == g.size):
		return io.NopCloser(bytes.NewReader(g.kept))
	}
	return nil
}

// countedConn is a connection of the fallback that counts the bytes
// written on it: a request none of whose bytes were written may be sent
// again whatever its method.
type countedConn struct {
	net.Conn
	written atomic.Int64
}

// countWrites wraps dial's connections in countedConn.
func countWrites(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countedConn{Conn: c}, nil
	}
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// ReadFrom keeps the connection's own (splice from a client's TCP
// connection, for a large body).
func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		c.written.Add(n)
		return n, err
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

// SyscallConn is the connection's own, for connAlive.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("app connection has no descriptor")
	}
	return sc.SyscallConn()
}
