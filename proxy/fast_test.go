package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest/observer"
)

// The tests of the fast path (fast.go, fastserve.go, h1wire.go) drive a
// real Server with ServerOptions.FastPath in front of a real app. The
// server's own handler (the net/http side) is wrapped to count the
// requests it serves: a request the fast path serves never reaches it. Raw
// TCP clients also see what net/http would rewrite (the app's reason
// phrase, the case of its header names).

// fastRig is a Server with the fast path in front of an app.
type fastRig struct {
	srv     *Server
	tracker *Tracker
	handler *Handler
	access  *observer.ObservedLogs
	addr    string
	netHTTP atomic.Int64 // requests that reached the server's handler

	served    chan error
	serveOnce sync.Once
	serveErr  error
}

func newFastRig(t *testing.T, upstream string, handlerOpts func(*Options), serverOpts func(*ServerOptions)) *fastRig {
	t.Helper()
	up, err := ParseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	r := &fastRig{tracker: NewTracker(TrackerOptions{}), served: make(chan error, 1)}
	var o Options
	o, r.access = rigOptions(t, up, r.tracker, prometheus.NewRegistry())
	if handlerOpts != nil {
		handlerOpts(&o)
	}
	if r.handler, err = NewHandler(o); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	so := ServerOptions{FastPath: r.handler}
	if serverOpts != nil {
		serverOpts(&so)
	}
	counted := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.netHTTP.Add(1)
		r.handler.ServeHTTP(w, req)
	})
	r.srv = NewServer(ln, counted, r.tracker, so)
	if r.srv.fast == nil {
		ln.Close()
		t.Fatal("NewServer left the fast path off")
	}
	r.addr = r.srv.Addr().String()
	go func() { r.served <- r.srv.Serve() }()
	t.Cleanup(func() {
		_ = r.srv.Close()
		if err := r.serveResult(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		r.handler.CloseIdleConnections()
		waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
	})
	return r
}

// serveResult waits (at most 5s) for Serve to return and returns its error.
func (r *fastRig) serveResult() error {
	r.serveOnce.Do(func() {
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		select {
		case r.serveErr = <-r.served:
		case <-t.C:
			r.serveErr = errors.New("Serve did not return within 5s")
		}
	})
	return r.serveErr
}

// expectNetHTTP checks how many requests net/http has served.
func (r *fastRig) expectNetHTTP(t *testing.T, n int64) {
	t.Helper()
	if got := r.netHTTP.Load(); got != n {
		t.Fatalf("net/http served %d requests, want %d", got, n)
	}
}

// rawApp is an app that writes its answers byte for byte: answer is called
// for each request read on a connection, writes what it likes to c, and
// returns whether to read another request from c.
type rawApp struct {
	addr     string
	accepted *atomic.Int64
}

func newRawApp(t *testing.T, answer func(c net.Conn, req *http.Request) bool) *rawApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &rawApp{addr: ln.Addr().String()}
	a.accepted = acceptAll(t, ln, func(c net.Conn, _ int64) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil || !answer(c, req) {
				return
			}
		}
	})
	return a
}

// acceptAll serves each connection ln accepts with serve (given the
// connection's number, from 1) in a goroutine of its own, and closes the
// connection when serve returns. At the test's end it closes ln and every
// open connection and waits for all of them. It returns the count of
// connections accepted.
func acceptAll(t *testing.T, ln net.Listener, serve func(c net.Conn, n int64)) *atomic.Int64 {
	var accepted atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	closed := false
	conns := make(map[net.Conn]struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				serve(c, n)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return &accepted
}

// appWrite writes s to c and reports whether it could.
func appWrite(c net.Conn, s string) bool {
	_, err := io.WriteString(c, s)
	return err == nil
}

// rawClient is a client that writes requests byte for byte and keeps every
// byte it read from the server in seen.
type rawClient struct {
	c    net.Conn
	br   *bufio.Reader
	seen *bytes.Buffer
}

type tapReader struct {
	r    io.Reader
	seen *bytes.Buffer
}

func (tr tapReader) Read(p []byte) (int, error) {
	n, err := tr.r.Read(p)
	tr.seen.Write(p[:n])
	return n, err
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// No test waits this long unless the proxy misbehaves.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	seen := new(bytes.Buffer)
	return &rawClient{c: c, br: bufio.NewReader(tapReader{c, seen}), seen: seen}
}

func (rc *rawClient) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
}

// tryRead reads one response to a request of the given method, body and
// all.
func (rc *rawClient) tryRead(method string) (*http.Response, string, error) {
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func (rc *rawClient) read(t *testing.T, method string) (*http.Response, string) {
	t.Helper()
	resp, body, err := rc.tryRead(method)
	if err != nil {
		t.Fatalf("reading the response to a %s: %v", method, err)
	}
	return resp, body
}

// do sends one request and reads its answer, which is all rc.seen holds
// afterwards.
func (rc *rawClient) do(t *testing.T, req string) (*http.Response, string) {
	t.Helper()
	rc.seen.Reset()
	rc.send(t, req)
	return rc.read(t, req[:strings.IndexByte(req, ' ')])
}

// expectClosed checks that the server closes the connection within 5s
// without sending anything more.
func (rc *rawClient) expectClosed(t *testing.T) {
	t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := rc.br.ReadByte()
	switch {
	case err == nil:
		t.Fatalf("read %q where the server should have closed the connection", b)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatal("the server did not close the connection within 5s")
	}
}

// recv receives from ch, failing the test after 5s.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("no %s within 5s", what)
		panic("unreachable")
	}
}

// releaser returns a channel closed by the returned func, which may be
// called more than once; it is also called when the test ends.
func releaser(t *testing.T) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return ch, release
}

