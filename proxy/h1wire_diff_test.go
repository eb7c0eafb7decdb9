package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Differential fuzzing of the fast path's HTTP/1.1 request reading
// (h1wire.go, takeFast in fast.go) against net/http's server on the same
// client bytes. The fast path never refuses a request itself: what it does
// not take goes, unread, to net/http (handOff). So the property is one-way:
//
//   - a request the fast path takes, net/http's server reads too, with the
//     same method, target, protocol, Host, fields (per name, in order), no
//     body, and the same end: the next pipelined request starts at the
//     same byte for both;
//   - what the fast path writes to the app for it is exactly one request
//     that net/http reads back with that method, target and Host, and the
//     client's end-to-end fields unchanged;
//   - whatever net/http refuses, the fast path hands off (never takes).
//
// The intentional differences, each a narrow exception below:
//
//   - excHandOff: the fast path hands off what it does not serve itself
//     (heads over fastReadBuffer, bare LF, HTTP/1.0, absolute-form and
//     asterisk-form targets, bodies, upgrades, Expect, unusual Host); net/
//     http then decides. Stricter, never looser: not compared.
//   - excDupContentLength: several "Content-Length: 0" fields. net/http
//     folds identical values into one field; the fast path keeps them as
//     sent. The framing (no body) is the same.
//   - excLeadingCRLF: after a POST, net/http's server skips CR and LF bytes
//     before the next request line (RFC 9112 §2.2 tolerance); the fast path
//     hands such a request off to a fresh net/http connection, which does
//     not (400). Stricter, never looser.

// netHTTPServerRead reads one request from br as net/http's server does
// (conn.readRequest of net/http/server.go): http.ReadRequest, then the
// protocol version, Host and field checks it adds. lastPOST applies the
// server's tolerance of CR and LF after a POST (excLeadingCRLF).
func netHTTPServerRead(br *bufio.Reader, lastPOST bool) (*http.Request, error) {
	if lastPOST {
		peek, _ := br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		_, _ = br.Discard(n)
	}
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	if req.ProtoMajor != 1 && (req.ProtoMajor != 2 || req.ProtoMinor != 0 || req.Method != "PRI" || req.RequestURI != "*") {
		return nil, errors.New("unsupported protocol version")
	}
	// http.ReadRequest has moved the Host field to req.Host and refused
	// two of them; an empty one reads as none, which the fast path never
	// takes either.
	isH2Upgrade := req.Method == "PRI" && len(req.Header) == 0 && req.URL.Path == "*" && req.Proto == "HTTP/2.0"
	if req.ProtoAtLeast(1, 1) && req.Host == "" && !isH2Upgrade && req.Method != "CONNECT" {
		return nil, errors.New("missing required Host header")
	}
	if req.URL.Host == "" && !httpguts.ValidHostHeader(req.Host) {
		return nil, errors.New("malformed Host header")
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, errors.New("invalid header name")
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, errors.New("invalid header value")
			}
		}
	}
	return req, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// fastTakes runs the fast path's decision on the bytes a connection has
// received, as serveFastConn and readHead do: the size of the head it
// takes, or 0 if it waits for more or hands the connection off.
func fastTakes(b []byte, fc *fastConn) int {
	buf := b[:min(len(b), fastReadBuffer)]
	n, err := scanHead(buf)
	if err != nil || n == 0 {
		return 0 // bare LF, too large for the buffer (excHandOff), or not complete yet
	}
	if !parseRequestHead(buf[:n], &fc.head) || !takeFast(fc) {
		return 0 // excHandOff
	}
	return n
}

// FuzzH1RequestDiff feeds the same bytes, up to four pipelined requests, to
// the fast path and to net/http's server, and compares what each reads.
func FuzzH1RequestDiff(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: a:1\r\nX-A:  v  \r\nx-a: w\r\nX-B: \t\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close, X-Y\r\nX-Y: 1\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /",
		"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n Folded: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a#frag HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Te\r\nTe: trailers\r\nUpgrade: h2c\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"M\x00 / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0 \r\n\r\n",
		"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
		"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	h := &Handler{forwarded: ForwardedAppend, h1: &h1Transport{}, now: time.Now, genID: true}
	f.Fuzz(func(t *testing.T, in []byte) {
		cr := &countingReader{r: bytes.NewReader(in)}
		nbr := bufio.NewReader(cr)
		off, lastPOST := 0, false
		for range 4 {
			fc := &fastConn{ip: "10.0.0.1"}
			n := fastTakes(in[off:], fc)
			if n == 0 {
				return // waits, or net/http serves the rest (excHandOff)
			}
			head := in[off : off+n]
			req, err := netHTTPServerRead(nbr, lastPOST)
			if err != nil {
				t.Fatalf("the fast path takes %q; net/http refuses it: %v", head, err)
			}
			compareRequest(t, head, fc, req)
			if body, err := io.ReadAll(req.Body); err != nil || len(body) > 0 {
				t.Fatalf("%q: net/http reads a body %q (%v); the fast path none", head, body, err)
			}
			if end := cr.n - nbr.Buffered(); end != off+n {
				t.Fatalf("%q: the fast path ends the request at byte %d; net/http at %d", in, off+n, end)
			}
			checkSentToApp(t, h, head, fc, req)
			off += n
			lastPOST = req.Method == http.MethodPost
		}
	})
}

