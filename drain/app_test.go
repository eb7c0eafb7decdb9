package drain

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// trapShell is a child that exits 0 on SIGTERM; ignoreShell ignores it.
// Both touch the file named by $0 once their trap is set.
const (
	trapShell   = `trap 'exit 0' TERM; touch "$0"; while :; do sleep 0.02; done`
	ignoreShell = `trap '' TERM; touch "$0"; while :; do sleep 0.02; done`
)

// shellArgs returns argv for a trap shell and waits-for function that
// returns once its trap is installed.
func shellArgs(t *testing.T, script string) ([]string, func()) {
	marker := filepath.Join(t.TempDir(), "ready")
	return []string{"/bin/sh", "-c", script, marker}, func() {
		waitFor(t, "the child to set its trap", func() bool { return fileExists(marker) })
	}
}

func stopCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestChildStopGraceful(t *testing.T) {
	argv, ready := shellArgs(t, trapShell)
	c, err := StartChild(ChildOptions{Command: argv})
	if err != nil {
		t.Fatal(err)
	}
	ready()
	if !c.Alive() || c.Pid() <= 0 {
		t.Fatal("child not running after start")
	}
	ex := c.Stop(stopCtx(t, 5*time.Second))
	if ex.Status != "exited" || ex.Code != 0 || ex.ExitCode() != 0 {
		t.Fatalf("graceful stop: %+v", ex)
	}
	if c.Alive() {
		t.Fatal("child alive after Stop")
	}
	if again := c.Stop(stopCtx(t, time.Second)); again != ex {
		t.Fatalf("second Stop: %+v, want %+v", again, ex)
	}
}

func TestChildKilledAfterStopTimeout(t *testing.T) {
	argv, ready := shellArgs(t, ignoreShell)
	c, err := StartChild(ChildOptions{Command: argv})
	if err != nil {
		t.Fatal(err)
	}
	ready()
	start := time.Now()
	ex := c.Stop(stopCtx(t, 200*time.Millisecond))
	if ex.Status != "killed" || ex.Signal != "SIGKILL" || ex.ExitCode() != 137 {
		t.Fatalf("stop of a child ignoring SIGTERM: %+v (exit code %d)", ex, ex.ExitCode())
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
		t.Fatalf("killed after %s, want right after the 200ms timeout", d)
	}
}

func TestChildDiesBySignal(t *testing.T) {
	c, err := StartChild(ChildOptions{Command: []string{"/bin/sh", "-c", "while :; do sleep 0.02; done"}, StopSignal: syscall.SIGINT})
	if err != nil {
		t.Fatal(err)
	}
	ex := c.Stop(stopCtx(t, 5*time.Second))
	if ex.Status != "signaled" || ex.Signal != "SIGINT" || ex.ExitCode() != 130 {
		t.Fatalf("child without a handler: %+v", ex)
	}
}

func TestChildExitCodeOnItsOwn(t *testing.T) {
	exits := make(chan AppExit, 1)
	c, err := StartChild(ChildOptions{Command: []string{"/bin/sh", "-c", "exit 3"}, OnExit: func(e AppExit) { exits <- e }})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ex := <-exits:
		if ex.Status != "exited" || ex.ExitCode() != 3 {
			t.Fatalf("exit on its own: %+v", ex)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnExit not called")
	}
	<-c.Done()
	if ex := c.Stop(stopCtx(t, time.Second)); ex.ExitCode() != 3 {
		t.Fatalf("Stop after the child exited reports %+v", ex)
	}
}

func TestChildRestartsWithBackoffThenGivesUp(t *testing.T) {
	dir := t.TempDir()
	exits := make(chan AppExit, 1)
	start := time.Now()
	c, err := StartChild(ChildOptions{
		Command: []string{"/bin/sh", "-c", `date +%s%N >> "$0/starts"; exit 1`, dir},
		Restart: RestartOnFailure, BackoffInitial: 40 * time.Millisecond, BackoffMax: time.Second, MaxRestarts: 3,
		OnExit: func(e AppExit) { exits <- e },
	})
	if err != nil {
		t.Fatal(err)
	}
	var ex AppExit
	select {
	case ex = <-exits:
	case <-time.After(10 * time.Second):
		t.Fatal("crash loop never gave up")
	}
	if !strings.Contains(ex.Detail, "crash loop") || ex.ExitCode() != 1 || c.Restarts() != 3 {
		t.Fatalf("after the crash loop: %+v, %d restarts", ex, c.Restarts())
	}
	b, err := os.ReadFile(filepath.Join(dir, "starts"))
	if err != nil {
		t.Fatal(err)
	}
	var ts []int64
	for _, l := range strings.Fields(string(b)) {
		n, _ := strconv.ParseInt(l, 10, 64)
		ts = append(ts, n)
	}
	if len(ts) != 4 {
		t.Fatalf("%d starts, want 1 + 3 restarts", len(ts))
	}
	// Backoff doubles: gaps of about 40, 80, 160ms (±20% jitter, plus start-up).
	for i, want := range []time.Duration{40, 80, 160} {
		gap := time.Duration(ts[i+1] - ts[i])
		if lo := want * time.Millisecond * 8 / 10; gap < lo {
			t.Errorf("gap %d: %s, want at least %s", i, gap, lo)
		}
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("crash loop took %s", time.Since(start))
	}
}

