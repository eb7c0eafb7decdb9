package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// The request-smuggling corpus: hostile HTTP/1.1 byte streams sent to a
// real Server, on the fast path and with net/http alone (--net-http-only),
// in front of a raw app that records every request it reads. Per case:
//
//   - the client gets the answers listed, in order (a 400 or 501 where the
//     stream is invalid), and nothing else;
//   - the app sees exactly the requests listed: the ones net/http's own
//     reading of the client's bytes finds (checked against
//     netHTTPServerRead too, so the table cannot drift from net/http), and
//     never one the client did not send as a separate request;
//   - optional trailing requests and answers may be missing when the
//     server closes the connection after a request with a chunked body:
//     RFC 9112 §6.1 asks it to after one with both Content-Length and
//     Transfer-Encoding, and net/http hides which requests had both, so
//     tidegate closes after every chunked request (server.go, drainWriter).
//
// A request the app began to read but whose body was cut (the proxy gave
// up on the client's body) is not a request the app served, and is not
// listed.

// smugglingCase is one hostile byte stream.
type smugglingCase struct {
	name string
	in   string
	// status: the answers the client gets, in order; the last optional of
	// them (and of app) may be missing if the server closes first.
	status []int
	// app: the requests the app sees, as "METHOD target host [body]".
	app      []string
	optional int
}

// smBadBody is the answer to a request whose chunked body is malformed: a
// 400 (reason bad_request_body). net/http finds the error only while the
// body streams to the app, which never sees a whole request.
const smBadBody = -1

// The pieces most cases share.
const (
	smH   = "Host: a\r\n"
	smGET = "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
)

