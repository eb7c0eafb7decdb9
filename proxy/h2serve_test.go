package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Tests of tidegate's own HTTP/2 server (h2serve.go, h2splice.go,
// h2handler.go, h2direct.go, h2wire.go). A raw client (ownClient, on
// h2Client of goaway_test.go) writes and reads frames one by one and keeps
// the flow-control books, so that every window the server announces or
// honours is checked. Apps are real: net/http servers speaking h2c (the
// spliced path) or HTTP/1.1 (the handler and direct paths), and a raw
// HTTP/2 app (rawH2App) for the failures a real server does not make on
// demand.

// ownClient is a raw HTTP/2 client that tracks what it may send.
type ownClient struct {
	*h2Client
	settings   map[http2.SettingID]uint32 // the server's first SETTINGS
	sendConn   int64                      // connection window at the server
	sendStream map[uint32]int64           // stream windows at the server
	queued     []http2.Frame              // frames read while waiting for a window
	recvConn   int64                      // what the server may still send on the connection
}

// dialOwn opens an h2c connection with prior knowledge to addr, sending
// settings, and reads the server's SETTINGS.
func dialOwn(t *testing.T, addr string, settings ...http2.Setting) *ownClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ownClientOn(t, nc, settings...)
}

// ownClientOn is dialOwn on a connection already dialed.
func ownClientOn(t *testing.T, nc net.Conn, settings ...http2.Setting) *ownClient {
	t.Helper()
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	hc := &h2Client{t: t, c: nc, fr: http2.NewFramer(nc, nc)}
	hc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	hc.enc = hpack.NewEncoder(&hc.encBuf)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := hc.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	c := &ownClient{h2Client: hc, settings: map[http2.SettingID]uint32{}, sendConn: 65535, sendStream: map[uint32]int64{}, recvConn: 65535}
	hc.read = c.frame // next keeps the books of WINDOW_UPDATEs
	f, err := hc.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		t.Fatalf("first frame from the server is %v, want SETTINGS", f)
	}
	_ = sf.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
	if err := hc.fr.WriteSettingsAck(); err != nil {
		t.Fatal(err)
	}
	return c
}

// frame reads the next frame, keeping the books of WINDOW_UPDATEs.
func (c *ownClient) frame() (http2.Frame, error) {
	if len(c.queued) > 0 {
		f := c.queued[0]
		c.queued = c.queued[1:]
		return f, nil
	}
	f, err := c.fr.ReadFrame()
	if wu, ok := f.(*http2.WindowUpdateFrame); ok && err == nil {
		if wu.StreamID == 0 {
			c.sendConn += int64(wu.Increment)
		} else if _, open := c.sendStream[wu.StreamID]; open {
			c.sendStream[wu.StreamID] += int64(wu.Increment)
		}
	}
	return f, err
}

// open sends a request's header block on stream id: the pseudo-fields of
// method and path, then fields (name, value pairs).
func (c *ownClient) open(id uint32, method, path string, end bool, fields ...string) {
	c.t.Helper()
	all := append([]string{":method", method, ":scheme", "http", ":authority", "tidegate.test", ":path", path}, fields...)
	c.block(id, end, all...)
}

// block sends a header block of exactly fields on stream id.
func (c *ownClient) block(id uint32, end bool, fields ...string) {
	c.t.Helper()
	c.encBuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			c.t.Fatal(err)
		}
	}
	if _, ok := c.sendStream[id]; !ok {
		c.sendStream[id] = int64(c.settings[http2.SettingInitialWindowSize])
		if _, set := c.settings[http2.SettingInitialWindowSize]; !set {
			c.sendStream[id] = 65535
		}
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.encBuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// send writes b on stream id in DATA frames within the server's windows,
// reading frames (and queueing them) while a window is shut.
func (c *ownClient) send(id uint32, b []byte, end bool) {
	c.t.Helper()
	for {
		n := min(int64(len(b)), c.sendConn, c.sendStream[id], 16<<10)
		if n > 0 || (len(b) == 0 && end) {
			last := end && n == int64(len(b))
			if err := c.fr.WriteData(id, last, b[:n]); err != nil {
				c.t.Fatal(err)
			}
			c.sendConn -= n
			c.sendStream[id] -= n
			b = b[n:]
			if len(b) == 0 {
				return
			}
			continue
		}
		f, err := c.frame()
		if err != nil {
			c.t.Fatalf("waiting for a window to send %d more bytes (conn %d, stream %d): %v", len(b), c.sendConn, c.sendStream[id], err)
		}
		switch f := f.(type) {
		case *http2.WindowUpdateFrame, *http2.PingFrame:
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.t.Fatalf("unexpected SETTINGS while sending: %v", f)
			}
		case *http2.DataFrame:
			c.t.Fatalf("DATA on stream %d while sending the body of stream %d", f.StreamID, id)
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				c.t.Fatalf("stream %d reset while sending its body: %v", id, f.ErrCode)
			}
			c.queued = append(c.queued, f)
		default:
			c.queued = append(c.queued, f)
		}
	}
}

// h2Resp is what came back on one stream.
type h2Resp struct {
	status  string
	header  http.Header // regular fields of the final header block
	infos   []string    // statuses of 1xx header blocks
	body    []byte
	trailer http.Header
	reset   bool
	code    http2.ErrCode // the RST_STREAM's code, if reset
	others  []http2.Frame // frames of other streams and the connection
}

func fieldsHeader(f *http2.MetaHeadersFrame) http.Header {
	h := make(http.Header)
	for _, hf := range f.RegularFields() {
		h.Add(hf.Name, hf.Value)
	}
	return h
}

// headers takes a header block of the answer: 1xx, final or trailers. It
// reports whether the block ends the stream.
func (r *h2Resp) headers(f *http2.MetaHeadersFrame) bool {
	switch s := f.PseudoValue("status"); {
	case s != "" && s[0] == '1':
		r.infos = append(r.infos, s)
	case s != "":
		r.status, r.header = s, fieldsHeader(f)
	default:
		r.trailer = fieldsHeader(f)
	}
	return f.StreamEnded()
}

// read reads stream id's answer to its end (or reset). Each DATA frame's
// bytes are given back to the server's windows at once.
func (c *ownClient) read(id uint32) h2Resp {
	c.t.Helper()
	return c.readStream(id, func(f *http2.DataFrame) {
		if n := f.Header().Length; n > 0 {
			if err := c.fr.WriteWindowUpdate(0, n); err != nil {
				c.t.Fatal(err)
			}
			if !f.StreamEnded() {
				if err := c.fr.WriteWindowUpdate(id, n); err != nil {
					c.t.Fatal(err)
				}
			}
		}
	})
}

