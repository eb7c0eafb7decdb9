//go:build linux

package drain

import "syscall"

// childSysProcAttr puts the app in a process group of its own and arms a
// parent-death signal: the kernel sends the app SIGKILL when the thread that
// started it dies, so the app never outlives tidegate (SIGKILLed, crashed or
// exited). Child.start keeps that thread alive for the whole run.
//
// There is no window between fork and prctl(PR_SET_PDEATHSIG) in which a
// dying tidegate would leave the app behind: Go's forkAndExecInChild1
// (syscall/exec_linux.go) records the parent's pid before the fork, and the
// child, right after the prctl, compares getppid() with it and sends itself
// the signal if the parent is already gone.
//
// Limits: the signal reaches the app's own process only (a shell wrapper
// should exec the app), and the kernel clears it when the app execs a
// set-user-ID or set-group-ID binary or one with file capabilities.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
