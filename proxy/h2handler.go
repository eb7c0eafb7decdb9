package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Streams of tidegate's HTTP/2 server that are not spliced are served by
// the server's handler chain (gate, drainWriter, Handler.ServeHTTP), as
// net/http's HTTP/2 server would: one goroutine per stream, the request
// body fed by the client's DATA frames, the response written in DATA
// frames as the client's windows allow.

// startHandler runs the server's handler for st; mu is held.
func (c *h2sConn) startHandler(st *h2stream, rq *h2Request) {
	r, ok := c.newRequest(st, rq)
	if !ok {
		c.resetStream(st, http2.ErrCodeProtocol, true)
		return
	}
	st.rw = &h2rw{c: c, st: st, hdr: make(http.Header), head: rq.method == http.MethodHead}
	c.handlers.Add(1)
	c.goStream(func() { c.runHandler(st, r) })
}

// newRequest builds the http.Request of a stream, as net/http's HTTP/2
// server does: cookies joined, Host from :authority, the body fed by
// DATA frames, declared trailers in Trailer.
func (c *h2sConn) newRequest(st *h2stream, rq *h2Request) (*http.Request, bool) {
	var u *url.URL
	requestURI := rq.path
	if rq.method == http.MethodConnect {
		u, requestURI = &url.URL{Host: rq.authority}, rq.authority
	} else {
		var err error
		if u, err = url.ParseRequestURI(rq.path); err != nil {
			return nil, false
		}
	}
	hdr := make(http.Header, len(rq.fields))
	var cookies []string
	for _, f := range rq.fields {
		if f.Name == "cookie" {
			cookies = append(cookies, f.Value)
			continue
		}
		k := http.CanonicalHeaderKey(f.Name)
		hdr[k] = append(hdr[k], f.Value)
	}
	if len(cookies) > 0 {
		hdr["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	host := rq.authority
	if host == "" {
		host = hdr.Get("Host")
	}
	delete(hdr, "Host")
	r := &http.Request{
		Method: rq.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: hdr, Host: host, RemoteAddr: c.remote, RequestURI: requestURI,
		Body: http.NoBody,
	}
	if !st.reqEnded {
		st.body = &h2body{c: c, st: st}
		r.Body = st.body
		r.ContentLength = rq.contentLength
		r.Trailer = make(http.Header)
		for _, v := range hdr["Trailer"] {
			for _, k := range strings.Split(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					r.Trailer[http.CanonicalHeaderKey(k)] = nil
				}
			}
		}
		st.body.trailer = r.Trailer
	}
	ctx, cancel := context.WithCancel(c.ctx)
	st.cancel = cancel
	return r.WithContext(ctx), true
}

// runHandler serves one stream with the server's handler.
func (c *h2sConn) runHandler(st *h2stream, r *http.Request) {
	rw := st.rw
	defer func() {
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			c.s.log.Error("panic serving an HTTP/2 request", zap.String("remote_addr", c.remote),
				zap.String("panic", fmt.Sprint(p)), zap.Stack("stack"))
		}
		c.mu.Lock()
		if p != nil {
			c.resetStream(st, http2.ErrCodeInternal, false)
		} else {
			_ = rw.sendLocked(true)
		}
		st.handlerDone = true
		if st.body != nil {
			st.body.closeLocked()
		}
		c.maybeFinish(st)
		c.mu.Unlock()
		st.cancel()
		c.handlers.Add(-1)
		c.syncState()
	}()
	c.s.srv.Handler.ServeHTTP(rw, r)
}

// handlerData feeds a request body; mu is held.
func (c *h2sConn) handlerData(st *h2stream, data []byte, end bool) {
	b := st.body
	if b == nil || b.closed {
		c.giveBack(st, len(data))
		return
	}
	b.buf = append(b.buf, data...)
	b.eof = b.eof || end
	c.cond.Broadcast()
}

// handlerTrailers ends a request body with its trailers; mu is held.
func (c *h2sConn) handlerTrailers(st *h2stream, fields []hpack.HeaderField) {
	b := st.body
	if b == nil {
		return
	}
	b.trailers = fields // into Request.Trailer at EOF, when the handler may read it
	b.eof = true
	c.cond.Broadcast()
}

// handlerGone fails the body and cancels the request of a stream whose
// client side ended early; mu is held.
func (c *h2sConn) handlerGone(st *h2stream, err error) {
	if b := st.body; b != nil && !b.eof && b.err == nil {
		b.err = err
	}
	if st.cancel != nil {
		st.cancel()
	}
}

// h2body is a request body fed by DATA frames; its fields are guarded by
// c.mu.
type h2body struct {
	c        *h2sConn
	st       *h2stream
	buf      []byte
	eof      bool
	err      error
	closed   bool
	trailer  http.Header         // the request's Trailer
	trailers []hpack.HeaderField // received, not yet in trailer
}

var errBodyClosed = errors.New("http2: read on closed request body")

func (b *h2body) Read(p []byte) (int, error) {
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(b.buf) == 0 && !b.eof && b.err == nil && !b.closed {
		c.cond.Wait()
	}
	switch {
	case b.closed:
		return 0, errBodyClosed
	case len(b.buf) > 0:
		n := copy(p, b.buf)
		b.buf = b.buf[n:]
		if len(b.buf) == 0 {
			b.buf = nil
		}
		c.giveBack(b.st, n)
		return n, nil
	case b.err != nil:
		return 0, b.err
	}
	for _, f := range b.trailers {
		k := http.CanonicalHeaderKey(f.Name)
		b.trailer[k] = append(b.trailer[k], f.Value)
	}
	b.trailers = nil
	return 0, io.EOF
}

