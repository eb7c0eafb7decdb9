package kubeenv

import "syscall"

// sysProcAttr kills a child when the test binary dies without running its
// cleanups (a -timeout panic, a SIGKILL), so no etcd or kube-apiserver
// outlives the run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
