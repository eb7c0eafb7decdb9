package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopTimeout bounds a process's exit after SIGTERM; past it, SIGKILL.
const stopTimeout = 5 * time.Second

// procSpec describes a long-running process: a server or a proxy.
type procSpec struct {
	Name string   // for messages
	CPU  int      // pinned to this CPU with taskset; -1: not pinned
	Bin  string   // program
	Args []string // its arguments
	Env  []string // KEY=VALUE added to baseEnv
	Log  string   // file that gets its stdout and stderr; "": discarded
}

// proc is one started process. Its process group is its own pid, so that
// stopping it also stops the children it forked (nginx's worker).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited
	err  error         // its exit status, valid once done is closed
}

// procSet starts processes and is the one place that kills them: the
// harness defers stopAll right after creating it.
type procSet struct {
	mu    sync.Mutex
	procs []*proc
}

// start starts spec. The process is in its own process group and gets
// SIGKILL if the harness dies first.
func (s *procSet) start(spec procSpec) (*proc, error) {
	bin, args := pinned(spec.CPU, spec.Bin, spec.Args)
	cmd := exec.Command(bin, args...)
	cmd.Env = baseEnv(spec.Env...)
	cmd.SysProcAttr = childAttr()
	if spec.Log != "" {
		f, err := os.Create(spec.Log)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Name, err)
		}
		defer f.Close() // the child has its own copy
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &proc{name: spec.Name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// stopAll stops every process still running, each within stopTimeout.
func (s *procSet) stopAll() {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { _ = p.stop() })
	}
	wg.Wait()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exitErr reports whether the process has exited, and how.
func (p *proc) exitErr() (bool, error) {
	select {
	case <-p.done:
		if p.err == nil {
			return true, errors.New("exited")
		}
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group, and SIGKILL if it has not
// exited within stopTimeout. It returns an error if it had to kill it.
func (p *proc) stop() error {
	if done, _ := p.exitErr(); done {
		return nil
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done // SIGKILL cannot be ignored; Wait returns at once
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, stopTimeout)
}

// runTool runs a short-lived program (a load generator, go build, apt-get)
// to completion within timeout and returns its stdout. On error, the error
// carries the tail of its stderr.
func runTool(ctx context.Context, timeout time.Duration, cpu int, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b, a := pinned(cpu, bin, args)
	cmd := exec.CommandContext(ctx, b, a...)
	cmd.Env = baseEnv()
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, tail(stderr.String(), 800))
	}
	return stdout.Bytes(), nil
}

// pinned wraps bin and args in taskset when cpu is not negative. taskset
// execs bin, so the pid stays bin's.
func pinned(cpu int, bin string, args []string) (string, []string) {
	if cpu < 0 {
		return bin, args
	}
	return "taskset", append([]string{"-c", strconv.Itoa(cpu), bin}, args...)
}

func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// baseEnv is the harness's environment without TIDEGATE_* and GOMAXPROCS,
// so that neither leaks into a measured process, plus extra.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIDEGATE_") && !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