// compareRequest checks that the fast path read head as net/http read req.
func compareRequest(t *testing.T, head []byte, fc *fastConn, req *http.Request) {
	t.Helper()
	if req.Method != string(fc.head.method) || req.RequestURI != string(fc.head.target) || req.Proto != "HTTP/1.1" {
		t.Fatalf("%q: the fast path reads %s %s HTTP/1.%d; net/http %s %s %s", head,
			fc.head.method, fc.head.target, fc.head.minor, req.Method, req.RequestURI, req.Proto)
	}
	if req.Host != string(fc.req.host) {
		t.Fatalf("%q: Host %q; net/http %q", head, fc.req.host, req.Host)
	}
	if req.ContentLength != 0 || len(req.TransferEncoding) > 0 {
		t.Fatalf("%q: the fast path takes a request net/http reads a body for (%d, %q)", head, req.ContentLength, req.TransferEncoding)
	}
	if req.Close != fc.req.close {
		t.Fatalf("%q: close is %v; net/http %v", head, fc.req.close, req.Close)
	}
	fields := fc.head.fields
	if n := countField(fields, "content-length"); n > 1 { // excDupContentLength
		fields = slices.Clone(fields)
		for i := len(fields) - 1; i >= 0 && n > 1; i-- {
			if fieldIs(fields[i].name, "content-length") {
				fields = slices.Delete(fields, i, i+1)
				n--
			}
		}
	}
	compareFields(t, head, fields, req.Header.Clone(), "Host")
}

func countField(fields []h1field, lower string) int {
	n := 0
	for _, f := range fields {
		if fieldIs(f.name, lower) {
			n++
		}
	}
	return n
}

// checkSentToApp writes the request to the app as serveFast does and
// checks that net/http reads exactly one request back: the client's
// method, target and Host, its end-to-end fields unchanged, none of its
// hop-by-hop ones, and no body.
func checkSentToApp(t *testing.T, h *Handler, head []byte, fc *fastConn, req *http.Request) {
	t.Helper()
	x := fastExchange{id: fc.req.id}
	if !validRequestID(x.id) {
		x.id, x.generated = appendRequestID(fc.id[:0]), true
	}
	var out bytes.Buffer
	uc := &h1Conn{bw: bufio.NewWriter(&out)}
	if err := h.sendFast(uc, fc, &x); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(out.Bytes()))
	got, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("%q: net/http cannot read what the fast path sends the app: %v\n%q", head, err, out.Bytes())
	}
	if b, _ := io.ReadAll(got.Body); len(b) > 0 {
		t.Fatalf("%q: the app reads a body %q from %q", head, b, out.Bytes())
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Fatalf("%q: bytes after the request to the app: %q\nrequest: %q", head, rest, out.Bytes())
	}
	if got.Method != req.Method || got.RequestURI != req.RequestURI || got.Host != req.Host {
		t.Fatalf("%q: the app reads %s %s Host %q; the client sent %s %s Host %q", head,
			got.Method, got.RequestURI, got.Host, req.Method, req.RequestURI, req.Host)
	}
	// net/http's proxy sends the target as its URL prints it: the same
	// bytes, or the fast path would not take it (plainTarget).
	if got.RequestURI != req.URL.RequestURI() {
		t.Fatalf("%q: the app reads the target %s; net/http's proxy would send %s", head, got.RequestURI, req.URL.RequestURI())
	}
	// What ReverseProxy passes on: not hop-by-hop, not named in
	// Connection, not rewritten (X-Forwarded-*, X-Request-Id).
	named := map[string]bool{}
	for _, v := range req.Header["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			named[http.CanonicalHeaderKey(strings.TrimSpace(tok))] = true
		}
	}
	for k, vs := range req.Header {
		switch {
		case hopByHop([]byte(k)) || named[k]:
			if k == "Te" && got.Header.Get("Te") == "trailers" {
				continue
			}
			if len(got.Header[k]) > 0 {
				t.Fatalf("%q: hop-by-hop field %s reached the app: %q", head, k, got.Header[k])
			}
		case k == "X-Forwarded-For" || k == "X-Forwarded-Proto" || k == "X-Forwarded-Host" || k == "X-Request-Id":
		case k == "Content-Length": // excDupContentLength: the app sees the client's fields as sent
			if len(got.Header[k]) == 0 || got.Header.Get(k) != "0" {
				t.Fatalf("%q: Content-Length %q reached the app as %q", head, vs, got.Header[k])
			}
		default:
			if !slices.Equal(got.Header[k], vs) {
				t.Fatalf("%q: field %s = %q reached the app as %q", head, k, vs, got.Header[k])
			}
		}
	}
	for k := range got.Header {
		switch k {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id", "Te":
			continue
		}
		if _, ok := req.Header[k]; !ok {
			t.Fatalf("%q: field %s = %q reached the app; the client sent none", head, k, got.Header[k])
		}
	}
	if xff := got.Header.Values("X-Forwarded-For"); len(xff) != 1 || !strings.HasSuffix(xff[0], "10.0.0.1") {
		t.Fatalf("%q: X-Forwarded-For %q", head, xff)
	}
}
