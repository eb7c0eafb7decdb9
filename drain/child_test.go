package drain

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/tidegate/tidegate/test/wait"
)

// The test binary doubles as the helper processes these tests supervise:
// with helperEnv set, TestMain runs the named helper instead of the tests.
const (
	helperEnv     = "TIDEGATE_DRAIN_TEST_HELPER"      // "signals" or "parent"
	helperNameEnv = "TIDEGATE_DRAIN_TEST_HELPER_NAME" // how a signals helper names itself in its lines
	helperKidEnv  = "TIDEGATE_DRAIN_TEST_HELPER_KID"  // "1": a signals helper starts a second one in its process group
	helperLife    = 60 * time.Second                  // a helper left behind by a failed test ends by then
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	goleak.VerifyTestMain(m)
}

func helperMain(mode string) int {
	switch mode {
	case "signals":
		return signalsHelper()
	case "parent":
		return parentHelper()
	}
	fmt.Fprintf(os.Stderr, "%s=%q: want signals or parent\n", helperEnv, mode)
	return 2
}

// signalsHelper prints "<name> ready" once its handlers are installed, then
// "<name> got <SIGNAL>" for each SIGHUP, SIGUSR1, SIGUSR2 and SIGTERM it
// receives. It exits 0 on SIGTERM and 3 on SIGUSR2 (a crash on demand).
func signalsHelper() int {
	name := os.Getenv(helperNameEnv)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM)
	var kid *exec.Cmd
	if os.Getenv(helperKidEnv) == "1" {
		// Same process group, same stdout.
		kid = exec.Command(os.Args[0])
		kid.Env = helperEnvOf("signals", "grandchild")
		kid.Stdout, kid.Stderr = os.Stdout, os.Stderr
		if err := kid.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "start the grandchild:", err)
			return 2
		}
	}
	fmt.Printf("%s ready\n", name)
	life := time.NewTimer(helperLife)
	for {
		select {
		case s := <-sigs:
			sig := s.(syscall.Signal)
			fmt.Printf("%s got %s\n", name, SignalName(sig))
			switch sig {
			case syscall.SIGTERM:
				if kid != nil {
					_ = kid.Wait() // the stop signal reached the whole group
				}
				return 0
			case syscall.SIGUSR2:
				return 3
			}
		case <-life.C:
			return 2
		}
	}
}

// parentHelper supervises a signals helper as a Child, prints "pid <pid>"
// and waits to be killed.
func parentHelper() int {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := StartChild(ChildOptions{Command: []string{os.Args[0]}, Env: helperEnvOf("signals", "orphan"), Stdout: devnull})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("pid %d\n", c.Pid())
	select {
	case <-c.Done():
		return 1
	case <-time.After(helperLife):
		return 2
	}
}

// helperEnvOf is this process's environment, set to run the test binary as
// the given helper mode, named name.
func helperEnvOf(mode, name string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIDEGATE_DRAIN_TEST_HELPER") {
			env = append(env, kv)
		}
	}
	// A race-built binary sleeps 1s at exit unless told not to.
	return append(env, helperEnv+"="+mode, helperNameEnv+"="+name, "GORACE=atexit_sleep_ms=0")
}

// signalsChild returns options for a Child running a signals helper named
// "child", whose output arrives on the returned channel line by line.
func signalsChild(t *testing.T, extraEnv ...string) (ChildOptions, <-chan string) {
	w, lines := outputPipe(t)
	return ChildOptions{Command: []string{os.Args[0]}, Env: append(helperEnvOf("signals", "child"), extraEnv...), Stdout: w}, lines
}

// outputPipe returns the write end of a pipe, for ChildOptions.Stdout, and
// the lines read from it. The channel holds at most 64 unread lines; the
// test's cleanup closes the write end and reads what is left, for up to 5s.
func outputPipe(t *testing.T) (*os.File, <-chan string) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = w.Close()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case _, ok := <-lines:
				if !ok {
					return
				}
			case <-deadline:
				t.Error("a helper process still holds the output pipe")
				return
			}
		}
	})
	return w, lines
}

