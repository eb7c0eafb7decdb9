package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Reads and writes without the Go scheduler's system-call bookkeeping.
//
// Why: net.Conn's Read and Write enter the kernel through syscall.Syscall,
// which tells the runtime that the goroutine's thread may block. When every
// P was idle a moment before (a sidecar between bursts, or sharing its CPU
// with the app), that first system call wakes the runtime's monitor thread
// (sysmon), which then polls every 20µs for a millisecond and more, each
// poll a context switch on the CPU the app needs; and a write that the
// kernel stretches (it delivers loopback data to the app right away) can
// see its P handed to another thread. On non-blocking sockets neither is of
// any use: a read or write never blocks, the poller does the waiting. So
// the fast path's TCP connections read and write with syscall.RawSyscall6,
// and wait through the connection's own poller (syscall.RawConn), which
// keeps deadlines and Close exactly as net.Conn has them. Measured: about
// 15% less CPU per request at 19k req/s open loop on the bench machine
// (README, Performance); no change that shows when saturated.
//
// The calls are recvfrom(2) and sendto(2), as HAProxy makes them, rather
// than read(2) and write(2): on a socket they do the same, but skip the
// file layer's work (position lock, permission hooks, the VFS dispatch),
// which perf showed at about 0.4µs per HTTP/1.1 request on the bench
// machine: about 2% less CPU per request (1.8% and 2.0% at the medians
// of six and of eight alternating runs).
// sendto also takes MSG_NOSIGNAL: a write to a connection the peer reset
// fails with EPIPE and raises no SIGPIPE for the runtime to field.
//
// rawTCPConn is a *net.TCPConn whose Read and Write do that. Everything
// else (Close, deadlines, CloseWrite, ReadFrom and WriteTo for splice,
// SyscallConn) is the TCPConn's own.
type rawTCPConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex // serialises Reads; guards the r* fields
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool // r.read, bound once

	wmu     sync.Mutex // serialises Writes; guards the w* fields
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool // r.write, bound once
}

// rawSyscalls wraps c in a rawTCPConn when it is a TCP connection, and
// returns it unchanged otherwise.
func rawSyscalls(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawTCPConn{TCPConn: tc, rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

// rawWrite writes p to the socket fd once: send(2), without SIGPIPE.
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

// rawRead reads into p from the socket fd once: recv(2).
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0, 0, 0)
	return int(n), e
}

// read is Read's RawConn.Read callback: true when done (data, EOF or an
// error), false to wait for readability.
func (r *rawTCPConn) read(fd uintptr) bool {
	for {
		n, e := rawRead(fd, r.rbuf)
		switch e {
		case 0:
			r.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.rerrno = e
			return true
		}
	}
}

func (r *rawTCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return r.TCPConn.Read(p)
	}
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.rbuf, r.rn, r.rerrno = p, 0, 0
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	switch {
	case err != nil: // closed, or the deadline passed
		return 0, r.opError("read", err)
	case r.rerrno != 0:
		return 0, r.opError("read", os.NewSyscallError("read", r.rerrno))
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

// write is Write's RawConn.Write callback: true when all is written or
// writing failed, false to wait for writability.
func (r *rawTCPConn) write(fd uintptr) bool {
	for r.wn < len(r.wbuf) {
		n, e := rawWrite(fd, r.wbuf[r.wn:])
		switch e {
		case 0:
			r.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werrno = e
			return true
		}
	}
	return true
}

func (r *rawTCPConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return r.TCPConn.Write(p)
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.wbuf, r.wn, r.werrno = p, 0, 0
	err := r.rc.Write(r.writeFn)
	r.wbuf = nil
	switch {
	case err != nil:
		return r.wn, r.opError("write", err)
	case r.werrno != 0:
		return r.wn, r.opError("write", os.NewSyscallError("write", r.werrno))
	}
	return r.wn, nil
}

// opError reports err as net.Conn's Read and Write do: a *net.OpError
// naming op and the addresses, around the poller's error (net.ErrClosed,
// os.ErrDeadlineExceeded) or the system call's.
func (r *rawTCPConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { // RawConn's own, named raw-read or raw-write
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.LocalAddr(), Addr: r.RemoteAddr(), Err: err}
}

// rawPeekAlive reports whether the socket fd may carry a new request: it
// peeks at its receive queue without waiting (recv(2) with MSG_PEEK and
// MSG_DONTWAIT). Nothing there (EAGAIN) means alive; an end of stream
// (the peer closed), an error (a reset) or unexpected bytes (an app never
// speaks first on HTTP/1.1) mean the connection must not be reused.
func rawPeekAlive(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return true
		}
		return false // a byte, the end of stream, or an error
	}
}
