package proxy

import (
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/tidegate/tidegate/test/wait"
)

// Tests of what an app connection keeps between requests: its read
// deadline (readDeadline.arm: moved once in a while, not once a request, and
// never so that a wait ends early) and its read buffer (given back while
// the connection is idle).

func TestArmDeadlineMovesOnlyWhenOutsideTheWindow(t *testing.T) {
	const slack = 100 * time.Millisecond
	dc := &deadlineConn{}
	c := &readDeadline{nc: dc}
	base := time.Now()
	c.arm(base, slack)
	if dc.set != 1 || !dc.last.Equal(base.Add(slack)) {
		t.Fatalf("first arm: %d deadlines, the last %v after d; want 1, at d+slack", dc.set, dc.last.Sub(base))
	}
	// Requests that follow within the slack keep it: each wait still
	// ends no earlier than its own d, and no later than d+slack.
	for i := range 100 {
		d := base.Add(time.Duration(i) * slack / 100)
		c.arm(d, slack)
		if dc.last.Before(d) || dc.last.After(d.Add(slack)) {
			t.Fatalf("request %d: deadline %v after its d, want within [0, %v]", i, dc.last.Sub(d), slack)
		}
	}
	if dc.set != 1 {
		t.Fatalf("100 arms within the slack set %d deadlines, want 1", dc.set)
	}
	// Past the window: a new one.
	d := base.Add(slack + time.Millisecond)
	c.arm(d, slack)
	if dc.set != 2 || !dc.last.Equal(d.Add(slack)) {
		t.Fatalf("beyond the window: %d deadlines, the last %v after d; want 2, at d+slack", dc.set, dc.last.Sub(d))
	}
	// A deadline later than d+slack (a longer wait's) is not kept either:
	// the wait would end too late.
	c.arm(base, slack)
	if dc.set != 3 || !dc.last.Equal(base.Add(slack)) {
		t.Fatalf("earlier d: %d deadlines, the last %v after d; want 3, at d+slack", dc.set, dc.last.Sub(base))
	}
	// Clearing is a call once, then nothing to do.
	c.set(time.Time{})
	c.set(time.Time{})
	if dc.set != 4 || !dc.last.IsZero() || !c.at.IsZero() {
		t.Fatalf("clear twice: %d deadlines, the last %v; want 4, none", dc.set, dc.last)
	}
	c.arm(base, slack)
	if dc.set != 5 {
		t.Fatalf("arm after a clear: %d deadlines, want 5", dc.set)
	}
}

func TestDeadlineSlack(t *testing.T) {
	for _, tc := range []struct{ wait, want time.Duration }{
		{60 * time.Second, time.Second},
		{8 * time.Second, time.Second},
		{800 * time.Millisecond, 100 * time.Millisecond},
		{0, 0},
	} {
		if got := deadlineSlack(tc.wait); got != tc.want {
			t.Errorf("deadlineSlack(%v) = %v, want %v", tc.wait, got, tc.want)
		}
	}
}

// TestHeaderTimeoutOnAReusedConnection: the response-header timeout of a
// request on a connection that still has the deadline of the request
// before it ends no earlier than the timeout after the request, whether
// that deadline was kept (the request before was quick) or moved (it took
// longer than the slack). The app answers /slow after 150ms (more than
// the 50ms slack of the 400ms timeout) and /hang never.
func TestHeaderTimeoutOnAReusedConnection(t *testing.T) {
	const timeout = 400 * time.Millisecond
	hold, release := releaser(t)
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-time.After(150 * time.Millisecond): // a slow app, not a wait for a condition
			case <-r.Context().Done():
			}
		case "/hang":
			select {
			case <-hold:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ok")
	})
	t.Cleanup(release)
	for _, before := range []string{"/quick", "/slow"} {
		t.Run("HTTP/1.1 after "+before, func(t *testing.T) {
			r := newFastRig(t, app.Listener.Addr().String(),
				func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = timeout }, nil)
			rc := dialRaw(t, r.addr)
			if resp, body := rc.do(t, "GET "+before+" HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%s: %d %q", before, resp.StatusCode, body)
			}
			sent := time.Now()
			resp, _ := rc.do(t, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
			checkTimedOut(t, strconv.Itoa(resp.StatusCode), time.Since(sent), timeout)
			r.expectNetHTTP(t, 0)
		})
		t.Run("HTTP/2 after "+before, func(t *testing.T) {
			r := newFastRig(t, app.Listener.Addr().String(),
				func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = timeout }, nil)
			c := dialOwn(t, r.addr)
			if resp := c.do(1, http.MethodGet, before, nil); resp.status != "200" || string(resp.body) != "ok" {
				t.Fatalf("%s: %s %q", before, resp.status, resp.body)
			}
			sent := time.Now()
			resp := c.do(3, http.MethodGet, "/hang", nil)
			checkTimedOut(t, resp.status, time.Since(sent), timeout)
			r.expectNetHTTP(t, 0) // both on the direct path
		})
	}
}