// deadUpstream returns an address nothing listens on.
func deadUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// fastEchoApp answers "METHOD PATH BODY".
func fastEchoApp(t *testing.T) *httptest.Server {
	return upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b))
	})
}

func checkHeader(t *testing.T, h http.Header, name string, want ...string) {
	t.Helper()
	got := h.Values(name)
	if len(got) != len(want) {
		t.Errorf("%s: %q, want %q", name, got, want)
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s: %q, want %q", name, got, want)
			return
		}
	}
}

func TestFastForwardedHeaders(t *testing.T) {
	seen := make(chan *http.Request, 1)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		seen <- req
		return appWrite(c, "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok")
	})
	const sent = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7, 192.0.2.1\r\n" +
		"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
	for _, tc := range []struct {
		name              string
		mode              ForwardedMode
		in                string
		xff, proto, fhost string
	}{
		{"append, none sent", ForwardedAppend, "", "127.0.0.1", "http", "app.example"},
		{"append", ForwardedAppend, sent, "203.0.113.9, 198.51.100.7, 192.0.2.1, 127.0.0.1", "https", "shop.example"},
		{"replace", ForwardedReplace, sent, "127.0.0.1", "http", "app.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFastRig(t, app.addr, func(o *Options) { o.Forwarded = tc.mode }, nil)
			rc := dialRaw(t, r.addr)
			resp, body := rc.do(t, "GET /p?q=%zz&x=1 HTTP/1.1\r\nHost: app.example\r\n"+tc.in+"\r\n")
			got := recv(t, seen, "request at the app")
			if resp.Status != "200 Fine" || body != "ok" {
				t.Fatalf("got %q %q, want the app's 200 Fine ok", resp.Status, body)
			}
			checkHeader(t, got.Header, "X-Forwarded-For", tc.xff)
			checkHeader(t, got.Header, "X-Forwarded-Proto", tc.proto)
			checkHeader(t, got.Header, "X-Forwarded-Host", tc.fhost)
			if got.Host != "app.example" {
				t.Errorf("Host %q, want the client's app.example", got.Host)
			}
			if got.RequestURI != "/p?q=%zz&x=1" {
				t.Errorf("request target %q, want it untouched", got.RequestURI)
			}
			r.expectNetHTTP(t, 0)
		})
	}
}

func TestFastRequestID(t *testing.T) {
	seen := make(chan http.Header, 1)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		seen <- req.Header
		if req.URL.Path == "/own-id" {
			return appWrite(c, "HTTP/1.1 200 OK\r\nX-Request-Id: app-chosen\r\nContent-Length: 0\r\n\r\n")
		}
		return appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)
	for _, tc := range []struct {
		name, path, id string
		keep           bool   // the app sees the client's id
		answer         string // the id the client gets back; "" means the one the app saw
	}{
		{"absent", "/", "", false, ""},
		{"valid", "/", "abc-123", true, ""},
		{"too long", "/", strings.Repeat("x", 200), false, ""},
		{"with a space", "/", "bad id", false, ""},
		{"set by the app", "/own-id", "abc-123", true, "app-chosen"},
	} {
		req := "GET " + tc.path + " HTTP/1.1\r\nHost: x\r\n"
		if tc.id != "" {
			req += "X-Request-Id: " + tc.id + "\r\n"
		}
		resp, _ := rc.do(t, req+"\r\n")
		h := recv(t, seen, "request at the app")
		ids := h.Values(RequestIDHeader)
		if len(ids) != 1 {
			t.Errorf("%s: the app saw request ids %q, want one", tc.name, ids)
			continue
		}
		switch {
		case tc.keep && ids[0] != tc.id:
			t.Errorf("%s: the app saw request id %q, want the client's %q", tc.name, ids[0], tc.id)
		case !tc.keep && !uuidRE.MatchString(ids[0]):
			t.Errorf("%s: the app saw request id %q, want a generated v4 UUID", tc.name, ids[0])
		}
		want := tc.answer
		if want == "" {
			want = ids[0]
		}
		checkHeader(t, resp.Header, RequestIDHeader, want)
	}
	r.expectNetHTTP(t, 0)
}

func TestFastHopByHopHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		seen <- req.Header
		date := ""
		if req.URL.Path == "/dated" {
			date = "Date: Mon, 02 Jan 2006 15:04:05 GMT\r\n"
		}
		return appWrite(c, "HTTP/1.1 200 Fine\r\nConnection: X-App-Hop\r\nX-App-Hop: 1\r\nKeep-Alive: timeout=5\r\n"+
			"Proxy-Connection: keep-alive\r\nX-CaSe: v\r\n"+date+"Content-Length: 2\r\n\r\nok")
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)

	resp, body := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Client-Hop\r\nX-Client-Hop: 1\r\n"+
		"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTe: gzip\r\nX-End-To-End: kept\r\n\r\n")
	h := recv(t, seen, "request at the app")
	for _, k := range []string{"Connection", "X-Client-Hop", "Keep-Alive", "Proxy-Connection", "Te"} {
		if v := h.Values(k); len(v) > 0 {
			t.Errorf("the app saw hop-by-hop %s: %q", k, v)
		}
	}
	checkHeader(t, h, "X-End-To-End", "kept")
	if resp.Status != "200 Fine" || body != "ok" {
		t.Fatalf("got %q %q, want the app's 200 Fine ok", resp.Status, body)
	}
	raw := rc.seen.String()
	for _, k := range []string{"X-App-Hop", "Keep-Alive", "Proxy-Connection", "Connection"} {
		if strings.Contains(raw, k) {
			t.Errorf("the client saw hop-by-hop %s:\n%s", k, raw)
		}
	}
	if !strings.Contains(raw, "\r\nX-CaSe: v\r\n") {
		t.Errorf("the app's header lost its case (not the fast path?):\n%s", raw)
	}
	// The app sent no Date: the proxy adds one, as net/http does.
	if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d).Abs() > time.Minute {
		t.Errorf("Date %q: want the current time (%v)", resp.Header.Get("Date"), err)
	}

	// "Te: trailers" is the one TE the app may see, when the client's lists it.
	resp, _ = rc.do(t, "GET /dated HTTP/1.1\r\nHost: x\r\nTe: gzip, trailers\r\n\r\n")
	h = recv(t, seen, "request at the app")
	checkHeader(t, h, "Te", "trailers")
	checkHeader(t, resp.Header, "Date", "Mon, 02 Jan 2006 15:04:05 GMT")
	r.expectNetHTTP(t, 0)
}

