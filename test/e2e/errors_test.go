package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// TestClientDisconnect: a client that goes away cancels the app's request,
// and the request is counted with code 499.
func TestClientDisconnect(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.URL("/hang"), nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	recv(t, app.HangStarted(), waitTimeout, "the app receiving /hang")
	if got := scrape(t, c, tg).value("tidegate_requests_total", "code", "499"); got != 0 {
		t.Fatalf("tidegate_requests_total{code=499} is %v before the client left", got)
	}
	cancel()
	if err := recv(t, errc, waitTimeout, "the client's request to end"); err == nil {
		t.Fatalf("the cancelled request succeeded")
	}
	recv(t, app.HangCanceled(), waitTimeout, "the app's request context being cancelled after the client left")
	metricEventually(t, c, tg, 1, "tidegate_requests_total", "code", "499", "method", "GET")
	metricEventually(t, c, tg, 0, "tidegate_inflight_requests")
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestDeadApp: with nothing listening on the app's port the client gets a
// short 502 of tidegate's own, never Go's error text. (By default readiness
// follows the app and tidegate would stay starting: this is the app that
// died after start, or --default-readiness none.)
func TestDeadApp(t *testing.T) {
	t.Parallel()
	up := deadAddr(t)
	tg := start(t, "--upstream", up, "--default-readiness", "none")
	c := newClient(t)

	if got := scrape(t, c, tg).value("tidegate_upstream_errors_total", "reason", "connect_refused"); got != 0 {
		t.Fatalf("connect_refused is %v before any request", got)
	}
	resp, body := get(t, c, tg.URL("/echo"))
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Tidegate-Reason"); got != "connect_refused" {
		t.Errorf("X-Tidegate-Reason %q, want connect_refused", got)
	}
	if string(body) != "tidegate: upstream refused the connection\n" {
		t.Errorf("body %q, want tidegate's fixed message", body)
	}
	_, port, _ := net.SplitHostPort(up)
	for _, leak := range []string{"dial tcp", "connection refused", "127.0.0.1", port, "syscall", "errno"} {
		if strings.Contains(string(body), leak) {
			t.Errorf("body %q leaks Go error text %q", body, leak)
		}
	}
	if !uuidV4.MatchString(resp.Header.Get("X-Request-Id")) {
		t.Errorf("error response X-Request-Id %q, want the request's generated id", resp.Header.Get("X-Request-Id"))
	}
	metricEventually(t, c, tg, 1, "tidegate_upstream_errors_total", "reason", "connect_refused")
	metricEventually(t, c, tg, 1, "tidegate_requests_total", "code", "502", "method", "GET")
}

// TestSlowApp: an app slower than --upstream-response-header-timeout gets
// the client a 504 at the timeout, not when the app finally answers.
func TestSlowApp(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr, "--upstream-response-header-timeout", "200ms")
	c := newClient(t)

	began := time.Now()
	resp, body := get(t, c, tg.URL("/slow?d=10s"))
	took := time.Since(began)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("status %d, want 504", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Tidegate-Reason"); got != "response_timeout" {
		t.Errorf("X-Tidegate-Reason %q, want response_timeout", got)
	}
	if string(body) != "tidegate: upstream response timeout\n" {
		t.Errorf("body %q, want tidegate's fixed message", body)
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("504 after %s, want soon after the 200ms timeout", took)
	}
	if d := recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow"); d != 10*time.Second {
		t.Errorf("app got d=%s", d)
	}
	metricEventually(t, c, tg, 1, "tidegate_upstream_errors_total", "reason", "response_timeout")

	// A fast request on the same tidegate is unaffected.
	resp, body = get(t, c, tg.URL("/slow?d=1ms"))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("fast request after a timeout: status %d %s", resp.StatusCode, body)
	}
}

