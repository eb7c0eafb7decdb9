package drain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Restart policies for a supervised child.
const (
	RestartNever     = "never"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// ChildOptions configures a supervised child process.
type ChildOptions struct {
	// Command is the app's argv. Required.
	Command []string
	// Env is the child's environment. Nil means tidegate's own.
	Env []string
	// Stdout and Stderr receive the child's output. Nil means tidegate's
	// own (the file descriptors are passed on, nothing is copied).
	Stdout, Stderr io.Writer
	// StopSignal is sent to the child's process group when the drain is
	// done. Zero means SIGTERM.
	StopSignal syscall.Signal
	// Restart is RestartNever (the zero value), RestartOnFailure (non-zero
	// exit or death by signal) or RestartAlways.
	Restart string
	// BackoffInitial is the first wait before a restart; it doubles up to
	// BackoffMax, with ±20% jitter. Zero means 500ms.
	BackoffInitial time.Duration
	// BackoffMax caps the wait. A run that lasted longer than BackoffMax
	// resets the backoff and the crash count. Zero means 30s.
	BackoffMax time.Duration
	// MaxRestarts is how many consecutive quick crashes are restarted
	// before tidegate gives up on the app (a crash loop). Zero means 5.
	MaxRestarts int
	// OnStart is called from the supervisor's goroutine after every
	// successful start of the app, with its pid: restart is false for the
	// first run (the call may come after StartChild has returned) and true
	// for each restart, so that the owner can stop sending traffic and run
	// its startup probes again until the new run listens. It is never called
	// concurrently with itself or OnExit; it must not block for long, as the
	// supervisor waits for it before it watches the run. Nil means not
	// called.
	OnStart func(pid int, restart bool)
	// OnRestarting is called, from the supervisor's goroutine, when a run
	// ended on its own and the app will be restarted after a backoff, so
	// that the owner stops sending it traffic at once rather than at the
	// restart. It must not block for long. Nil means not called.
	OnRestarting func(AppExit)
	// OnExit is called once, from the supervisor's goroutine, when the child
	// has exited on its own for good (not restarted, not stopped by Stop).
	// Nil means not called.
	OnExit func(AppExit)
	// Registerer receives tidegate_app_up, tidegate_app_restarts_total and
	// tidegate_app_last_exit_code (see appmetrics.go). Nil means no metrics.
	Registerer prometheus.Registerer
	// Logger receives starts, exits and restarts. Nil means no logs.
	Logger *zap.Logger
}

// ErrAppNotRunning is the error Signal wraps when there is no app process
// to signal: it is waiting to be restarted, or it is gone for good.
var ErrAppNotRunning = errors.New("the app is not running")

// Child supervises the app as tidegate's child process: it starts it,
// passes it the signals its owner forwards (Signal), restarts it by policy,
// stops it (Stop) and reports how it ended. It implements App with strategy
// "child".
//
// The app never outlives tidegate on Linux: it runs with a parent-death
// signal (SIGKILL), armed on a thread that lives as long as the run (see
// start), so a tidegate killed with SIGKILL or crashing takes the app with it.
type Child struct {
	o   ChildOptions
	log *zap.Logger

	mu       sync.Mutex
	cmd      *exec.Cmd // the current run's process, or the last one's while backing off
	running  bool      // cmd has started and not been reaped
	stopping bool
	exit     AppExit   // the final outcome, once done is closed
	started  time.Time // start of the current run
	restarts int       // total restarts, for /status
	lastCode int       // exit code of the last run to end, -1 before any

	stopReq chan struct{} // closed by Stop
	done    chan struct{} // closed when the child is gone for good
}

// StartChild starts the app and its supervisor. The error says why the
// first start failed (command not found, not executable, …).
func StartChild(o ChildOptions) (*Child, error) {
	if len(o.Command) == 0 || o.Command[0] == "" {
		return nil, errors.New("no app command: give it after --, as in tidegate run [flags] -- /app/server --port 3000")
	}
	switch o.Restart {
	case "":
		o.Restart = RestartNever
	case RestartNever, RestartOnFailure, RestartAlways:
	default:
		return nil, fmt.Errorf("restart policy %q: want never, on-failure or always", o.Restart)
	}
	if o.StopSignal == 0 {
		o.StopSignal = syscall.SIGTERM
	}
	if o.BackoffInitial <= 0 {
		o.BackoffInitial = 500 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 30 * time.Second
	}
	if o.BackoffMax < o.BackoffInitial {
		o.BackoffMax = o.BackoffInitial
	}
	if o.MaxRestarts <= 0 {
		o.MaxRestarts = 5
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	c := &Child{o: o, log: o.Logger, lastCode: -1, stopReq: make(chan struct{}), done: make(chan struct{})}
	var metrics prometheus.Collector
	if o.Registerer != nil {
		metrics = appCollector{c}
		if err := o.Registerer.Register(metrics); err != nil {
			return nil, fmt.Errorf("register the app metrics (%s): %w", appMetricNames, err)
		}
	}
	pid, waitc, err := c.start()
	if err != nil {
		if metrics != nil {
			o.Registerer.Unregister(metrics)
		}
		return nil, err
	}
	go c.supervise(pid, waitc)
	return c, nil
}

// start launches one run of the app and returns its pid; the channel yields
// its Wait error when it has exited.
//
// Each run is started and waited for by a goroutine of its own, locked to
// its OS thread for the whole run. The parent-death signal the kernel
// delivers (PR_SET_PDEATHSIG) fires when the thread that forked the child
// exits, not the process (golang/go#27505), and the Go runtime ends a
// thread whose goroutine exits while locked to it. A child forked from just
// any thread would be killed while tidegate still runs once that thread
// ends: the caller of StartChild may be a locked goroutine about to return,
// and an unlocked thread may later serve a goroutine that locks it and
// exits. Locking the forking goroutine and keeping it on that thread until
// the child is gone means the thread dies only with tidegate.
func (c *Child) start() (int, <-chan error, error) {
	cmd := exec.Command(c.o.Command[0], c.o.Command[1:]...)
	cmd.Env = c.o.Env
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = c.o.Stdout, c.o.Stderr
	if cmd.Stdout == nil {
		cmd.Stdout = os.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	// Its own process group (a terminal's Ctrl-C reaches tidegate, not the
	// app, and the stop signal reaches a shell wrapper's children too) and,
	// on Linux, a parent-death signal.
	cmd.SysProcAttr = childSysProcAttr()
	started := make(chan error, 1)
	waitc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		c.mu.Lock()
		c.cmd, c.running, c.started = cmd, true, time.Now()
		if c.stopping {
			// Stop came between the end of a backoff and this restart, saw
			// no process to signal, and waits for this run to end.
			_ = syscall.Kill(-cmd.Process.Pid, c.o.StopSignal)
		}
		c.mu.Unlock()
		started <- nil
		err := cmd.Wait()
		// The child is gone (reaped): the thread may serve other goroutines.
		runtime.UnlockOSThread()
		waitc <- err
	}()
	if err := <-started; err != nil {
		return 0, nil, fmt.Errorf("start app %q: %w", strings.Join(c.o.Command, " "), err)
	}
	pid := cmd.Process.Pid
	c.log.Info("app started", zap.Int("pid", pid), zap.Strings("command", c.o.Command))
	return pid, waitc, nil
}

func (c *Child) supervise(pid int, waitc <-chan error) {
	defer close(c.done)
	if c.o.OnStart != nil {
		c.o.OnStart(pid, false)
	}
	crashes, backoff := 0, c.o.BackoffInitial
	for {
		err := <-waitc
		c.mu.Lock()
		cmd, ran := c.cmd, time.Since(c.started)
		ex := exitOf(cmd, err)
		c.running = false
		c.lastCode = ex.ExitCode()
		stopping := c.stopping
		c.mu.Unlock()
		if stopping {
			c.finish(ex)
			return
		}
		c.log.Warn("app exited on its own", zap.String("app", ex.String()), zap.Int("pid", cmd.Process.Pid),
			zap.Duration("ran", ran))
		failed := ex.Status != "exited" || ex.Code != 0
		if c.o.Restart == RestartNever || (c.o.Restart == RestartOnFailure && !failed) {
			c.finishOnItsOwn(ex)
			return
		}
		if ran > c.o.BackoffMax {
			crashes, backoff = 0, c.o.BackoffInitial
		}
		crashes++
		if crashes > c.o.MaxRestarts {
			c.log.Error("app is crash-looping; giving up", zap.String("reason", "crash_loop"),
				zap.Int("restarts", crashes-1), zap.String("app", ex.String()))
			ex.Detail = fmt.Sprintf("crash loop: %d restarts in a row", crashes-1)
			c.finishOnItsOwn(ex)
			return
		}
		wait := jitter(backoff)
		backoff = min(2*backoff, c.o.BackoffMax)
		c.log.Info("restarting app", zap.Duration("backoff", wait), zap.Int("attempt", crashes))
		if c.o.OnRestarting != nil {
			c.o.OnRestarting(ex)
		}
		t := time.NewTimer(wait)
		select {
		case <-c.stopReq:
			t.Stop()
			c.finish(ex)
			return
		case <-t.C:
		}
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
		if pid, waitc, err = c.start(); err != nil {
			c.log.Error("app restart failed", zap.Error(err))
			c.finishOnItsOwn(AppExit{Strategy: "child", Status: "failed", Code: 127, Detail: err.Error()})
			return
		}
		if c.o.OnStart != nil {
			c.o.OnStart(pid, true)
		}
	}
}

func (c *Child) finish(ex AppExit) {
	c.mu.Lock()
	c.exit = ex
	c.mu.Unlock()
}

func (c *Child) finishOnItsOwn(ex AppExit) {
	c.finish(ex)
	if c.o.OnExit != nil {
		c.o.OnExit(ex)
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func exitOf(cmd *exec.Cmd, err error) AppExit {
	ex := AppExit{Strategy: "child"}
	ps := cmd.ProcessState
	if ps == nil {
		ex.Status, ex.Detail = "failed", fmt.Sprint(err)
		return ex
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		ex.Status, ex.Signal = "signaled", SignalName(ws.Signal())
		return ex
	}
	ex.Status, ex.Code = "exited", ps.ExitCode()
	return ex
}

// Strategy returns "child".
func (c *Child) Strategy() string { return "child" }

// Alive reports whether the app process is running now.
func (c *Child) Alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// Pid returns the pid of the current run, or 0.
func (c *Child) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Restarts returns how many times the app was restarted.
func (c *Child) Restarts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts
}

// Signal sends sig to the app's process, the current run's: a signal the
// owner forwards (SIGHUP to reload, SIGUSR1, …). It goes to that process
// only, not to its process group, as tini does without -g: the app's main
// process decides what its workers and helpers get (a master process
// handles a reload signal by managing its workers itself), and SIGHUP or
// SIGUSR1 would kill any process of the group that has no handler for it,
// terminating being their default action. Stop, in contrast, signals the
// whole group.
//
// The error wraps ErrAppNotRunning when there is no process to signal: the
// app is waiting to be restarted, or it is gone for good.
func (c *Child) Signal(sig syscall.Signal) error {
	c.mu.Lock()
	cmd, running, stopping := c.cmd, c.running, c.stopping
	c.mu.Unlock()
	select {
	case <-c.done:
		return fmt.Errorf("signal %s to the app: %w: it has exited for good", SignalName(sig), ErrAppNotRunning)
	default:
	}
	switch {
	case !running && stopping:
		return fmt.Errorf("signal %s to the app: %w: it is being stopped", SignalName(sig), ErrAppNotRunning)
	case !running:
		return fmt.Errorf("signal %s to the app: %w: it exited and waits to be restarted", SignalName(sig), ErrAppNotRunning)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signal %s to the app (pid %d): %w: it has just exited", SignalName(sig), cmd.Process.Pid, ErrAppNotRunning)
		}
		return fmt.Errorf("signal %s to the app (pid %d): %w", SignalName(sig), cmd.Process.Pid, err)
	}
	return nil
}

// Done is closed when the app is gone for good.
func (c *Child) Done() <-chan struct{} { return c.done }

// Stop sends the stop signal to the app's process group, waits for it until
// ctx ends, then kills the group. A restart pending in backoff is canceled.
// Calling Stop again returns the same outcome.
func (c *Child) Stop(ctx context.Context) AppExit {
	c.mu.Lock()
	first := !c.stopping
	c.stopping = true
	cmd, running := c.cmd, c.running
	c.mu.Unlock()
	if first {
		close(c.stopReq)
		if running {
			pid := cmd.Process.Pid
			c.log.Info("stopping app", zap.Int("pid", pid), zap.String("signal", SignalName(c.o.StopSignal)))
			if err := syscall.Kill(-pid, c.o.StopSignal); err != nil && !errors.Is(err, syscall.ESRCH) {
				c.log.Warn("signal app", zap.Int("pid", pid), zap.Error(err))
			}
		}
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		pid := cmd.Process.Pid
		c.log.Warn("app outlived the stop timeout; killing it", zap.Int("pid", pid), zap.String("reason", "stop_timeout"))
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-c.done
		c.mu.Lock()
		if c.exit.Status == "signaled" && c.exit.Signal == "SIGKILL" {
			c.exit.Status = "killed"
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exit
}