func TestFastResponseFramings(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 4096) // 64 KiB: many reads
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		switch req.URL.Path {
		case "/length":
			return appWrite(c, "HTTP/1.1 200 Fine\r\nX-CaSe: v\r\nContent-Length: 5\r\n\r\nhello")
		case "/head":
			if req.Method != http.MethodHead {
				return appWrite(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			}
			return appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
		case "/204":
			return appWrite(c, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
		case "/304":
			return appWrite(c, "HTTP/1.1 304 Not Modified\r\nEtag: \"v1\"\r\n\r\n")
		case "/chunked":
			return appWrite(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
				"4;ext=1\r\nbody\r\n4\r\nmore\r\n0\r\nX-Checksum: 42\r\n\r\n")
		case "/close":
			// An HTTP/1.0 app: no length, the body ends when it closes.
			appWrite(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"+big[:1000])
			appWrite(c, big[1000:])
			return false
		}
		return appWrite(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)

	resp, body := rc.do(t, "GET /length HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.Status != "200 Fine" || body != "hello" || resp.ContentLength != 5 {
		t.Errorf("length: %q %q (length %d)", resp.Status, body, resp.ContentLength)
	}
	if raw := rc.seen.String(); !strings.Contains(raw, "\r\nX-CaSe: v\r\n") {
		t.Errorf("length: the app's header lost its case (not the fast path?):\n%s", raw)
	}

	resp, body = rc.do(t, "HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Errorf("HEAD: %d %q (length %d), want 200, no body, length 5", resp.StatusCode, body, resp.ContentLength)
	}

	resp, body = rc.do(t, "GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 204 || body != "" || resp.Header.Get("X-A") != "1" {
		t.Errorf("204: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if raw := rc.seen.String(); strings.Contains(raw, "Content-Length") || strings.Contains(raw, "Transfer-Encoding") {
		t.Errorf("204 with a body framing:\n%s", raw)
	}

	resp, body = rc.do(t, "GET /304 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 304 || body != "" || resp.Header.Get("Etag") != `"v1"` {
		t.Errorf("304: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if raw := rc.seen.String(); strings.Contains(raw, "Transfer-Encoding") {
		t.Errorf("304 with a chunked body:\n%s", raw)
	}

	resp, body = rc.do(t, "GET /chunked HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
	if resp.StatusCode != 200 || body != "bodymore" || len(resp.TransferEncoding) != 1 {
		t.Errorf("chunked: %d %q %q", resp.StatusCode, body, resp.TransferEncoding)
	}
	if got := resp.Trailer.Get("X-Checksum"); got != "42" {
		t.Errorf("chunked: trailer X-Checksum %q, want 42", got)
	}

	resp, body = rc.do(t, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || body != big {
		t.Errorf("close-delimited: %d, %d bytes, want 200 and %d bytes", resp.StatusCode, len(body), len(big))
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Close {
		t.Errorf("close-delimited: transfer encoding %q, close %v: want chunked on a kept connection",
			resp.TransferEncoding, resp.Close)
	}

	// The client connection is still in step after each framing.
	if resp, body := rc.do(t, "GET /length HTTP/1.1\r\nHost: x\r\n\r\n"); body != "hello" {
		t.Errorf("after the framings: %d %q", resp.StatusCode, body)
	}
	r.expectNetHTTP(t, 0)
}

// TestFastStreamsChunks: each chunk reaches the client as the app writes it.
func TestFastStreamsChunks(t *testing.T) {
	next, release := releaser(t)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		if !appWrite(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n") {
			return false
		}
		<-next
		return appWrite(c, "6\r\nsecond\r\n0\r\n\r\n")
	})
	r := newFastRig(t, app.addr, nil, nil)
	t.Cleanup(release) // before the rig's cleanup: the app must not hold it up
	// The app is blocked on next: the first chunk must come without it.
	resp := readFirstChunk(t, r.addr, "first")
	release()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second" {
		t.Fatalf("rest of the stream: %q, %v", rest, err)
	}
	r.expectNetHTTP(t, 0)
}

// TestFastInformationalResponses: 103 is relayed, 100 is not (net/http
// sends its own 100 Continue when it reads a body; a request on the fast
// path has none).
func TestFastInformationalResponses(t *testing.T) {
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		return appWrite(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := rc.read(t, "GET")
	if resp.StatusCode != http.StatusEarlyHints || resp.Header.Get("Link") != "</s.css>; rel=preload" {
		t.Fatalf("first answer %d %v, want the app's 103", resp.StatusCode, resp.Header)
	}
	resp, body := rc.read(t, "GET")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("final answer %d %q", resp.StatusCode, body)
	}
	if raw := rc.seen.String(); strings.Contains(raw, "100 Continue") {
		t.Fatalf("the app's 100 Continue reached the client:\n%s", raw)
	}
	r.expectNetHTTP(t, 0)
}

// TestFastEarlyHintsReachClientBeforeFinal: a 103 is worth something only
// if it arrives while the app is still working on the answer; net/http
// flushes it at once.
func TestFastEarlyHintsReachClientBeforeFinal(t *testing.T) {
	final, release := releaser(t)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		// A slow app: the proxy is past its first short wait for the
		// answer (clientWatchAfter) by the time the 103 comes.
		<-time.After(100 * time.Millisecond)
		if !appWrite(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n") {
			return false
		}
		<-final
		return appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	r := newFastRig(t, app.addr, nil, nil)
	t.Cleanup(release)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = rc.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, _, err := rc.tryRead("GET")
	switch {
	case err != nil:
		t.Errorf("no 103 while the app holds the final answer: %v", err)
	case resp.StatusCode != http.StatusEarlyHints:
		t.Errorf("first answer %d, want 103", resp.StatusCode)
	}
	release()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		resp, body, err := rc.tryRead("GET")
		if err != nil {
			t.Fatalf("reading the final answer: %v", err)
		}
		if resp.StatusCode == http.StatusEarlyHints {
			continue // the 103, late
		}
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("final answer %d %q (%s)", resp.StatusCode, body, resp.Header.Get("X-Tidegate-Reason"))
		}
		break
	}
	r.expectNetHTTP(t, 0)
}

// TestFastSlowResponseHead: the app's response head may take its time
// after its first byte (a head in two writes, a final answer some time
// after a 103); ResponseHeaderTimeout (5s here) is the bound, as on the
// net/http path.
func TestFastSlowResponseHead(t *testing.T) {
	for _, tc := range []struct{ name, first, second string }{
		{"head in two writes", "HTTP/1.1 200 OK\r\n", "Content-Length: 2\r\n\r\nok"},
		{"final after 103", "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
				if !appWrite(c, tc.first) {
					return false
				}
				<-time.After(100 * time.Millisecond) // a slow app
				return appWrite(c, tc.second)
			})
			r := newFastRig(t, app.addr, nil, nil)
			rc := dialRaw(t, r.addr)
			rc.send(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			for {
				resp, body := rc.read(t, "GET")
				if resp.StatusCode == http.StatusEarlyHints {
					continue
				}
				if resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("got %d %q (X-Tidegate-Reason %q), want 200 ok",
						resp.StatusCode, body, resp.Header.Get("X-Tidegate-Reason"))
				}
				break
			}
			r.expectNetHTTP(t, 0)
		})
	}
}

