package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The direct path of tidegate's HTTP/2 server: a request without a body,
// for an app that speaks HTTP/1.1, is written straight onto a pooled
// connection of the fast path's transport (h1Transport) and the answer is
// turned into HEADERS and DATA frames, without an http.Request, a
// ReverseProxy or a ResponseWriter. It is the HTTP/2 twin of fast.go and
// keeps its behaviour: the same request rewriting, the same replay of a
// request that failed on a reused connection, the same failure answers,
// metrics and log lines. A response framed by chunks or by the close is
// read by net/http's ReadResponse; anything with a body goes through the
// handler (h2handler.go).

// directable reports whether st, whose request is rq, takes the direct
// path; mu is held.
func (c *h2sConn) directable(st *h2stream, rq *h2Request) bool {
	if c.h.h1 == nil || !st.reqEnded || !c.s.fastH1 || rq.authority == "" {
		return false
	}
	if c.s.fastOpen != nil && !c.s.fastOpen() {
		return false
	}
	if len(rq.path) == 0 || rq.path[0] != '/' || !validHostField([]byte(rq.authority)) {
		return false
	}
	for i := 0; i < len(rq.method); i++ {
		if !tchar[rq.method[i]] {
			return false
		}
	}
	if !plainTarget(rq.path) {
		return false
	}
	via := false
	for _, f := range rq.fields {
		if f.Name == "host" || f.Name == "expect" {
			return false // net/http decides which Host wins, and about 100-continue
		}
		via = via || f.Name == "via"
	}
	return !via || !c.h.loopH2(rq.fields) // a loop: the handler answers 508
}

// startDirect serves st on the direct path; mu is held.
func (c *h2sConn) startDirect(st *h2stream, rq *h2Request) {
	h := c.h
	st.direct = true
	st.method, st.start = rq.method, h.now()
	st.path, _, _ = strings.Cut(rq.path, "?")
	st.reqID = rq.id
	h.tracker.requestStartedAt(h.tracker.IsProbe(rq.userAgent), st.start)
	c.handlers.Add(1)
	c.goStream(func() { c.serveDirect(st, rq) })
}

var h1heads = sync.Pool{New: func() any { return &h1head{fields: make([]h1field, 0, 16)} }}

// serveDirect proxies st's request over HTTP/1.1 and relays the answer.
func (c *h2sConn) serveDirect(st *h2stream, rq *h2Request) {
	h := c.h
	var generated bool
	st.reqID, generated = h.requestID(st.reqID)
	rh := h1heads.Get().(*h1head)
	defer func() {
		rh.fields = rh.fields[:0]
		h1heads.Put(rh)
		c.mu.Lock()
		st.directUC = nil
		st.handlerDone = true
		c.maybeFinish(st)
		c.mu.Unlock()
		c.handlers.Add(-1)
		c.syncState()
	}()
	var uc *h1Conn
	for attempt := 0; ; attempt++ {
		var err error
		uc, err = h.h1.get(c.ctx, st.start, attempt > 0)
		if err == nil {
			err = c.sendDirect(uc, st, rq, generated)
		}
		if err == nil {
			err = c.awaitDirect(uc, st)
		}
		if err == nil {
			break
		}
		if uc != nil {
			uc.nc.Close()
		}
		if !c.gone(st) && h.h1.retryOnNew(c.ctx, attempt, uc, err, idempotentMethod(rq.method)) {
			continue
		}
		c.directFailed(st, classify(context.Background(), err), err)
		return
	}
	if err := c.relayDirect(uc, st, rh); err != nil {
		uc.nc.Close()
		return
	}
}

// gone reports whether st's client side has ended.
func (c *h2sConn) gone(st *h2stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return st.clientRst || c.closed
}

// directFailed answers st after its app request failed.
func (c *h2sConn) directFailed(st *h2stream, f failure, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.clientRst || c.closed {
		return // recorded as 499
	}
	c.upstreamFailed(st, f, err)
}

