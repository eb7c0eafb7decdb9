package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestClientGoneMidBodyIs499: a client that goes away while its request
// body is being sent to the app (a FIN or a reset, a Content-Length or a
// chunked body) is a client that left, recorded 499 client_canceled, as
// nginx and Envoy have it: not 400 bad_request_body, which is for a body
// the client sent malformed, nor an upstream error.
func TestClientGoneMidBodyIs499(t *testing.T) {
	for _, tc := range []struct {
		name    string
		chunked bool
		reset   bool
	}{
		{"length-fin", false, false},
		{"length-reset", false, true},
		{"chunked-fin", true, false},
		{"chunked-reset", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got atomic.Int64
			app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
				buf := make([]byte, 4<<10)
				for {
					n, err := r.Body.Read(buf)
					got.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
			r := newFastRig(t, app.Listener.Addr().String(), nil, nil)
			nc, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			part := strings.Repeat("x", 32<<10)
			head := "POST /upload HTTP/1.1\r\nHost: tidegate.test\r\nContent-Length: 1048576\r\n\r\n"
			body := part
			if tc.chunked {
				head = "POST /upload HTTP/1.1\r\nHost: tidegate.test\r\nTransfer-Encoding: chunked\r\n\r\n"
				body = fmt.Sprintf("%x\r\n%s\r\n", len(part), part)
			}
			if _, err := io.WriteString(nc, head+body); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return got.Load() >= int64(len(part)) })
			if tc.reset {
				_ = nc.(*net.TCPConn).SetLinger(0)
			}
			_ = nc.Close()
			waitFor(t, func() bool { return r.access.Len() == 1 && r.tracker.InFlight() == 0 })
			f := r.access.All()[0].ContextMap()
			if f["status"] != int64(StatusClientClosed) || f["reason"] != string(ReasonClientCanceled) {
				t.Fatalf("access log: status %v reason %v; want 499 %s", f["status"], f["reason"], ReasonClientCanceled)
			}
		})
	}
}