func TestFastHandsOffToNetHTTP(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b)+" pad="+
			strconv.Itoa(len(r.Header.Get("X-Pad")))+" xff="+r.Header.Get("X-Forwarded-For"))
	})
	addr := app.Listener.Addr().String()

	t.Run("request with a body", func(t *testing.T) {
		r := newFastRig(t, addr, nil, nil)
		rc := dialRaw(t, r.addr)
		resp, body := rc.do(t, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
		if resp.StatusCode != 200 || body != "POST /echo hello pad=0 xff=127.0.0.1" {
			t.Fatalf("POST: %d %q", resp.StatusCode, body)
		}
		r.expectNetHTTP(t, 1)
		resp, body = rc.do(t, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "GET /after  pad=0 xff=127.0.0.1" {
			t.Fatalf("GET after the POST: %d %q", resp.StatusCode, body)
		}
		// The rest of the connection is net/http's.
		r.expectNetHTTP(t, 2)
	})

	t.Run("head over 4 KiB", func(t *testing.T) {
		r := newFastRig(t, addr, nil, nil)
		rc := dialRaw(t, r.addr)
		pad := strings.Repeat("p", 6<<10)
		resp, body := rc.do(t, "GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad+"\r\n\r\n")
		if resp.StatusCode != 200 || body != "GET /big  pad=6144 xff=127.0.0.1" {
			t.Fatalf("large head: %d %q", resp.StatusCode, body)
		}
		r.expectNetHTTP(t, 1)
	})

	t.Run("h2c prior knowledge", func(t *testing.T) {
		// tidegate's own HTTP/2 server: a GET goes the direct path, a
		// POST through the handler; net/http's server sees neither.
		r := newFastRig(t, addr, nil, nil)
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: p}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + r.addr + "/h2")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.ProtoMajor != 2 || string(b) != "GET /h2  pad=0 xff=127.0.0.1" {
			t.Fatalf("h2c: %s %q %v", resp.Proto, b, err)
		}
		r.expectNetHTTP(t, 0)
		resp, err = c.Post("http://"+r.addr+"/h2post", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.ProtoMajor != 2 || string(b) != "POST /h2post hello pad=0 xff=127.0.0.1" {
			t.Fatalf("h2c POST: %s %q %v", resp.Proto, b, err)
		}
		r.expectNetHTTP(t, 1) // the handler chain, through tidegate's HTTP/2 server
		waitFor(t, func() bool {
			return r.tracker.Connections(ProtocolH2C) == 1 && r.tracker.Connections(ProtocolHTTP1) == 0
		})
		tr.CloseIdleConnections()
		waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
	})

	t.Run("fast path closed", func(t *testing.T) {
		var open atomic.Bool
		r := newFastRig(t, addr, nil, func(o *ServerOptions) { o.FastPathOpen = open.Load })
		resp, body := dialRaw(t, r.addr).do(t, "GET /closed HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "GET /closed  pad=0 xff=127.0.0.1" {
			t.Fatalf("closed: %d %q", resp.StatusCode, body)
		}
		r.expectNetHTTP(t, 1)
		open.Store(true)
		resp, body = dialRaw(t, r.addr).do(t, "GET /open HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "GET /open  pad=0 xff=127.0.0.1" {
			t.Fatalf("open: %d %q", resp.StatusCode, body)
		}
		r.expectNetHTTP(t, 1)
	})
}

func TestFastPipelining(t *testing.T) {
	app := fastEchoApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
	for i, want := range []string{"GET /1 ", "GET /2 ", "POST /3 abc", "GET /4 "} {
		resp, body := rc.read(t, "GET")
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("response %d: %d %q, want %q", i+1, resp.StatusCode, body, want)
		}
	}
	// The two GETs before the POST took the fast path; the POST and the
	// rest of the connection went to net/http.
	r.expectNetHTTP(t, 2)
}

