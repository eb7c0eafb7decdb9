package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/tidegate/tidegate/test/wait"
)

// Tests of the HTTP/2 that x/net serves (configureHTTP2, serveH2): over
// TLS, and h2c when tidegate's own HTTP/2 server is off (--net-http-only).
// Its bounds are the own server's: the same SETTINGS, a read-header
// timeout until the first request, a client that does not read cut after
// the write stall bound.

// xnetServer is one way x/net serves HTTP/2.
type xnetServer struct {
	name string
	tls  bool
}

var xnetServers = []xnetServer{{name: "h2 over TLS", tls: true}, {name: "h2c, own server off"}}

// start serves h with o (TLS added for the TLS kind); adjust runs before
// Serve.
func (x xnetServer) start(t *testing.T, h http.Handler, o ServerOptions, adjust func(*Server)) (*Server, *Tracker) {
	t.Helper()
	if x.tls {
		certFile, keyFile := writeCert(t, t.TempDir(), 1)
		cfg, err := LoadTLS(TLSOptions{CertFile: certFile, KeyFile: keyFile})
		if err != nil {
			t.Fatal(err)
		}
		o.TLS = cfg
	}
	s, tr := startServerWith(t, h, o, adjust)
	if s.h2 == nil || s.h2own {
		t.Fatalf("x/net does not serve HTTP/2 here (h2 %v, own server %v)", s.h2 != nil, s.h2own)
	}
	return s, tr
}

// dial opens a connection that will speak HTTP/2 (TLS with ALPN h2 for
// the TLS kind), with a small receive buffer, and writes the preface.
func (x xnetServer) dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	raw := dialNotReading(t, addr)
	t.Cleanup(func() { raw.Close() })
	var nc net.Conn = raw
	if x.tls {
		tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		_ = tc.SetDeadline(time.Time{})
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN chose %q", p)
		}
		nc = tc
	}
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	return nc
}

// TestH2XNetSettingsAreTheOwnServers: x/net announces the own server's
// bounds (streams, frame size, stream window), not its defaults (a 1 MiB
// frame and stream window).
func TestH2XNetSettingsAreTheOwnServers(t *testing.T) {
	want := map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: h2MaxStreams,
		http2.SettingMaxFrameSize:         h2DefaultMaxFrame,
		http2.SettingInitialWindowSize:    h2StreamWindow,
	}
	for _, x := range xnetServers {
		t.Run(x.name, func(t *testing.T) {
			s, _ := x.start(t, http.NotFoundHandler(), ServerOptions{}, nil)
			nc := x.dial(t, s.Addr().String())
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			fr := http2.NewFramer(nc, nc)
			if err := fr.WriteSettings(); err != nil {
				t.Fatal(err)
			}
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			sf, ok := f.(*http2.SettingsFrame)
			if !ok {
				t.Fatalf("first frame %v, want SETTINGS", f)
			}
			got := map[http2.SettingID]uint32{}
			_ = sf.ForeachSetting(func(st http2.Setting) error { got[st.ID] = st.Val; return nil })
			for id, v := range want {
				if got[id] != v {
					t.Errorf("%v = %d, want %d (all: %v)", id, got[id], v, got)
				}
			}
			// The connection window: what a WINDOW_UPDATE adds to 65535,
			// before the ACK of the client's SETTINGS or after it.
			for range 2 {
				if f, err = fr.ReadFrame(); err != nil {
					t.Fatal(err)
				}
				if sf, ok := f.(*http2.SettingsFrame); !ok || !sf.IsAck() {
					break
				}
			}
			if wu, ok := f.(*http2.WindowUpdateFrame); !ok || wu.StreamID != 0 || wu.Increment != h2ConnWindow-h2DefaultWindow {
				t.Errorf("after SETTINGS: %v, want WINDOW_UPDATE of the connection by %d", f, h2ConnWindow-h2DefaultWindow)
			}
		})
	}
}

