package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestChildCrashLoop: a child that keeps crashing is restarted with a
// growing backoff up to --app-restart-limit times; then tidegate gives up,
// drains (trigger app_exit) and exits with the child's own exit code.
// Liveness holds while the app is being restarted.
func TestChildCrashLoop(t *testing.T) {
	t.Parallel()
	app := hostPort(freePort(t))
	tg := start(t, "--upstream", app, "--drain-delay", "1s", "--drain-timeout", "5s",
		"--app-restart", "on-failure", "--app-restart-backoff", "100ms", "--app-restart-limit", "3",
		"--", fakeappBinary, "--listen", app, "--crash-after", "200ms")

	type answer struct {
		at     time.Time
		status int
		body   string
	}
	polled := make(chan []answer, 1)
	lc := newClient(t)
	go func() {
		var answers []answer
		deadline := time.Now().Add(15 * time.Second)
		for i := 0; i < 50000 && time.Now().Before(deadline); i++ {
			code, body, err := statusCode(lc, "http://"+tg.Health+"/livez?verbose")
			if err != nil {
				break // the health listener has closed
			}
			answers = append(answers, answer{time.Now(), code, body})
		}
		polled <- answers
	}()

	giveUp := tg.waitLog(10*time.Second, "the crash-loop give-up", func(m map[string]any) bool {
		return m["msg"] == "app is crash-looping; giving up"
	})
	if code := tg.waitExit(exitTimeout); code != 3 {
		t.Errorf("tidegate exited %d after the crash loop, want 3 (the app's exit code)", code)
	}
	answers := recv(t, polled, 20*time.Second, "the /livez poller to end")

	var backoffs []float64
	starts := 0
	for _, m := range tg.stdout.jsonLines() {
		switch m["msg"] {
		case "restarting app":
			b, _ := m["backoff"].(float64)
			backoffs = append(backoffs, b)
			if m["attempt"] != float64(len(backoffs)) {
				t.Errorf("restart %d logged attempt %v", len(backoffs), m["attempt"])
			}
		case "app started":
			starts++
		}
	}
	if len(backoffs) != 3 || starts != 4 {
		t.Fatalf("%d restarts logged (backoffs %v) and %d starts, want 3 restarts and 4 starts", len(backoffs), backoffs, starts)
	}
	for i, b := range backoffs {
		base := 0.1 * float64(int(1)<<i) // 100ms doubling, ±20% jitter
		if b < 0.8*base-0.001 || b > 1.2*base+0.001 {
			t.Errorf("restart %d waited %.3fs, want %.2fs ±20%%", i+1, b, base)
		}
		if i > 0 && b <= backoffs[i-1] {
			t.Errorf("the backoff did not grow: %v", backoffs)
		}
	}
	if giveUp["restarts"] != 3.0 {
		t.Errorf("give-up line %v: want restarts 3", giveUp)
	}
	rep := tg.report()
	if rep["trigger"] != "app_exit" || rep["app_status"] != "exited" || rep["app_code"] != 3.0 {
		t.Errorf("drain report %v: want trigger app_exit, app exited 3", rep)
	}

	// Liveness: 200 while the app crashes and is restarted; only once
	// tidegate has given up may it fail (and the window before the exit is
	// short: catch it if we can).
	giveUpAt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(giveUp["ts"]))
	if err != nil {
		t.Fatalf("give-up line ts %v: %v", giveUp["ts"], err)
	}
	failedAfter := 0
	for _, a := range answers {
		switch {
		case a.at.Before(giveUpAt) && a.status != http.StatusOK:
			t.Errorf("/livez answered %d %q while the app was being restarted, want 200", a.status, strings.TrimSpace(a.body))
		case !a.at.Before(giveUpAt) && a.status != http.StatusOK:
			failedAfter++
			if !strings.Contains(a.body, "will not be restarted") && !strings.Contains(a.body, "phase is stopped") {
				t.Errorf("/livez after the give-up: %d %q, want it to say the app will not be restarted", a.status, a.body)
			}
		}
	}
	if len(answers) == 0 {
		t.Errorf("the /livez poller got no answer")
	}
	t.Logf("/livez: %d answers, %d failing after the give-up", len(answers), failedAfter)
}

