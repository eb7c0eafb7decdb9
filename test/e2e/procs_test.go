package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ports hands out fixed loopback ports: a test that restarts a process on
// the same port (a rolling restart) must know it before the first start.
var ports struct {
	sync.Mutex
	taken map[int]bool
}

// freePort returns a loopback TCP port that is free now and that this
// process has not handed out before. It picks below the kernel's ephemeral
// range, so that no outgoing connection of a parallel test takes the port
// between two runs of the process that owns it.
func freePort(t *testing.T) int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	base, span := 10000, lo-10000
	if span < 1000 {
		base, span = 1024, max(lo-1024, 1)
	}
	ports.Lock()
	defer ports.Unlock()
	if ports.taken == nil {
		ports.taken = map[int]bool{}
	}
	for range 500 {
		p := base + rand.IntN(span)
		if ports.taken[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		ports.taken[p] = true
		return p
	}
	t.Fatalf("no free loopback port found in [%d, %d)", base, base+span)
	return 0
}

// hostPort is 127.0.0.1:port.
func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// appProc is one fakeapp process started by the test itself (not by
// tidegate): the app of the pid, http and command strategies, and the "app
// alone" baseline.
type appProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *logBuf
	stderr *logBuf
	exited chan struct{}
	code   int // exit code (-1 if killed by a signal), valid once exited is closed

	Addr string // where it listens
	PID  int
}

// startFakeapp runs the fakeapp binary with args and waits until it
// listens. The test's cleanup kills it if it still runs.
func startFakeapp(t *testing.T, args ...string) *appProc {
	t.Helper()
	a := &appProc{t: t, stdout: newLogBuf(), stderr: newLogBuf(), exited: make(chan struct{})}
	a.cmd = exec.Command(fakeappBinary, args...)
	a.cmd.Env = baseEnv()
	a.cmd.Stdout, a.cmd.Stderr = a.stdout, a.stderr
	a.cmd.SysProcAttr = sysProcAttr()
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start fakeapp: %v", err)
	}
	go func() {
		_ = a.cmd.Wait()
		a.code = a.cmd.ProcessState.ExitCode()
		close(a.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
		if t.Failed() {
			t.Logf("fakeapp %s (exit %d)\n--- stdout ---\n%s\n--- stderr ---\n%s", strings.Join(args, " "), a.code,
				tail(a.stdout.String(), 8<<10), tail(a.stderr.String(), 8<<10))
		}
	})
	m, err := findLine(a.stdout, a.exited, startTimeout, func(m map[string]any) bool { return m["event"] == "listening" })
	if err != nil {
		t.Fatalf("fakeapp %s: waiting for it to listen: %v\n%s", strings.Join(args, " "), err, a.stderr.String())
	}
	a.Addr, _ = m["addr"].(string)
	a.PID = int(m["pid"].(float64))
	return a
}

func (a *appProc) signal(sig syscall.Signal) {
	a.t.Helper()
	if err := a.cmd.Process.Signal(sig); err != nil {
		a.t.Fatalf("signal fakeapp: %v", err)
	}
}

// waitExit waits for the process to exit and returns its exit code.
func (a *appProc) waitExit(timeout time.Duration) int {
	a.t.Helper()
	select {
	case <-a.exited:
		return a.code
	case <-time.After(timeout):
		a.t.Fatalf("fakeapp pid %d did not exit within %s", a.PID, timeout)
		return -1
	}
}

// running reports whether the process has not exited yet.
func (a *appProc) running() bool {
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// appEvent is one line of a fakeapp record file (--record).
type appEvent struct {
	Event  string `json:"event"`
	Path   string `json:"path"`
	T      int64  `json:"t"` // unix nanoseconds
	Signal string `json:"signal"`
	PID    int    `json:"pid"`
	Addr   string `json:"addr"`
	ID     string `json:"id"`
}

func (e appEvent) time() time.Time { return time.Unix(0, e.T) }

func (e appEvent) String() string {
	return fmt.Sprintf("%s %s%s at %s", e.Event, e.Path, e.Signal, e.time().Format("15:04:05.000000"))
}

// readEvents reads every complete line of a record file; a file not
// created yet has none.
func readEvents(t *testing.T, path string) []appEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("read record file: %v", err)
	}
	var evs []appEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var e appEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("record file %s: bad line %q: %v", path, line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

// waitEvent polls a record file until an event matches, and returns it.
func waitEvent(t *testing.T, path string, timeout time.Duration, what string, match func(appEvent) bool) appEvent {
	t.Helper()
	var found appEvent
	eventually(t, timeout, what, func() (bool, string) {
		evs := readEvents(t, path)
		for _, e := range evs {
			if match(e) {
				found = e
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events: %v", len(evs), evs)
	})
	return found
}

// findEvents returns the events that match.
func findEvents(evs []appEvent, match func(appEvent) bool) []appEvent {
	var out []appEvent
	for _, e := range evs {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

func isEvent(event, path string) func(appEvent) bool {
	return func(e appEvent) bool { return e.Event == event && (path == "" || e.Path == path) }
}

// stopHold is an app stop command that blocks until the test releases it,
// so that a drain holds in phase stopping_app with the admin and health
// listeners still answering.
type stopHold struct {
	marker string
	once   sync.Once
}

// newStopHold returns a hold released by release or, at the latest, by the
// test's cleanup.
func newStopHold(t *testing.T) *stopHold {
	h := &stopHold{marker: filepath.Join(t.TempDir(), "release")}
	t.Cleanup(func() { h.release(t) })
	return h
}

// args are the tidegate flags that make the hold the app stop strategy.
func (h *stopHold) args() []string {
	return []string{"--app-stop", "command", "--app-stop-timeout", "20s",
		"--app-stop-command", "while [ ! -e '" + h.marker + "' ]; do sleep 0.01; done"}
}

func (h *stopHold) release(t *testing.T) {
	h.once.Do(func() {
		if err := os.WriteFile(h.marker, nil, 0o600); err != nil {
			t.Errorf("release the stop hold: %v", err)
		}
	})
}

// phaseOf reads the phase from the admin listener's /status.
func phaseOf(t *testing.T, c *http.Client, tg *tidegate) string {
	t.Helper()
	resp, body := get(t, c, "http://"+tg.Admin+"/status")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /status: %d %s", resp.StatusCode, body)
	}
	var st struct {
		Phase string `json:"phase"`
	}
	decodeJSON(t, body, &st)
	return st.Phase
}

// waitPhase waits for the "phase changed" log line to phase.
func (tg *tidegate) waitPhase(phase string) map[string]any {
	tg.t.Helper()
	return tg.waitLog(waitTimeout, `the "phase":"`+phase+`" log line`, func(m map[string]any) bool {
		return m["msg"] == "phase changed" && m["phase"] == phase
	})
}

// report waits for the drain report line.
func (tg *tidegate) report() map[string]any {
	tg.t.Helper()
	return tg.waitLog(waitTimeout, "the drain report", func(m map[string]any) bool { return m["msg"] == "drain report" })
}

// statusCode sends a GET and returns only the status (0 and the error if
// there was no response).
func statusCode(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body), err
}

// noEnv is the empty extra environment, for launch.
var noEnv []string