// TestFastPipelinedWhileAppIsSlow: the next request arrives while the
// proxy watches the client for a close; the byte the watch reads is the
// next request's.
func TestFastPipelinedWhileAppIsSlow(t *testing.T) {
	entered := make(chan struct{}, 1)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			select { // a slow app, well past clientWatchAfter
			case <-time.After(100 * time.Millisecond):
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "answer "+r.URL.Path)
	})
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	recv(t, entered, "request at the app")
	rc.send(t, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, want := range []string{"answer /slow", "answer /next"} {
		resp, body := rc.read(t, "GET")
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
		}
	}
	r.expectNetHTTP(t, 0)
}

func TestFastUpstreamRefused(t *testing.T) {
	r := newFastRig(t, deadUpstream(t), nil, nil)
	rc := dialRaw(t, r.addr)
	for i, id := range []string{"", "req-2"} {
		req := "GET /x HTTP/1.1\r\nHost: x\r\n"
		if id != "" {
			req += "X-Request-Id: " + id + "\r\n"
		}
		resp, body := rc.do(t, req+"\r\n")
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Tidegate-Reason") != string(ReasonConnectRefused) {
			t.Fatalf("request %d: %d %q, want 502 connect_refused", i+1, resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"))
		}
		if !strings.HasPrefix(body, "tidegate: ") {
			t.Errorf("request %d: body %q is not tidegate's short message", i+1, body)
		}
		got := resp.Header.Get(RequestIDHeader)
		if (id == "" && !uuidRE.MatchString(got)) || (id != "" && got != id) {
			t.Errorf("request %d: X-Request-Id %q (client sent %q)", i+1, got, id)
		}
		if resp.Close {
			t.Errorf("request %d: the connection is closed after a 502", i+1)
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

func TestFastMalformedResponse(t *testing.T) {
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		switch req.URL.Path {
		case "/two-lengths":
			appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
			return false
		case "/bad-status":
			appWrite(c, "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")
			return false
		}
		return appWrite(c, "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok")
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)
	for _, path := range []string{"/two-lengths", "/bad-status"} {
		resp, body := rc.do(t, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Tidegate-Reason") != string(ReasonUpstreamError) {
			t.Errorf("%s: %d %q %q, want 502 upstream_error", path, resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"), body)
		}
		if !uuidRE.MatchString(resp.Header.Get(RequestIDHeader)) {
			t.Errorf("%s: X-Request-Id %q", path, resp.Header.Get(RequestIDHeader))
		}
		if resp, body := rc.do(t, "GET /good HTTP/1.1\r\nHost: x\r\n\r\n"); resp.Status != "200 Fine" || body != "ok" {
			t.Errorf("after %s: %q %q", path, resp.Status, body)
		}
	}
	if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[ReasonUpstreamError]); got != 2 {
		t.Errorf("upstream errors{upstream_error} = %v, want 2", got)
	}
	r.expectNetHTTP(t, 0)
}

func TestFastResponseHeaderTimeout(t *testing.T) {
	hold, release := releaser(t)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ok")
	})
	r := newFastRig(t, app.Listener.Addr().String(),
		func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 100 * time.Millisecond }, nil)
	t.Cleanup(release)
	rc := dialRaw(t, r.addr)
	resp, body := rc.do(t, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("X-Tidegate-Reason") != string(ReasonResponseTimeout) {
		t.Fatalf("%d %q %q, want 504 response_timeout", resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"), body)
	}
	if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[ReasonResponseTimeout]); got != 1 {
		t.Errorf("upstream errors{response_timeout} = %v, want 1", got)
	}
	if resp, body := rc.do(t, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("after the timeout: %d %q", resp.StatusCode, body)
	}
	r.expectNetHTTP(t, 0)
}

// TestFastRetriesAConnectionTheAppClosed: the app closes its keep-alive
// connection after each answer; the next GET fails on the pooled
// connection before any answer and is retried on a new one.
func TestFastRetriesAConnectionTheAppClosed(t *testing.T) {
	closed := make(chan struct{}, 2)
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		appWrite(c, "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok") // says nothing of closing
		c.Close()
		closed <- struct{}{}
		return false
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)
	for i := range 2 {
		resp, body := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.Status != "200 Fine" || body != "ok" {
			t.Fatalf("request %d: %q %q (X-Tidegate-Reason %q)", i+1, resp.Status, body, resp.Header.Get("X-Tidegate-Reason"))
		}
		recv(t, closed, "close at the app")
	}
	if n := app.accepted.Load(); n != 2 {
		t.Errorf("the app accepted %d connections, want 2", n)
	}
	for _, reason := range UpstreamReasons() {
		if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[reason]); got != 0 {
			t.Errorf("upstream errors{%s} = %v after a transparent retry", reason, got)
		}
	}
	r.expectNetHTTP(t, 0)
}

func TestFastAppDiesMidBody(t *testing.T) {
	app := newRawApp(t, func(c net.Conn, req *http.Request) bool {
		appWrite(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
		return false
	})
	r := newFastRig(t, app.addr, nil, nil)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
	// The head may not have left the proxy's buffer: the client sees the
	// cut before the head or in the body, never a complete response.
	if resp, body, err := rc.tryRead("GET"); err == nil {
		t.Fatalf("a complete response (%d, %d bytes) although the app died half way", resp.StatusCode, len(body))
	}
	rc.expectClosed(t)
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && r.access.Len() == 1 })
	if f := r.access.All()[0].ContextMap(); f["reason"] != "aborted" || f["status"] != int64(200) || f["path"] != "/die" {
		t.Fatalf("access log for an aborted body: %v", f)
	}
	r.expectNetHTTP(t, 0)
}