// readStream reads stream id's answer to its end (or reset), keeping
// other streams' frames in others. onData sees each DATA frame once its
// bytes are in the body; it decides what window to give back.
func (c *ownClient) readStream(id uint32, onData func(*http2.DataFrame)) h2Resp {
	c.t.Helper()
	var r h2Resp
	for {
		f := c.next()
		if f.Header().StreamID != id {
			r.others = append(r.others, f)
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if r.headers(f) {
				return r
			}
		case *http2.DataFrame:
			r.body = append(r.body, f.Data()...)
			onData(f)
			if f.StreamEnded() {
				return r
			}
		case *http2.RSTStreamFrame:
			r.reset, r.code = true, f.ErrCode
			return r
		}
	}
}

// expectReset reads until stream id is reset, and checks the code.
func (c *ownClient) expectReset(id uint32, code http2.ErrCode) h2Resp {
	c.t.Helper()
	r := c.read(id)
	if !r.reset || r.code != code {
		c.t.Fatalf("stream %d: status %q, reset %v (%v); want RST_STREAM %v", id, r.status, r.reset, r.code, code)
	}
	return r
}

// do sends a request on stream id (with body, if not nil) and reads its
// answer.
func (c *ownClient) do(id uint32, method, path string, body []byte, fields ...string) h2Resp {
	c.t.Helper()
	c.open(id, method, path, body == nil, fields...)
	if body != nil {
		c.send(id, body, true)
	}
	return c.read(id)
}

// expectOK checks a 200 with body want.
func expectOK(t *testing.T, r h2Resp, want string) {
	t.Helper()
	if r.reset || r.status != "200" || string(r.body) != want {
		t.Fatalf("got status %q body %q (reset %v %v); want 200 %q", r.status, r.body, r.reset, r.code, want)
	}
}

// h2cApp serves h with net/http on 127.0.0.1, HTTP/1.1 and h2c with prior
// knowledge: the app of the spliced path.
func h2cApp(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return ln.Addr().String()
}

// ownRig is a fastRig (tidegate's own HTTP/2 server for h2c) with the
// upstream protocol set.
func ownRig(t *testing.T, app string, proto UpstreamProtocol, serverOpts func(*ServerOptions)) *fastRig {
	t.Helper()
	r := newFastRig(t, app, func(o *Options) { o.Protocol = proto }, serverOpts)
	if !r.srv.h2own {
		t.Fatal("tidegate's own HTTP/2 server is off")
	}
	return r
}

// pattern is n bytes that are not all alike, so that a byte out of place
// shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// path is one way tidegate's own HTTP/2 server serves a stream.
type h2Path struct {
	name string
	// rig starts an app serving h and tidegate in front of it.
	rig func(t *testing.T, h http.HandlerFunc) *fastRig
	// method is the request method that takes this path (a GET without a
	// body takes the direct path to an HTTP/1.1 app, a POST the handler).
	method  string
	netHTTP bool // whether the server's handler chain serves it
}

var (
	splicedPath = h2Path{name: "spliced", method: http.MethodPost,
		rig: func(t *testing.T, h http.HandlerFunc) *fastRig { return ownRig(t, h2cApp(t, h), UpstreamH2C, nil) }}
	handlerPath = h2Path{name: "handler", method: http.MethodPost, netHTTP: true,
		rig: func(t *testing.T, h http.HandlerFunc) *fastRig {
			return ownRig(t, upstreamServer(t, h).Listener.Addr().String(), UpstreamHTTP1, nil)
		}}
	directPath = h2Path{name: "direct", method: http.MethodGet,
		rig: func(t *testing.T, h http.HandlerFunc) *fastRig {
			return ownRig(t, upstreamServer(t, h).Listener.Addr().String(), UpstreamHTTP1, nil)
		}}
)

// expectPath checks that n streams went the path's way: through the
// server's handler chain, or not.
func (p h2Path) expect(t *testing.T, r *fastRig, n int64) {
	t.Helper()
	if !p.netHTTP {
		n = 0
	}
	r.expectNetHTTP(t, n)
}

// body is the request body for a stream of this path: one byte for a POST
// (so that it is not a bodiless request), none for a GET.
func (p h2Path) body() []byte {
	if p.method == http.MethodGet {
		return nil
	}
	return []byte("x")
}

// TestH2OwnSettingsPingAndConnCount: the server's SETTINGS and connection
// window, the ACKs of the client's SETTINGS and PING, and the tracker's
// count of the connection as h2c until it closes.
func TestH2OwnSettingsPingAndConnCount(t *testing.T) {
	r := ownRig(t, deadUpstream(t), UpstreamH2C, func(o *ServerOptions) { o.MaxHeaderBytes = 32 << 10 })
	c := dialOwn(t, r.addr)
	for id, want := range map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: 250,
		http2.SettingInitialWindowSize:    256 << 10,
		http2.SettingMaxHeaderListSize:    32 << 10,
	} {
		if got, ok := c.settings[id]; !ok || got != want {
			t.Errorf("server's %v = %d (sent %v), want %d", id, got, ok, want)
		}
	}
	// The connection window grows to 1 MiB.
	f := c.nextFrameOrUpdate()
	if wu, ok := f.(*http2.WindowUpdateFrame); !ok || wu.StreamID != 0 || wu.Increment != 1<<20-65535 {
		t.Fatalf("second frame %v; want WINDOW_UPDATE(0, 1MiB-65535)", f)
	}

	// A new SETTINGS is acknowledged, then a PING answered with its data.
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000}); err != nil {
		t.Fatal(err)
	}
	f = c.nextFrameOrUpdate()
	if sf, ok := f.(*http2.SettingsFrame); !ok || !sf.IsAck() {
		t.Fatalf("after SETTINGS, got %v; want SETTINGS ACK", f)
	}
	data := [8]byte{'p', 'i', 'n', 'g', 0, 1, 2, 3}
	if err := c.fr.WritePing(false, data); err != nil {
		t.Fatal(err)
	}
	f = c.next()
	if p, ok := f.(*http2.PingFrame); !ok || !p.IsAck() || p.Data != data {
		t.Fatalf("after PING, got %v; want its ACK", f)
	}
	// A PING ACK from the client is not answered: the next frame is the
	// second PING's ACK.
	if err := c.fr.WritePing(true, data); err != nil {
		t.Fatal(err)
	}
	data2 := [8]byte{'s', 'e', 'c', 'o', 'n', 'd'}
	if err := c.fr.WritePing(false, data2); err != nil {
		t.Fatal(err)
	}
	if p, ok := c.next().(*http2.PingFrame); !ok || !p.IsAck() || p.Data != data2 {
		t.Fatalf("after a PING ACK and a PING, got %v; want the second PING's ACK", p)
	}

	if n := r.tracker.Connections(ProtocolH2C); n != 1 {
		t.Fatalf("h2c connections %d, want 1", n)
	}
	if n := r.tracker.Connections(ProtocolHTTP1); n != 0 {
		t.Fatalf("HTTP/1.1 connections %d, want 0: the h2c one moved", n)
	}
	if cs := r.srv.ownH2Conns(); len(cs) != 1 {
		t.Fatalf("%d connections on the own HTTP/2 server, want 1", len(cs))
	}
	c.c.Close()
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 && len(r.srv.ownH2Conns()) == 0 })
}

