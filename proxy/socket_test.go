package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// serveEcho accepts on ln until it fails, answering each connection with
// name and closing it; it returns how many it served.
func serveEcho(ln net.Listener, name string, served *atomic.Int64) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		served.Add(1)
		_, _ = io.WriteString(c, name)
		_ = c.Close()
	}
}

// TestSocketHandsOverWithoutLoss swaps the server of a socket 20 times
// while clients keep connecting: every connection is answered by one view
// or the other, none is refused or reset, and the socket closes with its
// last view.
func TestSocketHandsOverWithoutLoss(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := NewSocket(ln)
	addr := sock.Addr().String()

	var served atomic.Int64
	serveErrs := make(chan error, 32)
	start := func(name string) net.Listener {
		v, err := sock.View()
		if err != nil {
			t.Fatal(err)
		}
		go func() { serveErrs <- serveEcho(v, name, &served) }()
		return v
	}
	cur := start("v0")

	const clients, perClient = 4, 100
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for range clients {
		wg.Go(func() {
			for range perClient {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					var b []byte
					b, err = io.ReadAll(c)
					_ = c.Close()
					if err == nil && len(b) < 2 {
						err = errors.New("no answer")
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for i := 1; i <= 20; i++ {
		next := start("v" + string(rune('0'+i%10)))
		if err := cur.Close(); err != nil {
			t.Fatalf("closing a view while another is open: %v", err)
		}
		if err := <-serveErrs; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a closed view's Accept returned %v, want net.ErrClosed", err)
		}
		cur = next
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed across the swaps; first: %v", n, clients*perClient, firstErr.Load())
	}
	if got := served.Load(); got != clients*perClient {
		t.Fatalf("served %d connections, want %d", got, clients*perClient)
	}

	// The last view closes the socket: new connections are refused.
	if err := cur.Close(); err != nil {
		t.Fatal(err)
	}
	<-serveErrs
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("dial %s succeeded after the last view closed", addr)
	}
	if _, err := sock.View(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("View on a closed socket: %v, want net.ErrClosed", err)
	}
}

// TestSocketCloseEndsEveryView: Close (a failed start) ends pending Accepts.
func TestSocketCloseEndsEveryView(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := NewSocket(ln)
	errs := make(chan error, 2)
	for range 2 {
		v, err := sock.View()
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, err := v.Accept(); errs <- err }()
	}
	if err := sock.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Accept still blocked 5s after Close")
		}
	}
}
