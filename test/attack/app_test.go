//go:build linux

package attack

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// bigBody is the size of GET /big's answer: far more than any buffer on
// the way, generated as it is written, never held.
const bigBody = 1 << 30

// app is the upstream of every row, on 127.0.0.1:
//
//	/big?n=    n bytes (default bigBody) of zeros from one shared 64 KiB
//	           slice, with Content-Length; stops when the write fails
//	/fast      "ok"
//	/slow?d=   "slow" after d, or nothing if the request is cancelled first;
//	           each start and each cancellation is counted
type app struct {
	srv  *http.Server
	Addr string
	done chan struct{}

	mu       sync.Mutex
	started  int // /slow requests begun
	canceled int // /slow requests whose context ended before d
	changed  chan struct{}
}

func startApp(t *testing.T) *app {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &app{Addr: ln.Addr().String(), done: make(chan struct{}), changed: make(chan struct{})}
	zeros := make([]byte, 64<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		n := int64(bigBody)
		if s := r.URL.Query().Get("n"); s != "" {
			if n, err = strconv.ParseInt(s, 10, 64); err != nil || n < 0 {
				http.Error(w, "n: want a byte count", http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k, err := w.Write(zeros[:min(n, int64(len(zeros)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})
	mux.HandleFunc("GET /fast", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "d: want a duration", http.StatusBadRequest)
			return
		}
		a.note(&a.started)
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
			_, _ = w.Write([]byte("slow"))
		case <-r.Context().Done():
			a.note(&a.canceled)
		case <-a.done:
		}
	})
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() {
		close(a.done)
		ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
		defer cancel()
		if err := a.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = a.srv.Close()
		}
	})
	return a
}

func (a *app) note(counter *int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	*counter++
	close(a.changed)
	a.changed = make(chan struct{})
}

// counts returns how many /slow requests began and were cancelled, and a
// channel closed at the next change.
func (a *app) counts() (started, canceled int, changed chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started, a.canceled, a.changed
}

// waitCounts waits until cond holds for the /slow counters or timeout
// passes, and reports whether it held.
func (a *app) waitCounts(timeout time.Duration, cond func(started, canceled int) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s, c, changed := a.counts()
		if cond(s, c) {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

// newH2CTransport is an HTTP/2 client with prior knowledge over cleartext.
func newH2CTransport() *http2.Transport {
	d := &net.Dialer{Timeout: httpTimeout}
	return &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}
}