// nextFrameOrUpdate is frame, failing the test on an error.
func (c *ownClient) nextFrameOrUpdate() http2.Frame {
	c.t.Helper()
	f, err := c.frame()
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return f
}

// readWindowed reads stream id's answer giving window back only when one
// is used up, the stream's in steps of streamStep, the connection's in
// steps of 65535: a server that overruns a window fails, and one that
// does not send while a window is open stalls the test.
func (c *ownClient) readWindowed(id uint32, streamWin, streamStep int64) (r h2Resp, grants int) {
	c.t.Helper()
	connWin := &c.recvConn
	r = c.readStream(id, func(f *http2.DataFrame) {
		n := int64(f.Header().Length)
		streamWin -= n
		*connWin -= n
		if streamWin < 0 || *connWin < 0 {
			c.t.Fatalf("the server overran the client's windows: stream %d, connection %d", streamWin, *connWin)
		}
		if f.StreamEnded() {
			return
		}
		if streamWin == 0 {
			grants++
			streamWin += streamStep
			if err := c.fr.WriteWindowUpdate(id, uint32(streamStep)); err != nil {
				c.t.Fatal(err)
			}
		}
		if *connWin == 0 {
			*connWin += 65535
			if err := c.fr.WriteWindowUpdate(0, 65535); err != nil {
				c.t.Fatal(err)
			}
		}
	})
	if r.reset {
		c.t.Fatalf("stream %d reset: %v", id, r.code)
	}
	return r, grants
}

// TestH2OwnResponseFlowControl: a response larger than the client's
// windows (1000 bytes a stream, the default 65535 for the connection)
// arrives whole, byte for byte, only as the client gives window back, on
// each path.
func TestH2OwnResponseFlowControl(t *testing.T) {
	const size = 300_000
	want := pattern(size)
	for _, p := range []h2Path{splicedPath, handlerPath, directPath} {
		t.Run(p.name, func(t *testing.T) {
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				w.Header().Set("Content-Type", "application/octet-stream")
				_, _ = w.Write(want)
			})
			c := dialOwn(t, r.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
			c.open(1, p.method, "/big", p.body() == nil)
			if b := p.body(); b != nil {
				c.send(1, b, true)
			}
			resp, grants := c.readWindowed(1, 1000, 1000)
			if resp.status != "200" || !bytes.Equal(resp.body, want) {
				t.Fatalf("status %s, %d bytes (want %d), equal %v", resp.status, len(resp.body), size, bytes.Equal(resp.body, want))
			}
			if grants < size/1000-1 {
				t.Fatalf("%d stream window grants for %d bytes in a 1000-byte window", grants, size)
			}
			p.expect(t, r, 1)

			// The connection window also limits: a stream window far
			// larger than it, and the connection's given back only when
			// used up.
			if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			c.open(3, p.method, "/big", p.body() == nil)
			if b := p.body(); b != nil {
				c.send(3, b, true)
			}
			resp, _ = c.readWindowed(3, 1<<30, 1<<20)
			if resp.status != "200" || !bytes.Equal(resp.body, want) {
				t.Fatalf("second response: status %s, %d bytes", resp.status, len(resp.body))
			}
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
		})
	}
}

// TestH2OwnLargeRequestBody: request bodies far larger than the server's
// windows (256 KiB a stream, 1 MiB the connection) reach the app byte for
// byte, as the server gives the windows back, with or without a
// content-length.
func TestH2OwnLargeRequestBody(t *testing.T) {
	body := pattern(3<<20 + 12345)
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:]) + " " + strconv.Itoa(len(body))
	for _, p := range []h2Path{splicedPath, handlerPath} {
		for _, withCL := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/content-length=%v", p.name, withCL), func(t *testing.T) {
				r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
					h := sha256.New()
					n, err := io.Copy(h, req.Body)
					if err != nil {
						w.WriteHeader(http.StatusBadRequest)
						return
					}
					_, _ = io.WriteString(w, hex.EncodeToString(h.Sum(nil))+" "+strconv.FormatInt(n, 10))
				})
				c := dialOwn(t, r.addr)
				for _, id := range []uint32{1, 3} { // two in a row: the windows come back in full
					var fields []string
					if withCL {
						fields = []string{"content-length", strconv.Itoa(len(body))}
					}
					c.open(id, http.MethodPost, "/upload", false, fields...)
					c.send(id, body, true)
					expectOK(t, c.read(id), want)
				}
				p.expect(t, r, 2)
			})
		}
	}
}