// newHangRig is a fast-path rig in front of an app that holds every
// request until its client is gone (or the test ends), signalling on
// started and canceled; n is the most requests held at once. There is no
// ResponseHeaderTimeout: only the client's leaving may end a request.
func newHangRig(t *testing.T, n int, serverOpts func(*ServerOptions)) (r *fastRig, started, canceled chan struct{}) {
	t.Helper()
	started, canceled = make(chan struct{}, n), make(chan struct{}, n)
	hold, release := releaser(t)
	app := upstreamServer(t, func(w http.ResponseWriter, req *http.Request) {
		started <- struct{}{}
		select {
		case <-req.Context().Done():
			canceled <- struct{}{}
		case <-hold:
		}
	})
	r = newFastRig(t, app.Listener.Addr().String(), func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 0 }, serverOpts)
	t.Cleanup(release)
	return r, started, canceled
}

// TestFastClientGoneCancelsApp: a client that leaves while the app works
// on its GET cancels the request at the app; it is counted as 499.
func TestFastClientGoneCancelsApp(t *testing.T) {
	r, started, canceled := newHangRig(t, 1, nil)
	rc := dialRaw(t, r.addr)
	rc.send(t, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
	recv(t, started, "request at the app")
	if n := r.tracker.InFlight(); n != 1 {
		t.Fatalf("in flight while the app holds the request: %d, want 1", n)
	}
	rc.c.Close() // before or after the watch starts (clientWatchAfter): both cancel

	recv(t, canceled, "cancellation at the app")
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
	waitFor(t, func() bool { return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("499", "GET")) == 1 })
	for _, reason := range UpstreamReasons() {
		if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[reason]); got != 0 {
			t.Errorf("a client cancel counted as upstream error %s", reason)
		}
	}
	waitFor(t, func() bool { return r.access.Len() == 1 })
	if f := r.access.All()[0].ContextMap(); f["status"] != int64(499) || f["reason"] != string(ReasonClientCanceled) {
		t.Errorf("access log for a client that left: %v", f)
	}
	r.expectNetHTTP(t, 0)
}

// TestFastClientGoneEarly: the client leaves at once, before the proxy
// has started to watch it (clientWatchAfter); the watch finds it gone the
// moment it starts, and the app must hear of it all the same. The race
// this covers (the watch's signal against the wait it interrupts) depends
// on scheduling, so the test tries many times, several clients at once.
func TestFastClientGoneEarly(t *testing.T) {
	const rounds, clients = 20, 10
	r, started, canceled := newHangRig(t, clients, nil)
	for round := range rounds {
		rcs := make([]*rawClient, clients)
		for i := range rcs {
			rcs[i] = dialRaw(t, r.addr)
			rcs[i].send(t, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		for range clients {
			recv(t, started, "request at the app")
		}
		for _, rc := range rcs {
			rc.c.Close()
		}
		timer := time.NewTimer(2 * time.Second)
		for i := range clients {
			select {
			case <-canceled:
			case <-timer.C:
				t.Fatalf("round %d: %d of %d requests not canceled at the app within 2s of their clients leaving",
					round+1, clients-i, clients)
			}
		}
		timer.Stop()
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("499", "GET")) == rounds*clients
	})
	r.expectNetHTTP(t, 0)
}

// TestFastClientGoneAfterReadHeaderTimeout: the request has outlived the
// server's ReadHeaderTimeout (which bounds reading the head, not serving
// the request) when the client leaves; the app must still hear of it, as
// it does on the net/http path.
func TestFastClientGoneAfterReadHeaderTimeout(t *testing.T) {
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "fast path", false: "net/http"}[fast]
		t.Run(name, func(t *testing.T) {
			r, started, canceled := newHangRig(t, 1, func(o *ServerOptions) {
				o.ReadHeaderTimeout = 100 * time.Millisecond
				o.FastPathOpen = func() bool { return fast }
			})
			rc := dialRaw(t, r.addr)
			rc.send(t, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
			recv(t, started, "request at the app")
			<-time.After(300 * time.Millisecond) // past ReadHeaderTimeout
			rc.c.Close()
			recv(t, canceled, "cancellation at the app")
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
			if fast {
				r.expectNetHTTP(t, 0)
			} else {
				r.expectNetHTTP(t, 1)
			}
		})
	}
}

func TestFastDrainAnswersWithConnectionClose(t *testing.T) {
	app := fastEchoApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	rc := dialRaw(t, r.addr)
	if resp, _ := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.Close {
		t.Fatal("Connection: close before the drain")
	}
	r.srv.BeginDrain()
	resp, body := rc.do(t, "GET /draining HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || body != "GET /draining " || !resp.Close {
		t.Fatalf("while draining: %d %q, close %v: want the answer with Connection: close", resp.StatusCode, body, resp.Close)
	}
	rc.expectClosed(t)
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })

	r.srv.EndDrain()
	if resp, _ := dialRaw(t, r.addr).do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.Close {
		t.Fatal("Connection: close after EndDrain")
	}
	r.expectNetHTTP(t, 0)
}

func TestFastClientAsksToClose(t *testing.T) {
	app := fastEchoApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	rc := dialRaw(t, r.addr)
	resp, body := rc.do(t, "GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 || body != "GET /bye " || !resp.Close {
		t.Fatalf("%d %q, close %v: want the answer with Connection: close", resp.StatusCode, body, resp.Close)
	}
	rc.expectClosed(t)
	r.expectNetHTTP(t, 0)
}

