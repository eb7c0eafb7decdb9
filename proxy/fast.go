package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// The fast path serves plain HTTP/1.1 requests on a cleartext listener
// without net/http: the connection loop is in fastserve.go, the wire format
// in h1wire.go, and the exchange with the app here. A plain request is one
// without a body, an upgrade, Expect, CONNECT or a head larger than the
// read buffer; that is almost all traffic. Everything else, and the rest of
// the connection it came on, goes to net/http and Handler.ServeHTTP, which
// serve every protocol and every corner. The fast path does what
// ServeHTTP does for a plain request (request ids, X-Forwarded-*,
// hop-by-hop hygiene, in-flight accounting, metrics, access log, the same
// error answers and reasons), measured in test/bench to cost about half.

// clientWatchAfter is how long the fast path waits for the app's answer
// before it starts watching the client connection for a close, which
// cancels the request at the app as net/http does. A quicker answer needs
// no watch, and no goroutine.
const clientWatchAfter = 20 * time.Millisecond

// fastConn is a client connection on the fast path.
type fastConn struct {
	nc     net.Conn
	src    clientSource
	br     *bufio.Reader
	remote string // RemoteAddr, as net/http reports it
	ip     string // its host part; "" if it has none
	// upstream is the app connection of the request in progress, for
	// Server.Close to cut; whoever swaps it out owns it.
	upstream atomic.Pointer[h1Conn]
	head     h1head // the request being served
	resp     h1head // the app's answer to it
	req      fastRequest
	id       [36]byte // a generated request id
	// deadline is nc's read deadline: the idle wait keeps the one it set
	// before while a request after another comes in time (awaitIdle).
	deadline readDeadline
}

// clientSource feeds the connection's reader: a byte the client watch
// read first, then the connection.
type clientSource struct {
	nc      net.Conn
	pending []byte
	one     [1]byte
}

func (s *clientSource) Read(p []byte) (int, error) {
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	return s.nc.Read(p)
}

// fastRequest is what the fast path learned from a request's fields.
type fastRequest struct {
	host, ua, id, xfp, xfh []byte
	xff                    int // X-Forwarded-For fields
	close                  bool
	teTrailers             bool
	idempotencyKey         bool
	via                    bool      // a Via field: loop.go reads them
	hop                    [8][]byte // fields named in Connection
	nhop                   int
}

// fastOK reports whether the handler can serve requests on the fast path:
// it talks HTTP/1.1 to the app with its own transport.
func (h *Handler) fastOK() bool { return h.h1 != nil }

// takeFast reads the fields of fc.head and reports whether the fast path
// serves the request; false leaves it to net/http.
func takeFast(fc *fastConn) bool {
	r := &fc.req
	*r = fastRequest{}
	hosts := 0
	for _, f := range fc.head.fields {
		n := f.name
		switch {
		case fieldIs(n, "host"):
			hosts++
			r.host = f.value
		case fieldIs(n, "content-length"):
			if string(f.value) != "0" {
				return false // a body: net/http streams it
			}
		case fieldIs(n, "transfer-encoding"), fieldIs(n, "expect"), fieldIs(n, "upgrade"),
			fieldIs(n, "http2-settings"):
			return false
		case fieldIs(n, "connection"):
			ok := true
			eachToken(f.value, func(tok []byte) {
				switch {
				case fieldIs(tok, "close"):
					r.close = true
				case fieldIs(tok, "keep-alive"), fieldIs(tok, "host"):
					// Host is the request's target, not a field to drop:
					// net/http keeps it out of the header a proxy cleans.
				case fieldIs(tok, "upgrade"):
					ok = false
				case r.nhop < len(r.hop):
					r.hop[r.nhop] = tok
					r.nhop++
				default:
					ok = false
				}
			})
			if !ok {
				return false
			}
		case fieldIs(n, "user-agent"):
			if r.ua == nil {
				r.ua = f.value
			}
		case fieldIs(n, "x-request-id"):
			if r.id == nil {
				r.id = f.value
			}
		case fieldIs(n, "x-forwarded-for"):
			r.xff++
		case fieldIs(n, "x-forwarded-proto"):
			if r.xfp == nil {
				r.xfp = f.value
			}
		case fieldIs(n, "x-forwarded-host"):
			if r.xfh == nil {
				r.xfh = f.value
			}
		case fieldIs(n, "te"):
			eachToken(f.value, func(tok []byte) {
				if fieldIs(tok, "trailers") {
					r.teTrailers = true
				}
			})
		case fieldIs(n, "idempotency-key"), fieldIs(n, "x-idempotency-key"):
			r.idempotencyKey = true
		case fieldIs(n, "via"):
			r.via = true
		}
	}
	return hosts == 1 && validHostField(r.host)
}

