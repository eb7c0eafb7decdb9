//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fdLimit is the open-file limit, soft and hard, tidegate runs under in
// these tests, and fdMaxConns the connection limit it derives from it:
// (256 - max(64, 256/10)) / 2.
const (
	fdLimit    = 256
	fdMaxConns = 96
	fdClients  = 1000 // connection attempts held against the public port
)

// launchUnderFileLimit starts `tidegate run` on free loopback ports with
// soft and hard RLIMIT_NOFILE at fdLimit (the Go runtime raises the soft
// limit to the hard one at start, so both are set), in front of a fakeapp.
func launchUnderFileLimit(t *testing.T, args ...string) *tidegate {
	t.Helper()
	app := startFakeapp(t)
	all := append([]string{"-c", `ulimit -n ` + strconv.Itoa(fdLimit) + ` && exec "$0" "$@"`, binary, "run",
		"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Addr, "--drain-delay", "100ms"}, args...)
	tg := launchProgram(t, nil, "/bin/sh", all...)
	tg.waitServing()
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", tg.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`Max open files\s+%d\s+%d\s`, fdLimit, fdLimit)
	if !regexp.MustCompile(want).Match(limits) {
		t.Fatalf("tidegate's limits do not match %q:\n%s", want, limits)
	}
	return tg
}

// holdConns opens n connections to addr from a few dialers at once, each
// dial bounded by timeout, and holds those that connect until the test
// ends or release is called.
func holdConns(t *testing.T, addr string, n int, timeout time.Duration) (connected int, release func()) {
	t.Helper()
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
		next  = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	d := net.Dialer{Timeout: timeout}
	for range 50 {
		wg.Go(func() {
			for range next {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var once sync.Once
	release = func() {
		once.Do(func() {
			for _, c := range conns {
				_ = c.Close()
			}
		})
	}
	t.Cleanup(release)
	return len(conns), release
}

// cpuTicks is the user plus system CPU time of pid so far, in clock ticks
// of 1/100 s (USER_HZ, what /proc reports on every Linux).
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// The command name may hold spaces; the fields after it may not.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		t.Fatalf("cannot read utime and stime from %q", s)
	}
	return utime + stime
}

// openFiles counts pid's open files.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// timedGet is one GET on a new connection, bounded by 1s; it returns the
// status and how long it took.
func timedGet(url string) (int, time.Duration, error) {
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Second}
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, time.Since(start), err
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// TestFDLimitKeepsHealthAndAdminServing: with 1,000 idle client
// connections against a tidegate limited to 256 open files, the public
// listener stops accepting at its limit (96) instead of running out of
// files, so /readyz, /livez and /status keep answering at once, tidegate
// idles, and it serves again as soon as the clients go.
func TestFDLimitKeepsHealthAndAdminServing(t *testing.T) {
	tg := launchUnderFileLimit(t)
	pid := tg.cmd.Process.Pid
	admin := newClient(t)

	var st struct {
		Limits struct {
			OpenFiles      uint64 `json:"open_files"`
			OpenFilesMax   uint64 `json:"open_files_max"`
			GOMAXPROCS     int    `json:"gomaxprocs"`
			MaxConnections int    `json:"max_connections"`
			MemorySource   string `json:"memory_limit_source"`
		} `json:"limits"`
	}
	_, body := get(t, admin, "http://"+tg.Admin+"/status")
	decodeJSON(t, body, &st)
	if l := st.Limits; l.OpenFiles != fdLimit || l.OpenFilesMax != fdLimit || l.MaxConnections != fdMaxConns || l.GOMAXPROCS < 1 || l.MemorySource == "" {
		t.Fatalf("/status limits = %+v; want open files %d/%d, max_connections %d", l, fdLimit, fdLimit, fdMaxConns)
	}
	filesIdle := openFiles(t, pid)

	start := time.Now()
	connected, release := holdConns(t, tg.Listen, fdClients, 3*time.Second)
	t.Logf("%d of %d connection attempts connected in %s", connected, fdClients, time.Since(start).Round(time.Millisecond))
	if connected <= fdMaxConns {
		t.Fatalf("only %d connections connected: the test needs more than the limit, %d", connected, fdMaxConns)
	}
	eventually(t, waitTimeout, "tidegate at its connection limit", func() (bool, string) {
		ms := scrape(t, admin, tg)
		open := ms.value("tidegate_connections_active", "protocol", "http1")
		return open == fdMaxConns && ms.value("tidegate_accept_waits_total", "listener", "public") >= 1,
			fmt.Sprintf("%v connections open", open)
	})
	filesHeld := openFiles(t, pid)
	t.Logf("tidegate's open files: %d idle, %d with %d clients held (limit %d)", filesIdle, filesHeld, connected, fdLimit)

	var worst time.Duration
	for range 5 {
		for _, path := range []string{"/readyz", "/livez"} {
			code, took, err := timedGet("http://" + tg.Health + path)
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET %s with %d clients held: %d, %v after %s", path, connected, code, err, took)
			}
			worst = max(worst, took)
		}
	}
	code, took, err := timedGet("http://" + tg.Admin + "/status")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /status with %d clients held: %d, %v after %s", connected, code, err, took)
	}
	t.Logf("10 probes answered, the slowest in %s; /status in %s", worst.Round(time.Microsecond), took.Round(time.Microsecond))

	// tidegate's CPU over 2s while the clients are held: a measurement
	// window, not a wait for a condition.
	before, from := cpuTicks(t, pid), time.Now()
	window := time.NewTimer(2 * time.Second)
	<-window.C
	used, elapsed := cpuTicks(t, pid)-before, time.Since(from)
	share := float64(used) / 100 / elapsed.Seconds()
	t.Logf("tidegate's CPU with %d clients held: %d ticks in %s = %.1f%% of one core", connected, used, elapsed.Round(time.Millisecond), 100*share)
	if share >= 0.05 {
		t.Errorf("tidegate used %.1f%% of a core while idle clients were held, want under 5%%", 100*share)
	}
	select {
	case <-tg.exited:
		t.Fatalf("tidegate exited with code %d while the clients were held", tg.code)
	default:
	}

	release()
	c := newClient(t)
	eventually(t, waitTimeout, "a request through the public port after the clients left", func() (bool, string) {
		code, _, err := timedGet(tg.URL("/echo"))
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d, %v", code, err)
	})
	for i := range 20 {
		if resp, _ := get(t, c, tg.URL("/echo")); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the clients left: %d", i, resp.StatusCode)
		}
	}
	ms := scrape(t, admin, tg)
	if v := ms.value("tidegate_accept_errors_total", "listener", "public", "reason", "emfile"); v != 0 {
		t.Errorf("%v accepts failed with EMFILE under the limit, want none", v)
	}
	if v := ms.value("tidegate_connections_limit", "listener", "public"); v != fdMaxConns {
		t.Errorf("tidegate_connections_limit = %v, want %d", v, fdMaxConns)
	}
	t.Logf("accept waits: %v", ms.value("tidegate_accept_waits_total", "listener", "public"))
	tg.stop()
}

// TestFDLimitAboveTheBudgetWarnsAndCountsEMFILE: a --max-connections the
// open files cannot hold is accepted with a warning; once the files run
// out, the failed accepts are counted as emfile, and tidegate recovers when
// the clients go.
func TestFDLimitAboveTheBudgetWarnsAndCountsEMFILE(t *testing.T) {
	tg := launchUnderFileLimit(t, "--max-connections", "1000")
	tg.waitLog(waitTimeout, "the warning about max_connections", func(m map[string]any) bool {
		return m["level"] == "warn" && m["reason"] == "max_connections" && m["fits"] == float64(fdMaxConns)
	})
	connected, release := holdConns(t, tg.Listen, 2*fdLimit, 3*time.Second)
	tg.waitLog(waitTimeout, "a failed accept", func(m map[string]any) bool {
		msg, _ := m["msg"].(string)
		e, _ := m["error"].(string)
		return strings.HasPrefix(msg, "accept failed") && strings.Contains(e, "too many open files")
	})
	t.Logf("%d clients held; tidegate's open files: %d of %d", connected, openFiles(t, tg.cmd.Process.Pid), fdLimit)
	release()
	admin := newClient(t)
	eventually(t, waitTimeout, "the admin listener after the clients left", func() (bool, string) {
		code, _, err := timedGet("http://" + tg.Admin + "/status")
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d, %v", code, err)
	})
	ms := scrape(t, admin, tg)
	emfile := ms.value("tidegate_accept_errors_total", "listener", "public", "reason", "emfile")
	if emfile < 1 {
		t.Fatalf("tidegate_accept_errors_total{reason=emfile} = %v after running out of files, want at least 1", emfile)
	}
	t.Logf("accepts failed with EMFILE: %v", emfile)
	eventually(t, waitTimeout, "a request through the public port after the clients left", func() (bool, string) {
		code, _, err := timedGet(tg.URL("/echo"))
		return err == nil && code == http.StatusOK, fmt.Sprintf("%d, %v", code, err)
	})
	tg.stop()
}