// procStat reads a process's state letter and parent pid from /proc.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// "pid (comm) S ppid …": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return f[0][0], ppid, err == nil
}

// zombieChildrenOf lists the zombies whose parent is ppid.
func zombieChildrenOf(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, pp, ok := procStat(pid); ok && pp == ppid && st == 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// TestReapOrphans: with --reap-orphans tidegate is a child subreaper: a
// process its app orphans is re-parented to tidegate, and once it exits
// tidegate reaps it, so that no zombie is left behind.
func TestReapOrphans(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc: the reaper is Linux only")
	}

	t.Run("subreaper", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		tg := startWithChild(t, []string{"--reap-orphans", "--drain-delay", "0"},
			"--orphan", "--orphan-life", "1s", "--record", rec)
		tgPID := tg.cmd.Process.Pid
		orphan := waitEvent(t, rec, waitTimeout, "the app's orphan", isEvent("orphan", "")).PID

		// While it lives, the orphan's parent is tidegate, not init.
		if st, ppid, ok := procStat(orphan); ok && st != 'Z' && ppid != tgPID {
			t.Errorf("the orphan %d has parent %d, want tidegate (%d): tidegate is not a subreaper", orphan, ppid, tgPID)
		}
		reaped := tg.waitLog(waitTimeout, "the orphan being reaped", func(m map[string]any) bool {
			return m["msg"] == "reaped orphaned process" && m["pid"] == float64(orphan)
		})
		if reaped["exit_code"] != 0.0 {
			t.Errorf("reaped line %v: want exit_code 0 (sleep ends normally)", reaped)
		}
		eventually(t, waitTimeout, "no zombie left under tidegate", func() (bool, string) {
			if st, ppid, ok := procStat(orphan); ok && ppid == tgPID {
				return false, fmt.Sprintf("orphan %d still exists in state %c", orphan, st)
			}
			if z := zombieChildrenOf(tgPID); len(z) > 0 {
				return false, fmt.Sprintf("zombies %v", z)
			}
			return true, ""
		})
		tg.stop()
	})

	t.Run("without the flag", func(t *testing.T) {
		t.Parallel()
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		tg := startWithChild(t, []string{"--drain-delay", "0"}, "--orphan", "--orphan-life", "1s", "--record", rec)
		orphan := waitEvent(t, rec, waitTimeout, "the app's orphan", isEvent("orphan", "")).PID
		if st, ppid, ok := procStat(orphan); ok && st != 'Z' && ppid == tg.cmd.Process.Pid {
			t.Errorf("without --reap-orphans the orphan %d was re-parented to tidegate", orphan)
		}
		tg.stop()
	})

	t.Run("PID 1", func(t *testing.T) {
		t.Parallel()
		unshare, err := exec.LookPath("unshare")
		if err != nil || os.Geteuid() != 0 {
			t.Skip("needs unshare and root for a new PID namespace")
		}
		if out, err := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
			t.Skipf("cannot create a PID namespace here: %v %s", err, out)
		}
		rec := filepath.Join(t.TempDir(), "app.jsonl")
		app := hostPort(freePort(t))
		// tidegate is PID 1 of a new namespace (with its own /proc): it
		// reaps without --reap-orphans. The drain is triggered through
		// the admin listener, as unshare does not forward signals.
		tg := launchProgram(t, noEnv, unshare, "--pid", "--fork", "--mount-proc", "--kill-child", binary, "run",
			"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--upstream", app, "--drain-delay", "0",
			"--", fakeappBinary, "--listen", app, "--orphan", "--orphan-life", "1s", "--record", rec)
		tg.waitServing()
		orphan := waitEvent(t, rec, waitTimeout, "the app's orphan", isEvent("orphan", "")).PID
		tg.waitLog(waitTimeout, "the orphan being reaped by PID 1", func(m map[string]any) bool {
			return m["msg"] == "reaped orphaned process" && m["pid"] == float64(orphan)
		})
		r := runOnce(t, nil, "drain", "--admin", tg.Admin, "--wait", "5s")
		if r.code != 0 {
			t.Errorf("tidegate drain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if code := tg.waitExit(exitTimeout); code != 0 {
			t.Errorf("unshare/tidegate exited %d, want 0", code)
		}
	})
}
