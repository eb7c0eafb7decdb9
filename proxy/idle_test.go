package proxy

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// Tests of the fast path's idle timeout: a keep-alive connection closes no
// earlier than IdleTimeout after its last answer, and at most idleSlack
// later, though its read deadline is not set again for every request.

// deadlineConn counts the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	set  int
	last time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.set++
	c.last = t
	return nil
}

func TestAwaitIdleSetsTheDeadlineOnlyWhenItFallsShort(t *testing.T) {
	const idle = 8 * time.Second // slack 1s
	c := &deadlineConn{}
	fc := &fastConn{nc: c, deadline: readDeadline{nc: c}}
	start := time.Now()
	fc.awaitIdle(idle)
	if c.set != 1 || c.last.Before(start.Add(idle+idleSlack(idle))) {
		t.Fatalf("first idle wait: %d deadlines, the last %v after start; want 1, at least %v", c.set, c.last.Sub(start), idle+idleSlack(idle))
	}
	for range 100 {
		fc.awaitIdle(idle) // within the slack: the deadline stands
	}
	if c.set != 1 {
		t.Fatalf("100 idle waits within the slack set %d deadlines, want 1", c.set)
	}
	// Anything else that sets a deadline (the client watch, the header
	// timeout) makes the next idle wait set its own.
	fc.deadline.set(time.Time{})
	fc.awaitIdle(idle)
	if c.set != 3 || !c.last.After(time.Now().Add(idle)) {
		t.Fatalf("after another deadline: %d set, the last in %v; want 3, past the idle timeout", c.set, time.Until(c.last))
	}
	// A deadline that would fall short of the timeout is set again.
	fc.deadline.at = time.Now().Add(idle - time.Millisecond)
	fc.awaitIdle(idle)
	if c.set != 4 || c.last.Before(time.Now().Add(idle)) {
		t.Fatalf("short deadline: %d set, the last in %v; want 4, past the idle timeout", c.set, time.Until(c.last))
	}
}

func TestFastIdleTimeout(t *testing.T) {
	const idle = 800 * time.Millisecond // slack 100ms
	slow := make(chan struct{})
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-slow // longer than clientWatchAfter: the client is watched
		}
		_, _ = w.Write([]byte("ok"))
	})
	r := newFastRig(t, app.Listener.Addr().String(), nil, func(o *ServerOptions) { o.IdleTimeout = idle })
	// closedAfter reads until the server closes rc and checks how long
	// after sent, the time the last request was sent, that was. The server
	// reads its clock for the idle wait after it got that request, so the
	// close may not come less than idle after sent.
	closedAfter := func(t *testing.T, rc *rawClient, sent time.Time) {
		t.Helper()
		rc.expectClosed(t)
		if d := time.Since(sent); d < idle || d > idle+idleSlack(idle)+2*time.Second {
			t.Errorf("closed %v after the last request; want between %v and %v (and some scheduling)", d, idle, idle+idleSlack(idle))
		}
	}

	t.Run("after a busy stretch", func(t *testing.T) {
		rc := dialRaw(t, r.addr)
		// 40 requests 5ms apart: within the slack, so most of them leave
		// the deadline of an earlier one standing.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var sent time.Time
		for range 40 {
			<-tick.C
			sent = time.Now()
			if resp, body := rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%s %q", resp.Status, body)
			}
		}
		closedAfter(t, rc, sent)
	})
	t.Run("after a watched request", func(t *testing.T) {
		rc := dialRaw(t, r.addr)
		rc.do(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // an idle deadline stands
		sent := time.Now()
		rc.send(t, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		// Past clientWatchAfter the watch takes the deadline off; the
		// answer comes within the slack, so the idle deadline of the first
		// request would still seem to stand.
		release := time.NewTimer(2 * clientWatchAfter)
		<-release.C
		close(slow)
		rc.read(t, http.MethodGet)
		closedAfter(t, rc, sent)
	})
	r.expectNetHTTP(t, 0)
}