func checkTimedOut(t *testing.T, status string, took, timeout time.Duration) {
	t.Helper()
	if status != "504" {
		t.Fatalf("status %s, want 504 from the response-header timeout", status)
	}
	if took < timeout {
		t.Errorf("504 after %v, before the %v timeout", took, timeout)
	}
	if limit := timeout + deadlineSlack(timeout) + 5*time.Second; took > limit {
		t.Errorf("504 after %v, want it within %v", took, limit)
	}
}

// TestIdleAppConnectionsHoldNoReadBuffer: an app connection gives its
// read buffer back when it has read an answer whole, on the HTTP/1.1 fast
// path and on the HTTP/2 direct path, and takes one again for the next
// answer.
//
// The connection goes back to the pool after the answer has been written
// to the client (fast.go: the flush, then put; h2direct.go: the last DATA
// frame handed to the client connection's writer, then put), so the client can hold the answer before the
// pool holds the connection: check waits for it to be back, then looks at
// it. Waiting also keeps the next request from finding the pool empty and
// dialing a second connection.
func TestIdleAppConnectionsHoldNoReadBuffer(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	check := func(what string) {
		t.Helper()
		wait.Until(t, 5*time.Second, what+": the app connection back in the pool", func() (bool, string) {
			r.handler.h1.mu.Lock()
			defer r.handler.h1.mu.Unlock()
			return len(r.handler.h1.idle) > 0, "the pool is empty"
		})
		r.handler.h1.mu.Lock()
		defer r.handler.h1.mu.Unlock()
		if len(r.handler.h1.idle) != 1 {
			t.Fatalf("%s: %d idle app connections, want 1", what, len(r.handler.h1.idle))
		}
		if br := r.handler.h1.idle[0].br; br != nil {
			t.Fatalf("%s: the idle app connection holds a read buffer of %d bytes", what, br.Size())
		}
	}
	rc := dialRaw(t, r.addr)
	c := dialOwn(t, r.addr)
	for i := range 3 {
		if resp, body := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("HTTP/1.1 request %d: %d %q", i, resp.StatusCode, body)
		}
		check("after HTTP/1.1 request " + strconv.Itoa(i))
		if resp := c.do(uint32(2*i+1), http.MethodGet, "/", nil); resp.status != "200" || string(resp.body) != "ok" {
			t.Fatalf("HTTP/2 request %d: %s %q", i, resp.status, resp.body)
		}
		check("after HTTP/2 request " + strconv.Itoa(i))
	}
	r.expectNetHTTP(t, 0)
}

// TestResetAfterTheAnswerSparesTheAppConnection: a client's RST_STREAM
// that comes after a direct stream's answer has ended must not cut the app
// connection, which is back in the pool: the next request on it is
// answered. (The stream lets go of the connection when its answer ends,
// before the connection goes back; the window in which a reset could
// once reach a pooled connection is too narrow to hit on demand, so this
// checks the outcome, not the window.)
func TestResetAfterTheAnswerSparesTheAppConnection(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
	c := dialOwn(t, r.addr)
	for i := range 50 {
		id := uint32(2*i + 1)
		if resp := c.do(id, http.MethodGet, "/", nil); resp.status != "200" || string(resp.body) != "ok" {
			t.Fatalf("request %d: %s %q (reset %v)", i, resp.status, resp.body, resp.reset)
		}
		if err := c.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
	}
	r.expectNetHTTP(t, 0)
}
