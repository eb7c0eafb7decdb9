package proxy

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
	"golang.org/x/net/http2"
)

// h2Goroutines counts the goroutines running tidegate's own HTTP/2 server
// code (a client connection's reader, writer, stream goroutines, an app
// connection's reader and writer).
func h2Goroutines() (int, string) {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var sample string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "proxy.(*h2sConn)") || strings.Contains(g, "proxy.(*h2uConn)") || strings.Contains(g, "proxy.(*frameOut)") {
			n++
			if sample == "" {
				sample = g
			}
		}
	}
	return n, sample
}

// TestH2OwnShutdownWithBlockedSenders: streams whose senders wait for
// room in the writer of a client that reads nothing (a handler in
// sendLocked, a direct stream in directData, a spliced stream's app
// reader) hold neither Shutdown past its context nor anything after
// Close: every goroutine of the connection ends.
func TestH2OwnShutdownWithBlockedSenders(t *testing.T) {
	for _, p := range []h2Path{splicedPath, handlerPath, directPath} {
		t.Run(p.name, func(t *testing.T) {
			var wrote atomic.Int64
			r := p.rig(t, streamingApp(64<<20, &wrote))
			c := ownClientOn(t, dialNotReading(t, r.addr), http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2MaxWindow})
			if err := c.fr.WriteWindowUpdate(0, h2MaxWindow-h2DefaultWindow); err != nil {
				t.Fatal(err)
			}
			sc := onlyH2Conn(t, r.srv)
			for id := uint32(1); id <= 7; id += 2 {
				c.open(id, p.method, "/big", p.body() == nil)
				if b := p.body(); b != nil {
					if err := c.fr.WriteData(id, true, b); err != nil {
						t.Fatal(err)
					}
				}
			}
			// The writer is full and stays so.
			wait.Until(t, 20*time.Second, "the writer is full", func() (bool, string) {
				held, _, _ := sc.writerHeld()
				return held >= h2WriteQueueMax-h2MinDataCut, ""
			})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := r.srv.Shutdown(ctx)
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("Shutdown took %s with a context of 300ms", took)
			}
			if err == nil {
				t.Fatal("Shutdown returned nil with streams blocked on a client that reads nothing")
			}
			start = time.Now()
			_ = r.srv.Close()
			wait.Until(t, 10*time.Second, "every goroutine of the connection ends after Close", func() (bool, string) {
				n, sample := h2Goroutines()
				return n == 0 && r.tracker.ConnectionsTotal() == 0, sample
			})
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("the connection's goroutines ended %s after Close", took)
			}
		})
	}
}
