//go:build !linux

package drain

import "syscall"

// childSysProcAttr puts the app in a process group of its own. There is no
// parent-death signal outside Linux: an app whose tidegate is killed with
// SIGKILL keeps running.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
