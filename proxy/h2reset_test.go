package proxy

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2OwnIgnoresFramesOnAStreamItReset: issue 20's fuzzing found that a
// stream the own server refused at its header block (RST_STREAM) was not
// remembered, so the trailers the client had already sent on it looked
// like a reused stream id and ended the whole connection (GOAWAY
// STREAM_CLOSED), with every other stream. RFC 9113 §5.1: frames on a
// stream the endpoint reset are ignored. They are, for the last
// h2RecentResets streams reset, whether they come before the client saw
// the RST_STREAM or after the stream is gone; the next stream is served.
func TestH2OwnIgnoresFramesOnAStreamItReset(t *testing.T) {
	cases := []struct {
		name string
		open func(c *ownClient) // opens stream 1 without END_STREAM
		// status is the answer's status before the RST_STREAM, if any;
		// code the RST_STREAM's.
		status string
		code   http2.ErrCode
	}{
		{name: "upper-case field name", code: http2.ErrCodeProtocol, open: func(c *ownClient) {
			c.open(1, http.MethodPost, "/bad", false, "X-Upper", "1") // the framer's stream error
		}},
		{name: "no :path", code: http2.ErrCodeProtocol, open: func(c *ownClient) {
			c.block(1, false, ":method", "POST", ":scheme", "http", ":authority", "tidegate.test")
		}},
		{name: "depends on itself", code: http2.ErrCodeProtocol, open: func(c *ownClient) {
			c.encBuf.Reset()
			for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/bad"}} {
				if err := c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.encBuf.Bytes(), EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 1, Weight: 15}}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "header block too large", status: "431", code: http2.ErrCodeNo, open: func(c *ownClient) {
			var fields []string
			for i := range 12 { // 12 fields of 1 KiB: none over the limit, the list is
				fields = append(fields, "x-big-"+strconv.Itoa(i), strings.Repeat("b", 1<<10))
			}
			c.open(1, http.MethodPost, "/bad", false, fields...)
		}},
		{name: "DATA over the content-length", code: http2.ErrCodeProtocol, open: func(c *ownClient) {
			c.open(1, http.MethodPost, "/bad", false, "content-length", "1")
			if err := c.fr.WriteData(1, false, []byte("abc")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	small := func(o *ServerOptions) { o.MaxHeaderBytes = 8 << 10 } // 431 above it
	rigs := []struct {
		name string
		rig  func(t *testing.T, h http.HandlerFunc) *fastRig
	}{
		{"spliced", func(t *testing.T, h http.HandlerFunc) *fastRig { return ownRig(t, h2cApp(t, h), UpstreamH2C, small) }},
		{"handler", func(t *testing.T, h http.HandlerFunc) *fastRig {
			return ownRig(t, upstreamServer(t, h).Listener.Addr().String(), UpstreamHTTP1, small)
		}},
	}
	for _, p := range rigs {
		for _, tc := range cases {
			for _, late := range []bool{false, true} {
				name := p.name + "/" + tc.name + "/frames before the RST_STREAM is read"
				if late {
					name = p.name + "/" + tc.name + "/frames after the stream is gone"
				}
				t.Run(name, func(t *testing.T) {
					var bad, good atomic.Int32
					r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
						b, err := io.ReadAll(req.Body)
						if req.URL.Path == "/bad" {
							if err == nil {
								bad.Add(1) // a refused request read in full
							}
						} else {
							good.Add(1)
						}
						_, _ = io.WriteString(w, "ok "+string(b))
					})
					c := dialOwn(t, r.addr)
					tc.open(c)
					rest := func() {
						if err := c.fr.WriteData(1, false, []byte("more")); err != nil {
							t.Fatal(err)
						}
						c.block(1, true, "x-trailer", "1")
					}
					if !late {
						rest()
					}
					a := c.read(1)
					if tc.status != "" && a.status == tc.status && !a.reset {
						// The answer ended the stream; the RST_STREAM follows.
						b := c.read(1)
						a.reset, a.code, a.others = b.reset, b.code, append(a.others, b.others...)
					}
					if a.status != tc.status || !a.reset || a.code != tc.code {
						t.Fatalf("stream 1: status %q reset %v %v; want %q then RST_STREAM %v", a.status, a.reset, a.code, tc.status, tc.code)
					}
					if late {
						waitFor(t, func() bool { return r.tracker.InFlight() == 0 && streamsOf(r.srv) == 0 })
						rest()
					}
					b := c.do(3, http.MethodPost, "/good", []byte("x"))
					expectOK(t, b, "ok x")
					// Nothing answered the late frames: a PING's ACK comes
					// after anything written before it.
					if err := c.fr.WritePing(false, [8]byte{'r', 's', 't'}); err != nil {
						t.Fatal(err)
					}
					others := append(a.others, b.others...)
					for {
						f := c.next()
						if pf, ok := f.(*http2.PingFrame); ok && pf.IsAck() {
							break
						}
						others = append(others, f)
					}
					for _, f := range others {
						switch f := f.(type) {
						case *http2.GoAwayFrame:
							t.Fatalf("GOAWAY %v: the connection ended over frames on a stream tidegate reset", f.ErrCode)
						case *http2.RSTStreamFrame:
							t.Fatalf("RST_STREAM %v on stream %d after the first: frames on a reset stream are ignored", f.ErrCode, f.StreamID)
						}
					}
					if bad.Load() != 0 || good.Load() != 1 {
						t.Fatalf("the app answered %d refused and %d good requests; want 0 and 1", bad.Load(), good.Load())
					}
				})
			}
		}
	}
}

// TestH2OwnRecentResetsBound: the ring of reset streams holds the last
// h2RecentResets ids and forgets older ones.
func TestH2OwnRecentResetsBound(t *testing.T) {
	var r recentResets
	if r.has(0) {
		t.Fatal("an empty ring has stream 0")
	}
	for id := uint32(1); id < 2*h2RecentResets+1; id += 2 {
		r.add(id)
	}
	for id := uint32(1); id < 2*h2RecentResets+1; id += 2 {
		if !r.has(id) {
			t.Fatalf("stream %d, one of the last %d, forgotten", id, h2RecentResets)
		}
	}
	r.add(1001)
	if r.has(1) || !r.has(3) || !r.has(1001) {
		t.Fatalf("after one more: has 1 %v, 3 %v, 1001 %v; want false true true", r.has(1), r.has(3), r.has(1001))
	}
}

// streamsOf counts the streams the h2 connections of s keep.
func streamsOf(s *Server) int {
	s.mu.Lock()
	conns := make([]*h2sConn, 0, len(s.h2conns))
	for c := range s.h2conns {
		if own, ok := c.(*h2sConn); ok {
			conns = append(conns, own)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, c := range conns {
		c.mu.Lock()
		n += len(c.streams)
		c.mu.Unlock()
	}
	return n
}
