package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// The tests in this file hold the HTTP/1.1 paths (the fast path and the
// net/http path it hands over to) to the edges of the protocol and to
// failures whatever the connection's fate.

// TestFailureAnsweredWhenConnectionCloses: an app that is down (502) or
// too slow (504) is answered with tidegate's short plain-text reply even
// when the client connection is not kept: the client asked to close
// (HTTP/1.1 Connection: close, or HTTP/1.0 without keep-alive), or the
// server drains and so answers Connection: close to every request.
func TestFailureAnsweredWhenConnectionCloses(t *testing.T) {
	hold, release := releaser(t)
	slow := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	})
	apps := []struct {
		name, upstream string
		status         int
		reason         Reason
	}{
		{"app down", deadUpstream(t), http.StatusBadGateway, ReasonConnectRefused},
		{"app too slow", slow.Listener.Addr().String(), http.StatusGatewayTimeout, ReasonResponseTimeout},
	}
	requests := []struct {
		name, req string
		drain     bool
	}{
		{"Connection: close", "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false},
		{"HTTP/1.0", "GET /x HTTP/1.0\r\nHost: x\r\n\r\n", false},
		{"draining", "GET /x HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"draining, Connection: close", "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true},
	}
	for _, a := range apps {
		r := newFastRig(t, a.upstream,
			func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 100 * time.Millisecond }, nil)
		for _, q := range requests {
			t.Run(a.name+"/"+q.name, func(t *testing.T) {
				if q.drain {
					r.srv.BeginDrain()
					defer r.srv.EndDrain()
				}
				rc := dialRaw(t, r.addr)
				resp, body := rc.do(t, q.req)
				if resp.StatusCode != a.status || resp.Header.Get("X-Tidegate-Reason") != string(a.reason) {
					t.Fatalf("%d %q, want %d %s", resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"), a.status, a.reason)
				}
				if !strings.HasPrefix(body, "tidegate: ") {
					t.Errorf("body %q is not tidegate's short message", body)
				}
				if !resp.Close {
					t.Error("the answer does not say Connection: close")
				}
				rc.expectClosed(t)
			})
		}
	}
	release()
}