func TestChildRestartAlwaysAndStopDuringBackoff(t *testing.T) {
	dir := t.TempDir()
	c, err := StartChild(ChildOptions{
		Command: []string{"/bin/sh", "-c", `echo x >> "$0/starts"; exit 0`, dir},
		Restart: RestartAlways, BackoffInitial: 30 * time.Millisecond, BackoffMax: 60 * time.Millisecond, MaxRestarts: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a clean exit restarted twice under RestartAlways", func() bool { return c.Restarts() >= 2 })
	// Stop lands either in a backoff (the last run exited 0) or during a
	// run (the child dies of SIGTERM): both end the loop for good.
	ex := c.Stop(stopCtx(t, 2*time.Second))
	if code := ex.ExitCode(); code != 0 && code != 128+int(syscall.SIGTERM) {
		t.Fatalf("stop during restart loop: %+v", ex)
	}
	restarts := c.Restarts()
	select {
	case <-c.Done():
	default:
		t.Fatal("supervisor still running after Stop")
	}
	if c.Restarts() != restarts || c.Alive() {
		t.Fatal("the app was restarted after Stop")
	}
}

func TestChildStartErrors(t *testing.T) {
	if _, err := StartChild(ChildOptions{}); err == nil || !strings.Contains(err.Error(), "--") {
		t.Fatalf("no command: %v", err)
	}
	if _, err := StartChild(ChildOptions{Command: []string{"/nonexistent/app"}}); err == nil || !strings.Contains(err.Error(), "/nonexistent/app") {
		t.Fatalf("missing binary: %v", err)
	}
	if _, err := StartChild(ChildOptions{Command: []string{"true"}, Restart: "sometimes"}); err == nil || !strings.Contains(err.Error(), `"sometimes"`) {
		t.Fatalf("bad policy: %v", err)
	}
}

func TestPIDAppStopsAProcess(t *testing.T) {
	argv, ready := shellArgs(t, trapShell)
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready()
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ex := PIDApp{PIDFile: pidfile, Signal: syscall.SIGTERM}.Stop(stopCtx(t, 5*time.Second))
	if ex.Status != "exited" {
		t.Fatalf("pid stop: %+v", ex)
	}
	<-waited
	if ex := (PIDApp{PID: cmd.Process.Pid, Signal: syscall.SIGTERM}).Stop(stopCtx(t, time.Second)); ex.Status != "exited" {
		t.Fatalf("pid already gone: %+v", ex)
	}
	if ex := (PIDApp{PIDFile: filepath.Join(t.TempDir(), "none"), Signal: syscall.SIGTERM}).Stop(stopCtx(t, time.Second)); ex.Status != "failed" {
		t.Fatalf("missing pid file: %+v", ex)
	}
}

func TestPIDAppLeavesAStubbornProcessRunning(t *testing.T) {
	argv, ready := shellArgs(t, ignoreShell)
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ex := PIDApp{PID: cmd.Process.Pid, Signal: syscall.SIGTERM}.Stop(stopCtx(t, 150*time.Millisecond))
	if ex.Status != "running" {
		t.Fatalf("stubborn non-child: %+v", ex)
	}
}

func TestHTTPApp(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/shutdown" {
			posts.Add(1)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	if ex := (HTTPApp{URL: srv.URL + "/shutdown"}).Stop(stopCtx(t, 5*time.Second)); ex.Status != "stopped" || ex.Code != 200 || posts.Load() != 1 {
		t.Fatalf("http stop: %+v, %d posts", ex, posts.Load())
	}
	if ex := (HTTPApp{URL: srv.URL + "/nope"}).Stop(stopCtx(t, 5*time.Second)); ex.Status != "failed" || ex.Code != 404 {
		t.Fatalf("http stop answered 404: %+v", ex)
	}
}

func TestCommandApp(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "stopped")
	if ex := (CommandApp{Command: "touch " + marker}).Stop(stopCtx(t, 5*time.Second)); ex.Status != "stopped" {
		t.Fatalf("command stop: %+v", ex)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the stop command did not run")
	}
	if ex := (CommandApp{Command: "exit 4"}).Stop(stopCtx(t, 5*time.Second)); ex.Status != "failed" || ex.Code != 4 {
		t.Fatalf("failing command: %+v", ex)
	}
	if ex := (CommandApp{Command: "sleep 5"}).Stop(stopCtx(t, 100*time.Millisecond)); ex.Status != "failed" || !strings.Contains(ex.Detail, "timeout") {
		t.Fatalf("slow command: %+v", ex)
	}
}

func TestReaperReapsLingeringZombiesOnly(t *testing.T) {
	// An exited child nobody waits for stays a zombie of this process.
	cmd := exec.Command("/bin/true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waitFor(t, "the child to become a zombie", func() bool { _, z := zombieChildren(os.Getpid())[pid]; return z })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { RunReaper(ctx, nil, 10*time.Millisecond, 50*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the zombie to be reaped", func() bool { return !fileExists("/proc/" + strconv.Itoa(pid)) })
	_ = cmd.Process.Release()
}

// waitFor polls cond for up to 5s (test/wait).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.For(t, what, cond)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "term": syscall.SIGTERM, "SIGQUIT": syscall.SIGQUIT, "15": syscall.SIGTERM, "usr1": syscall.SIGUSR1} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "SIGFOO", "0", "99"} {
		if _, err := ParseSignal(in); err == nil {
			t.Errorf("ParseSignal(%q) accepted", in)
		}
	}
}