// sendDirect writes st's request to the app, rewritten as fast.go's
// sendFast does.
func (c *h2sConn) sendDirect(uc *h1Conn, st *h2stream, rq *h2Request, generated bool) error {
	bw := uc.bw
	bw.WriteString(rq.method)
	bw.WriteByte(' ')
	bw.WriteString(rq.path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(rq.authority)
	bw.WriteString("\r\n")
	cookies := false
	te := false
	setXF := c.h.forwarded != ForwardedOff
	for _, f := range rq.fields {
		switch f.Name {
		case "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host":
			if setXF {
				continue // set below
			}
		case "x-request-id":
			if generated {
				continue
			}
		case "te":
			te = true
			continue
		case "cookie":
			// HTTP/2 may split cookies in many fields, anywhere in the
			// block; HTTP/1.1 has one line, joined with "; " (RFC 9113
			// §8.2.3). The first writes them all.
			if !cookies {
				cookies = true
				writeCookieLine(bw, rq.fields)
			}
			continue
		default:
			if hopByHop([]byte(f.Name)) {
				continue
			}
		}
		bw.WriteString(f.Name)
		bw.WriteString(": ")
		bw.WriteString(f.Value)
		bw.WriteString("\r\n")
	}
	if setXF {
		xff, xfp, xfh := c.forwarded(rq.fields, rq.authority)
		if xff != "" {
			bw.WriteString("X-Forwarded-For: ")
			bw.WriteString(xff)
			bw.WriteString("\r\n")
		}
		bw.WriteString("X-Forwarded-Proto: ")
		bw.WriteString(xfp)
		bw.WriteString("\r\nX-Forwarded-Host: ")
		bw.WriteString(xfh)
		bw.WriteString("\r\n")
	}
	if generated {
		bw.WriteString("X-Request-Id: ")
		bw.WriteString(st.reqID)
		bw.WriteString("\r\n")
	}
	if te {
		bw.WriteString("Te: trailers\r\n")
	}
	bw.Write(c.h.loop.line2)
	bw.WriteString("\r\n")
	c.mu.Lock()
	if st.clientRst || c.closed {
		c.mu.Unlock()
		return errNothingRead{errClientReset}
	}
	st.directUC = uc
	c.mu.Unlock()
	// The clock read when the stream began serves, unless a dial came
	// between (or the access log wants upstream_duration exact).
	st.sent = st.start
	if !uc.reused || c.h.access != nil {
		st.sent = c.h.later(st.start)
	}
	if err := uc.send(); err != nil {
		return errNothingRead{err}
	}
	return nil
}

// writeCookieLine writes the one Cookie line of an HTTP/1.1 head: the
// values of every cookie field of fields, joined with "; ".
func writeCookieLine(bw *bufio.Writer, fields []hpack.HeaderField) {
	bw.WriteString("cookie: ")
	first := true
	for _, f := range fields {
		if f.Name != "cookie" {
			continue
		}
		if !first {
			bw.WriteString("; ")
		}
		first = false
		bw.WriteString(f.Value)
	}
	bw.WriteString("\r\n")
}

// awaitDirect waits for the first byte of the answer, under the
// response-header timeout; a client reset cuts the wait (directGone).
func (c *h2sConn) awaitDirect(uc *h1Conn, st *h2stream) error {
	c.armReadDeadline(st, uc)
	if err := uc.awaitFirst(); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if c.gone(st) {
				return errClientReset
			}
			return err // slow, not gone: no replay
		}
		return errNothingRead{err}
	}
	return nil
}

// armReadDeadline bounds the wait for st's answer on uc by the
// response-header timeout, which may end late by deadlineSlack: a deadline
// left by the request before serves when it falls in that window. Unless
// st's client has gone: then directGone's deadline in the past stays.
// Under mu, so that the two never undo each other.
func (c *h2sConn) armReadDeadline(st *h2stream, uc *h1Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch t := c.h.h1.headerTimeout; {
	case st.clientRst || c.closed:
		uc.deadline.set(time.Unix(1, 0))
	case t > 0:
		uc.deadline.arm(st.sent.Add(t), deadlineSlack(t))
	default:
		uc.deadline.set(time.Time{})
	}
}

// clearReadDeadline lifts uc's read deadline for the rest of st's answer,
// unless st's client has gone (as armReadDeadline).
func (c *h2sConn) clearReadDeadline(st *h2stream, uc *h1Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.clientRst || c.closed {
		uc.deadline.set(time.Unix(1, 0))
		return
	}
	uc.deadline.set(time.Time{})
}

// directGone cuts the app request of a direct stream whose client reset
// it; mu is held. A stream whose answer has ended has let go of its
// connection (directUC is nil), which may already serve another.
func (c *h2sConn) directGone(st *h2stream) {
	if uc := st.directUC; uc != nil {
		uc.deadline.set(time.Unix(1, 0))
	}
}