// TestH2OwnTrailers: request trailers reach the app and response trailers
// (declared in Trailer, and with http.TrailerPrefix) reach the client, on
// the spliced path and the handler's.
func TestH2OwnTrailers(t *testing.T) {
	// answer reads the body and its trailers, and answers with trailers.
	answer := func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		w.Header().Set("Trailer", "X-Resp-Trailer")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "body="+string(b)+" trailer="+req.Trailer.Get("X-Req-Trailer"))
		_ = http.NewResponseController(w).Flush()
		w.Header().Set("X-Resp-Trailer", "declared")
		w.Header().Set(http.TrailerPrefix+"X-Late-Trailer", "undeclared")
	}
	// post sends a body with trailers on stream id and checks the answer
	// and its trailers.
	post := func(t *testing.T, c *ownClient, id uint32, path, want string) {
		t.Helper()
		c.open(id, http.MethodPost, path, false, "te", "trailers", "trailer", "X-Req-Trailer")
		c.send(id, []byte("hello"), false)
		c.block(id, true, "x-req-trailer", "from-the-client")
		resp := c.read(id)
		expectOK(t, resp, want)
		// As net/http: sniffed, though the handler called WriteHeader.
		if got := resp.header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
			t.Errorf("%s: content-type %q", path, got)
		}
		if got := resp.trailer.Get("X-Resp-Trailer"); got != "declared" {
			t.Errorf("%s: response trailer X-Resp-Trailer %q (trailers %v)", path, got, resp.trailer)
		}
		if got := resp.trailer.Get("X-Late-Trailer"); got != "undeclared" {
			t.Errorf("%s: response trailer X-Late-Trailer %q (trailers %v)", path, got, resp.trailer)
		}
		if resp.header.Get("X-Resp-Trailer") != "" || resp.header.Get("X-Late-Trailer") != "" {
			t.Errorf("%s: a trailer came in the header: %v", path, resp.header)
		}
		if !strings.Contains(resp.header.Get("Trailer"), "X-Resp-Trailer") {
			t.Errorf("%s: the answer does not announce its trailer: %v", path, resp.header)
		}
	}

	t.Run("spliced", func(t *testing.T) {
		r := splicedPath.rig(t, answer)
		c := dialOwn(t, r.addr)
		post(t, c, 1, "/trailers", "body=hello trailer=from-the-client")
		r.expectNetHTTP(t, 0)
	})

	t.Run("handler", func(t *testing.T) {
		forEachServer(t, func(t *testing.T, own bool) {
			h := handlerFor(t, answer)
			// The server's handler chain answers /chain itself: the request
			// trailers come from the stream's body (h2body), the response's
			// go out through the stream's ResponseWriter (h2rw).
			chain := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/chain" {
					answer(w, req)
					return
				}
				h.ServeHTTP(w, req)
			})
			o := ServerOptions{}
			if own {
				o.FastPath = h
			}
			s, _ := startServerWith(t, chain, o, nil)
			c := dialOwn(t, s.Addr().String())
			post(t, c, 1, "/chain", "body=hello trailer=from-the-client")
			// Through ReverseProxy to an HTTP/1.1 app, the response trailers
			// come back. (Request trailers do not reach it, on net/http's
			// HTTP/2 server either: ReverseProxy sends a clone of the
			// request's Trailer, taken before the body was read.)
			post(t, c, 3, "/app", "body=hello trailer=")
			expectOwnH2(t, s, own)
		})
	})
}

// TestH2OwnClientResetCancelsTheApp: the client's RST_STREAM cancels the
// app's request, the stream counts as 499, nothing stays in flight, and
// the connection serves the next stream.
func TestH2OwnClientResetCancelsTheApp(t *testing.T) {
	for _, p := range []h2Path{splicedPath, handlerPath, directPath} {
		t.Run(p.name, func(t *testing.T) {
			entered := make(chan struct{}, 1)
			cancelled := make(chan struct{}, 1)
			var testDone <-chan struct{}
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/next" {
					_, _ = io.WriteString(w, "next")
					return
				}
				entered <- struct{}{}
				// An HTTP/1.1 app notices a closed connection by reading:
				// its request's context ends only once the body is read.
				if req.Method == http.MethodPost {
					if _, err := io.Copy(io.Discard, req.Body); err != nil {
						cancelled <- struct{}{}
					}
					return
				}
				select {
				case <-req.Context().Done():
					cancelled <- struct{}{}
				case <-testDone:
				}
			})
			testDone, _ = releaser(t) // after the app's cleanup: runs before it
			c := dialOwn(t, r.addr)
			// A request whose body has not ended (POST) or has (GET).
			c.open(1, p.method, "/hang", p.method == http.MethodGet)
			if p.method != http.MethodGet {
				c.send(1, []byte("part"), false)
			}
			recv(t, entered, "request at the app")
			if err := c.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
				t.Fatal(err)
			}
			recv(t, cancelled, "the app's request cancelled")
			waitFor(t, func() bool {
				return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("499", p.method)) == 1 &&
					r.tracker.InFlight() == 0
			})
			expectOK(t, c.do(3, http.MethodGet, "/next", nil), "next")
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
		})
	}
}

// TestH2OwnDialRefused: a spliced stream whose app refuses the connection
// gets tidegate's 502 with its reason and request id, each time.
func TestH2OwnDialRefused(t *testing.T) {
	r := ownRig(t, deadUpstream(t), UpstreamH2C, nil)
	c := dialOwn(t, r.addr)
	for i, id := range []uint32{1, 3} {
		var fields []string
		if i == 1 {
			fields = []string{"x-request-id", "client-id-2"}
		}
		resp := c.do(id, http.MethodGet, "/x", nil, fields...)
		if resp.status != "502" || resp.header.Get("X-Tidegate-Reason") != string(ReasonConnectRefused) {
			t.Fatalf("stream %d: %s %v; want 502 connect_refused", id, resp.status, resp.header)
		}
		if !strings.HasPrefix(string(resp.body), "tidegate: ") || resp.header.Get("Content-Length") != strconv.Itoa(len(resp.body)) {
			t.Errorf("stream %d: body %q, content-length %q", id, resp.body, resp.header.Get("Content-Length"))
		}
		gotID := resp.header.Get("X-Request-Id")
		if (i == 0 && !uuidRE.MatchString(gotID)) || (i == 1 && gotID != "client-id-2") {
			t.Errorf("stream %d: x-request-id %q", id, gotID)
		}
	}
	if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[ReasonConnectRefused]); got != 2 {
		t.Errorf("upstream errors{connect_refused} = %v, want 2", got)
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("502", "GET")) == 2 && r.tracker.InFlight() == 0
	})
	r.expectNetHTTP(t, 0)
}

// rawH2App is an app that speaks HTTP/2 frame by frame: serve runs for
// each connection (numbered from 1) after the preface and SETTINGS.
type rawH2App struct {
	addr     string
	accepted *atomic.Int64
}

// rawH2Conn is one connection of a rawH2App.
type rawH2Conn struct {
	t      *testing.T
	nc     net.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	n      int64
}

func newRawH2App(t *testing.T, serve func(c *rawH2Conn)) *rawH2App {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &rawH2App{addr: ln.Addr().String()}
	a.accepted = acceptAll(t, ln, func(nc net.Conn, n int64) {
		_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
			return
		}
		c := &rawH2Conn{t: t, nc: nc, fr: http2.NewFramer(nc, nc), n: n}
		c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		c.enc = hpack.NewEncoder(&c.encBuf)
		if c.fr.WriteSettings() != nil {
			return
		}
		serve(c)
	})
	return a
}

// request waits for the next request's HEADERS and returns its stream and
// path; false if the connection ended.
func (c *rawH2Conn) request() (uint32, string, bool) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return 0, "", false
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			return f.StreamID, f.PseudoValue("path"), true
		}
	}
}