var smugglingCases = []smugglingCase{
	// CL.TE: a front end that honours Content-Length, a back end that
	// honours Transfer-Encoding. net/http honours Transfer-Encoding alone.
	{name: "cl-te/zero-chunk-then-byte", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
		status: []int{200}, app: []string{"POST / a"}},
	{name: "cl-te/hidden-get", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"POST / a", "GET /2 a"}, optional: 1},
	{name: "cl-te/te-first", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "cl-te/cl-zero", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "cl-te/get", in: "GET / HTTP/1.1\r\n" + smH + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"GET / a"}},
	// TE.CL: the reverse.
	{name: "te-cl/chunk-longer-than-cl", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n11\r\nGET /x HTTP/1.1\r\n\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"GET /x HTTP/1.1\\r\\n\""}},
	{name: "te-cl/cl-covers-next", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"POST / a", "GET /2 a"}, optional: 1},
	// TE.TE: Transfer-Encoding obfuscated so that one reader sees it and
	// another does not. net/http takes exactly one field, "chunked".
	{name: "te/xchunked", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/chunkedx", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/leading-space", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding:  chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "te/leading-tab", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "te/trailing-tab", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "te/upper-case", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "te/chunked-identity", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/identity-chunked", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/gzip-chunked", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/duplicated", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/duplicated-with-cl", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/parameter", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/quoted", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/space-before-colon", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", status: []int{400}},
	{name: "te/underscore-name", in: "POST / HTTP/1.1\r\n" + smH + "Transfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	// net/http joins an obs-fold line to the field before (RFC 9112 §5.2).
	{name: "te/obs-fold", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n identity\r\n\r\n0\r\n\r\n", status: []int{501}},
	{name: "te/folded-name", in: "POST / HTTP/1.1\r\n" + smH + "X: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		status: []int{200, 400}, app: []string{"POST / a"}},
	{name: "te/nul", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", status: []int{400}},
	{name: "te/vertical-tab", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", status: []int{400}},
	{name: "te/http10-ignored", in: "POST / HTTP/1.0\r\n" + smH + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc" + smGET,
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "te/http10-no-cl", in: "POST / HTTP/1.0\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smGET,
		status: []int{200}, app: []string{"POST / a"}},
	// Content-Length: duplicates and malformed values.
	{name: "cl/duplicate-same", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + smGET,
		status: []int{200, 200}, app: []string{"POST / a \"abc\"", "GET /2 a"}},
	{name: "cl/duplicate-zero", in: "GET / HTTP/1.1\r\n" + smH + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"GET / a", "GET /2 a"}},
	{name: "cl/conflicting", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", status: []int{400}},
	{name: "cl/conflicting-zero", in: "GET / HTTP/1.1\r\n" + smH + "Content-Length: 0\r\nContent-Length: 35\r\n\r\n" + smGET, status: []int{400}},
	{name: "cl/list", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 3, 3\r\n\r\nabc", status: []int{400}},
	{name: "cl/plus", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: +3\r\n\r\nabc", status: []int{400}},
	{name: "cl/minus", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: -3\r\n\r\nabc", status: []int{400}},
	{name: "cl/hex", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 0x3\r\n\r\nabc", status: []int{400}},
	{name: "cl/inner-space", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 3 3\r\n\r\nabc", status: []int{400}},
	{name: "cl/spaces-around", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length:  3 \r\n\r\nabc" + smGET,
		status: []int{200, 200}, app: []string{"POST / a \"abc\"", "GET /2 a"}},
	{name: "cl/overflow", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 99999999999999999999\r\n\r\nabc", status: []int{400}},
	{name: "cl/empty", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: \r\n\r\n" + smGET, status: []int{400}},
	{name: "cl/nul", in: "POST / HTTP/1.1\r\n" + smH + "Content-Length: 3\x00\r\n\r\nabc", status: []int{400}},
	{name: "cl/zero-then-get", in: "GET / HTTP/1.1\r\n" + smH + "Content-Length: 0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"GET / a", "GET /2 a"}},
	{name: "cl/get-body-hides-request", in: "GET / HTTP/1.1\r\n" + smH + "Content-Length: 28\r\n\r\n" + smGET,
		status: []int{200}, app: []string{"GET / a \"GET /2 HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n\""}},
	// Bare CR, bare LF, obs-fold, NUL and other bytes in the head.
	{name: "head/bare-lf", in: "GET / HTTP/1.1\nHost: a\n\n" + smGET,
		status: []int{200, 200}, app: []string{"GET / a", "GET /2 a"}},
	{name: "head/bare-lf-hides-te", in: "POST / HTTP/1.1\r\n" + smH + "X: 1\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "head/bare-cr-in-value", in: "GET / HTTP/1.1\r\n" + smH + "X: 1\rTransfer-Encoding: chunked\r\n\r\n", status: []int{400}},
	{name: "head/bare-cr-line-end", in: "GET / HTTP/1.1\r" + smH + "\r\n", status: []int{400}},
	{name: "head/obs-fold", in: "GET / HTTP/1.1\r\n" + smH + "X: 1\r\n 2\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"GET / a", "GET /2 a"}},
	{name: "head/nul-in-value", in: "GET / HTTP/1.1\r\n" + smH + "X: a\x00b\r\n\r\n", status: []int{400}},
	{name: "head/nul-in-name", in: "GET / HTTP/1.1\r\n" + smH + "X\x00Y: 1\r\n\r\n", status: []int{400}},
	{name: "head/nul-in-target", in: "GET /\x00 HTTP/1.1\r\n" + smH + "\r\n", status: []int{400}},
	{name: "head/space-in-name", in: "GET / HTTP/1.1\r\n" + smH + "X Y: 1\r\n\r\n", status: []int{400}},
	{name: "head/no-colon", in: "GET / HTTP/1.1\r\n" + smH + "XY\r\n\r\n", status: []int{400}},
	{name: "head/del-in-value", in: "GET / HTTP/1.1\r\n" + smH + "X: a\x7fb\r\n\r\n", status: []int{400}},
	{name: "head/double-space-line", in: "GET  / HTTP/1.1\r\n" + smH + "\r\n", status: []int{400}},
	{name: "head/http2-line", in: "GET / HTTP/2.0\r\n" + smH + "\r\n", status: []int{505}},
	// Chunk sizes, extensions and trailers.
	{name: "chunk/0x-prefix", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/overflow", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/negative", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/leading-space", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/trailing-space", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"POST / a \"abc\"", "GET /2 a"}, optional: 1},
	{name: "chunk/extension", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0;c\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"POST / a \"abc\"", "GET /2 a"}, optional: 1},
	// net/http does not look into chunk extensions; the proxy drops them.
	{name: "chunk/extension-nul", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3;a\x00b\r\nabc\r\n0\r\n\r\n",
		status: []int{200}, app: []string{"POST / a \"abc\""}},
	{name: "chunk/extension-bare-lf", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/data-longer-than-size", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/missing-crlf", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/empty-size", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", status: []int{smBadBody}},
	{name: "chunk/trailer-smuggles-fields", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nContent-Length: 99\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"POST / a \"abc\"", "GET /2 a"}, optional: 1},
	{name: "chunk/trailer-hides-request", in: "POST / HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n0\r\nGET /x HTTP/1.1\r\n\r\n", status: []int{smBadBody}},
	// Pipelined requests.
	{name: "pipe/two-gets", in: "GET /1 HTTP/1.1\r\n" + smH + "\r\n" + smGET,
		status: []int{200, 200}, app: []string{"GET /1 a", "GET /2 a"}},
	{name: "pipe/post-then-get", in: "POST /1 HTTP/1.1\r\n" + smH + "Content-Length: 3\r\n\r\nabc" + smGET,
		status: []int{200, 200}, app: []string{"POST /1 a \"abc\"", "GET /2 a"}},
	{name: "pipe/after-invalid", in: "GET /1 HTTP/1.1\r\n" + smH + "X: \x00\r\n\r\n" + smGET, status: []int{400}},
	{name: "pipe/after-http10", in: "GET /1 HTTP/1.0\r\n" + smH + "\r\n" + smGET,
		status: []int{200}, app: []string{"GET /1 a"}},
	{name: "pipe/after-close", in: "GET /1 HTTP/1.1\r\n" + smH + "Connection: close\r\n\r\n" + smGET,
		status: []int{200}, app: []string{"GET /1 a"}},
	{name: "pipe/chunked-then-get", in: "GET /1 HTTP/1.1\r\n" + smH + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smGET,
		status: []int{200, 200}, app: []string{"GET /1 a", "GET /2 a"}, optional: 1},
	// Host.
	{name: "host/duplicate", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: []int{400}},
	{name: "host/duplicate-same", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", status: []int{400}},
	{name: "host/duplicate-case", in: "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", status: []int{400}},
	{name: "host/missing", in: "GET / HTTP/1.1\r\nX: 1\r\n\r\n", status: []int{400}},
	{name: "host/space", in: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", status: []int{400}},
	{name: "host/absolute-form-wins", in: "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
		status: []int{200}, app: []string{"GET /x b"}},
	{name: "host/connection-keep-alive", in: "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
		status: []int{200}, app: []string{"GET / a"}},
}

// smugglingApp is a raw app: it reads requests with http.ReadRequest,
// records each one whose body it read whole, and answers 200.
type smugglingApp struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func newSmugglingApp(t *testing.T) *smugglingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &smugglingApp{addr: ln.Addr().String()}
	acceptAll(t, ln, func(c net.Conn, _ int64) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					a.record(fmt.Sprintf("unreadable request: %v", err))
				}
				return
			}
			body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
			if err != nil {
				return // cut: not a request the app served
			}
			s := req.Method + " " + req.RequestURI + " " + req.Host
			if len(body) > 0 {
				s += " " + strconv.Quote(string(body))
			}
			a.record(s)
			if !appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
				return
			}
		}
	})
	return a
}

func (a *smugglingApp) record(s string) {
	a.mu.Lock()
	a.seen = append(a.seen, s)
	a.mu.Unlock()
}

func (a *smugglingApp) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seen)
}

// netHTTPReads returns what net/http's server reads from in: the
// requests, as the app records them, until it refuses one or the
// connection would close.
func netHTTPReads(in string) []string {
	br := bufio.NewReader(strings.NewReader(in))
	var out []string
	lastPOST := false
	for {
		req, err := netHTTPServerRead(br, lastPOST)
		if err != nil {
			return out
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return out
		}
		host := req.Host
		s := req.Method + " " + req.RequestURI + " " + host
		if req.URL.IsAbs() {
			s = req.Method + " " + req.URL.RequestURI() + " " + host
		}
		if len(body) > 0 {
			s += " " + strconv.Quote(string(body))
		}
		out = append(out, s)
		if req.Close || !req.ProtoAtLeast(1, 1) {
			return out
		}
		lastPOST = req.Method == http.MethodPost
	}
}

func TestRequestSmugglingCorpus(t *testing.T) {
	if len(smugglingCases) < 65 {
		t.Fatalf("the corpus has %d cases; it must not shrink below 65", len(smugglingCases))
	}
	// The table agrees with net/http's own reading of each stream.
	for _, tc := range smugglingCases {
		want := netHTTPReads(tc.in)
		if len(want) < len(tc.app)-tc.optional || len(want) > len(tc.app) || !slices.Equal(want, tc.app[:len(want)]) {
			t.Errorf("%s: the table says the app sees %q; net/http reads %q", tc.name, tc.app, want)
		}
	}
	for _, mode := range []string{"fast-path", "net-http-only"} {
		t.Run(mode, func(t *testing.T) {
			for _, tc := range smugglingCases {
				t.Run(tc.name, func(t *testing.T) {
					app := newSmugglingApp(t)
					addr, tr := startPlainProxy(t, app.addr, mode == "fast-path")
					runSmugglingCase(t, addr, tc)
					wait.Until(t, 5*time.Second, "the proxy to finish", func() (bool, string) {
						return tr.ConnectionsTotal() == 0 && tr.InFlight() == 0,
							fmt.Sprintf("%d connections, %d requests in flight", tr.ConnectionsTotal(), tr.InFlight())
					})
					got := app.requests()
					if len(got) < len(tc.app)-tc.optional || len(got) > len(tc.app) || !slices.Equal(got, tc.app[:len(got)]) {
						t.Fatalf("the app saw %q; want %q (the last %d optional)", got, tc.app, tc.optional)
					}
				})
			}
		})
	}
}

// startPlainProxy starts a Server in front of app, with the fast path (and
// so tidegate's own HTTP/2 server) or with net/http and x/net alone, and
// closes it at the test's end. Every such proxy has the same Via name, so
// that apps behind two of them see the same request.
func startPlainProxy(tb testing.TB, app string, fast bool) (string, *Tracker) {
	tb.Helper()
	up, err := ParseUpstream(app)
	if err != nil {
		tb.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	h, err := NewHandler(Options{
		Upstream:         up,
		TransportOptions: TransportOptions{DialTimeout: time.Second, ResponseHeaderTimeout: 5 * time.Second, IdleConnTimeout: time.Minute},
		Tracker:          tr,
		Loop:             LoopOptions{ID: "plain"},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	o := ServerOptions{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second}
	if fast {
		o.FastPath = h
	}
	srv := NewServer(ln, h, tr, o)
	if fast && srv.fast == nil {
		tb.Fatal("NewServer left the fast path off")
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	tb.Cleanup(func() {
		_ = srv.Close()
		select {
		case err := <-served:
			if err != nil {
				tb.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			tb.Error("Serve did not return within 5s")
		}
		h.CloseIdleConnections()
	})
	return srv.Addr().String(), tr
}

// runSmugglingCase sends tc's bytes at once and reads the answers: those
// listed, then (if it still could) nothing more before it closes.
func runSmugglingCase(t *testing.T, addr string, tc smugglingCase) {
	t.Helper()
	rc := dialRaw(t, addr)
	rc.send(t, tc.in)
	for i, want := range tc.status {
		resp, _, err := rc.tryRead("")
		if err != nil {
			if i >= len(tc.status)-tc.optional && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				break // the server closed the connection: allowed here
			}
			t.Fatalf("answer %d: %v; read so far %q", i+1, err, rc.seen.Bytes())
		}
		if resp.StatusCode != want && (want != smBadBody || resp.StatusCode != 400) {
			t.Fatalf("answer %d is %d, want %d; read so far %q", i+1, resp.StatusCode, want, rc.seen.Bytes())
		}
		if i == len(tc.status)-1 && (want >= 400 || want == smBadBody) {
			rc.expectClosed(t) // an invalid stream: nothing more is read from it
		}
	}
	if bytes.Count(rc.seen.Bytes(), []byte("HTTP/1.1 ")) > len(tc.status) {
		t.Fatalf("more answers than requests: %q", rc.seen.Bytes())
	}
	_ = rc.c.Close()
}