// TestFastShutdownClosesIdleAndWaitsForBusy: Shutdown closes an idle
// fast-path connection at once, waits for a busy one however long it has
// been open (NewConnGrace is for connections that have not sent a
// request), and returns as soon as that request ends.
func TestFastShutdownClosesIdleAndWaitsForBusy(t *testing.T) {
	for _, first := range []bool{false, true} {
		name := map[bool]string{false: "busy on its second request", true: "busy on its first request"}[first]
		t.Run(name, func(t *testing.T) {
			entered := make(chan struct{}, 1)
			hold, release := releaser(t)
			app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hold" {
					entered <- struct{}{}
					select {
					case <-hold:
					case <-r.Context().Done():
						return
					}
				}
				_, _ = io.WriteString(w, "done "+r.URL.Path)
			})
			const grace = 100 * time.Millisecond
			r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.NewConnGrace = grace })
			t.Cleanup(release)

			idle := dialRaw(t, r.addr)
			idle.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			busy := dialRaw(t, r.addr)
			if !first {
				busy.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			}
			busy.send(t, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
			recv(t, entered, "request at the app")

			type result struct {
				err error
				at  time.Time
			}
			done := make(chan result, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := r.srv.Shutdown(ctx)
				done <- result{err, time.Now()}
			}()
			idle.expectClosed(t)
			<-time.After(3 * grace) // the busy connection is older than the grace now
			select {
			case <-done:
				t.Fatal("Shutdown returned while a request was being served")
			default:
			}
			released := time.Now()
			release()
			resp, body, err := busy.tryRead("GET")
			if err != nil {
				t.Fatalf("the busy connection lost its answer: %v", err)
			}
			if resp.StatusCode != 200 || body != "done /hold" || !resp.Close {
				t.Fatalf("busy: %d %q, close %v", resp.StatusCode, body, resp.Close)
			}
			res := recv(t, done, "return from Shutdown")
			if res.err != nil {
				t.Errorf("Shutdown: %v", res.err)
			}
			if d := res.at.Sub(released); d > 500*time.Millisecond {
				t.Errorf("Shutdown returned %s after the last request ended", d)
			}
			busy.expectClosed(t)
			r.expectNetHTTP(t, 0)
		})
	}
}

func TestFastShutdownClosesSilentConnection(t *testing.T) {
	app := fastEchoApp(t)
	const grace = 200 * time.Millisecond
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.NewConnGrace = grace })
	rc := dialRaw(t, r.addr)
	waitFor(t, func() bool { return r.tracker.Connections(ProtocolHTTP1) == 1 })
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- r.srv.Shutdown(ctx)
	}()
	rc.expectClosed(t)
	if d := time.Since(start); d > grace+time.Second {
		t.Errorf("a connection that sent nothing was closed %s after Shutdown began (grace %s)", d, grace)
	}
	if err := recv(t, done, "return from Shutdown"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 })
}

func TestFastCloseCutsEverything(t *testing.T) {
	entered, canceled := make(chan struct{}, 1), make(chan struct{}, 1)
	hold, release := releaser(t)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			select {
			case <-hold:
			case <-r.Context().Done():
				canceled <- struct{}{}
				return
			}
		}
		_, _ = io.WriteString(w, "ok")
	})
	// No ResponseHeaderTimeout: only Close may end the request.
	r := newFastRig(t, app.Listener.Addr().String(), func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 0 }, nil)
	t.Cleanup(release)
	idle := dialRaw(t, r.addr)
	idle.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	busy := dialRaw(t, r.addr)
	busy.send(t, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	recv(t, entered, "request at the app")
	waitFor(t, func() bool { return r.tracker.Connections(ProtocolHTTP1) == 2 })

	// Close cuts the request to the app whether or not the client watch
	// has started (clientWatchAfter).
	if err := r.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.serveResult(); err != nil {
		t.Fatalf("Serve after Close: %v, want nil", err)
	}
	idle.expectClosed(t)
	busy.expectClosed(t)
	recv(t, canceled, "cancellation at the app")
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 && r.tracker.InFlight() == 0 })
	r.expectNetHTTP(t, 0)
}