// respond sends a response header block.
func (c *rawH2Conn) respond(id uint32, status string, end bool) {
	c.encBuf.Reset()
	_ = c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.encBuf.Bytes(), EndStream: end, EndHeaders: true})
}

// TestH2OwnAppFailures: what the client of a spliced stream sees when its
// app fails before or after the answer began.
func TestH2OwnAppFailures(t *testing.T) {
	t.Run("closed mid-response", func(t *testing.T) {
		app := newRawH2App(t, func(c *rawH2Conn) {
			if id, _, ok := c.request(); ok {
				c.respond(id, "200", false)
				_ = c.fr.WriteData(id, false, []byte("partial"))
			}
			// Returning closes the connection.
		})
		r := ownRig(t, app.addr, UpstreamH2C, nil)
		c := dialOwn(t, r.addr)
		c.open(1, http.MethodGet, "/x", true)
		resp := c.expectReset(1, http2.ErrCodeInternal)
		if resp.status != "200" || string(resp.body) != "partial" {
			t.Fatalf("before the reset: %s %q; want the app's 200 and its first bytes", resp.status, resp.body)
		}
		waitFor(t, func() bool {
			return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("200", "GET")) == 1 && r.tracker.InFlight() == 0
		})
	})

	t.Run("reset before the response", func(t *testing.T) {
		app := newRawH2App(t, func(c *rawH2Conn) {
			for {
				id, _, ok := c.request()
				if !ok {
					return
				}
				_ = c.fr.WriteRSTStream(id, http2.ErrCodeInternal)
			}
		})
		r := ownRig(t, app.addr, UpstreamH2C, nil)
		c := dialOwn(t, r.addr)
		resp := c.do(1, http.MethodGet, "/x", nil)
		if resp.status != "502" || resp.header.Get("X-Tidegate-Reason") != string(ReasonUpstreamReset) || !uuidRE.MatchString(resp.header.Get("X-Request-Id")) {
			t.Fatalf("got %s %v; want 502 upstream_reset with a request id", resp.status, resp.header)
		}
		// The app connection is still good for the next stream.
		resp = c.do(3, http.MethodGet, "/y", nil)
		if resp.status != "502" || app.accepted.Load() != 1 {
			t.Fatalf("second stream: %s, app connections %d; want 502 on the same one", resp.status, app.accepted.Load())
		}
		if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[ReasonUpstreamReset]); got != 2 {
			t.Errorf("upstream errors{upstream_reset} = %v, want 2", got)
		}
	})

	t.Run("refused stream", func(t *testing.T) {
		app := newRawH2App(t, func(c *rawH2Conn) {
			for {
				id, path, ok := c.request()
				if !ok {
					return
				}
				if path == "/refuse" {
					_ = c.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
				} else {
					c.respond(id, "204", true)
				}
			}
		})
		r := ownRig(t, app.addr, UpstreamH2C, nil)
		c := dialOwn(t, r.addr)
		c.open(1, http.MethodGet, "/refuse", true)
		c.expectReset(1, http2.ErrCodeRefusedStream)
		if resp := c.do(3, http.MethodGet, "/ok", nil); resp.status != "204" {
			t.Fatalf("after a refused stream: %s", resp.status)
		}
		waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
	})
}

// TestH2OwnAppGoAway: the app's GOAWAY refuses the spliced streams above
// its last stream id (the client may retry them), lets the one below
// finish, and the next stream goes to a new app connection.
func TestH2OwnAppGoAway(t *testing.T) {
	app := newRawH2App(t, func(c *rawH2Conn) {
		if c.n > 1 {
			for {
				id, path, ok := c.request()
				if !ok {
					return
				}
				c.respond(id, "200", false)
				_ = c.fr.WriteData(id, true, []byte("conn 2 "+path))
			}
		}
		first, _, ok1 := c.request()
		second, _, ok2 := c.request()
		if !ok1 || !ok2 {
			return
		}
		_ = c.fr.WriteGoAway(first, http2.ErrCodeNo, nil)
		c.respond(first, "200", false)
		_ = c.fr.WriteData(first, true, []byte("conn 1"))
		_ = second
		// Read until tidegate closes the connection.
		for {
			if _, err := c.fr.ReadFrame(); err != nil {
				return
			}
		}
	})
	r := ownRig(t, app.addr, UpstreamH2C, nil)
	c := dialOwn(t, r.addr)
	c.open(1, http.MethodGet, "/a", true)
	c.open(3, http.MethodGet, "/b", true)
	c.expectReset(3, http2.ErrCodeRefusedStream)
	expectOK(t, c.read(1), "conn 1")
	expectOK(t, c.do(5, http.MethodGet, "/c", nil), "conn 2 /c")
	if n := app.accepted.Load(); n != 2 {
		t.Fatalf("app connections %d, want 2", n)
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
}

// TestH2OwnMalformedRequests: a malformed request gets RST_STREAM
// (PROTOCOL_ERROR), the app never sees it, and the connection serves the
// next stream.
func TestH2OwnMalformedRequests(t *testing.T) {
	cases := []struct {
		name string
		send func(c *ownClient, id uint32)
	}{
		{"no :path", func(c *ownClient, id uint32) {
			c.block(id, true, ":method", "GET", ":scheme", "http", ":authority", "tidegate.test")
		}},
		{"connection field", func(c *ownClient, id uint32) { c.open(id, "GET", "/bad", true, "connection", "keep-alive") }},
		{"te: gzip", func(c *ownClient, id uint32) { c.open(id, "GET", "/bad", true, "te", "gzip") }},
		{"upper-case name", func(c *ownClient, id uint32) { c.open(id, "GET", "/bad", true, "X-Upper", "1") }},
		{"content-length above the DATA", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", false, "content-length", "5")
			c.send(id, []byte("abc"), true)
		}},
		{"DATA above the content-length", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", false, "content-length", "2")
			c.send(id, []byte("abc"), false)
		}},
		{"content-length on a request without DATA", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", true, "content-length", "2")
		}},
		{"connection field in the trailers", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", false)
			c.send(id, []byte("abc"), false)
			c.block(id, true, "connection", "v") // found by FuzzH2ServerDiff: x/net refuses it
		}},
		{"content-length above the DATA, then trailers", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", false, "content-length", "5")
			c.send(id, []byte("abc"), false)
			c.block(id, true, "x-t", "v") // found by FuzzH2ServerDiff: 502 from the app's side before
		}},
		{"content-length in the trailers", func(c *ownClient, id uint32) {
			c.open(id, "POST", "/bad", false)
			c.send(id, []byte("abc"), false)
			c.block(id, true, "content-length", "3")
		}},
	}
	for _, p := range []h2Path{splicedPath, handlerPath} {
		t.Run(p.name, func(t *testing.T) {
			var bad atomic.Int32
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
				b, err := io.ReadAll(req.Body)
				if req.URL.Path == "/bad" && err == nil {
					bad.Add(1) // a malformed request read in full
				}
				_, _ = io.WriteString(w, "ok "+string(b))
			})
			c := dialOwn(t, r.addr)
			id := uint32(1)
			for _, tc := range cases {
				tc.send(c, id)
				c.expectReset(id, http2.ErrCodeProtocol)
				expectOK(t, c.do(id+2, http.MethodPost, "/good", []byte(tc.name)), "ok "+tc.name)
				id += 4
			}
			if n := bad.Load(); n != 0 {
				t.Fatalf("the app answered %d malformed requests", n)
			}
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
		})
	}
}

