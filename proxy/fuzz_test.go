package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzParseUpstream: never panics; whatever it accepts prints back to a form
// it accepts again, with the same meaning.
func FuzzParseUpstream(f *testing.F) {
	for _, s := range []string{"127.0.0.1:3000", ":80", "http://[::1]:8080/", "unix:///run/a.sock", "http://a:b@c:1", "[::1", "unix://", "http://:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUpstream(s)
		if err != nil {
			if !strings.Contains(err.Error(), "upstream") {
				t.Fatalf("error does not say what was wrong: %v", err)
			}
			return
		}
		again, err := ParseUpstream(u.String())
		if err != nil || again != u {
			t.Fatalf("%q → %+v prints as %q → %+v, %v", s, u, u.String(), again, err)
		}
	})
}

// FuzzRequestID: an accepted client id is printable and bounded.
func FuzzRequestID(f *testing.F) {
	f.Add("abc-123")
	f.Add(strings.Repeat("x", 200))
	f.Add("a b")
	f.Fuzz(func(t *testing.T, id string) {
		if validRequestID(id) && (len(id) > maxRequestIDLen || strings.ContainsAny(id, " \t\r\n\x00\x7f")) {
			t.Fatalf("accepted %q", id)
		}
	})
}

// FuzzWriteRequest: what h1Transport writes to the app parses back, with
// net/http's own parser, into the same request line, host and header
// fields, never more (no header or request splitting); or it is refused.
func FuzzWriteRequest(f *testing.F) {
	f.Add("GET", "/a?b=c", "svc.example", "X-A", "1", "X-B", "two words")
	f.Add("POST", "/", "h:80", "User-Agent", "", "Cookie", "a=b; c=d")
	f.Add("GET", "/x", "h", "X-A", "v\r\nX-Injected: 1", "X-B", "")
	f.Add("DELETE", "*", "h", "X-A", "\x00", "Host", "other")
	f.Fuzz(func(t *testing.T, method, uri, host, k1, v1, k2, v2 string) {
		if method == "" || !isToken([]byte(method)) || !isToken([]byte(k1)) || !isToken([]byte(k2)) || uri == "" || uri[0] != '/' {
			return // net/http's server never hands these on
		}
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return
		}
		req := &http.Request{Method: method, URL: u, Host: host, Header: http.Header{}}
		req.Header.Add(k1, v1)
		req.Header.Add(k2, v2)
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeRequest(bw, req); err != nil {
			return
		}
		_ = bw.Flush()
		got, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf.Bytes())))
		if err != nil {
			return // bytes net/http's server would not have passed on: refused, not split
		}
		if got.Method != method || got.RequestURI != u.RequestURI() || got.Host != host {
			t.Fatalf("wrote %q; read back %s %s host %q", buf.String(), got.Method, got.RequestURI, got.Host)
		}
		want := http.Header{}
		for _, kv := range [][2]string{{k1, v1}, {k2, v2}} {
			k := http.CanonicalHeaderKey(kv[0])
			if k == "Host" || (k == "User-Agent" && kv[1] == "" && len(req.Header[k]) == 1) {
				continue
			}
			want.Add(k, strings.Trim(kv[1], " \t"))
		}
		for k := range got.Header {
			if _, ok := want[k]; !ok {
				t.Fatalf("wrote %q; header %s appeared", buf.String(), k)
			}
		}
		for k, vs := range want {
			if strings.Join(got.Header[k], ",") != strings.Join(vs, ",") {
				t.Fatalf("wrote %q; header %s = %q, want %q", buf.String(), k, got.Header[k], vs)
			}
		}
	})
}

// FuzzH2ConnInjection: whatever frames the HTTP/2 server writes, cut into
// writes anywhere, and whenever the drain begins, the client receives the
// server's frames unchanged with tidegate's GOAWAY and PING whole between
// two of them, after the first.
func FuzzH2ConnInjection(f *testing.F) {
	f.Add([]byte{0, 3, 9, 16, 200}, uint16(7), uint16(2))
	f.Add([]byte{5, 0, 0, 1, 40, 2}, uint16(0), uint16(0))
	f.Add([]byte{255, 255, 1}, uint16(3000), uint16(1))
	f.Fuzz(func(t *testing.T, lens []byte, cutEvery uint16, drainAfter uint16) {
		if len(lens) == 0 || len(lens) > 64 {
			return
		}
		// The server's stream: one frame per length byte (x 37 for size).
		var stream []byte
		var bounds []int // offsets where a frame ends
		for i, l := range lens {
			n := int(l) * 37
			stream = appendFrameHeader(stream, n, 0x0, 0, uint32(2*i+1))
			stream = append(stream, bytes.Repeat([]byte{byte(i)}, n)...)
			bounds = append(bounds, len(stream))
		}
		var wire bytes.Buffer
		c := newH2Conn(writerConn{&wire}, true, time.Second)
		step := int(cutEvery)%997 + 1
		drainAt := int(drainAfter) % (len(stream) + 1)
		began := false
		for off := 0; off < len(stream); off += step {
			end := min(off+step, len(stream))
			if !began && off >= drainAt {
				c.beginGoAway()
				began = true
			}
			if n, err := c.Write(stream[off:end]); err != nil || n != end-off {
				t.Fatalf("Write: %d %v", n, err)
			}
		}
		if !began {
			c.beginGoAway()
		}
		c.flushPending() // what the goroutine does; idempotent
		waitSent := time.Now().Add(5 * time.Second)
		for c.state.Load() != goAwaySent && time.Now().Before(waitSent) {
			c.flushPending()
		}
		c.wmu.Lock() // the goroutine's write, if it made it, is over
		out := bytes.Clone(wire.Bytes())
		c.wmu.Unlock()
		i := bytes.Index(out, firstGoAway)
		if i < 0 || !slices.Contains(bounds, i) {
			t.Fatalf("GOAWAY at %d, not at a frame boundary %v", i, bounds)
		}
		rest := append(append([]byte{}, out[:i]...), out[i+len(firstGoAway):]...)
		if !bytes.Equal(rest, stream) {
			t.Fatal("the server's bytes were changed")
		}
	})
}

// writerConn is a net.Conn that only writes, to a buffer.
type writerConn struct{ w io.Writer }

func (c writerConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c writerConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c writerConn) Close() error                     { return nil }
func (c writerConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c writerConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c writerConn) SetDeadline(time.Time) error      { return nil }
func (c writerConn) SetReadDeadline(time.Time) error  { return nil }
func (c writerConn) SetWriteDeadline(time.Time) error { return nil }