// TestH2XNetReadHeaderTimeout: issue 20 found that an h2 connection with
// only a preface, or with a header block it never ends, lived until the
// idle timeout (620 s by default). Until its first request, the
// read-header timeout closes it, as on the own server; after the first
// request it does not.
func TestH2XNetReadHeaderTimeout(t *testing.T) {
	const rht = 300 * time.Millisecond
	block := func() []byte {
		var buf strings.Builder
		enc := hpack.NewEncoder(&buf)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "x"}, {":path", "/"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return []byte(buf.String())
	}
	for _, x := range xnetServers {
		for _, tc := range []struct {
			name string
			send func(fr *http2.Framer) error
			// request: the connection sends a whole request first, and
			// must then outlive the read-header timeout.
			request bool
		}{
			{name: "only a preface", send: func(fr *http2.Framer) error { return fr.WriteSettings() }},
			{name: "unfinished header block", send: func(fr *http2.Framer) error {
				if err := fr.WriteSettings(); err != nil {
					return err
				}
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(), EndStream: true})
			}},
			{name: "after a request", request: true, send: func(fr *http2.Framer) error {
				if err := fr.WriteSettings(); err != nil {
					return err
				}
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(), EndStream: true, EndHeaders: true})
			}},
		} {
			t.Run(x.name+"/"+tc.name, func(t *testing.T) {
				var served atomic.Int32
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served.Add(1) })
				s, tr := x.start(t, h, ServerOptions{ReadHeaderTimeout: rht, IdleTimeout: time.Hour}, nil)
				nc := x.dial(t, s.Addr().String())
				fr := http2.NewFramer(nc, nc)
				if err := tc.send(fr); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				if tc.request {
					wait.For(t, "the request served", func() bool { return served.Load() == 1 })
				}
				// Read until the server closes, or for 20 read-header
				// timeouts (the idle timeout is an hour); after a request,
				// for 4.
				limit := 20 * rht
				if tc.request {
					limit = 4 * rht
				}
				_ = nc.SetReadDeadline(start.Add(limit))
				var err error
				for err == nil {
					_, err = fr.ReadFrame()
				}
				timedOut := errors.Is(err, os.ErrDeadlineExceeded)
				if tc.request {
					if !timedOut {
						t.Fatalf("after a request the connection closed (%v) within %v; the read-header timeout (%v) holds only until the first request", err, time.Since(start), rht)
					}
					return
				}
				if timedOut {
					t.Fatalf("the connection lived %v past a read-header timeout of %v", time.Since(start), rht)
				}
				t.Logf("closed after %v (%v)", time.Since(start), err)
				nc.Close()
				waitFor(t, func() bool { return tr.ConnectionsTotal() == 0 })
			})
		}
	}
}

// TestH2XNetNonReadingClientIsCut: a client that opens a large window,
// asks for a large download and reads nothing loses its connection once
// x/net has written nothing for the write stall bound (h2WriteStall,
// scaled down here by the same factor on both servers' sides: 60 s to
// 500 ms), as on the own server.
func TestH2XNetNonReadingClientIsCut(t *testing.T) {
	const scale = 120
	for _, x := range xnetServers {
		t.Run(x.name, func(t *testing.T) {
			var wrote atomic.Int64
			s, tr := x.start(t, streamingApp(1<<30, &wrote), ServerOptions{}, func(s *Server) {
				s.h2.WriteByteTimeout /= scale
			})
			nc := x.dial(t, s.Addr().String())
			fr := http2.NewFramer(nc, nc)
			if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}); err != nil {
				t.Fatal(err)
			}
			if err := fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
				t.Fatal(err)
			}
			var buf strings.Builder
			enc := hpack.NewEncoder(&buf)
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "x"}, {":path", "/big"}} {
				_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte(buf.String()), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			wait.Until(t, 20*time.Second, "x/net closes the connection of a client that reads nothing", func() (bool, string) {
				return tr.ConnectionsTotal() == 0, "the app wrote " + byteCount(wrote.Load())
			})
			t.Logf("closed after %v; the app wrote %s", time.Since(start), byteCount(wrote.Load()))
			if got := wrote.Load(); got >= 1<<30 {
				t.Fatalf("the app wrote all %d bytes to a client that read none", got)
			}
		})
	}
}

func byteCount(n int64) string { return strconv.FormatInt(n>>10, 10) + " KiB" }