// TestH2OwnRefusesStreamsOverTheLimit: with 250 streams open, the 251st
// is refused (REFUSED_STREAM, the client may retry it); the others
// complete, and a new stream is taken once they have.
func TestH2OwnRefusesStreamsOverTheLimit(t *testing.T) {
	release, open := releaser(t)
	var entered atomic.Int32
	r := splicedPath.rig(t, holding(&entered, map[string]<-chan struct{}{"/hold": release}))
	c := dialOwn(t, r.addr)
	for i := range uint32(250) {
		c.open(2*i+1, http.MethodGet, "/hold", true)
	}
	c.open(501, http.MethodGet, "/over", true)
	if f := c.next(); f.Header().StreamID != 501 {
		t.Fatalf("first frame %v; want stream 501's RST_STREAM", f)
	} else if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("stream 501: %v; want RST_STREAM REFUSED_STREAM", f)
	}
	wait := func() bool { return entered.Load() == 250 }
	waitFor(t, wait)
	open()
	done := map[uint32]bool{}
	for len(done) < 250 {
		f := c.next()
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamEnded() {
				done[f.StreamID] = true
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
		}
	}
	expectOK(t, c.do(503, http.MethodGet, "/after", nil), "done")
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
}

// TestH2OwnDrain walks the drain on tidegate's own server: BeginDrain
// sends GOAWAY(2^31-1) and tidegate's PING; a stream opened meanwhile is
// served; after the PING's ACK, Shutdown sends the real GOAWAY naming the
// last stream, a stream opened after it is ignored, the stream in flight
// completes, the connection closes, and Shutdown returns.
func TestH2OwnDrain(t *testing.T) {
	for _, p := range []h2Path{splicedPath, handlerPath, directPath} {
		t.Run(p.name, func(t *testing.T) {
			release, open := releaser(t)
			entered := make(chan struct{}, 1)
			var late atomic.Int32
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				switch req.URL.Path {
				case "/hold":
					entered <- struct{}{}
					<-release
				case "/late":
					late.Add(1)
				}
				_, _ = io.WriteString(w, "answer "+req.URL.Path)
			})
			r.srv.goAwayBound = time.Hour // only the ACK releases the real GOAWAY
			c := dialOwn(t, r.addr)
			c.open(1, p.method, "/hold", p.body() == nil)
			if b := p.body(); b != nil {
				c.send(1, b, true)
			}
			recv(t, entered, "request at the app")

			r.srv.BeginDrain()
			ping := c.expectFirstStep()
			c.open(3, p.method, "/race", p.body() == nil)
			if b := p.body(); b != nil {
				c.send(3, b, true)
			}
			resp := c.read(3)
			expectOK(t, resp, "answer /race")
			if gs := goAways(resp.others); len(gs) != 0 {
				t.Fatalf("a second GOAWAY before the PING came back: %v", gs)
			}
			if err := c.fr.WritePing(true, ping); err != nil {
				t.Fatal(err)
			}
			// (The ACK is read by the server before Shutdown looks: the
			// PING below is answered after it.)
			if err := c.fr.WritePing(false, [8]byte{1}); err != nil {
				t.Fatal(err)
			}
			if f := c.next(); f.(*http2.PingFrame) == nil {
				t.Fatalf("got %v; want the PING's ACK", f)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- r.srv.Shutdown(ctx) }()
			f := c.next()
			g, ok := f.(*http2.GoAwayFrame)
			if !ok || g.LastStreamID != 3 || g.ErrCode != http2.ErrCodeNo {
				t.Fatalf("after Shutdown: %v; want the real GOAWAY naming stream 3", f)
			}
			// A stream after the real GOAWAY is not served.
			c.open(5, http.MethodGet, "/late", true)
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned %v with a stream in flight", err)
			default:
			}
			open()
			resp = c.read(1)
			expectOK(t, resp, "answer /hold")
			for {
				f, err := c.frame()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatalf("connection ended with %v; want EOF", err)
					}
					break
				}
				if f.Header().StreamID == 5 {
					t.Fatalf("stream 5, opened after the real GOAWAY, got %v", f)
				}
			}
			// The server half-closed (frameOut.finish): the EOF, not a
			// reset, even though the client's last frames (stream 5, the
			// WINDOW_UPDATE for stream 1's DATA) may have come in after
			// its last write. The client closes on the EOF, as Go's
			// Transport does, and the server with it.
			_ = c.c.Close()
			if err := recv(t, shut, "Shutdown's return"); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if late.Load() != 0 {
				t.Fatal("the app served a stream opened after the real GOAWAY")
			}
			waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 && r.tracker.InFlight() == 0 })
		})
	}
}

// expectFirstStep is h2Client's, for an ownClient.
func (c *ownClient) expectFirstStep() [8]byte {
	c.t.Helper()
	f := c.next()
	g, ok := f.(*http2.GoAwayFrame)
	if !ok || g.LastStreamID != maxStreamID || g.ErrCode != http2.ErrCodeNo {
		c.t.Fatalf("after the drain began, got %v; want GOAWAY 2^31-1 NO_ERROR", f)
	}
	f = c.next()
	p, ok := f.(*http2.PingFrame)
	if !ok || p.IsAck() || p.Data != goAwayPingData {
		c.t.Fatalf("after the first GOAWAY, got %v; want tidegate's PING", f)
	}
	return p.Data
}

