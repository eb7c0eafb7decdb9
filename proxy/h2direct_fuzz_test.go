package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
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
