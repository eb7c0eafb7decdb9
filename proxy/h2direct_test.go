package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Tests of the direct path of tidegate's HTTP/2 server (h2direct.go): a
// bodiless request over h2c to an HTTP/1.1 app, served without net/http.
// Every test checks that the server's handler (net/http's side) saw
// nothing, so the direct path really answered.

// h2Answer is what a raw client read for one stream.
type h2Answer struct {
	info     []string // statuses of 1xx answers
	status   string
	fields   map[string][]string
	body     []byte
	trailers map[string][]string
	reset    http2.ErrCode
	wasReset bool
}

// send opens stream id with the given pseudo and regular fields, in order.
func (h *h2Client) send(id uint32, end bool, fields ...string) {
	h.t.Helper()
	h.encBuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := h.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encBuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
}

// answer reads stream id to its end (or reset), returning window to the
// server as DATA arrives.
func (h *h2Client) answer(id uint32) h2Answer {
	h.t.Helper()
	a := h2Answer{fields: map[string][]string{}}
	for {
		f := h.next()
		if f.Header().StreamID != id {
			continue
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			st := f.PseudoValue("status")
			switch {
			case st != "" && st[0] == '1':
				a.info = append(a.info, st)
			case st != "":
				a.status = st
				for _, hf := range f.RegularFields() {
					a.fields[hf.Name] = append(a.fields[hf.Name], hf.Value)
				}
			default:
				a.trailers = map[string][]string{}
				for _, hf := range f.RegularFields() {
					a.trailers[hf.Name] = append(a.trailers[hf.Name], hf.Value)
				}
			}
			if f.StreamEnded() {
				return a
			}
		case *http2.DataFrame:
			a.body = append(a.body, f.Data()...)
			if n := len(f.Data()); n > 0 {
				_ = h.fr.WriteWindowUpdate(0, uint32(n))
				_ = h.fr.WriteWindowUpdate(id, uint32(n))
			}
			if f.StreamEnded() {
				return a
			}
		case *http2.RSTStreamFrame:
			a.reset, a.wasReset = f.ErrCode, true
			return a
		}
	}
}

func (a h2Answer) get(name string) string {
	if v := a.fields[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func dialRig(t *testing.T, r *fastRig) *h2Client {
	t.Helper()
	nc, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return dialH2(t, nc)
}

func TestH2DirectRewritesRequestAndResponse(t *testing.T) {
	var seen atomic.Pointer[http.Request]
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r)
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-App", "yes")
		_, _ = io.WriteString(w, "hello "+r.URL.RawQuery)
	})
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	c := dialRig(t, r)
	c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "front.example", ":path", "/p?q=1",
		"cookie", "a=1", "x-forwarded-for", "1.2.3.4", "x-forwarded-proto", "https", "cookie", "b=2",
		"te", "trailers", "proxy-authorization", "secret", "user-agent", "t/1")
	a := c.answer(1)
	if a.status != "200" || string(a.body) != "hello q=1" {
		t.Fatalf("answer %s %q", a.status, a.body)
	}
	req := seen.Load()
	checks := [][2]string{
		{req.Host, "front.example"},
		{req.Header.Get("X-Forwarded-For"), "1.2.3.4, 127.0.0.1"},
		{req.Header.Get("X-Forwarded-Proto"), "https"},
		{req.Header.Get("X-Forwarded-Host"), "front.example"},
		{req.Header.Get("Cookie"), "a=1; b=2"},
		{req.Header.Get("Te"), "trailers"},
		{req.Header.Get("Proxy-Authorization"), ""},
		{req.UserAgent(), "t/1"},
		{req.Proto, "HTTP/1.1"},
	}
	for i, c := range checks {
		if c[0] != c[1] {
			t.Errorf("check %d: app saw %q, want %q", i, c[0], c[1])
		}
	}
	id := req.Header.Get("X-Request-Id")
	if !validRequestID(id) || a.get("x-request-id") != id {
		t.Errorf("request id: app saw %q, client got %q", id, a.get("x-request-id"))
	}
	for _, hop := range []string{"connection", "x-hop", "keep-alive"} {
		if _, ok := a.fields[hop]; ok {
			t.Errorf("hop-by-hop field %q reached the client", hop)
		}
	}
	if a.get("x-app") != "yes" || a.get("content-type") != "text/plain" || a.get("date") == "" || a.get("content-length") != "9" {
		t.Errorf("response fields %v", a.fields)
	}
	r.expectNetHTTP(t, 0)
	waitFor(t, func() bool { return r.access.Len() == 1 })
	e := r.access.All()[0].ContextMap()
	if e["proto"] != "HTTP/2.0" || e["status"] != int64(200) || e["path"] != "/p" || e["request_id"] != id {
		t.Errorf("access log %v", e)
	}
}