// TestH2OwnIdleTimeout: a connection without streams for the idle timeout
// gets GOAWAY naming its last stream and is closed; the tracker forgets
// it.
func TestH2OwnIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	r := ownRig(t, h2cApp(t, func(w http.ResponseWriter, req *http.Request) { _, _ = io.WriteString(w, "ok") }),
		UpstreamH2C, func(o *ServerOptions) { o.IdleTimeout = idle })
	c := dialOwn(t, r.addr)
	expectOK(t, c.do(1, http.MethodGet, "/", nil), "ok")
	last := time.Now()
	f := c.next()
	if g, ok := f.(*http2.GoAwayFrame); !ok || g.LastStreamID != 1 || g.ErrCode != http2.ErrCodeNo {
		t.Fatalf("idle connection got %v; want GOAWAY last-stream-id 1 NO_ERROR", f)
	}
	if d := time.Since(last); d < idle/2 {
		t.Fatalf("GOAWAY %s after the last stream; the idle timeout is %s", d, idle)
	}
	if f, err := c.frame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the GOAWAY: %v, %v; want EOF", f, err)
	}
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
}

// TestH2OwnReadHeaderTimeout: an h2c connection that sent only its
// preface, or a header block it does not end (HEADERS without
// END_HEADERS and no CONTINUATION), first or after a stream, is closed
// after the read-header timeout, as a slow HTTP/1.1 head is, not after
// the idle timeout. A connection that has had its streams stays for the
// idle timeout.
func TestH2OwnReadHeaderTimeout(t *testing.T) {
	const rht = 300 * time.Millisecond
	app := h2cApp(t, func(w http.ResponseWriter, req *http.Request) { _, _ = io.WriteString(w, "ok") })
	rig := func(t *testing.T) *fastRig {
		return ownRig(t, app, UpstreamH2C, func(o *ServerOptions) { o.ReadHeaderTimeout = rht })
	}
	partial := func(c *ownClient, id uint32) {
		c.t.Helper()
		c.encBuf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "tidegate.test"}, {":path", "/"}} {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.encBuf.Bytes(), EndStream: true}); err != nil {
			c.t.Fatal(err)
		}
	}
	// closed reads until the server closes the connection, and returns
	// how long that took from start.
	closed := func(t *testing.T, c *ownClient, start time.Time) time.Duration {
		t.Helper()
		for {
			f, err := c.frame()
			if err != nil {
				if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
					t.Fatalf("waiting for the close: %v", err)
				}
				return time.Since(start)
			}
			if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode != http2.ErrCodeNo {
				t.Fatalf("GOAWAY %v; want NO_ERROR", g.ErrCode)
			}
		}
	}
	for _, tc := range []struct {
		name string
		run  func(c *ownClient)
	}{
		{"preface only", func(c *ownClient) {}},
		{"first header block unfinished", func(c *ownClient) { partial(c, 1) }},
		{"header block unfinished after a stream", func(c *ownClient) {
			expectOK(c.t, c.do(1, http.MethodGet, "/", nil), "ok")
			partial(c, 3)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rig(t)
			start := time.Now()
			c := dialOwn(t, r.addr)
			tc.run(c)
			if d := closed(t, c, start); d < rht/2 || d > 10*time.Second {
				t.Fatalf("closed %s after the connection began; the read-header timeout is %s", d, rht)
			}
			waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
		})
	}
	t.Run("streams keep the connection", func(t *testing.T) {
		r := rig(t)
		c := dialOwn(t, r.addr)
		expectOK(t, c.do(1, http.MethodGet, "/", nil), "ok")
		// Four read-header timeouts later, the connection still answers.
		until := time.Now().Add(4 * rht)
		for i := uint32(3); time.Now().Before(until); i += 2 {
			expectOK(t, c.do(i, http.MethodGet, "/", nil), "ok")
		}
		if n := r.tracker.Connections(ProtocolH2C); n != 1 {
			t.Fatalf("%d h2c connections; want the client's one", n)
		}
	})
}

// TestH2OwnForwardedHeaders: the spliced request carries X-Forwarded-For
// (appended to the client's), -Proto and -Host and the request id, the
// client's if valid, else a new one; the response carries the id back.
func TestH2OwnForwardedHeaders(t *testing.T) {
	r := splicedPath.rig(t, func(w http.ResponseWriter, req *http.Request) {
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id", "Connection", "Keep-Alive"} {
			_, _ = fmt.Fprintf(w, "%s=%s\n", k, strings.Join(req.Header.Values(k), ","))
		}
		_, _ = fmt.Fprintf(w, "host=%s proto=%s", req.Host, req.Proto)
	})
	c := dialOwn(t, r.addr)
	resp := c.do(1, http.MethodGet, "/fwd", nil, "x-forwarded-for", "10.1.2.3", "x-forwarded-proto", "https", "x-request-id", "the-client-id")
	want := "X-Forwarded-For=10.1.2.3, 127.0.0.1\nX-Forwarded-Proto=https\nX-Forwarded-Host=tidegate.test\nX-Request-Id=the-client-id\nConnection=\nKeep-Alive=\nhost=tidegate.test proto=HTTP/2.0"
	expectOK(t, resp, want)
	if got := resp.header.Get("X-Request-Id"); got != "the-client-id" {
		t.Fatalf("response x-request-id %q", got)
	}
	resp = c.do(3, http.MethodGet, "/fwd", nil, "x-request-id", "bad id")
	id := resp.header.Get("X-Request-Id")
	if !uuidRE.MatchString(id) || !strings.Contains(string(resp.body), "X-Request-Id="+id+"\n") ||
		!strings.Contains(string(resp.body), "X-Forwarded-For=127.0.0.1\n") || !strings.Contains(string(resp.body), "X-Forwarded-Proto=http\n") {
		t.Fatalf("response id %q, app saw:\n%s", id, resp.body)
	}
	r.expectNetHTTP(t, 0)
}

// TestH2OwnAccessLog: a spliced stream's access-log line and metrics.
func TestH2OwnAccessLog(t *testing.T) {
	r := splicedPath.rig(t, func(w http.ResponseWriter, req *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "created")
	})
	c := dialOwn(t, r.addr)
	resp := c.do(1, http.MethodPost, "/things?x=1", []byte("thing"), "x-request-id", "log-id")
	if resp.status != "201" {
		t.Fatalf("status %s", resp.status)
	}
	waitFor(t, func() bool { return r.access.Len() == 1 })
	e := r.access.All()[0].ContextMap()
	for k, want := range map[string]any{"method": "POST", "path": "/things", "proto": "HTTP/2.0", "status": int64(201),
		"bytes": int64(7), "request_id": "log-id"} {
		if e[k] != want {
			t.Errorf("access log %s = %v (%T), want %v", k, e[k], e[k], want)
		}
	}
	if ra, _ := e["remote_addr"].(string); !strings.HasPrefix(ra, "127.0.0.1:") {
		t.Errorf("access log remote_addr %v", e["remote_addr"])
	}
	if got := testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("201", "POST")); got != 1 {
		t.Errorf("requests{201,POST} = %v", got)
	}
	r.expectNetHTTP(t, 0)
}

