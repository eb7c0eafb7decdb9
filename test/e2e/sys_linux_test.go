//go:build linux

package e2e

import "syscall"

// sysProcAttr kills the child if the test process dies first.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