// validHostByte marks the bytes net/http accepts in a Host header.
var validHostByte = byteSet("!$%&'()*+,-.:;=[]_~")

func validHostField(h []byte) bool {
	if len(h) == 0 {
		return false // legal, but rare: net/http decides
	}
	for _, c := range h {
		if !validHostByte[c] {
			return false
		}
	}
	return true
}

// hopByHop reports whether a field is one ReverseProxy removes on the way
// to the app or back (plus Forwarded, which tidegate does not speak).
func hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return fieldIs(name, "te")
	case 7:
		return fieldIs(name, "trailer") || fieldIs(name, "upgrade")
	case 9:
		return fieldIs(name, "forwarded")
	case 10:
		return fieldIs(name, "connection") || fieldIs(name, "keep-alive")
	case 16:
		return fieldIs(name, "proxy-connection")
	case 17:
		return fieldIs(name, "transfer-encoding")
	case 18:
		return fieldIs(name, "proxy-authenticate")
	case 19:
		return fieldIs(name, "proxy-authorization")
	}
	return false
}

func namedIn(name []byte, list [][]byte) bool {
	for _, tok := range list {
		if bytes.EqualFold(name, tok) {
			return true
		}
	}
	return false
}

// fastExchange is the state of one request on the fast path.
type fastExchange struct {
	start, sent, headers time.Time
	status               int
	bytes                int64
	id                   []byte
	generated            bool
	failure              *failure
	aborted              bool // the response was cut short
	clientGone           bool
}

// serveFast proxies the request in fc.head to the app and writes the
// answer to bw, the client's writer. It reports whether the connection may
// serve another request. closing says whether the server wants the client
// to go ("Connection: close").
func (h *Handler) serveFast(fc *fastConn, bw *bufio.Writer, closing func() bool) (keep bool) {
	r := &fc.req
	x := fastExchange{start: h.now(), id: r.id}
	h.tracker.requestStartedAt(r.ua != nil && h.tracker.isProbeUA(r.ua), x.start)
	defer h.tracker.RequestDone()
	switch {
	case validRequestID(x.id):
	case h.genID:
		x.id, x.generated = appendRequestID(fc.id[:0]), true
	default:
		x.id = nil // the client's goes to the app as it came
	}
	keep = !r.close
	defer func() {
		fc.upstream.Store(nil)
		h.finishFast(fc, &x)
	}()
	if r.via && h.loopH1(fc.head.fields, fc.head.method, fc.head.target, x.id) {
		return h.failFast(fc, bw, &x, errLoop, nil, keep, closing)
	}

	t := h.h1
	var uc *h1Conn
	for attempt := 0; ; attempt++ {
		var err error
		uc, err = t.get(context.Background(), x.start, attempt > 0)
		if err == nil {
			fc.upstream.Store(uc)
			// The clock read when the request began serves, unless a
			// dial came between (or the access log wants
			// upstream_duration exact).
			x.sent = x.start
			if !uc.reused || h.access != nil {
				x.sent = h.later(x.start)
			}
			err = h.sendFast(uc, fc, &x)
			if err == nil {
				err = h.awaitHead(uc, fc, &x)
			}
		}
		if err == nil {
			break
		}
		if uc != nil {
			uc.nc.Close()
		}
		if x.clientGone {
			f := failure{StatusClientClosed, ReasonClientCanceled, false, "client closed request"}
			x.failure = &f
			return false
		}
		if t.retryOnNew(context.Background(), attempt, uc, err, idempotentMethod(fc.head.method) || r.idempotencyKey) {
			continue
		}
		return h.failFast(fc, bw, &x, classify(context.Background(), err), err, keep, closing)
	}
	if h.access != nil {
		x.headers = h.later(x.start)
	}
	return h.relayResponse(uc, fc, bw, &x, keep, closing)
}