// relayDirect reads the app's answer and sends it to the client. A non-nil
// error means uc is spoiled.
func (c *h2sConn) relayDirect(uc *h1Conn, st *h2stream, rh *h1head) error {
	h := c.h
	var n int
	var fr respFraming
	for {
		var err error
		n, err = readHead(uc.br, nil)
		if err == nil {
			err = parseResponseHead(peekN(uc.br, n), rh)
		}
		if err == nil && rh.status == http.StatusSwitchingProtocols {
			err = errors.New("app switched protocols on a plain request")
		}
		if err == nil {
			fr, err = framing(rh, st.method == http.MethodHead)
		}
		if errors.Is(err, errHeadTooLarge) {
			return c.relayReadResponse(uc, st)
		}
		if err != nil {
			f := classify(context.Background(), err)
			if !isEOF(err) {
				f = errUpstream
			}
			if c.gone(st) {
				return err
			}
			c.directFailed(st, f, err)
			return err
		}
		if rh.status >= 200 {
			break
		}
		if rh.status != http.StatusContinue {
			c.mu.Lock()
			if c.waitRoom(st) {
				c.fields = directFields(rh, fr, "", &c.strs, c.fields[:0])
				c.down.headers(st.id, c.fields, false)
			}
			c.mu.Unlock()
		}
		_, _ = uc.br.Discard(n)
	}
	if fr.mode == bodyChunked || fr.mode == bodyToClose {
		return c.relayReadResponse(uc, st)
	}
	st.status = rh.status
	st.headers = h.later(st.start)
	length := fr.length
	if fr.mode == bodyNone {
		length = 0
	}
	if length > int64(uc.br.Buffered()-n) {
		c.clearReadDeadline(st, uc)
	}
	err := c.directHead(st, rh, fr, length == 0)
	_, _ = uc.br.Discard(n)
	if err != nil {
		return err
	}
	for length > 0 {
		if uc.br.Buffered() == 0 {
			if _, err := uc.br.Peek(1); err != nil {
				c.directAborted(st, err)
				return err
			}
		}
		b := peekN(uc.br, int(min(int64(uc.br.Buffered()), length)))
		if err := c.directData(st, b, int64(len(b)) == length); err != nil {
			return err
		}
		_, _ = uc.br.Discard(len(b))
		length -= int64(len(b))
	}
	if fr.upClose || uc.br.Buffered() > 0 {
		uc.nc.Close()
		return nil
	}
	uc.recycleReader()
	h.h1.put(uc, st.headers)
	return nil
}

// relayReadResponse relays an answer framed by chunks or by the close,
// or with a head too large for the fast reader, through net/http's
// ReadResponse, trailers included.
func (c *h2sConn) relayReadResponse(uc *h1Conn, st *h2stream) error {
	h := c.h
	req := &http.Request{Method: st.method}
	resp, err := http.ReadResponse(uc.br, req)
	if err != nil {
		if !c.gone(st) {
			c.directFailed(st, errUpstream, err)
		}
		return err
	}
	c.clearReadDeadline(st, uc)
	defer resp.Body.Close()
	st.status = resp.StatusCode
	st.headers = h.later(st.start)
	fields := make([]hpack.HeaderField, 0, len(resp.Header)+3)
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(resp.StatusCode)})
	hasID, hasDate := !h.genID, false
	hops := resp.Header["Connection"]
	for k, vv := range resp.Header {
		name := strings.ToLower(k)
		if hopByHop([]byte(name)) || namedInList(k, hops) {
			continue
		}
		hasID = hasID || name == "x-request-id"
		hasDate = hasDate || name == "date"
		for _, v := range vv {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	if !hasID {
		fields = append(fields, requestIDField(st.reqID))
	}
	if !hasDate {
		fields = append(fields, hpack.HeaderField{Name: "date", Value: httpDateString()})
	}
	if err := c.directHeaders(st, fields, false); err != nil {
		return err
	}
	buf := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(buf)
	for {
		n, rerr := resp.Body.Read(*buf)
		if n > 0 {
			if err := c.directData(st, (*buf)[:n], false); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			c.directAborted(st, rerr)
			return rerr
		}
	}
	var trailers []hpack.HeaderField
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			trailers = append(trailers, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	c.mu.Lock()
	if !st.out.done && !c.closed {
		c.down.endWith(st.id, &st.out, trailers)
	}
	st.directUC = nil // as in directHeadersLocked
	c.mu.Unlock()
	if resp.Close || uc.br.Buffered() > 0 {
		uc.nc.Close()
		return nil
	}
	h.h1.put(uc, st.headers)
	return nil
}

func namedInList(k string, hops []string) bool {
	for _, v := range hops {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), k) {
				return true
			}
		}
	}
	return false
}

// directFields is a response head as an HTTP/2 header block: lower-case
// names, hop-by-hop fields and those named in Connection dropped; on a
// final answer (not a 1xx), the request id (unless "") and a Date added
// when absent. Names and values are strings of strs.
func directFields(rh *h1head, fr respFraming, id string, strs *h2strings, out []hpack.HeaderField) []hpack.HeaderField {
	out = append(out, hpack.HeaderField{Name: ":status", Value: statusString(rh.status)})
	for _, f := range rh.fields {
		if hopByHop(f.name) || len(fr.hops) > 0 && namedIn(f.name, fr.hops) {
			continue
		}
		out = append(out, hpack.HeaderField{Name: strs.name(f.name), Value: strs.value(f.value)})
	}
	if rh.status >= 200 {
		if id != "" && !fr.hasID {
			out = append(out, requestIDField(id))
		}
		if !fr.hasDate {
			out = append(out, hpack.HeaderField{Name: "date", Value: httpDateString()})
		}
	}
	return out
}

