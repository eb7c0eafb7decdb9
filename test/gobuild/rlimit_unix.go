//go:build unix

package gobuild

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit lets this process, and the children that inherit its
// limits, open at least want files, or the hard limit if that is lower.
func RaiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit NOFILE to %d: %w", lim.Cur, err)
	}
	return nil
}