func TestH2DirectFramings(t *testing.T) {
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		switch req.URL.Path {
		case "/chunked":
			return appWrite(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
				"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
		case "/close":
			appWrite(c, "HTTP/1.1 200 OK\r\n\r\nuntil the end")
			return false
		case "/head":
			return appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
		case "/204":
			return appWrite(c, "HTTP/1.1 204 No Content\r\n\r\n")
		case "/hints":
			return appWrite(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"+
				"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		return appWrite(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	})
	r := newFastRig(t, app.addr, nil, nil)
	c := dialRig(t, r)
	get := func(id uint32, method, path string) h2Answer {
		c.send(id, true, ":method", method, ":scheme", "http", ":authority", "x", ":path", path)
		return c.answer(id)
	}
	if a := get(1, "GET", "/chunked"); a.status != "200" || string(a.body) != "abcde" || a.trailers["x-sum"][0] != "5" {
		t.Errorf("chunked: %s %q trailers %v", a.status, a.body, a.trailers)
	}
	if a := get(3, "GET", "/close"); a.status != "200" || string(a.body) != "until the end" {
		t.Errorf("read to close: %s %q", a.status, a.body)
	}
	if a := get(5, "HEAD", "/head"); a.status != "200" || len(a.body) != 0 || a.get("content-length") != "42" {
		t.Errorf("HEAD: %s %q %v", a.status, a.body, a.fields)
	}
	if a := get(7, "GET", "/204"); a.status != "204" || len(a.body) != 0 {
		t.Errorf("204: %s %q", a.status, a.body)
	}
	if a := get(9, "GET", "/hints"); a.status != "200" || string(a.body) != "ok" || len(a.info) != 1 || a.info[0] != "103" {
		t.Errorf("1xx: informational %v (want 103 alone), final %s %q", a.info, a.status, a.body)
	}
	r.expectNetHTTP(t, 0)
}

func TestH2DirectFailures(t *testing.T) {
	t.Run("connect refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		r := newFastRig(t, addr, nil, nil)
		c := dialRig(t, r)
		c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.answer(1)
		if a.status != "502" || a.get("x-tidegate-reason") != string(ReasonConnectRefused) || !strings.Contains(string(a.body), "refused") {
			t.Fatalf("got %s %v %q", a.status, a.fields, a.body)
		}
		r.expectNetHTTP(t, 0)
	})
	t.Run("app dies mid-body", func(t *testing.T) {
		app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
			appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
			return false
		})
		r := newFastRig(t, app.addr, nil, nil)
		c := dialRig(t, r)
		c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.answer(1)
		if !a.wasReset || a.reset != http2.ErrCodeInternal || a.status != "200" {
			t.Fatalf("got status %s, reset %v %v, body %q; want 200 then RST_STREAM INTERNAL_ERROR", a.status, a.wasReset, a.reset, a.body)
		}
		waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
	})
	t.Run("response header timeout", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
			<-release
			return false
		})
		r := newFastRig(t, app.addr, func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 100 * time.Millisecond }, nil)
		c := dialRig(t, r)
		c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.answer(1)
		if a.status != "504" || a.get("x-tidegate-reason") != string(ReasonResponseTimeout) {
			t.Fatalf("got %s %v", a.status, a.fields)
		}
	})
}

