package proxy

import (
	"net/http"
	"testing"
	"time"
)

// TestFastFailureToHEADHasNoBody: tidegate's own answer to a HEAD on the
// fast path (502 app down, 504 app too slow, 508 loop) carries no body, as
// net/http's does not: on a kept connection the client reads no body
// after a HEAD's head, so a body there would be read as the next answer.
func TestFastFailureToHEADHasNoBody(t *testing.T) {
	hold, release := releaser(t)
	slow := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	})
	cases := []struct {
		name, upstream, via string
		status              int
	}{
		{"app down", deadUpstream(t), "", http.StatusBadGateway},
		{"app too slow", slow.Listener.Addr().String(), "", http.StatusGatewayTimeout},
		{"loop", slow.Listener.Addr().String(), "own", http.StatusLoopDetected},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newFastRig(t, c.upstream,
				func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 100 * time.Millisecond }, nil)
			via := ""
			if c.via != "" {
				via = "Via: 1.1 " + r.handler.ViaName() + "\r\n"
			}
			rc := dialRaw(t, r.addr)
			resp, _ := rc.do(t, "HEAD /x HTTP/1.1\r\nHost: x\r\n"+via+"\r\n")
			if resp.StatusCode != c.status || resp.Close {
				t.Fatalf("HEAD: %d close=%v, want %d on a kept connection", resp.StatusCode, resp.Close, c.status)
			}
			rc.send(t, "OPTIONS /y HTTP/1.1\r\nHost: x\r\n"+via+"\r\n")
			resp, _, err := rc.tryRead("OPTIONS")
			if err != nil {
				t.Fatalf("the answer after the HEAD's: %v; the connection carried %q", err, rc.seen.String())
			}
			if resp.StatusCode != c.status {
				t.Fatalf("the answer after the HEAD's: %d, want %d", resp.StatusCode, c.status)
			}
			r.expectNetHTTP(t, 0)
		})
	}
	release()
}