// idempotentMethod reports whether a request with method m may be sent
// again after it may have reached the app (RFC 9110 9.2.2): GET, HEAD,
// OPTIONS, TRACE, PUT, DELETE.
func idempotentMethod[T string | []byte](m T) bool {
	switch string(m) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// sendFast writes the request to the app: the client's request line and
// fields, less hop-by-hop ones, plus X-Forwarded-* and X-Request-Id.
func (h *Handler) sendFast(uc *h1Conn, fc *fastConn, x *fastExchange) error {
	r, bw := &fc.req, uc.bw
	bw.Write(fc.head.method)
	bw.WriteByte(' ')
	bw.Write(fc.head.target)
	bw.WriteString(" HTTP/1.1\r\n")
	hops := r.hop[:r.nhop]
	setXF := h.forwarded != ForwardedOff
	xffOut := !setXF
	for _, f := range fc.head.fields {
		n := f.name
		switch {
		case hopByHop(n), len(hops) > 0 && namedIn(n, hops),
			setXF && (fieldIs(n, "x-forwarded-proto") || fieldIs(n, "x-forwarded-host")),
			x.generated && fieldIs(n, "x-request-id"):
			continue
		case setXF && fieldIs(n, "x-forwarded-for"):
			if xffOut {
				continue
			}
			xffOut = true
			h.writeXFF(bw, fc)
			continue
		}
		bw.Write(n)
		bw.WriteString(": ")
		bw.Write(f.value)
		bw.WriteString("\r\n")
	}
	if !xffOut {
		h.writeXFF(bw, fc)
	}
	if setXF {
		bw.WriteString("X-Forwarded-Proto: ")
		if h.forwarded == ForwardedAppend && r.xfp != nil {
			bw.Write(r.xfp)
		} else {
			bw.WriteString("http")
		}
		bw.WriteString("\r\nX-Forwarded-Host: ")
		if h.forwarded == ForwardedAppend && r.xfh != nil {
			bw.Write(r.xfh)
		} else {
			bw.Write(r.host)
		}
		bw.WriteString("\r\n")
	}
	if x.generated {
		bw.WriteString("X-Request-Id: ")
		bw.Write(x.id)
		bw.WriteString("\r\n")
	}
	if r.teTrailers {
		bw.WriteString("Te: trailers\r\n")
	}
	bw.Write(h.loop.line11)
	bw.WriteString("\r\n")
	if err := uc.send(); err != nil {
		return errNothingRead{err}
	}
	return nil
}

// writeXFF writes X-Forwarded-For: the client's list and its address in
// append mode, its address alone in replace mode.
func (h *Handler) writeXFF(bw *bufio.Writer, fc *fastConn) {
	if fc.ip == "" {
		return
	}
	bw.WriteString("X-Forwarded-For: ")
	if h.forwarded == ForwardedAppend && fc.req.xff > 0 {
		for _, f := range fc.head.fields {
			if fieldIs(f.name, "x-forwarded-for") {
				bw.Write(f.value)
				bw.WriteString(", ")
			}
		}
	}
	bw.WriteString(fc.ip)
	bw.WriteString("\r\n")
}

// awaitHead waits for the app's response head on uc, watching the client
// connection for a close while it waits longer than clientWatchAfter.
func (h *Handler) awaitHead(uc *h1Conn, fc *fastConn, x *fastExchange) error {
	var hdrDeadline time.Time
	if h.h1.headerTimeout > 0 {
		hdrDeadline = x.sent.Add(h.h1.headerTimeout)
	}
	var w *clientWatch
	defer func() {
		if w != nil {
			w.stop()
		}
	}()
	// The watch may start late by up to clientWatchAfter (but not after
	// the header deadline), and the header timeout end late by
	// deadlineSlack: a deadline already on the connection from the
	// request before then serves (readDeadline.arm).
	deadline, slack := x.sent.Add(clientWatchAfter), time.Duration(clientWatchAfter)
	switch {
	case hdrDeadline.IsZero():
	case hdrDeadline.Before(deadline):
		deadline, slack = hdrDeadline, deadlineSlack(h.h1.headerTimeout)
	default:
		slack = min(slack, hdrDeadline.Sub(deadline))
	}
	for {
		uc.deadline.arm(deadline, slack)
		if w != nil && w.gone.Load() {
			// The watch may have seen the client leave before the
			// deadline above replaced the one it set.
			x.clientGone = true
			return errors.New("client went away")
		}
		err := uc.awaitFirst()
		if err == nil {
			break
		}
		if w != nil && w.gone.Load() {
			x.clientGone = true
			return err
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return errNothingRead{err}
		}
		if w != nil || deadline.Equal(hdrDeadline) {
			return err // the app is slow, not gone: no retry
		}
		// Slow: watch the client, and wait until the header deadline.
		deadline, slack = hdrDeadline, deadlineSlack(h.h1.headerTimeout)
		if fc.br.Buffered() == 0 {
			w = watchClient(fc, uc.nc)
		}
	}
	if w != nil {
		gone := w.stop()
		w = nil
		if gone {
			x.clientGone = true
			return errors.New("client went away")
		}
	}
	return nil
}

// clientWatch reads the client connection while the app works on a
// request: a close cancels the request at the app (by its deadline); a
// byte (the next pipelined request) is kept for the connection's reader.
type clientWatch struct {
	fc   *fastConn
	gone atomic.Bool
	done chan struct{}
}

func watchClient(fc *fastConn, app net.Conn) *clientWatch {
	w := &clientWatch{fc: fc, done: make(chan struct{})}
	// The deadline for reading the request head has no say in the
	// exchange: the app may take longer, and the watch must last.
	fc.deadline.set(time.Time{})
	go func() {
		defer close(w.done)
		n, err := fc.nc.Read(fc.src.one[:])
		if n > 0 {
			fc.src.pending = fc.src.one[:n]
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			w.gone.Store(true)
			_ = app.SetReadDeadline(time.Unix(1, 0))
		}
	}()
	return w
}

// stop ends the watch and reports whether the client went away.
func (w *clientWatch) stop() bool {
	w.fc.deadline.set(time.Unix(1, 0))
	<-w.done
	w.fc.deadline.set(time.Time{})
	return w.gone.Load()
}

// Body framing of a response.
const (
	bodyNone    = iota // HEAD, 204, 304
	bodyLength         // Content-Length
	bodyChunked        // chunked
	bodyToClose        // read until the app closes; chunked to the client
)

// relayResponse reads the app's answer on uc, which holds a complete head,
// and writes it to the client.
func (h *Handler) relayResponse(uc *h1Conn, fc *fastConn, bw *bufio.Writer, x *fastExchange, keep bool, closing func() bool) bool {
	rh := &fc.resp
	var n int
	// The rest of a head, or the head after a 1xx, is read under the
	// response-header timeout, not the first byte's watch deadline.
	more := func() {
		var d time.Time
		if h.h1.headerTimeout > 0 {
			d = time.Now().Add(h.h1.headerTimeout)
		}
		uc.deadline.set(d)
	}
	for {
		var err error
		n, err = readHead(uc.br, more)
		if err == nil {
			err = parseResponseHead(peekN(uc.br, n), rh)
		}
		if errors.Is(err, errHeadTooLarge) {
			return h.relayLarge(uc, fc, bw, x, keep, closing)
		}
		if err == nil && rh.status == http.StatusSwitchingProtocols {
			err = errors.New("app switched protocols on a plain request")
		}
		if err != nil {
			uc.nc.Close()
			f := classify(context.Background(), err)
			if !isEOF(err) {
				f = errUpstream
			}
			return h.failFast(fc, bw, x, f, err, keep, closing)
		}
		if rh.status >= 200 {
			break
		}
		if _, err := framing(rh, false); err != nil {
			uc.nc.Close()
			return h.failFast(fc, bw, x, errUpstream, err, keep, closing)
		}
		if rh.status != http.StatusContinue {
			// 102, 103: relayed, as net/http does.
			writeHead(bw, rh, nil)
			bw.WriteString("\r\n")
			if err := bw.Flush(); err != nil {
				uc.nc.Close()
				x.clientGone = true
				return false
			}
		}
		_, _ = uc.br.Discard(n)
	}
	fr, err := framing(rh, string(fc.head.method) == http.MethodHead)
	if err != nil {
		uc.nc.Close()
		return h.failFast(fc, bw, x, errUpstream, err, keep, closing)
	}
	mode, length, upClose, hops := fr.mode, fr.length, fr.upClose, fr.hops
	keep = keep && !closing()
	x.status = rh.status

	// The head's read deadline (awaitHead) stays on the connection unless
	// the body needs another read: most answers arrive in one.
	if mode == bodyChunked || mode == bodyToClose || mode == bodyLength && int64(uc.br.Buffered()-n) < length {
		uc.deadline.set(time.Time{})
	}
	writeHead(bw, rh, hops)
	switch mode {
	case bodyLength:
		var num [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(num[:0], length, 10))
		bw.WriteString("\r\n")
	case bodyNone:
		if rh.status != http.StatusNoContent {
			for _, f := range rh.fields {
				if fieldIs(f.name, "content-length") {
					bw.WriteString("Content-Length: ")
					bw.Write(f.value)
					bw.WriteString("\r\n")
					break
				}
			}
		}
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	endHead(bw, x.id, fr.hasID || !h.genID, fr.hasDate, keep)
	_, _ = uc.br.Discard(n)

	switch mode {
	case bodyLength:
		x.bytes, err = copyLength(bw, uc.br, length)
	case bodyChunked:
		x.bytes, err = copyChunked(bw, uc.br)
	case bodyToClose:
		x.bytes, err = copyToClose(bw, uc.br)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		uc.nc.Close()
		x.aborted = true
		var src errSrc
		if !errors.As(err, &src) {
			x.clientGone = true
		}
		h.log.Debug("response cut short", zap.String("reason", "aborted"),
			zap.String("request_id", string(x.id)), zap.Error(err))
		return false
	}
	switch {
	case !fc.upstream.CompareAndSwap(uc, nil):
		// Server.Close took it, and closed it.
	case upClose || uc.br.Buffered() > 0:
		uc.nc.Close()
	default:
		uc.recycleReader()
		h.h1.put(uc, x.start)
	}
	return keep
}

// errHeadTooLarge: a head does not fit the read buffer.
var errHeadTooLarge = errors.New("message head larger than the read buffer")

// respFraming is what a response head says about its body and its
// connection.
type respFraming struct {
	mode    int   // bodyNone, bodyLength, bodyChunked or bodyToClose
	length  int64 // for bodyLength
	upClose bool  // the app closes the connection after this answer
	hasID   bool  // the app set X-Request-Id
	hasDate bool
	hops    [][]byte // fields named in Connection
}

// framing reads rh's framing as net/http's ReadResponse does, and refuses
// what it refuses: a Transfer-Encoding other than chunked, an invalid or
// conflicting Content-Length. head says the request was a HEAD.
func framing(rh *h1head, head bool) (respFraming, error) {
	fr := respFraming{mode: bodyToClose, upClose: rh.minor == 0}
	haveLength := false
	for _, f := range rh.fields {
		switch {
		case fieldIs(f.name, "transfer-encoding"):
			if rh.minor == 0 {
				continue // ignored on HTTP/1.0, as net/http does
			}
			if fr.mode == bodyChunked || !fieldIs(f.value, "chunked") {
				return fr, errors.New("unsupported Transfer-Encoding " + strconv.Quote(string(clip(f.value))))
			}
			fr.mode = bodyChunked
		case fieldIs(f.name, "content-length"):
			v, ok := parseContentLength(f.value)
			if !ok || haveLength && v != fr.length {
				return fr, errors.New("invalid Content-Length " + strconv.Quote(string(clip(f.value))))
			}
			fr.length, haveLength = v, true
		case fieldIs(f.name, "connection"):
			eachToken(f.value, func(tok []byte) {
				switch {
				case fieldIs(tok, "close"):
					fr.upClose = true
				case fieldIs(tok, "keep-alive"):
					if rh.minor == 0 {
						fr.upClose = false
					}
				default:
					fr.hops = append(fr.hops, tok)
				}
			})
		case fieldIs(f.name, "x-request-id"):
			fr.hasID = true
		case fieldIs(f.name, "date"):
			fr.hasDate = true
		}
	}
	switch {
	case head || rh.status < 200 || rh.status == http.StatusNoContent || rh.status == http.StatusNotModified:
		fr.mode = bodyNone
	case fr.mode == bodyChunked:
	case haveLength:
		fr.mode = bodyLength
	}
	if fr.mode == bodyToClose {
		fr.upClose = true
	}
	return fr, nil
}

// endHead ends a response head with what tidegate adds: X-Request-Id and
// Date when the app sent none, Connection: close when the client must go.
func endHead(bw *bufio.Writer, id []byte, hasID, hasDate, keep bool) {
	if !hasID {
		bw.WriteString("X-Request-Id: ")
		bw.Write(id)
		bw.WriteString("\r\n")
	}
	if !hasDate {
		bw.WriteString("Date: ")
		bw.Write(httpDate())
		bw.WriteString("\r\n")
	}
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// readHead waits until br holds a complete message head and returns its
// size. A head larger than br's buffer is an error. more is called once,
// before the first read the head needs, if any.
func readHead(br *bufio.Reader, more func()) (int, error) {
	for {
		n, err := scanHead(peekN(br, br.Buffered()))
		if err != nil || n > 0 {
			return n, err
		}
		if br.Buffered() == br.Size() {
			return 0, errHeadTooLarge
		}
		if more != nil {
			more()
			more = nil
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return 0, noEOF(err)
		}
	}
}

// peekN returns the next n buffered bytes of br; n <= br.Buffered().
func peekN(br *bufio.Reader, n int) []byte {
	b, _ := br.Peek(n)
	return b
}

// dropFromResponse reports whether a response field stays behind: framing
// (written anew), hop-by-hop fields but Trailer, and those named in hops.
func dropFromResponse(name []byte, hops [][]byte) bool {
	return hopByHop(name) && !fieldIs(name, "trailer") || fieldIs(name, "content-length") ||
		len(hops) > 0 && namedIn(name, hops)
}

// writeHead writes a response's status line and its end-to-end fields;
// framing, Connection and the fields in hops are left out.
func writeHead(bw *bufio.Writer, rh *h1head, hops [][]byte) {
	var num [20]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(num[:0], int64(rh.status), 10))
	bw.WriteByte(' ')
	if len(rh.reason) > 0 {
		bw.Write(rh.reason)
	} else {
		bw.WriteString(http.StatusText(rh.status))
	}
	bw.WriteString("\r\n")
	for _, f := range rh.fields {
		if dropFromResponse(f.name, hops) {
			continue
		}
		bw.Write(f.name)
		bw.WriteString(": ")
		bw.Write(f.value)
		bw.WriteString("\r\n")
	}
}

// copyLength copies n body bytes from src to dst. What src has buffered
// goes through dst's buffer; the rest of a large body is read straight
// into a 64 KiB buffer and written on, two syscalls per 64 KiB.
func copyLength(dst *bufio.Writer, src *bufio.Reader, n int64) (int64, error) {
	var done int64
	var big *[]byte
	defer func() {
		if big != nil {
			bodyBufs.Put(big)
		}
	}()
	for done < n {
		if src.Buffered() > 0 {
			w, err := dst.Write(peekN(src, int(min(n-done, int64(src.Buffered())))))
			done += int64(w)
			_, _ = src.Discard(w)
			if err != nil {
				return done, err
			}
			continue
		}
		if n-done < int64(src.Size()) {
			if _, err := src.Peek(1); err != nil {
				return done, errSrc{noEOF(err)}
			}
			continue
		}
		if big == nil {
			big = bodyBufs.Get().(*[]byte)
		}
		// src's buffer is empty and p larger than it: bufio reads
		// straight into p.
		r, err := src.Read((*big)[:min(n-done, int64(len(*big)))])
		if r > 0 {
			w, werr := dst.Write((*big)[:r])
			done += int64(w)
			if werr != nil {
				return done, werr
			}
		}
		if err != nil && done < n {
			return done, errSrc{noEOF(err)}
		}
	}
	return done, nil
}

// bodyBufs lends large bodies their copy buffers.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// copyToClose copies a body that ends when the app closes the connection,
// chunked, flushing whenever src has nothing more buffered.
func copyToClose(dst *bufio.Writer, src *bufio.Reader) (int64, error) {
	var n int64
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return n, err
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					_, err = dst.WriteString("0\r\n\r\n")
					return n, err
				}
				return n, errSrc{err}
			}
		}
		b := peekN(src, src.Buffered())
		_ = writeChunkSize(dst, int64(len(b)))
		w, err := dst.Write(b)
		n += int64(w)
		_, _ = src.Discard(w)
		if _, err2 := dst.WriteString("\r\n"); err == nil {
			err = err2
		}
		if err != nil {
			return n, err
		}
	}
}

