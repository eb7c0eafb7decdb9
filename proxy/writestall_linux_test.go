package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// dialSlowReader sends req on a new connection with an MSS of 1460 bytes,
// as on a real network, and a 4 KiB receive buffer. (With loopback's MSS
// of 64 KiB, or a larger buffer, Linux keeps the window shut until much of
// the buffer is free, silly-window avoidance: a reader of 4 KiB every
// 100ms lets nothing through for a second at a time, and would be cut.)
func dialSlowReader(t *testing.T, addr, req string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1460)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
			}
		})
		if err == nil {
			err = serr
		}
		return err
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// smallSendBufferServer is a fast-path server with the test's bound in
// front of upstream, whose client connections have an 8 KiB send buffer
// (the kernel's autotuning off): a client that reads slowly makes its
// large writes wait.
func smallSendBufferServer(t *testing.T, upstream string) string {
	t.Helper()
	up, err := ParseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	tr := NewTracker(TrackerOptions{})
	o, _ := rigOptions(t, up, tr, prometheus.NewRegistry())
	h, err := NewHandler(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.CloseIdleConnections)
	s, _ := startServerWith(t, h, ServerOptions{FastPath: h, WriteStallTimeout: testStall}, func(s *Server) {
		s.ln.Listener = smallSendBuffer{s.ln.Listener}
	})
	return s.Addr().String()
}

// smallSendBuffer gives each connection it accepts an 8 KiB send buffer.
type smallSendBuffer struct{ net.Listener }

func (l smallSendBuffer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		err = c.(*net.TCPConn).SetWriteBuffer(8 << 10)
	}
	return c, err
}

func TestWriteStallSparesSlowReader(t *testing.T) {
	for _, tc := range []struct {
		name, method, body string
	}{
		{"fast path", http.MethodGet, ""},
		{"net/http", http.MethodPost, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 128 << 10
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Length", strconv.Itoa(size))
				_, _ = w.Write(make([]byte, size))
			}))
			t.Cleanup(app.Close)
			addr := smallSendBufferServer(t, app.Listener.Addr().String())
			req := tc.method + " /slow HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(tc.body)) + "\r\n\r\n" + tc.body
			c := dialSlowReader(t, addr, req)
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			// 4 KiB every 100ms: each bound of 300ms sees progress, though
			// a 64 KiB write takes 1.6s (the buffers on the way hold less).
			// Without the progress rule, the first such write is cut.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			buf := make([]byte, 4<<10)
			got := 0
			for got < size {
				<-tick.C
				n, err := io.ReadFull(resp.Body, buf[:min(len(buf), size-got)])
				got += n
				if err != nil {
					t.Fatalf("cut after %d of %d bytes: %v", got, size, err)
				}
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
		})
	}
}
