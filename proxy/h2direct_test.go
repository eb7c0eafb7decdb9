package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
)

// Tests of the direct path of tidegate's HTTP/2 server (h2direct.go): a
// bodiless request over h2c to an HTTP/1.1 app, served without net/http.
// Every test checks that the server's handler (net/http's side) saw
// nothing, so the direct path really answered.

func dialRig(t *testing.T, r *fastRig) *ownClient {
	t.Helper()
	return dialOwn(t, r.addr)
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
	c.block(1, true, ":method", "GET", ":scheme", "http", ":authority", "front.example", ":path", "/p?q=1",
		"cookie", "a=1", "x-forwarded-for", "1.2.3.4", "x-forwarded-proto", "https", "cookie", "b=2",
		"te", "trailers", "proxy-authorization", "secret", "user-agent", "t/1")
	a := c.read(1)
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
	if !validRequestID(id) || a.header.Get("X-Request-Id") != id {
		t.Errorf("request id: app saw %q, client got %q", id, a.header.Get("X-Request-Id"))
	}
	for _, hop := range []string{"connection", "x-hop", "keep-alive"} {
		if len(a.header.Values(hop)) > 0 {
			t.Errorf("hop-by-hop field %q reached the client", hop)
		}
	}
	if a.header.Get("X-App") != "yes" || a.header.Get("Content-Type") != "text/plain" || a.header.Get("Date") == "" || a.header.Get("Content-Length") != "9" {
		t.Errorf("response fields %v", a.header)
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
	get := func(id uint32, method, path string) h2Resp {
		c.block(id, true, ":method", method, ":scheme", "http", ":authority", "x", ":path", path)
		return c.read(id)
	}
	if a := get(1, "GET", "/chunked"); a.status != "200" || string(a.body) != "abcde" || a.trailer.Get("X-Sum") != "5" {
		t.Errorf("chunked: %s %q trailers %v", a.status, a.body, a.trailer)
	}
	if a := get(3, "GET", "/close"); a.status != "200" || string(a.body) != "until the end" {
		t.Errorf("read to close: %s %q", a.status, a.body)
	}
	if a := get(5, "HEAD", "/head"); a.status != "200" || len(a.body) != 0 || a.header.Get("Content-Length") != "42" {
		t.Errorf("HEAD: %s %q %v", a.status, a.body, a.header)
	}
	if a := get(7, "GET", "/204"); a.status != "204" || len(a.body) != 0 {
		t.Errorf("204: %s %q", a.status, a.body)
	}
	if a := get(9, "GET", "/hints"); a.status != "200" || string(a.body) != "ok" || len(a.infos) != 1 || a.infos[0] != "103" {
		t.Errorf("1xx: informational %v (want 103 alone), final %s %q", a.infos, a.status, a.body)
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
		c.block(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.read(1)
		if a.status != "502" || a.header.Get("X-Tidegate-Reason") != string(ReasonConnectRefused) || !strings.Contains(string(a.body), "refused") {
			t.Fatalf("got %s %v %q", a.status, a.header, a.body)
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
		c.block(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.read(1)
		if !a.reset || a.code != http2.ErrCodeInternal || a.status != "200" {
			t.Fatalf("got status %s, reset %v %v, body %q; want 200 then RST_STREAM INTERNAL_ERROR", a.status, a.reset, a.code, a.body)
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
		c.block(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		a := c.read(1)
		if a.status != "504" || a.header.Get("X-Tidegate-Reason") != string(ReasonResponseTimeout) {
			t.Fatalf("got %s %v", a.status, a.header)
		}
	})
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
		c.block(id, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
		if a := c.read(id); a.status != "200" {
			t.Fatalf("stream %d: %s %v %q", id, a.status, a.header, a.body)
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
	c.block(1, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
	if a := c.read(1); a.status != "200" || string(a.body) != "GET " {
		t.Fatalf("gate closed: %s %q", a.status, a.body)
	}
	r.expectNetHTTP(t, 1)
	open.Store(true)
	c.block(3, false, ":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/", "content-length", "5")
	if err := c.fr.WriteData(3, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if a := c.read(3); a.status != "200" || string(a.body) != "POST hello" {
		t.Fatalf("POST: %s %q", a.status, a.body)
	}
	r.expectNetHTTP(t, 2)
	c.block(5, true, ":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/")
	if a := c.read(5); a.status != "200" {
		t.Fatalf("GET with the gate open: %s", a.status)
	}
	r.expectNetHTTP(t, 2)
}

// gRPC spliced to an app that speaks only HTTP/1.1 gets 502, and the log
// says what is wrong in words an operator can act on.
func TestH2SpliceToAnHTTP1AppSaysSo(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "h1") })
	core, logs := observer.New(zap.WarnLevel)
	r := newFastRig(t, app.Listener.Addr().String(), func(o *Options) {
		o.Protocol = UpstreamAuto
		o.Logger = zap.New(core)
	}, nil)
	c := dialRig(t, r)
	c.block(1, true, ":method", "POST", ":scheme", "http", ":authority", "x", ":path", "/svc/Method",
		"content-type", "application/grpc", "te", "trailers")
	a := c.read(1)
	if a.status != "502" || a.header.Get("X-Tidegate-Reason") != string(ReasonUpstreamError) {
		t.Fatalf("got %s %v", a.status, a.header)
	}
	waitFor(t, func() bool { return logs.Len() > 0 })
	if e := logs.All()[0].ContextMap(); !strings.Contains(fmt.Sprint(e["error"]), "answered in HTTP/1.1") {
		t.Fatalf("log %v", e)
	}
	r.expectNetHTTP(t, 0)
}

// TestH2Strings: the direct path's strings of one connection: names in
// lower case, values as they are, the same string for the same bytes, long
// ones not kept, and no more than h2StringsMax bytes held.
func TestH2Strings(t *testing.T) {
	var s h2strings
	if got := s.name([]byte("X-Custom-Thing")); got != "x-custom-thing" {
		t.Fatalf("name: %q, want x-custom-thing", got)
	}
	if got := s.name([]byte("Content-Type")); got != "content-type" {
		t.Fatalf("name: %q, want content-type", got)
	}
	b := []byte("text/plain; charset=utf-8")
	v := s.value(b)
	b[0] = 'T' // the caller's buffer is reused: the string is not
	if v != "text/plain; charset=utf-8" {
		t.Fatalf("value %q changed with the buffer", v)
	}
	if again := s.value([]byte("text/plain; charset=utf-8")); unsafe.StringData(again) != unsafe.StringData(v) {
		t.Fatal("the same value was not the same string")
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = s.value([]byte("text/plain; charset=utf-8")) }); allocs != 0 {
		t.Fatalf("a kept value costs %v allocations, want 0", allocs)
	}
	long := bytes.Repeat([]byte("x"), h2StringsMax/8+1)
	if got := s.value(long); got != string(long) {
		t.Fatal("a long value was changed")
	}
	if _, kept := s.values[string(long)]; kept {
		t.Fatal("a value over h2StringsMax/8 bytes was kept")
	}
	for i := range 1000 {
		_ = s.value([]byte(fmt.Sprintf("value-%04d", i)))
		held := 0
		for k := range s.values {
			held += len(k)
		}
		for k, n := range s.names {
			held += len(k) + len(n)
		}
		if s.size > h2StringsMax || held > h2StringsMax {
			t.Fatalf("after %d values: %d bytes counted, %d held; want at most %d", i+1, s.size, held, h2StringsMax)
		}
	}
}

// TestH2CookiesJoinedForTheApp: cookie fields split around other fields
// (RFC 9113 §8.2.3) reach an HTTP/1.1 app as one Cookie line, "; "
// between them, and the fields between them intact, on the direct path and
// the handler's; an h2c app gets them all.
func TestH2CookiesJoinedForTheApp(t *testing.T) {
	for _, p := range []h2Path{directPath, handlerPath, splicedPath} {
		t.Run(p.name, func(t *testing.T) {
			r := p.rig(t, func(w http.ResponseWriter, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = fmt.Fprintf(w, "cookie=%q x-y=%q xff=%q", req.Header["Cookie"], req.Header["X-Y"], req.Header["X-Forwarded-For"])
			})
			c := dialOwn(t, r.addr)
			c.open(1, p.method, "/", p.body() == nil, "cookie", "a=1", "x-y", "1", "cookie", "b=2", "accept", "*/*", "cookie", "c=3")
			if b := p.body(); b != nil {
				c.send(1, b, true)
			}
			expectOK(t, c.read(1), `cookie=["a=1; b=2; c=3"] x-y=["1"] xff=["127.0.0.1"]`)
		})
	}
}
