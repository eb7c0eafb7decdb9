package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// raiseOpenFiles raises this process's open files limit, which its
// children inherit (setting it here also stops os/exec from restoring the
// original soft limit in children): as root to 1<<20 (or fs.nr_open, if
// lower); where that fails (raising the hard limit needs CAP_SYS_RESOURCE)
// or not as root, to the hard limit.
func raiseOpenFiles() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	want := lim.Max
	if os.Geteuid() == 0 {
		want = max(want, 1<<20)
		if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				want = max(lim.Max, min(want, n))
			}
		}
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
		return nil
	}
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim.Max, Max: lim.Max})
}