// A client's RST_STREAM while the app works cuts the app's connection (the
// app sees it close) and the request is recorded as 499.
func TestH2DirectClientResetCancelsTheApp(t *testing.T) {
	appSawClose := make(chan struct{})
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && req.URL.Path == "/slow" {
			close(appSawClose)
		}
		return false
	})
	r := newFastRig(t, app.addr, nil, nil)
	c := dialRig(t, r)
	c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/slow")
	waitFor(t, func() bool { return app.accepted.Load() == 1 && r.tracker.InFlight() == 1 })
	if err := c.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	select {
	case <-appSawClose:
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection stayed open after the client reset the stream")
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.access.Len() == 1 })
	if e := r.access.All()[0].ContextMap(); e["status"] != int64(StatusClientClosed) || e["reason"] != string(ReasonClientCanceled) {
		t.Errorf("access log %v, want status 499 client_canceled", e)
	}
	// The connection goes on.
	c.send(3, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/next")
	if err := c.fr.WriteRSTStream(3, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	r.expectNetHTTP(t, 0)
}

// The answer goes out only as fast as the client's windows open.
func TestH2DirectFlowControl(t *testing.T) {
	const size = 100 << 10
	body := strings.Repeat("0123456789abcdef", size/16)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, body) })
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	c := dialRig(t, r)
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000}); err != nil {
		t.Fatal(err)
	}
	c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/big")
	var got []byte
	for len(got) < 1000 {
		switch f := c.next().(type) {
		case *http2.DataFrame:
			got = append(got, f.Data()...)
		case *http2.RSTStreamFrame:
			t.Fatalf("reset: %v", f.ErrCode)
		}
	}
	if len(got) != 1000 {
		t.Fatalf("received %d bytes on a window of 1000", len(got))
	}
	// Nothing more until the window opens.
	_ = c.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := c.fr.ReadFrame(); err == nil {
		if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
			t.Fatalf("DATA beyond the window: %d bytes", len(d.Data()))
		}
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_ = c.fr.WriteWindowUpdate(1, size)
	_ = c.fr.WriteWindowUpdate(0, size)
	for {
		f, ok := c.next().(*http2.DataFrame)
		if !ok {
			continue
		}
		got = append(got, f.Data()...)
		if f.StreamEnded() {
			break
		}
	}
	if string(got) != body {
		t.Fatalf("received %d bytes, want %d, byte-exact", len(got), len(body))
	}
	r.expectNetHTTP(t, 0)
}

// A GET that fails on a pooled connection the app had closed is sent again
// on a new one, as the fast path and http.Transport do.
func TestH2DirectReplaysOnAStaleConnection(t *testing.T) {
	var n atomic.Int32
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		// Answer as if keeping the connection, then close it.
		appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"+string(rune('0'+n.Add(1))))
		return false
	})
	r := newFastRig(t, app.addr, nil, nil)
	c := dialRig(t, r)
	for id := uint32(1); id <= 5; id += 2 {
		c.send(id, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		if a := c.answer(id); a.status != "200" {
			t.Fatalf("stream %d: %s %v %q", id, a.status, a.fields, a.body)
		}
	}
	if app.accepted.Load() < 3 {
		t.Fatalf("the app accepted %d connections for 3 requests on closing connections", app.accepted.Load())
	}
	r.expectNetHTTP(t, 0)
}

// A request with a body, or one the gate holds, is the handler's.
func TestH2DirectLeavesBodiesAndTheGateToTheHandler(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(bufio.NewReader(r.Body))
		_, _ = io.WriteString(w, r.Method+" "+string(b))
	})
	var open atomic.Bool
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.FastPathOpen = open.Load })
	c := dialRig(t, r)
	c.send(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
	if a := c.answer(1); a.status != "200" || string(a.body) != "GET " {
		t.Fatalf("gate closed: %s %q", a.status, a.body)
	}
	r.expectNetHTTP(t, 1)
	open.Store(true)
	c.send(3, false, ":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/", "content-length", "5")
	if err := c.fr.WriteData(3, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if a := c.answer(3); a.status != "200" || string(a.body) != "POST hello" {
		t.Fatalf("POST: %s %q", a.status, a.body)
	}
	r.expectNetHTTP(t, 2)
	c.send(5, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
	if a := c.answer(5); a.status != "200" {
		t.Fatalf("GET with the gate open: %s", a.status)
	}
	r.expectNetHTTP(t, 2)
}
