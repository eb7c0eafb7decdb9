package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"testing"
)

// The fast path's parsers must never accept what net/http would refuse,
// and must read what they accept exactly as net/http does: these fuzz
// tests compare them with net/http on the same bytes.

// FuzzParseRequestHead: a head the fast path takes is one net/http reads
// too, with the same method, target and fields.
func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: a:1\r\nX-A:  v  \r\nx-a: w\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close, X-Y\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n Folded: x\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
		"GET /a%zz?b=%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := scanHead(b)
		if err != nil || n == 0 {
			return
		}
		var h h1head
		if !parseRequestHead(b[:n], &h) {
			return
		}
		fc := &fastConn{head: h}
		if !takeFast(fc) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:n])))
		if err != nil {
			t.Fatalf("fast path takes %q; net/http refuses it: %v", b[:n], err)
		}
		if req.Method != string(h.method) || req.RequestURI != string(h.target) {
			t.Fatalf("%q: fast path reads %s %s; net/http %s %s", b[:n], h.method, h.target, req.Method, req.RequestURI)
		}
		if req.Host != string(fc.req.host) {
			t.Fatalf("%q: Host %q; net/http %q", b[:n], fc.req.host, req.Host)
		}
		if req.ContentLength > 0 || len(req.TransferEncoding) > 0 {
			t.Fatalf("%q: fast path takes a request with a body", b[:n])
		}
		compareFields(t, b[:n], h.fields, req.Header, "Host")
	})
}

// FuzzParseResponseHead: a response head the fast path reads is one
// net/http reads too, with the same status and fields.
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.0 204\r\nX: y\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
		"HTTP/1.1 200 OK\r\nA:\r\n\r\n",
		"HTTP/1.1 099 X\r\n\r\n",
		"HTTP/1.1 200 OK\r\n Folded\r\n\r\n",
		"HTTP/2 200\r\n\r\n",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := scanHead(b)
		if err != nil || n == 0 {
			return
		}
		var h h1head
		if parseResponseHead(b[:n], &h) != nil {
			return
		}
		fr, err := framing(&h, false)
		if err != nil {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b[:n])), nil)
		if err != nil {
			t.Fatalf("fast path reads %q; net/http refuses it: %v", b[:n], err)
		}
		if resp.StatusCode != h.status || resp.ProtoMinor != int(h.minor) {
			t.Fatalf("%q: status %d HTTP/1.%d; net/http %d HTTP/1.%d", b[:n], h.status, h.minor, resp.StatusCode, resp.ProtoMinor)
		}
		if fr.mode == bodyLength && resp.ContentLength != fr.length {
			t.Fatalf("%q: Content-Length %d; net/http %d", b[:n], fr.length, resp.ContentLength)
		}
		if (fr.mode == bodyChunked) != (len(resp.TransferEncoding) > 0 && resp.StatusCode >= 200) {
			t.Fatalf("%q: chunked is %v; net/http's Transfer-Encoding %q", b[:n], fr.mode == bodyChunked, resp.TransferEncoding)
		}
		compareFields(t, b[:n], h.fields, resp.Header, "Transfer-Encoding", "Content-Length")
	})
}

// compareFields checks that fields, joined by name, are what net/http
// parsed into hdr; the names in skip are ones net/http moves elsewhere.
func compareFields(t *testing.T, head []byte, fields []h1field, hdr http.Header, skip ...string) {
	t.Helper()
	got := http.Header{}
	for _, fl := range fields {
		got.Add(textproto.CanonicalMIMEHeaderKey(string(fl.name)), string(fl.value))
	}
	for _, k := range skip {
		delete(got, k)
		delete(hdr, k)
	}
	for k, vs := range got {
		if !slices.Equal(hdr[k], vs) {
			t.Fatalf("%q: field %s = %q; net/http %q", head, k, vs, hdr[k])
		}
	}
	for k := range hdr {
		if _, ok := got[k]; !ok {
			t.Fatalf("%q: net/http has field %s = %q; the fast path none", head, k, hdr[k])
		}
	}
}

// FuzzCopyChunked: a chunked body the fast path passes on is one net/http
// reads too, and the client gets the same bytes and trailers from it.
func FuzzCopyChunked(f *testing.F) {
	for _, s := range []string{
		"3\r\nabc\r\n0\r\n\r\n",
		"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: v\r\n\r\n",
		"0\r\n\r\n",
		"3\r\nabcd\r\n0\r\n\r\n",
		"ffffffffffffffff\r\n",
		"3\nabc\n0\n\n",
		"1 \r\na\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	const head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
	read := func(b []byte) ([]byte, http.Header, error) {
		resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(head), bytes.NewReader(b))), nil)
		if err != nil {
			return nil, nil, err
		}
		body, err := io.ReadAll(resp.Body)
		return body, resp.Trailer, err
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		n, err := copyChunked(bw, bufio.NewReaderSize(bytes.NewReader(in), 64))
		if err != nil {
			return
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		want, wantTrailer, err := read(in)
		if err != nil {
			t.Fatalf("fast path passes %q on; net/http refuses it: %v", in, err)
		}
		got, gotTrailer, err := read(out.Bytes())
		if err != nil {
			t.Fatalf("%q became %q, which net/http refuses: %v", in, out.Bytes(), err)
		}
		if !bytes.Equal(got, want) || n != int64(len(want)) {
			t.Fatalf("%q: body %q (%d counted); net/http reads %q", in, got, n, want)
		}
		if len(wantTrailer) != len(gotTrailer) {
			t.Fatalf("%q: trailers %v; net/http reads %v", in, gotTrailer, wantTrailer)
		}
		for k, vs := range wantTrailer {
			if !slices.Equal(gotTrailer[k], vs) {
				t.Fatalf("%q: trailer %s = %q; net/http reads %q", in, k, gotTrailer[k], vs)
			}
		}
	})
}
