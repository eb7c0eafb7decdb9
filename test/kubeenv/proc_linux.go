package kubeenv

import (
	"errors"
	"syscall"
)

// sysProcAttr kills a child when the test binary dies without running its
// cleanups (a -timeout panic, a SIGKILL), so no etcd or kube-apiserver
// outlives the run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processAlive reports whether a process with this pid exists (EPERM: it
// does, someone else's).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || !errors.Is(err, syscall.ESRCH)
}