// h2strings interns the header names and values an HTTP/1.1 app sends on
// the direct path of one client connection: the app repeats them answer
// after answer, and a new string for each was a third of the allocations
// of a direct stream. It holds at most h2StringsMax bytes, and starts over
// when full. The zero value is ready; it is guarded by h2sConn.mu.
type h2strings struct {
	names  map[string]string // the app's name: its lower case
	values map[string]string
	size   int
}

// h2StringsMax bounds the bytes an h2strings holds; longer strings are not
// kept.
const h2StringsMax = 4 << 10

// name returns b in lower case.
func (s *h2strings) name(b []byte) string {
	if n, ok := commonNames[string(b)]; ok {
		return n
	}
	if n, ok := s.names[string(b)]; ok {
		return n
	}
	n := strings.ToLower(string(b))
	if s.room(2 * len(n)) { // the key is a copy of b
		if s.names == nil {
			s.names = make(map[string]string)
		}
		s.names[string(b)] = n
	}
	return n
}

// value returns b as a string.
func (s *h2strings) value(b []byte) string {
	if v, ok := s.values[string(b)]; ok {
		return v
	}
	v := string(b)
	if s.room(len(v)) {
		if s.values == nil {
			s.values = make(map[string]string)
		}
		s.values[v] = v
	}
	return v
}

// room reports whether n more bytes may be kept, starting over if need be.
func (s *h2strings) room(n int) bool {
	if n > h2StringsMax/8 {
		return false
	}
	if s.size+n > h2StringsMax {
		clear(s.names)
		clear(s.values)
		s.size = 0
	}
	s.size += n
	return true
}

// statusString is strconv.Itoa without allocating for common codes.
func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 304:
		return "304"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// commonNames are response field names as HTTP/2 spells them, so that the
// usual ones cost no allocation.
var commonNames = func() map[string]string {
	m := make(map[string]string)
	for _, n := range []string{"content-type", "content-length", "date", "server", "cache-control", "etag",
		"last-modified", "expires", "vary", "location", "set-cookie", "x-request-id", "content-encoding",
		"accept-ranges", "access-control-allow-origin", "x-content-type-options", "age", "pragma"} {
		m[n] = n
		m[http.CanonicalHeaderKey(n)] = n
	}
	return m
}()

// directHead sends the response header block of a direct stream made from
// the app's head rh.
func (c *h2sConn) directHead(st *h2stream, rh *h1head, fr respFraming, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waitRoom(st) { // before c.fields is filled: others use it while this waits
		return errStreamGone
	}
	fr.hasID = fr.hasID || !c.h.genID
	c.fields = directFields(rh, fr, st.reqID, &c.strs, c.fields[:0])
	return c.directHeadersLocked(st, c.fields, end)
}

// directHeaders sends the response header block of a direct stream.
func (c *h2sConn) directHeaders(st *h2stream, fields []hpack.HeaderField, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.directHeadersLocked(st, fields, end)
}

// directHeadersLocked is directHeaders with mu held.
func (c *h2sConn) directHeadersLocked(st *h2stream, fields []hpack.HeaderField, end bool) error {
	if !c.waitRoom(st) {
		return errStreamGone
	}
	st.respSeen = true
	if c.s.draining.Load() {
		c.beginGoAwayLocked()
	}
	c.down.headers(st.id, fields, end)
	if end {
		st.out.done = true
		st.directUC = nil // the answer is whole: a reset from now on must not cut uc
	}
	return nil
}

// directData sends body bytes of a direct stream, waiting for the client's
// windows; end ends the stream.
func (c *h2sConn) directData(st *h2stream, b []byte, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if st.out.done || c.closed {
			return errStreamGone
		}
		n := c.down.sendData(st.id, &st.out, b, end)
		st.bytes += int64(n)
		b = b[n:]
		if len(b) == 0 {
			if end {
				if !st.out.done {
					c.down.finishFlow(st.id, &st.out)
				}
				st.directUC = nil // as in directHeadersLocked
			}
			return nil
		}
		c.cond.Wait()
	}
}

// directAborted resets a direct stream whose answer the app cut short.
func (c *h2sConn) directAborted(st *h2stream, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.out.done || c.closed {
		return
	}
	st.aborted = true
	c.h.log.Debug("response cut short", zap.String("reason", "aborted"),
		zap.String("request_id", st.reqID), zap.Error(err))
	c.resetStream(st, http2.ErrCodeInternal, false)
}