// A header block over MaxHeaderBytes gets 431, as from net/http, without
// reaching the app; the connection goes on. (A block that goes on in
// CONTINUATION frames once over the limit ends the connection: x/net's
// Framer guards against CONTINUATION floods.)
func TestH2OwnHeaderBlockTooLarge(t *testing.T) {
	var seen atomic.Int32
	app := h2cApp(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		_, _ = io.WriteString(w, "ok")
	})
	r := ownRig(t, app, UpstreamH2C, func(o *ServerOptions) { o.MaxHeaderBytes = 8 << 10 })
	c := dialOwn(t, r.addr)
	fields := []string{}
	for i := range 12 { // 12 fields of 1 KiB: none over the limit, the list is
		fields = append(fields, "x-big-"+strconv.Itoa(i), strings.Repeat("b", 1<<10))
	}
	c.open(1, "GET", "/big", true, fields...)
	if resp := c.read(1); resp.status != "431" || resp.reset {
		t.Fatalf("oversized header block: status %q reset %v %v, want 431", resp.status, resp.reset, resp.code)
	}
	expectOK(t, c.do(3, "GET", "/small", nil), "ok")
	if n := seen.Load(); n != 1 {
		t.Fatalf("the app saw %d requests, want 1 (the small one)", n)
	}
}

// TestH2OwnStreamGoroutinesStay: on the direct and the handler paths a
// stream's goroutine waits, with its stack, for the connection's next
// stream while the connection has streams; at most h2IdleWorkers wait, the
// next streams reuse them, and they leave when the connection has had no
// stream for h2WorkerLinger.
func TestH2OwnStreamGoroutinesStay(t *testing.T) {
	for _, p := range []h2Path{directPath, handlerPath} {
		t.Run(p.name, func(t *testing.T) {
			release, open := releaser(t)
			unpin, endPin := releaser(t)
			var entered atomic.Int32
			r := p.rig(t, holding(&entered, map[string]<-chan struct{}{"/hold": release, "/pin": unpin}))
			c := dialOwn(t, r.addr)
			start := func(id uint32, path string) {
				c.open(id, p.method, path, p.method == http.MethodGet)
				if b := p.body(); b != nil {
					c.send(id, b, true)
				}
			}
			// A stream that stays open keeps the connection busy.
			start(1, "/pin")
			const held = h2IdleWorkers + 4
			for i := range uint32(held) {
				start(2*i+3, "/hold")
			}
			waitFor(t, func() bool { return entered.Load() == held+1 })
			if got := streamWorkers(); got != held+1 {
				t.Fatalf("%d stream goroutines run %d streams; want one each", got, held+1)
			}
			open()
			c.readEnds(t, held, "done")
			conn := onlyH2Conn(t, r.srv)
			idle := func() bool { return conn.waiting.Load() == h2IdleWorkers && streamWorkers() == h2IdleWorkers+1 }
			waitFor(t, idle)

			// The next streams, one by one and then together, run on
			// the waiting goroutines: no more are started.
			id := uint32(2*held + 3)
			for range 3 {
				expectOK(t, c.do(id, p.method, "/next", p.body()), "done")
				id += 2
				waitFor(t, idle)
			}
			for i := range uint32(h2IdleWorkers) {
				start(id+2*i, "/next")
			}
			c.readEnds(t, h2IdleWorkers, "done")
			if got := streamWorkers(); got > h2IdleWorkers+1 {
				t.Fatalf("%d stream goroutines for %d streams; want the %d that waited and the pinned one", got, h2IdleWorkers, h2IdleWorkers)
			}
			p.expect(t, r, int64(1+held+3+h2IdleWorkers))

			// A connection without streams keeps no stream goroutine
			// for longer than h2WorkerLinger.
			endPin()
			c.readEnds(t, 1, "done")
			waitFor(t, func() bool { return streamWorkers() == 0 })
			expectOK(t, c.do(id+2*h2IdleWorkers, p.method, "/next", p.body()), "done")
			waitFor(t, func() bool { return streamWorkers() == 0 })
		})
	}
}

// TestH2OwnSequentialStreamsKeepNoGoroutine: a client that sends one
// request at a time leaves no stream goroutine waiting on its connection.
func TestH2OwnSequentialStreamsKeepNoGoroutine(t *testing.T) {
	for _, p := range []h2Path{directPath, handlerPath} {
		t.Run(p.name, func(t *testing.T) {
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) { _, _ = io.WriteString(w, "done") })
			c := dialOwn(t, r.addr)
			for i := range uint32(5) {
				expectOK(t, c.do(2*i+1, p.method, "/one", p.body()), "done")
				waitFor(t, func() bool { return streamWorkers() == 0 })
			}
			if w := onlyH2Conn(t, r.srv).waiting.Load(); w != 0 {
				t.Fatalf("%d stream goroutines counted as waiting; want 0", w)
			}
		})
	}
}

// holding is an app that answers "done", after the channel of the path in
// holds is closed (or the request is cancelled, then without answering);
// entered counts the requests held.
func holding(entered *atomic.Int32, holds map[string]<-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if hold, ok := holds[req.URL.Path]; ok {
			entered.Add(1)
			select {
			case <-hold:
			case <-req.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "done")
	}
}

// readEnds reads until n streams have ended, none reset, each with the
// body want.
func (c *ownClient) readEnds(t *testing.T, n int, want string) {
	t.Helper()
	bodies := map[uint32]string{}
	for ended := 0; ended < n; {
		switch f := c.next().(type) {
		case *http2.DataFrame:
			bodies[f.StreamID] += string(f.Data())
			if f.StreamEnded() {
				ended++
				if got := bodies[f.StreamID]; got != want {
					t.Fatalf("stream %d: body %q, want %q", f.StreamID, got, want)
				}
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
		}
	}
}

// streamWorkers counts the stream goroutines of tidegate's own HTTP/2
// server, in this process.
func streamWorkers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "proxy.(*h2sConn).streamWorker(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// onlyH2Conn returns the server's one connection on its own HTTP/2 server.
func onlyH2Conn(t *testing.T, s *Server) *h2sConn {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.h2conns) != 1 {
		t.Fatalf("%d HTTP/2 connections; want 1", len(s.h2conns))
	}
	for c := range s.h2conns {
		if own, ok := c.(*h2sConn); ok {
			return own
		}
	}
	t.Fatal("the HTTP/2 connection is net/http's, not tidegate's own")
	return nil
}