// maxLargeHead bounds a response head read by relayLarge, as
// http.Transport's MaxResponseHeaderBytes does by default.
const maxLargeHead = 10 << 20

// relayLarge relays an answer whose head does not fit the app
// connection's buffer (big cookies, say): net/http reads it, with no limit
// but maxLargeHead, so that such an answer reaches the client as it would
// on the net/http path. It is rare, so it is simple: the body is re-framed
// as it is read, and the connection to the app is not reused.
func (h *Handler) relayLarge(uc *h1Conn, fc *fastConn, bw *bufio.Writer, x *fastExchange, keep bool, closing func() bool) bool {
	defer uc.nc.Close()
	lr := &io.LimitedReader{R: uc.br, N: maxLargeHead}
	br := bufio.NewReader(lr)
	req := &http.Request{Method: methodString(fc.head.method)}
	var resp *http.Response
	for {
		more := time.Time{}
		if h.h1.headerTimeout > 0 {
			more = time.Now().Add(h.h1.headerTimeout)
		}
		_ = uc.nc.SetReadDeadline(more)
		var err error
		resp, err = http.ReadResponse(br, req)
		if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
			err = errors.New("app switched protocols on a plain request")
		}
		if err != nil {
			return h.failFast(fc, bw, x, errUpstream, err, keep, closing)
		}
		if resp.StatusCode >= 200 {
			break
		}
		if resp.StatusCode != http.StatusContinue {
			writeHeader(bw, resp.StatusCode, resp.Status, resp.Header)
			bw.WriteString("\r\n")
			if bw.Flush() != nil {
				x.clientGone = true
				return false
			}
		}
	}
	_ = uc.nc.SetReadDeadline(time.Time{})
	lr.N = 1<<63 - 1 // the body has no limit
	defer resp.Body.Close()
	keep = keep && !closing()
	x.status = resp.StatusCode
	writeHeader(bw, resp.StatusCode, resp.Status, resp.Header)
	noBody := req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	chunked := !noBody && resp.ContentLength < 0
	var num [20]byte
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case resp.ContentLength >= 0 && resp.StatusCode != http.StatusNoContent:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(num[:0], resp.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	_, hasDate := resp.Header["Date"]
	endHead(bw, x.id, !h.genID || resp.Header.Get(RequestIDHeader) != "", hasDate, keep)
	var err error
	if !noBody {
		big := bodyBufs.Get().(*[]byte)
		defer bodyBufs.Put(big)
		buf := *big
		for err == nil {
			var n int
			n, err = resp.Body.Read(buf)
			if n > 0 {
				if chunked {
					_ = writeChunkSize(bw, int64(n))
				}
				bw.Write(buf[:n])
				x.bytes += int64(n)
				if chunked {
					bw.WriteString("\r\n")
					if ferr := bw.Flush(); ferr != nil {
						x.clientGone = true
						err = ferr
						break
					}
				}
			}
		}
		if err == io.EOF {
			err = nil
			if chunked {
				bw.WriteString("0\r\n")
				writeFields(bw, resp.Trailer, nil)
				bw.WriteString("\r\n")
			}
		} else if !x.clientGone {
			err = errSrc{err}
		}
	}
	if err == nil {
		err = bw.Flush()
		x.clientGone = err != nil
	}
	if err != nil {
		x.aborted = true
		h.log.Debug("response cut short", zap.String("reason", "aborted"),
			zap.String("request_id", string(x.id)), zap.Error(err))
		return false
	}
	return keep
}

