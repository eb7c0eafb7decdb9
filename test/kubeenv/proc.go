package kubeenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// tailBytes bounds how much of a process's log an error or a failed test
// shows: the end of it, where a crash explains itself.
const tailBytes = 6 << 10

// process is one child (etcd, kube-apiserver, kube-controller-manager)
// with its stdout and stderr in one log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited; err is then set
	err     error
}

func startProcess(name, dir, bin string, args []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process is gone, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		if p.err == nil {
			return true, errors.New("exited with status 0")
		}
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM and, if the process has not exited within grace,
// SIGKILL; it returns once the process is gone. It reports whether SIGKILL
// was needed.
func (p *process) stop(grace time.Duration) (killed bool) {
	if done, _ := p.exited(); done {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return false
	case <-timer.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done // SIGKILL cannot be caught: the wait is bounded by the kernel
	return true
}

// tail is the end of the process's log, at most tailBytes.
func (p *process) tail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	off := max(st.Size()-tailBytes, 0)
	buf, err := io.ReadAll(io.NewSectionReader(f, off, tailBytes))
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	s := string(buf)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
		s = fmt.Sprintf("[... %d bytes before; whole log: %s]\n%s", off, p.logPath, s)
	}
	return s
}

// portTaken reports whether the process's log says it lost a race for a
// port between the harness choosing it and the process binding it.
func (p *process) portTaken() bool {
	return strings.Contains(p.tail(), "address already in use")
}