// TestFastConnectionAccounting: fast-path connections are counted as
// HTTP/1.1 while open, a connection handed to net/http exactly once, and
// none is left busy once idle (Shutdown waits on that).
func TestFastConnectionAccounting(t *testing.T) {
	app := fastEchoApp(t)
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	a, b, handed := dialRaw(t, r.addr), dialRaw(t, r.addr), dialRaw(t, r.addr)
	a.do(t, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	b.do(t, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, body := handed.do(t, "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nc"); body != "POST /c c" {
		t.Fatalf("handed-off POST: %q", body)
	}
	handed.do(t, "GET /c2 HTTP/1.1\r\nHost: x\r\n\r\n")
	r.expectNetHTTP(t, 2)
	// Every connection was counted before its first answer was written.
	if n := r.tracker.Connections(ProtocolHTTP1); n != 3 {
		t.Fatalf("%d HTTP/1.1 connections counted, want 3", n)
	}
	waitFor(t, func() bool { return r.srv.busy.Load() == 0 })
	handed.c.Close()
	waitFor(t, func() bool { return r.tracker.Connections(ProtocolHTTP1) == 2 })
	a.c.Close()
	b.c.Close()
	waitFor(t, func() bool { return r.tracker.Connections(ProtocolHTTP1) == 0 })
	if n := r.tracker.ConnectionsTotal(); n != 0 {
		t.Fatalf("%d connections left counted", n)
	}
	if n := r.srv.busy.Load(); n != 0 {
		t.Fatalf("%d connections left busy", n)
	}
}

// TestFastAccessLogMatchesNetHTTP: the same request logs the same fields
// on both paths, failures included.
func TestFastAccessLogMatchesNetHTTP(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.Error(w, "nope", http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, "hello world")
	})
	var open atomic.Bool
	fastOpen := func(o *ServerOptions) { o.FastPathOpen = open.Load }
	good := newFastRig(t, app.Listener.Addr().String(), nil, fastOpen)
	down := newFastRig(t, deadUpstream(t), nil, fastOpen)
	refused := int64(len("tidegate: upstream refused the connection\n"))
	for _, tc := range []struct {
		r      *fastRig
		req    string
		method string
		path   string
		status int64
		bytes  int64
		reason string
	}{
		{good, "GET /a%20b/c?q=%zz HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-1\r\n\r\n", "GET", "/a b/c", 200, 11, ""},
		{good, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/plain", 200, 11, ""},
		{good, "HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", "/missing", 404, 0, ""},
		{good, "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/missing", 404, 5, ""},
		{down, "GET /down HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/down", 502, refused, string(ReasonConnectRefused)},
	} {
		r := tc.r
		var lines [2]map[string]any
		for i, fast := range []bool{true, false} {
			open.Store(fast)
			served, logged := r.netHTTP.Load(), r.access.Len()
			rc := dialRaw(t, r.addr)
			resp, _ := rc.do(t, tc.req)
			if via := r.netHTTP.Load() - served; via != map[bool]int64{true: 0, false: 1}[fast] {
				t.Fatalf("%s: fast %v, but net/http served %d", tc.path, fast, via)
			}
			waitFor(t, func() bool { return r.access.Len() == logged+1 })
			f := r.access.All()[logged].ContextMap()
			lines[i] = f
			want := map[string]any{
				"method": tc.method, "path": tc.path, "proto": "HTTP/1.1", "status": tc.status,
				"bytes": tc.bytes, "request_id": resp.Header.Get(RequestIDHeader), "remote_addr": rc.c.LocalAddr().String(),
			}
			if tc.reason != "" {
				want["reason"] = tc.reason
			}
			for k, v := range want {
				if f[k] != v {
					t.Errorf("%s (fast path %v): %s = %#v, want %#v", tc.path, fast, k, f[k], v)
				}
			}
			for _, k := range []string{"duration", "upstream_duration"} {
				if _, ok := f[k]; !ok {
					t.Errorf("%s (fast path %v): no %s", tc.path, fast, k)
				}
			}
			if _, ok := f["reason"]; ok && tc.reason == "" {
				t.Errorf("%s (fast path %v): reason %v on a good answer", tc.path, fast, f["reason"])
			}
			rc.c.Close()
		}
		for k := range lines[0] {
			if _, ok := lines[1][k]; !ok {
				t.Errorf("%s: the fast path logs %s, net/http does not", tc.path, k)
			}
		}
		for k := range lines[1] {
			if _, ok := lines[0][k]; !ok {
				t.Errorf("%s: net/http logs %s, the fast path does not", tc.path, k)
			}
		}
	}
}

// TestFastLargeResponseHead: an answer whose head does not fit the app
// connection's buffer (a 40 KiB cookie) reaches the client whole, with its
// body (of known length or streamed) and trailers, as on net/http.
func TestFastLargeResponseHead(t *testing.T) {
	big := strings.Repeat("c", 40<<10)
	app := upstreamServer(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Set-Cookie", "big="+big)
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "1")
		if req.URL.Path == "/chunked" {
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "part1,")
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "part2")
			w.Header().Set("X-Sum", "42")
			return
		}
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	})
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	rc := dialRaw(t, r.addr)
	for _, tc := range []struct{ path, body string }{{"/length", "hello"}, {"/chunked", "part1,part2"}, {"/length", "hello"}} {
		resp, body := rc.do(t, "GET "+tc.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != http.StatusOK || body != tc.body {
			t.Fatalf("%s: %d %q, want 200 %q", tc.path, resp.StatusCode, body, tc.body)
		}
		if got := resp.Header.Get("Set-Cookie"); got != "big="+big {
			t.Fatalf("%s: Set-Cookie of %d bytes, want %d", tc.path, len(got), len("big="+big))
		}
		if resp.Header.Get("X-Hop") != "" || !uuidRE.MatchString(resp.Header.Get(RequestIDHeader)) {
			t.Errorf("%s: X-Hop %q, X-Request-Id %q", tc.path, resp.Header.Get("X-Hop"), resp.Header.Get(RequestIDHeader))
		}
		if tc.path == "/chunked" && resp.Trailer.Get("X-Sum") != "42" {
			t.Errorf("trailer X-Sum = %q, want 42", resp.Trailer.Get("X-Sum"))
		}
		if resp.Close {
			t.Fatalf("%s: the client connection closes", tc.path)
		}
	}
	r.expectNetHTTP(t, 0)
}

// TestFastCloseCutsAQuietStream: Close ends a streamed answer whose app has
// gone quiet, at the app too: nothing would wake the copy otherwise.
func TestFastCloseCutsAQuietStream(t *testing.T) {
	canceled := make(chan struct{}, 1)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		canceled <- struct{}{}
	})
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	readFirstChunk(t, r.addr, "first")
	if err := r.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	recv(t, canceled, "cancellation at the app")
	waitFor(t, func() bool { return r.tracker.ConnectionsTotal() == 0 && r.tracker.InFlight() == 0 })
	r.expectNetHTTP(t, 0)
}

// readFirstChunk asks addr for /stream and reads the start of the answer's
// body, which must be want, without waiting for the rest.
func readFirstChunk(t *testing.T, addr, want string) *http.Response {
	t.Helper()
	rc := dialRaw(t, addr)
	rc.send(t, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != want {
		t.Fatalf("first chunk %q, %v; want %q", got, err, want)
	}
	return resp
}
