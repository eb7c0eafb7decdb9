package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzH2DirectRequest checks the HTTP/2 → HTTP/1.1 rewriting of the direct
// path against net/http as the oracle: any request header block the
// Framer lets through and parseH2Request and directable accept becomes
// exactly one HTTP/1.1 request that http.ReadRequest reads with the same
// method, target, Host and fields (less those a proxy rewrites), with no
// byte left over: nothing in a field can smuggle a second request.
func FuzzH2DirectRequest(f *testing.F) {
	f.Add("GET", "/", "example.com", "accept\x00*/*\nuser-agent\x00t/1")
	f.Add("GET", "/a?b=c", "h:8080", "cookie\x00a=1\ncookie\x00b=2\nx-forwarded-for\x001.2.3.4")
	f.Add("HEAD", "/x%20y", "h", "te\x00trailers\nx-request-id\x00abc")
	f.Add("GET", "/", "h", "x-a\x00 spaced value \nconnection\x00close")
	f.Add("OPTIONS", "/*", "[::1]:80", "x-forwarded-host\x00f\nx-forwarded-proto\x00https\nproxy-authorization\x00s")
	f.Add("DELETE", "/r\r\nGET /s HTTP/1.1", "h", "x\x00v\r\nInjected: 1")
	f.Fuzz(func(t *testing.T, method, path, authority, raw string) {
		fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: authority}, {Name: ":path", Value: path}}
		for _, line := range strings.Split(raw, "\n") {
			name, value, ok := strings.Cut(line, "\x00")
			if !ok {
				continue
			}
			// What the Framer lets through (RFC 9113 §8.2.1).
			if !httpguts.ValidHeaderFieldName(name) || strings.ToLower(name) != name || !httpguts.ValidHeaderFieldValue(value) {
				return
			}
			fields = append(fields, hpack.HeaderField{Name: name, Value: value})
		}
		for _, hf := range fields[:4] {
			if !httpguts.ValidHeaderFieldValue(hf.Value) {
				return
			}
		}
		mh := &http2.MetaHeadersFrame{
			HeadersFrame: &http2.HeadersFrame{FrameHeader: http2.FrameHeader{Type: http2.FrameHeaders, Flags: http2.FlagHeadersEndStream, StreamID: 1}},
			Fields:       fields,
		}
		rq, ok := parseH2Request(mh)
		if !ok {
			return
		}
		h := &Handler{forwarded: ForwardedAppend, h1: &h1Transport{}, now: time.Now}
		c := &h2sConn{s: &Server{fastH1: true}, h: h, ip: "10.0.0.1"}
		c.cond.L = &c.mu
		st := &h2stream{c: c, id: 1, reqEnded: true, reqID: rq.id}
		if !c.directable(st, &rq) {
			return
		}
		var out bytes.Buffer
		uc := &h1Conn{bw: bufio.NewWriter(&out)}
		generated := !validRequestID(st.reqID)
		if generated {
			st.reqID = newRequestID()
		}
		if err := c.sendDirect(uc, st, &rq, generated); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(bytes.NewReader(out.Bytes()))
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("net/http cannot read what the direct path wrote: %v\n%q", err, out.Bytes())
		}
		if rest, _ := io.ReadAll(br); len(rest) > 0 {
			t.Fatalf("bytes after the request: %q\nrequest: %q", rest, out.Bytes())
		}
		if req.Method != method || req.RequestURI != path || req.Host != authority {
			t.Fatalf("read %q %q host %q, want %q %q %q", req.Method, req.RequestURI, req.Host, method, path, authority)
		}
		if !strings.HasSuffix(req.Header.Get("X-Forwarded-For"), "10.0.0.1") || req.Header.Get("X-Request-Id") == "" {
			t.Fatalf("X-Forwarded-For %q, X-Request-Id %q", req.Header.Get("X-Forwarded-For"), req.Header.Get("X-Request-Id"))
		}
		for _, hf := range rq.fields {
			switch hf.Name {
			case "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "te", "cookie":
				continue
			}
			if hopByHop([]byte(hf.Name)) {
				if len(req.Header.Values(hf.Name)) > 0 {
					t.Fatalf("hop-by-hop %q reached the app", hf.Name)
				}
				continue
			}
			found := false
			for _, v := range req.Header.Values(hf.Name) {
				found = found || v == strings.Trim(hf.Value, " \t")
			}
			if !found {
				t.Fatalf("field %q: %q not among %q", hf.Name, hf.Value, req.Header.Values(hf.Name))
			}
		}
	})
}

// FuzzH2DirectResponse checks the HTTP/1.1 → HTTP/2 rewriting of the
// direct path's answers, and the strings it keeps per connection: for any
// response head the fast path reads, the header block has :status first,
// then the app's fields in order with names in lower case and values byte
// for byte, less hop-by-hop ones and those named in Connection, then the
// request id and Date if the app sent none; the strings do not change when
// the read buffer is reused, and the same head gives the same block again
// from the kept strings.
func FuzzH2DirectResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nX-Request-Id: abc\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\nX-B: 2\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-MiXeD-CaSe: V\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := scanHead(b)
		if err != nil || n == 0 {
			return
		}
		head := append([]byte(nil), b[:n]...)
		var h h1head
		if parseResponseHead(head, &h) != nil {
			return
		}
		fr, err := framing(&h, false)
		if err != nil {
			return
		}
		id := "" // none on a 1xx, nor with --request-id off and none from the client
		if h.status >= 200 && n%2 == 0 {
			id = "req-1"
		}
		// What the block must be, built without the kept strings.
		want := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(h.status)}}
		for _, fl := range h.fields {
			name := strings.ToLower(string(fl.name))
			if hopByHop(fl.name) || namedIn(fl.name, fr.hops) {
				continue
			}
			want = append(want, hpack.HeaderField{Name: name, Value: string(fl.value)})
		}
		var strs h2strings
		got := directFields(&h, fr, id, &strs, nil)
		if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
			t.Fatalf("%q: block %q, want %q first", head, got, want)
		}
		extra := got[len(want):]
		if id != "" && !fr.hasID {
			if len(extra) == 0 || extra[0].Name != "x-request-id" || extra[0].Value != id {
				t.Fatalf("%q: no request id after the app's fields: %q", head, extra)
			}
			extra = extra[1:]
		}
		if h.status >= 200 && !fr.hasDate {
			if len(extra) == 0 || extra[0].Name != "date" {
				t.Fatalf("%q: no Date after the app's fields: %q", head, extra)
			}
			extra = extra[1:]
		}
		if len(extra) != 0 {
			t.Fatalf("%q: unexpected fields %q", head, extra)
		}
		kept := slices.Clone(got)
		for i := range head {
			head[i] = 'X' // the app connection's buffer, read into again
		}
		if !slices.Equal(got, kept) {
			t.Fatalf("block changed with the read buffer: %q, was %q", got, kept)
		}
		// The same head again, from the kept strings.
		copy(head, b[:n])
		var h2 h1head
		if err := parseResponseHead(head, &h2); err != nil {
			t.Fatalf("%q parsed once, not twice: %v", head, err)
		}
		again := directFields(&h2, fr, id, &strs, nil)
		if len(again) != len(kept) || !slices.Equal(again[:len(want)], kept[:len(want)]) {
			t.Fatalf("%q: second block %q, first %q", head, again, kept)
		}
	})
}