// waitLines reads lines until each of want has been seen, for up to 5s,
// and returns every line read.
func waitLines(t *testing.T, lines <-chan string, want ...string) []string {
	t.Helper()
	var seen []string
	missing := slices.Clone(want)
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for len(missing) > 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended without %q; read %q", missing, seen)
			}
			seen = append(seen, l)
			missing = slices.DeleteFunc(missing, func(m string) bool { return m == l })
		case <-deadline.C:
			t.Fatalf("no %q within 5s; read %q", missing, seen)
		}
	}
	return seen
}

// stopOnCleanup stops c at the end of the test if it still runs.
func stopOnCleanup(t *testing.T, c *Child) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Stop(ctx)
	})
}

// procGone reports whether pid has exited: no such process, or a zombie
// (an orphan's new parent, init or a subreaper, reaps it when it likes).
func procGone(pid int) (bool, string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true, ""
	}
	// "pid (comm) S …": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false, fmt.Sprintf("unreadable stat %q", b)
	}
	state := b[i+2]
	return state == 'Z', fmt.Sprintf("pid %d in state %c", pid, state)
}

// TestChildDiesWithItsParent: a tidegate killed with SIGKILL, which can
// neither stop nor hand over its app, takes the app with it: the app never
// outlives its supervisor.
func TestChildDiesWithItsParent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux only")
	}
	parent := exec.Command(os.Args[0])
	parent.Env = helperEnvOf("parent", "parent")
	parent.Stderr = os.Stderr
	parent.SysProcAttr = childSysProcAttr() // dies with this test too
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = parent.Process.Kill(); _ = parent.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the parent's child pid: %v (read %q)", err, line)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "pid %d", &pid); err != nil || pid <= 0 {
		t.Fatalf("parent printed %q, want pid <n>", line)
	}
	if gone, detail := procGone(pid); gone {
		t.Fatalf("the child %d is not running before its parent is killed: %s", pid, detail)
	}
	t.Cleanup(func() {
		if gone, _ := procGone(pid); !gone {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	wait.Until(t, time.Second, "the child to die with its parent", func() (bool, string) { return procGone(pid) })
	t.Logf("the child (pid %d) was gone %s after its parent got SIGKILL", pid, time.Since(killed).Round(100*time.Microsecond))
}

// TestChildOutlivesTheThreadThatStartedIt: the parent-death signal fires
// when the thread that forked the child exits (golang/go#27505), and Go ends
// a thread whose goroutine exits while locked to it. A Child started from
// such a goroutine keeps running after that thread is gone, because each
// run is forked from a thread of its own.
func TestChildOutlivesTheThreadThatStartedIt(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal and /proc/self/task are Linux only")
	}
	o, lines := signalsChild(t)
	exits := make(chan AppExit, 1)
	o.OnExit = func(e AppExit) { exits <- e }
	var c *Child
	var err error
	tid := onDoomedThread(func() { c, err = StartChild(o) })
	if err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, c)
	task := fmt.Sprintf("/proc/self/task/%d", tid)
	wait.Until(t, 5*time.Second, "the caller's locked thread to exit", func() (bool, string) {
		_, err := os.Stat(task)
		return errors.Is(err, os.ErrNotExist), task + " still exists"
	})
	// Had the thread's death sent the child SIGKILL, the child would be
	// gone, or could no longer answer: SIGKILL takes effect before any
	// signal sent after it.
	alive := func(want string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case e := <-exits:
				t.Fatalf("the child died after the thread that called StartChild exited: %+v", e)
			case l := <-lines:
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %q from the child within 5s", want)
			}
		}
	}
	alive("child ready")
	if err := c.Signal(syscall.SIGUSR1); err != nil {
		t.Fatalf("the child is gone after the thread that called StartChild exited: %v", err)
	}
	alive("child got SIGUSR1")
	if ex := c.Stop(stopCtx(t, 5*time.Second)); ex.Status != "exited" || ex.Code != 0 {
		t.Fatalf("stop: %+v, want exited 0 (the helper's SIGTERM handler)", ex)
	}
}