// TestHeaderLimit: headers above --max-header-bytes get 431 and never reach
// the app.
func TestHeaderLimit(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr, "--max-header-bytes", "8KiB")

	// request returns a request whose line and headers take size bytes,
	// give or take a dozen.
	request := func(size int) string {
		var req strings.Builder
		req.WriteString("GET /echo HTTP/1.1\r\nHost: app.test\r\n")
		for i := 0; i < 1000; i++ {
			name := fmt.Sprintf("X-Big-%03d: ", i)
			n := min(980, size-req.Len()-len(name)-4) // room for this CRLF and the last
			if n < 1 {
				break
			}
			req.WriteString(name + strings.Repeat("h", n) + "\r\n")
		}
		req.WriteString("\r\n")
		if d := req.Len() - size; d > 0 || d < -16 {
			t.Fatalf("test setup: built %d bytes of headers, want %d", req.Len(), size)
		}
		return req.String()
	}
	send := func(t *testing.T, req string) *http.Response {
		c := dialRaw(t, tg.Listen)
		wrote := make(chan error, 1)
		go func() { _, err := c.Write([]byte(req)); wrote <- err }()
		resp, _ := c.readResponse(t, http.MethodGet)
		<-wrote // the write may fail once tidegate closes; it ends either way (deadline)
		return resp
	}

	t.Run("64KiB", func(t *testing.T) {
		if resp := send(t, request(64<<10)); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
	})
	t.Run("just over", func(t *testing.T) {
		if resp := send(t, request(8<<10+512)); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("8.5KiB of headers against an 8KiB limit: status %d, want 431", resp.StatusCode)
		}
	})
	if n := app.TotalRequests(); n != 0 {
		t.Errorf("the app saw %d requests, want none", n)
	}
	t.Run("just under", func(t *testing.T) {
		if resp := send(t, request(8<<10-1024)); resp.StatusCode != http.StatusOK {
			t.Errorf("7KiB of headers against an 8KiB limit: status %d, want 200", resp.StatusCode)
		}
	})
}

// TestBodyLimit: bodies above --max-body-bytes get 413; an announced one
// never reaches the app, a chunked one is cut where it crosses the limit.
func TestBodyLimit(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr, "--max-body-bytes", "1KiB")
	c := newClient(t)

	t.Run("content-length", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, tg.URL("/upload"), strings.NewReader(strings.Repeat("x", 2048)))
		resp, body := do(t, c, req)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d (%q), want 413", resp.StatusCode, body)
		}
		if got := resp.Header.Get("X-Tidegate-Reason"); got != "body_too_large" {
			t.Errorf("X-Tidegate-Reason %q, want body_too_large", got)
		}
		if n := app.Requests("/upload"); n != 0 {
			t.Errorf("the app saw %d /upload requests, want none: Content-Length announced the size", n)
		}
	})

	t.Run("chunked", func(t *testing.T) {
		rc := dialRaw(t, tg.Listen)
		var req strings.Builder
		req.WriteString("POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
		for range 4 {
			fmt.Fprintf(&req, "%x\r\n%s\r\n", 1024, strings.Repeat("y", 1024))
		}
		req.WriteString("0\r\n\r\n")
		rc.send(t, req.String())
		resp, body := rc.readResponse(t, http.MethodPost)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d (%q), want 413", resp.StatusCode, body)
		}
		if got := resp.Header.Get("X-Tidegate-Reason"); got != "body_too_large" {
			t.Errorf("X-Tidegate-Reason %q, want body_too_large", got)
		}
	})

	t.Run("at the limit", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, tg.URL("/upload"), strings.NewReader(strings.Repeat("z", 1024)))
		resp, body := do(t, c, req)
		var up fakeapp.Upload
		if resp.StatusCode == http.StatusOK {
			decodeJSON(t, body, &up)
		}
		if resp.StatusCode != http.StatusOK || up.Bytes != 1024 {
			t.Errorf("1024-byte body: status %d, app got %d bytes; want 200, 1024 (%s)", resp.StatusCode, up.Bytes, body)
		}
	})
	metricEventually(t, c, tg, 2, "tidegate_requests_total", "code", strconv.Itoa(http.StatusRequestEntityTooLarge))
}

// TestNotReadyBeforeTheAppListens: out of the box, with no probe
// configured, tidegate says not ready and answers for the app while nothing
// listens at the upstream, and serves once the app listens.
func TestNotReadyBeforeTheAppListens(t *testing.T) {
	t.Parallel()
	up := deadAddr(t)
	listen, health := hostPort(freePort(t)), hostPort(freePort(t))
	tg := launch(t, nil, "run", "--listen", listen, "--health-listen", health, "--admin-listen", "127.0.0.1:0", "--upstream", up)
	tg.waitLog(startTimeout, "the upstream check failing", func(m map[string]any) bool {
		return m["msg"] == "probe not passing yet" && m["probe"] == "upstream"
	})
	c := newClient(t)
	code, body, err := statusCode(c, "http://"+health+"/readyz?verbose")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]upstream failed") {
		t.Fatalf("/readyz before the app listens: %d %v\n%s", code, err, body)
	}
	resp, _ := get(t, c, "http://"+listen+"/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Tidegate-Reason") != "not_ready" {
		t.Fatalf("a request before the app listens: %d %q, want 503 not_ready", resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"))
	}

	startFakeapp(t, "--listen", up)
	tg.waitServing()
	resp, _ = get(t, c, "http://"+listen+"/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("once the app listens: %d, want 200", resp.StatusCode)
	}
	if code, body, _ := statusCode(c, "http://"+health+"/readyz?verbose"); code != 200 || !strings.Contains(body, "[+]upstream ok") {
		t.Fatalf("/readyz once the app listens: %d\n%s", code, body)
	}
}
