//go:build !linux

package proxy

import (
	"net"
	"syscall"
)

// rawSyscalls returns c unchanged: raw system calls are used on Linux
// only (rawsyscall_linux.go).
func rawSyscalls(c net.Conn) net.Conn { return c }

// rawWrite writes p to the socket fd once.
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	if n < 0 {
		n = 0
	}
	if errno, ok := err.(syscall.Errno); ok {
		return n, errno
	}
	return n, 0
}

// rawPeekAlive reports whether the socket fd may carry a new request, as
// on Linux: recv(2) with MSG_PEEK and MSG_DONTWAIT finds nothing to read.
func rawPeekAlive(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return true
		}
		return false // a byte, the end of stream, or an error
	}
}