// onDoomedThread runs f in a goroutine locked to an OS thread that the Go
// runtime ends once f has returned (the goroutine exits still locked), and
// returns that thread's id. The main thread is never ended (the runtime
// parks it instead), so f does not run on it.
func onDoomedThread(f func()) int {
	tids := make(chan int, 1)
	var attempt func()
	attempt = func() {
		runtime.LockOSThread()
		if syscall.Gettid() == syscall.Getpid() {
			// Hold the main thread while a goroutine that cannot run on
			// it tries again.
			defer runtime.UnlockOSThread()
			done := make(chan struct{})
			go func() { attempt(); close(done) }()
			<-done
			return
		}
		f()
		tids <- syscall.Gettid()
	}
	go attempt()
	return <-tids
}

// TestChildSignalGoesToTheProcessOnly: Signal reaches the app's process and
// not the rest of its process group; Stop reaches the whole group; after
// the app is gone Signal says so.
func TestChildSignalGoesToTheProcessOnly(t *testing.T) {
	o, lines := signalsChild(t, helperKidEnv+"=1")
	c, err := StartChild(o)
	if err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, c)
	seen := waitLines(t, lines, "child ready", "grandchild ready")
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1} {
		if err := c.Signal(sig); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, waitLines(t, lines, "child got "+SignalName(sig))...)
	}
	// Now a signal to the whole group: the grandchild reports it, and would
	// have reported the SIGHUP and SIGUSR1 before it (one process's lines
	// are in order) had Signal reached it.
	if err := syscall.Kill(-c.Pid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	seen = append(seen, waitLines(t, lines, "child got SIGUSR1", "grandchild got SIGUSR1")...)
	var grandchild []string
	for _, l := range seen {
		if strings.HasPrefix(l, "grandchild got") {
			grandchild = append(grandchild, l)
		}
	}
	if !slices.Equal(grandchild, []string{"grandchild got SIGUSR1"}) {
		t.Fatalf("the grandchild got %q, want only the group's SIGUSR1", grandchild)
	}

	ex := c.Stop(stopCtx(t, 5*time.Second))
	if ex.Status != "exited" || ex.Code != 0 {
		t.Fatalf("stop: %+v, want exited 0", ex)
	}
	err = c.Signal(syscall.SIGHUP)
	if !errors.Is(err, ErrAppNotRunning) || !strings.Contains(err.Error(), "SIGHUP") || !strings.Contains(err.Error(), "exited for good") {
		t.Fatalf("Signal after Stop: %v, want ErrAppNotRunning naming SIGHUP and saying the app has exited", err)
	}
}

// appMetrics gathers the Child metrics from reg, after checking that they
// are exactly the three app metrics and pass promlint.
func appMetrics(t *testing.T, reg *prometheus.Registry) (up, restarts, lastExit float64) {
	t.Helper()
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 3 {
		t.Fatalf("gathered %d metrics (%v), want 3", n, err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %v", problems, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch mf.GetName() {
		case "tidegate_app_up":
			up = m.GetGauge().GetValue()
		case "tidegate_app_restarts_total":
			restarts = m.GetCounter().GetValue()
		case "tidegate_app_last_exit_code":
			lastExit = m.GetGauge().GetValue()
		default:
			t.Fatalf("unexpected metric %s", mf.GetName())
		}
	}
	return up, restarts, lastExit
}

func wantAppMetrics(t *testing.T, reg *prometheus.Registry, when string, up, restarts, lastExit float64) {
	t.Helper()
	gu, gr, gl := appMetrics(t, reg)
	if gu != up || gr != restarts || gl != lastExit {
		t.Fatalf("%s: up %v, restarts_total %v, last_exit_code %v; want %v, %v, %v", when, gu, gr, gl, up, restarts, lastExit)
	}
}

type startCall struct {
	pid     int
	restart bool
}

