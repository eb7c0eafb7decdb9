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