// writeHeader writes a status line and the end-to-end fields of hdr, as
// writeHead does for a parsed head.
func writeHeader(bw *bufio.Writer, code int, status string, hdr http.Header) {
	var num [20]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(num[:0], int64(code), 10))
	bw.WriteByte(' ')
	if _, reason, ok := strings.Cut(status, " "); ok && reason != "" {
		bw.WriteString(reason)
	} else {
		bw.WriteString(http.StatusText(code))
	}
	bw.WriteString("\r\n")
	var hops [][]byte
	for _, v := range hdr["Connection"] {
		eachToken([]byte(v), func(tok []byte) { hops = append(hops, tok) })
	}
	writeFields(bw, hdr, hops)
}

// writeFields writes the end-to-end fields of hdr, leaving out framing,
// hop-by-hop fields and those named in hops.
func writeFields(bw *bufio.Writer, hdr http.Header, hops [][]byte) {
	for k, vs := range hdr {
		if dropFromResponse([]byte(k), hops) {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// errUpstream is the answer to an app that answered what HTTP/1.1 does
// not allow.
var errUpstream = failure{http.StatusBadGateway, ReasonUpstreamError, true, "upstream error"}

// failFast answers a request the app could not answer with f, counted and
// logged; it reports whether the connection may go on.
func (h *Handler) failFast(fc *fastConn, bw *bufio.Writer, x *fastExchange, f failure, err error, keep bool, closing func() bool) bool {
	x.failure = &f
	h.upstreamFailed(fc, x, f, err)
	keep = keep && !closing()
	x.bytes = writeFailureRaw(bw, f, x.id, keep, string(fc.head.method) == http.MethodHead)
	// Flushed whatever keep is: the connection closes when this returns
	// false, and the answer must be on the wire before.
	flushed := bw.Flush() == nil
	return flushed && keep
}

// upstreamFailed counts and logs a failed exchange with the app.
func (h *Handler) upstreamFailed(fc *fastConn, x *fastExchange, f failure, err error) {
	if !f.upstream {
		return
	}
	if h.metrics != nil {
		h.metrics.upstreamError(f.reason)
	}
	h.log.Warn("upstream request failed",
		zap.String("reason", string(f.reason)),
		zap.Int("status", f.status),
		zap.String("method", string(fc.head.method)),
		zap.String("path", targetPath(fc.head.target)),
		zap.String("request_id", string(x.id)),
		zap.Error(err))
}

// writeFailureRaw writes the answer writeFailure gives on net/http. The
// answer to a HEAD has no body, as net/http sends none: the client reads
// none, and on a kept connection would read it as the next answer's head.
func writeFailureRaw(bw *bufio.Writer, f failure, id []byte, keep, head bool) int64 {
	body := f.body()
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(f.status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(f.status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nX-Tidegate-Reason: ")
	bw.WriteString(string(f.reason))
	if len(id) > 0 {
		bw.WriteString("\r\nX-Request-Id: ")
		bw.Write(id)
	}
	bw.WriteString("\r\nDate: ")
	bw.Write(httpDate())
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if !keep {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	if head {
		return 0
	}
	bw.WriteString(body)
	return int64(len(body))
}

// targetPath returns the path of a request target, decoded as net/http's
// URL.Path is.
func targetPath(target []byte) string {
	p := target
	for i, c := range target {
		if c == '?' {
			p = target[:i]
			break
		}
	}
	s := string(p)
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if u, err := url.PathUnescape(s); err == nil {
				return u
			}
			break
		}
	}
	return s
}

// finishFast records a request of the fast path in the metrics and the
// access log, as finish does for ServeHTTP.
func (h *Handler) finishFast(fc *fastConn, x *fastExchange) {
	end := h.later(x.start)
	status := x.status
	switch {
	case x.failure != nil:
		status = x.failure.status
	case x.clientGone:
		status = StatusClientClosed
	}
	method := methodString(fc.head.method)
	if h.metrics != nil {
		h.metrics.observe(method, status, end.Sub(x.start).Seconds())
	}
	if h.access == nil {
		return
	}
	var upstream time.Duration
	if !x.sent.IsZero() && !x.headers.IsZero() {
		upstream = x.headers.Sub(x.sent)
	}
	reason := ""
	if x.failure != nil {
		reason = string(x.failure.reason)
	} else if x.aborted {
		reason = "aborted"
	}
	if x.failure == nil && (x.aborted || x.clientGone) {
		if c := trackedOf(fc.nc); c != nil && c.writeStalled() {
			reason = string(ReasonClientWriteTimeout)
		}
	}
	h.logAccess(accessEntry{method: method, path: targetPath(fc.head.target), proto: "HTTP/1.1", status: status,
		bytes: x.bytes, duration: end.Sub(x.start), upstream: upstream, id: string(x.id), remote: fc.remote, reason: reason})
}

// methodString returns m as a string, without allocating for the common
// methods.
func methodString(m []byte) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodOptions:
		return http.MethodOptions
	}
	return string(m)
}

// httpDate returns the current time in the Date header's format, computed
// at most once a second.
func httpDate() []byte { return currentDate().val }

// httpDateString is httpDate as a string, for HPACK.
func httpDateString() string { return currentDate().str }

func currentDate() *cachedDate {
	now := time.Now()
	sec := now.Unix()
	if d := dateCache.Load(); d != nil && d.sec == sec {
		return d
	}
	b := now.UTC().AppendFormat(nil, http.TimeFormat)
	d := &cachedDate{sec: sec, val: b, str: string(b)}
	dateCache.Store(d)
	return d
}

// cachedDate is one second's Date value, as bytes for HTTP/1.1 and as a
// string for HTTP/2.
type cachedDate struct {
	sec int64
	val []byte
	str string
}

var dateCache atomic.Pointer[cachedDate]

// clientBufs lends fast connections their write buffers while they answer.
var clientBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
