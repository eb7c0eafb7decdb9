package drain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// App is how the app is stopped once the drain is done.
type App interface {
	// Strategy names the strategy: child, pid, http, command or none.
	Strategy() string
	// Stop asks the app to stop and waits for it until ctx ends (the
	// drainer bounds ctx by the app stop timeout). A child still alive then
	// is killed. Stop never fails: the outcome is in AppExit.
	Stop(ctx context.Context) AppExit
}

// AppExit says how stopping the app went.
type AppExit struct {
	Strategy string `json:"strategy"`
	// Status is one of: exited (the process ended with Code), signaled (it
	// died of Signal), killed (it outlived the stop timeout and got
	// SIGKILL), stopped (an http or command stop succeeded), running (it
	// outlived the timeout and is not ours to kill), failed (the stop
	// itself failed; see Detail), none (nothing to stop).
	Status string `json:"status"`
	Code   int    `json:"code"`             // exit code, command status, or HTTP status
	Signal string `json:"signal,omitempty"` // the signal a process died of
	Detail string `json:"detail,omitempty"`
}

func (e AppExit) String() string {
	switch e.Status {
	case "exited":
		return fmt.Sprintf("%s: exited %d", e.Strategy, e.Code)
	case "signaled", "killed":
		return fmt.Sprintf("%s: %s by %s", e.Strategy, e.Status, e.Signal)
	case "failed", "running":
		return fmt.Sprintf("%s: %s (%s)", e.Strategy, e.Status, e.Detail)
	}
	return e.Strategy + ": " + e.Status
}

// ExitCode is the code tidegate should exit with for this outcome when it
// supervises the app: the child's own code, 128+signal as a shell does, or
// non-zero when the app could not be run at all.
func (e AppExit) ExitCode() int {
	switch e.Status {
	case "exited":
		return e.Code
	case "signaled", "killed":
		if s, err := ParseSignal(e.Signal); err == nil {
			return 128 + int(s)
		}
		return 1
	case "failed":
		if e.Code != 0 {
			return e.Code
		}
		return 1
	}
	return 0
}

// NoApp is the "none" strategy: nothing is signalled. In Kubernetes the
// kubelet signals the app after the preStop hook (GET /drain?wait=…) returns.
type NoApp struct{}

func (NoApp) Strategy() string { return "none" }

func (NoApp) Stop(context.Context) AppExit { return AppExit{Strategy: "none", Status: "none"} }

// HTTPApp stops the app by POSTing to its own shutdown endpoint.
type HTTPApp struct {
	URL    string
	Client *http.Client // nil: a client with no keep-alive
	Logger *zap.Logger
}

func (HTTPApp) Strategy() string { return "http" }

func (a HTTPApp) Stop(ctx context.Context) AppExit {
	ex := AppExit{Strategy: "http"}
	c := a.Client
	if c == nil {
		c = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL, http.NoBody)
	if err != nil {
		ex.Status, ex.Detail = "failed", err.Error()
		return ex
	}
	req.Header.Set("User-Agent", "tidegate")
	resp, err := c.Do(req)
	if err != nil {
		ex.Status, ex.Detail = "failed", err.Error() // net/http's *url.Error: POST "URL" (password hidden): why
		return ex
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	ex.Code = resp.StatusCode
	if resp.StatusCode >= 300 {
		ex.Status, ex.Detail = "failed", fmt.Sprintf("POST %s answered %s", req.URL.Redacted(), resp.Status)
		return ex
	}
	ex.Status = "stopped"
	return ex
}

// CommandApp stops the app by running a shell command (sh -c).
type CommandApp struct {
	Command string
	Stdout  io.Writer // nil: discarded
	Stderr  io.Writer // nil: discarded
}

func (CommandApp) Strategy() string { return "command" }

func (a CommandApp) Stop(ctx context.Context) AppExit {
	ex := AppExit{Strategy: "command"}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", a.Command)
	cmd.Stdout, cmd.Stderr = a.Stdout, a.Stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		ex.Status = "stopped"
	case ctx.Err() != nil:
		ex.Status, ex.Detail = "failed", fmt.Sprintf("stop command %q outlived the stop timeout", a.Command)
	case errors.As(err, &ee):
		ex.Status, ex.Code, ex.Detail = "failed", ee.ExitCode(), fmt.Sprintf("stop command %q exited %d", a.Command, ee.ExitCode())
	default:
		ex.Status, ex.Detail = "failed", fmt.Sprintf("stop command %q: %v", a.Command, err)
	}
	return ex
}

// PIDApp stops a process that is not tidegate's child (a shared process
// namespace) by signalling its pid and waiting for it to go away.
type PIDApp struct {
	PID     int    // used when PIDFile is empty
	PIDFile string // read at stop time, so a restarted app is found
	Signal  syscall.Signal
	// Poll is how often to check whether the process is gone. Zero: 10ms.
	Poll time.Duration
}

func (PIDApp) Strategy() string { return "pid" }

func (a PIDApp) Stop(ctx context.Context) AppExit {
	ex := AppExit{Strategy: "pid"}
	pid := a.PID
	if a.PIDFile != "" {
		b, err := os.ReadFile(a.PIDFile)
		if err != nil {
			ex.Status, ex.Detail = "failed", fmt.Sprintf("read pid file: %v", err)
			return ex
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(bytes.TrimSpace(b))))
		if err != nil || pid <= 0 {
			ex.Status, ex.Detail = "failed", fmt.Sprintf("pid file %s holds %q, not a pid", a.PIDFile, strings.TrimSpace(string(b)))
			return ex
		}
	}
	if err := syscall.Kill(pid, a.Signal); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			ex.Status, ex.Detail = "exited", fmt.Sprintf("pid %d was already gone", pid)
			return ex
		}
		ex.Status, ex.Detail = "failed", fmt.Sprintf("signal pid %d: %v", pid, err)
		return ex
	}
	poll := a.Poll
	if poll <= 0 {
		poll = 10 * time.Millisecond
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		if !processAlive(pid) {
			ex.Status = "exited"
			return ex
		}
		select {
		case <-ctx.Done():
			ex.Status, ex.Detail = "running", fmt.Sprintf("pid %d still alive at the stop timeout; it is not tidegate's child, so it is left to its owner", pid)
			return ex
		case <-tick.C:
		}
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name in parentheses: "pid (comm) S …".
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}

var signalNames = map[string]syscall.Signal{
	"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGKILL": syscall.SIGKILL, "SIGWINCH": syscall.SIGWINCH, "SIGPIPE": syscall.SIGPIPE,
	"SIGALRM": syscall.SIGALRM, "SIGCONT": syscall.SIGCONT,
}

// ParseSignal parses a signal name (SIGTERM or TERM, any case) or number.
func ParseSignal(s string) (syscall.Signal, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(u); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	if !strings.HasPrefix(u, "SIG") {
		u = "SIG" + u
	}
	if sig, ok := signalNames[u]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%q is not a signal: use SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH or a number", s)
}

// SignalName returns the SIG… name of a signal, or its number.
func SignalName(sig syscall.Signal) string {
	for n, s := range signalNames {
		if s == sig {
			return n
		}
	}
	return strconv.Itoa(int(sig))
}
