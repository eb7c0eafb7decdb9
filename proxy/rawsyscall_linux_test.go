package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// tcpPair returns the two ends of a loopback TCP connection, each wrapped
// by wrap1 and wrap2.
func tcpPair(t testing.TB, wrap1, wrap2 func(net.Conn) net.Conn) (net.Conn, net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		accepted <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	select {
	case c2 := <-accepted:
		return wrap1(c1), wrap2(c2), nil
	case err := <-errc:
		c1.Close()
		return nil, nil, err
	}
}

func plainConn(c net.Conn) net.Conn { return c }

// connOnly hides every method of its Conn but net.Conn's.
type connOnly struct{ net.Conn }

// TestRawSyscallConnIsANetConn runs x/net's net.Conn conformance suite
// (I/O, ping-pong, concurrent use, past and future deadlines, Close while
// blocked) on rawTCPConn: both ends raw, and a raw end against a plain one.
func TestRawSyscallConnIsANetConn(t *testing.T) {
	for name, wrap2 := range map[string]func(net.Conn) net.Conn{"raw-raw": rawSyscalls, "raw-plain": plainConn} {
		t.Run(name, func(t *testing.T) {
			nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
				c1, c2, err := tcpPair(t, rawSyscalls, wrap2)
				if err != nil {
					return nil, nil, nil, err
				}
				if _, ok := c1.(*rawTCPConn); !ok {
					t.Fatalf("rawSyscalls returned a %T, want *rawTCPConn", c1)
				}
				// Only net.Conn's methods: io.Copy must not find the
				// TCPConn's ReadFrom and WriteTo, which bypass Read and
				// Write.
				return connOnly{c1}, connOnly{c2}, func() { c1.Close(); c2.Close() }, nil
			})
		})
	}
}

// TestRawSyscallConnErrors checks that the errors the proxy classifies by
// (errors.Is and net.Error) come out of a rawTCPConn as out of a TCPConn.
func TestRawSyscallConnErrors(t *testing.T) {
	pair := func(t *testing.T) (net.Conn, net.Conn) {
		t.Helper()
		c1, c2, err := tcpPair(t, rawSyscalls, plainConn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c1.Close(); c2.Close() })
		return c1, c2
	}
	buf := make([]byte, 64)

	t.Run("read deadline", func(t *testing.T) {
		c, _ := pair(t)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, err := c.Read(buf)
		var ne net.Error
		if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past the deadline = %d, %v; want 0 and a timeout", n, err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || oe.Source == nil || oe.Addr == nil {
			t.Fatalf("Read's error %#v: want a *net.OpError for read with both addresses", err)
		}
	})

	t.Run("eof", func(t *testing.T) {
		c, peer := pair(t)
		if _, err := peer.Write([]byte("last")); err != nil {
			t.Fatal(err)
		}
		peer.Close()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "last" {
			t.Fatalf("ReadAll = %q, %v; want \"last\" and no error (EOF)", got, err)
		}
		if n, err := c.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
		}
	})

	t.Run("reset", func(t *testing.T) {
		c, peer := pair(t)
		_ = peer.(*net.TCPConn).SetLinger(0)
		peer.Close() // RST
		_, err := c.Read(buf)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read after the peer's reset: %v; want ECONNRESET", err)
		}
		var se *os.SyscallError
		if !errors.As(err, &se) || se.Syscall != "read" {
			t.Fatalf("Read's error %#v: want an *os.SyscallError for read inside", err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Write after the peer's reset: %v; want EPIPE or ECONNRESET", err)
		}
	})

	t.Run("close while reading", func(t *testing.T) {
		c, _ := pair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(buf)
			errc <- err
		}()
		c.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read when closed: %v; want net.ErrClosed", err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v; want net.ErrClosed", err)
		}
	})

	t.Run("write waits for room", func(t *testing.T) {
		// More than the socket buffers hold: Write must wait for the
		// peer to read (EAGAIN, then the poller) and deliver every byte.
		c, peer := pair(t)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(peer)
			got <- b
		}()
		n, err := c.Write(want)
		if n != len(want) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
		}
		if err := c.(*rawTCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("peer read %d bytes, not the %d written", len(b), len(want))
		}
	})

	t.Run("write deadline", func(t *testing.T) {
		// Nobody reads: the write fills the buffers and then times out,
		// saying how much went.
		c, _ := pair(t)
		big := make([]byte, 64<<20)
		_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(big)
		if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= len(big) {
			t.Fatalf("Write to a peer that does not read = %d, %v; want part of it and a timeout", n, err)
		}
	})
}

// TestFastPathUsesRawSyscalls checks the wiring: by default the fast
// path's client and app connections are rawTCPConns; PlainSyscalls keeps
// both plain. Each way, a request goes through.
func TestFastPathUsesRawSyscalls(t *testing.T) {
	app := fastEchoApp(t)
	for _, plain := range []bool{false, true} {
		r := newFastRig(t, app.Listener.Addr().String(), func(o *Options) { o.PlainSyscalls = plain }, nil)
		c := dialRaw(t, r.addr)
		resp, _ := c.do(t, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("plain=%v: status %d", plain, resp.StatusCode)
		}
		wantRaw := !plain
		r.srv.mu.Lock()
		var client net.Conn
		for tc := range r.srv.fastConns {
			client = tc.Conn
		}
		r.srv.mu.Unlock()
		// The app connection goes back to the pool after the answer
		// has reached the client: wait for it there.
		var up net.Conn
		waitFor(t, func() bool {
			r.handler.h1.mu.Lock()
			defer r.handler.h1.mu.Unlock()
			if len(r.handler.h1.idle) == 1 {
				up = r.handler.h1.idle[0].nc
			}
			return up != nil
		})
		for side, nc := range map[string]net.Conn{"client": client, "app": up} {
			_, isRaw := nc.(*rawTCPConn)
			_, isTCP := nc.(*net.TCPConn)
			if isRaw != wantRaw || isTCP == wantRaw {
				t.Errorf("plain=%v: the %s connection is a %T", plain, side, nc)
			}
		}
	}
}