func (b *h2body) Close() error {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	b.closeLocked()
	return nil
}

func (b *h2body) closeLocked() {
	if b.closed {
		return
	}
	b.closed = true
	if n := len(b.buf); n > 0 {
		b.c.giveConn(n)
		b.buf = nil
	}
	b.c.cond.Broadcast()
}

// h2rw is the http.ResponseWriter of a stream served by the handler. Its
// own fields belong to the handler's goroutine; the stream's are guarded
// by c.mu.
type h2rw struct {
	c          *h2sConn
	st         *h2stream
	hdr        http.Header
	status     int
	sentHeader bool // guarded by c.mu
	sniffed    bool
	head       bool
	buf        []byte
	trailers   []string // declared in the Trailer header
	closeConn  bool     // the handler set "Connection: close"
}

var errStreamGone = errors.New("http2: stream closed")

func (w *h2rw) Header() http.Header { return w.hdr }

func (w *h2rw) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		c := w.c
		c.mu.Lock()
		if c.waitRoom(w.st) {
			c.down.headers(w.st.id, w.fields(code, -1), false)
		}
		c.mu.Unlock()
		return
	}
	w.status = code
	for _, v := range w.hdr["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
			}
		}
	}
	for _, v := range w.hdr["Connection"] {
		if strings.EqualFold(strings.TrimSpace(v), "close") {
			w.closeConn = true
		}
	}
}

func (w *h2rw) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	// As net/http: a body without a Content-Type gets a sniffed one, also
	// after an explicit WriteHeader, until the header has gone.
	// (sentHeader changes only on this, the handler's, goroutine.)
	if !w.sniffed && len(p) > 0 {
		w.sniffed = true
		if _, ok := w.hdr["Content-Type"]; !ok && !w.sentHeader {
			w.hdr.Set("Content-Type", http.DetectContentType(p))
		}
	}
	if w.head {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= 16<<10 {
		if err := w.send(false); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// Flush sends the header and what is buffered.
func (w *h2rw) Flush() { _ = w.FlushError() }

// FlushError is Flush, with the error of a stream that has gone.
func (w *h2rw) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.send(false)
}

func (w *h2rw) send(end bool) error {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.sendLocked(end)
}

// sendLocked sends the header if not yet sent and the buffered body,
// waiting for the client's windows; end ends the stream, with trailers if
// the handler set any. mu is held.
func (w *h2rw) sendLocked(end bool) error {
	c, st := w.c, w.st
	if st.out.done || c.closed {
		w.buf = w.buf[:0]
		return errStreamGone
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var trailers []hpack.HeaderField
	if end {
		trailers = w.trailerFields()
	}
	if !w.sentHeader {
		if !c.waitRoom(st) {
			w.buf = w.buf[:0]
			return errStreamGone
		}
		w.sentHeader = true
		if w.closeConn {
			// drainWriter asks the client to go: the real GOAWAY.
			c.shutdownLocked()
		}
		length := -1
		if end && trailers == nil && w.hdr.Get("Content-Length") == "" && bodyAllowed(w.status) && !w.head {
			length = len(w.buf)
		}
		noBody := end && len(w.buf) == 0 && trailers == nil
		c.down.headers(st.id, w.fields(w.status, length), noBody)
		if noBody {
			st.out.done = true
			return nil
		}
	}
	b := w.buf
	for len(b) > 0 {
		b = b[c.down.sendData(st.id, &st.out, b, end && trailers == nil):]
		if len(b) == 0 {
			break
		}
		if st.out.done || c.closed {
			w.buf = w.buf[:0]
			return errStreamGone
		}
		c.cond.Wait()
	}
	w.buf = w.buf[:0]
	if end && !st.out.done {
		c.down.endWith(st.id, &st.out, trailers)
	}
	return nil
}

// fields is the response header block: hop-by-hop fields dropped, a Date
// added if absent, and content-length when known (length >= 0).
func (w *h2rw) fields(code int, length int) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(w.hdr)+3)
	out = append(out, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
	hasDate := false
	for k, vv := range w.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		name := strings.ToLower(k)
		if hopByHop([]byte(name)) && name != "trailer" { // net/http announces the trailers
			continue
		}
		if name == "date" {
			hasDate = true
		}
		for _, v := range vv {
			out = append(out, hpack.HeaderField{Name: name, Value: v})
		}
	}
	if length >= 0 {
		out = append(out, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(length)})
	}
	if !hasDate {
		out = append(out, hpack.HeaderField{Name: "date", Value: httpDateString()})
	}
	return out
}

// trailerFields collects the trailers the handler set: those declared in
// the Trailer header and those with http.TrailerPrefix. nil if none.
func (w *h2rw) trailerFields() []hpack.HeaderField {
	var out []hpack.HeaderField
	for _, k := range w.trailers {
		for _, v := range w.hdr[k] {
			out = append(out, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	for k, vv := range w.hdr {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vv {
				out = append(out, hpack.HeaderField{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	return out
}