// TestChildRestartNotifiesAndCounts: OnStart tells every start (the first
// with restart false, each restart with true), and the app metrics follow
// start → crash (exit 3) → restart → death by SIGKILL → restart → stop.
func TestChildRestartNotifiesAndCounts(t *testing.T) {
	o, lines := signalsChild(t)
	reg := prometheus.NewRegistry()
	starts := make(chan startCall, 8)
	o.Registerer = reg
	o.OnStart = func(pid int, restart bool) { starts <- startCall{pid, restart} }
	o.Restart, o.BackoffInitial, o.BackoffMax, o.MaxRestarts = RestartOnFailure, 20*time.Millisecond, time.Second, 5
	c, err := StartChild(o)
	if err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, c)

	nextStart := func(restart bool) int {
		t.Helper()
		s := recvWithin(t, starts, "an OnStart call")
		if s.restart != restart || s.pid <= 0 || s.pid != c.Pid() {
			t.Fatalf("OnStart(%d, %v), want OnStart(%d, %v)", s.pid, s.restart, c.Pid(), restart)
		}
		waitLines(t, lines, "child ready")
		return s.pid
	}
	first := nextStart(false)
	wantAppMetrics(t, reg, "running", 1, 0, -1)

	if err := c.Signal(syscall.SIGUSR2); err != nil { // the helper exits 3
		t.Fatal(err)
	}
	second := nextStart(true)
	wantAppMetrics(t, reg, "restarted after exit 3", 1, 1, 3)

	if err := c.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	third := nextStart(true)
	wantAppMetrics(t, reg, "restarted after SIGKILL", 1, 2, 128+9)
	if first == second || second == third || first == third {
		t.Fatalf("pids %d, %d, %d: want a new process per start", first, second, third)
	}

	if ex := c.Stop(stopCtx(t, 5*time.Second)); ex.Status != "exited" || ex.Code != 0 {
		t.Fatalf("stop: %+v, want exited 0", ex)
	}
	wantAppMetrics(t, reg, "stopped", 0, 2, 0)
	select {
	case s := <-starts:
		t.Fatalf("OnStart(%d, %v) after Stop", s.pid, s.restart)
	default:
	}
}

// TestChildDuringBackoff: while the app waits to be restarted it is down in
// the metrics, Signal says it is not running, and Stop ends the wait.
func TestChildDuringBackoff(t *testing.T) {
	o, lines := signalsChild(t)
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	o.Restart, o.BackoffInitial = RestartAlways, time.Minute
	restarting := make(chan AppExit, 1)
	o.OnRestarting = func(ex AppExit) { restarting <- ex }
	c, err := StartChild(o)
	if err != nil {
		t.Fatal(err)
	}
	stopOnCleanup(t, c)
	waitLines(t, lines, "child ready")
	if err := c.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the app to exit into its restart backoff", func() bool { return !c.Alive() })
	if ex := recvWithin(t, restarting, "OnRestarting before the backoff"); ex.Code != 3 {
		t.Fatalf("OnRestarting(%+v), want the run's exit 3", ex)
	}
	wantAppMetrics(t, reg, "in backoff", 0, 0, 3)
	err = c.Signal(syscall.SIGHUP)
	if !errors.Is(err, ErrAppNotRunning) || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("Signal during the backoff: %v, want ErrAppNotRunning saying it waits to be restarted", err)
	}
	start := time.Now()
	if ex := c.Stop(stopCtx(t, 5*time.Second)); ex.ExitCode() != 3 {
		t.Fatalf("stop during the backoff: %+v, want the last run's exit 3", ex)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Stop took %s: it did not cut the one-minute backoff", d)
	}
	wantAppMetrics(t, reg, "stopped in backoff", 0, 0, 3)
}

// TestChildMetricsRegistration: StartChild fails when the metrics cannot
// be registered (they are registered before the app starts), and a failed start leaves the registry
// as it was.
func TestChildMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	taken := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tidegate_app_up", Help: "someone else's"})
	reg.MustRegister(taken)
	c, err := StartChild(ChildOptions{Command: []string{"/bin/true"}, Registerer: reg})
	if err == nil || c != nil || !strings.Contains(err.Error(), "tidegate_app_up") {
		t.Fatalf("StartChild with tidegate_app_up taken: %v, want an error naming it", err)
	}

	reg = prometheus.NewRegistry()
	if _, err := StartChild(ChildOptions{Command: []string{"/nonexistent/app"}, Registerer: reg}); err == nil {
		t.Fatal("StartChild of a missing binary succeeded")
	}
	o, lines := signalsChild(t)
	o.Registerer = reg
	c, err = StartChild(o)
	if err != nil {
		t.Fatalf("StartChild after a failed start on the same registry: %v", err)
	}
	stopOnCleanup(t, c)
	waitLines(t, lines, "child ready")
	wantAppMetrics(t, reg, "running", 1, 0, -1)
}

// recvWithin waits up to 5s for a value on ch.
func recvWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: nothing within 5s", what)
		var zero T
		return zero
	}
}
