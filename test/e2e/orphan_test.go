package e2e

import (
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// orphanBound is how soon after tidegate's death its app must be gone.
const orphanBound = time.Second

// fakeappParentGone is what the fakeapp prints when it exits because its
// parent is gone.
const fakeappParentGone = "fakeapp: parent is gone"

// appStatusOf reads the app's part of /status.
func appStatusOf(t *testing.T, c *http.Client, tg *tidegate) (pid, restarts int) {
	t.Helper()
	_, body := get(t, c, "http://"+tg.Admin+"/status")
	var st struct {
		App struct {
			PID      int `json:"pid"`
			Restarts int `json:"restarts"`
		} `json:"app"`
	}
	decodeJSON(t, body, &st)
	return st.App.PID, st.App.Restarts
}

// TestOrphanDiesWithTidegate: a tidegate killed with SIGKILL (it can stop
// nothing) takes its app with it, whether the app is the first run or a
// restarted one: the app is gone within orphanBound and its port can be
// bound again, so a new tidegate and app can start at once.
func TestOrphanDiesWithTidegate(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux only")
	}
	for _, restarted := range []bool{false, true} {
		name := "first run"
		if restarted {
			name = "restarted run"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			app := hostPort(freePort(t))
			tg := start(t, "--upstream", app, "--app-restart", "on-failure", "--app-restart-backoff", "50ms",
				"--", fakeappBinary, "--listen", app)
			tg.waitAppListening()
			c := newClient(t)
			pid, _ := appStatusOf(t, c, tg)
			if restarted {
				// Crash the first run; tidegate starts a second one.
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill the first run (pid %d): %v", pid, err)
				}
				eventually(t, waitTimeout, "the app to be restarted", func() (bool, string) {
					p, n := appStatusOf(t, c, tg)
					return n == 1 && p != pid && p > 0, fmt.Sprintf("/status: app pid %d, %d restarts", p, n)
				})
				pid, _ = appStatusOf(t, c, tg)
				tg.waitLog(startTimeout, "the restarted app listening", func(m map[string]any) bool {
					return m["event"] == "listening" && m["pid"] == float64(pid)
				})
			}
			if st, ppid, ok := procStat(pid); !ok || st == 'Z' || ppid != tg.cmd.Process.Pid {
				t.Fatalf("app pid %d: state %c, parent %d, want a running child of tidegate (%d)", pid, st, ppid, tg.cmd.Process.Pid)
			}

			tg.signal(syscall.SIGKILL)
			killed := time.Now()
			eventually(t, orphanBound, "the app to die with tidegate", func() (bool, string) {
				st, ppid, ok := procStat(pid)
				// A zombie has exited; its new parent reaps it when it likes.
				return !ok || st == 'Z', fmt.Sprintf("app pid %d in state %c, parent %d", pid, st, ppid)
			})
			gone := time.Since(killed)
			var bindErr error
			eventually(t, orphanBound-gone, "the app's port to be free", func() (bool, string) {
				ln, err := net.Listen("tcp", app)
				if err != nil {
					bindErr = err
					return false, err.Error()
				}
				_ = ln.Close()
				return true, ""
			})
			t.Logf("the app (pid %d) was gone %s after tidegate got SIGKILL, its port free after %s (last bind error: %v)",
				pid, gone.Round(100*time.Microsecond), time.Since(killed).Round(100*time.Microsecond), bindErr)
			if code := tg.waitExit(exitTimeout); code != -1 {
				t.Errorf("tidegate exited %d, want -1 (killed by a signal)", code)
			}
			// The fakeapp also exits on its own, within 200ms, when it
			// finds itself re-parented, saying so on the stderr it shares
			// with tidegate (complete now: tidegate's output is read to
			// the end once every writer is gone). The kernel must have
			// been first.
			if strings.Contains(tg.stderr.String(), fakeappParentGone) {
				t.Errorf("the app outlived tidegate until it noticed by itself (%q on its stderr)", fakeappParentGone)
			}
		})
	}
}
