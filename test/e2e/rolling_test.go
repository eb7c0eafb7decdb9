package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/need"
)

// TestRollingRestart is the proof of the drain: two instances behind a real
// haproxy, under constant load, restarted one after the other. Behind
// tidegate no request fails; the same apps alone, stopping at once on
// SIGTERM as most apps do, lose requests. Not parallel: it is the one test
// whose numbers are the point, and it should not compete for the CPU.
func TestRollingRestart(t *testing.T) {
	hap := need.Tool(t, "haproxy", "/usr/sbin/haproxy")
	var withTG, alone loadResult
	okTG := t.Run("tidegate", func(t *testing.T) { rollingBehindTidegate(t, hap, &withTG) })
	okAlone := t.Run("apps alone", func(t *testing.T) { rollingAppsAlone(t, hap, &alone) })

	line := fmt.Sprintf("ROLLING RESTART: tidegate failed=%d of %d; apps alone failed=%d of %d",
		withTG.failed, withTG.total, alone.failed, alone.total)
	t.Log(line)
	fmt.Println(line)
	if alone.failed > 0 {
		t.Logf("the apps alone lost, for example:\n%s", strings.Join(alone.errs, "\n"))
	}
	if !okTG || !okAlone {
		return // the subtest said what went wrong; the numbers above are partial
	}
	if withTG.total == 0 || alone.total == 0 {
		t.Fatalf("no load was measured")
	}
	if withTG.failed != 0 {
		t.Errorf("behind tidegate %d of %d requests failed during the rolling restart, want 0; first failures:\n%s",
			withTG.failed, withTG.total, strings.Join(withTG.errs, "\n"))
	}
	if alone.failed == 0 {
		t.Errorf("the apps alone lost no request either (%d sent): the baseline does not show the problem, so the comparison proves nothing", alone.total)
	}
}

// The load settings of both halves.
const (
	rollingWorkers = 8
	rollingBound   = 20 * time.Second // each half's load stops by then, whatever happens
	// settleAnswers is how many answers an instance gives, after a start,
	// before the next step: the same amount of traffic in both halves.
	settleAnswers = 40
)

// tgSlot is one backend behind haproxy: a tidegate on fixed ports (so that
// a restart takes the same ones) supervising a fakeapp.
type tgSlot struct {
	listen, health, app int
}

func (s tgSlot) start(t *testing.T, id, record string) *tidegate {
	t.Helper()
	tg := launch(t, noEnv, "run",
		"--listen", hostPort(s.listen), "--health-listen", hostPort(s.health), "--admin-listen", "127.0.0.1:0",
		"--upstream", hostPort(s.app),
		"--drain-delay", "1s", "--drain-quiet", "300ms", "--drain-timeout", "10s",
		"--", fakeappBinary, "--listen", hostPort(s.app), "--on-term", "graceful", "--id", id, "--record", record)
	tg.waitServing()
	return tg
}

// rollingBehindTidegate restarts both instances behind tidegate under load
// and stores what the load saw in res, even when the test fails half way.
func rollingBehindTidegate(t *testing.T, hap string, res *loadResult) {
	dir := t.TempDir()
	slots := []tgSlot{
		{freePort(t), freePort(t), freePort(t)},
		{freePort(t), freePort(t), freePort(t)},
	}
	tgs := []*tidegate{slots[0].start(t, "a1", recordPath(dir, "a1")), slots[1].start(t, "b1", recordPath(dir, "b1"))}
	var servers []hapServer
	for i, s := range slots {
		servers = append(servers, hapServer{name: fmt.Sprintf("s%d", i+1), addr: hostPort(s.listen), checkPort: s.health})
	}
	hp := startHAProxy(t, hap, servers, "/readyz")

	l := startLoad(t, "http://"+hp.front, rollingWorkers, rollingBound)
	defer func() { *res = l.finish() }()
	l.waitAnswers(t, "a1", settleAnswers, waitTimeout)
	l.waitAnswers(t, "b1", settleAnswers, waitTimeout)

	for i, next := range []string{"a2", "b2"} {
		old := tgs[i]
		waitSlowInFlight(t, recordPath(dir, []string{"a1", "b1"}[i]))
		old.signal(syscall.SIGTERM)
		if code := old.waitExit(exitTimeout); code != 0 {
			t.Errorf("instance %d: tidegate exited %d after SIGTERM, want 0 (the app's graceful exit)", i+1, code)
		}
		rep := old.report()
		if rep["result"] != "complete" || rep["cut"] != 0.0 || rep["app_status"] != "exited" {
			t.Errorf("instance %d: drain report %v, want result complete, cut 0, app exited", i+1, rep)
		}
		// haproxy took the server out because its readiness failed (a
		// 503 from /readyz), not because its port closed.
		down := fmt.Sprintf("Server be/s%d is DOWN, reason: ", i+1)
		if got := firstLineWith(hp.out.String(), down); !strings.Contains(got, "Layer7 wrong status, code: 503") {
			t.Errorf("haproxy did not see instance %d's readiness fail before it stopped; its first DOWN line: %q", i+1, got)
		}
		tgs[i] = slots[i].start(t, next, recordPath(dir, next))
		// haproxy sends it traffic again: it saw /readyz healthy twice.
		l.waitAnswers(t, next, settleAnswers, waitTimeout)
	}
}

// firstLineWith returns the first line of s containing sub, or "".
func firstLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// rollingAppsAlone is the baseline: the same restarts of the apps alone,
// which stop at once on SIGTERM.
func rollingAppsAlone(t *testing.T, hap string, res *loadResult) {
	dir := t.TempDir()
	ports := []int{freePort(t), freePort(t)}
	start := func(port int, id string) *appProc {
		return startFakeapp(t, "--listen", hostPort(port), "--on-term", "exit", "--id", id, "--record", recordPath(dir, id))
	}
	apps := []*appProc{start(ports[0], "a1"), start(ports[1], "b1")}
	var servers []hapServer
	for i, p := range ports {
		servers = append(servers, hapServer{name: fmt.Sprintf("s%d", i+1), addr: hostPort(p), checkPort: p})
	}
	hp := startHAProxy(t, hap, servers, "/healthz")

	l := startLoad(t, "http://"+hp.front, rollingWorkers, rollingBound)
	defer func() { *res = l.finish() }()
	l.waitAnswers(t, "a1", settleAnswers, waitTimeout)
	l.waitAnswers(t, "b1", settleAnswers, waitTimeout)

	for i, next := range []string{"a2", "b2"} {
		waitSlowInFlight(t, recordPath(dir, []string{"a1", "b1"}[i]))
		apps[i].signal(syscall.SIGTERM)
		if code := apps[i].waitExit(exitTimeout); code != 0 {
			t.Errorf("app %d exited %d on SIGTERM, want 0", i+1, code)
		}
		apps[i] = start(ports[i], next)
		l.waitAnswers(t, next, settleAnswers, waitTimeout)
	}
}

func recordPath(dir, id string) string { return filepath.Join(dir, id+".jsonl") }

// waitSlowInFlight waits until the app recording to path is in the middle
// of a /slow request: the restart then has something in flight to lose.
func waitSlowInFlight(t *testing.T, path string) {
	t.Helper()
	eventually(t, waitTimeout, "a /slow request in flight at "+filepath.Base(path), func() (bool, string) {
		evs := readEvents(t, path)
		starts, ends := len(findEvents(evs, isEvent("request_start", "/slow"))), len(findEvents(evs, isEvent("request_end", "/slow")))
		return starts > ends, fmt.Sprintf("%d /slow started, %d ended", starts, ends)
	})
}

// hapServer is one backend server line of the haproxy config.
type hapServer struct {
	name      string
	addr      string // host:port of the traffic
	checkPort int    // port of the health check
}

// haproxyProc is a running haproxy.
type haproxyProc struct {
	front string  // the frontend's address
	out   *logBuf // its output: server state changes are logged as warnings
}

// startHAProxy runs haproxy in the foreground in front of servers, health
// checking checkPath every 100ms (down after one failure, up after two
// successes), with no retries and no redispatch: a request sent to a
// backend that fails is a failed request.
func startHAProxy(t *testing.T, bin string, servers []hapServer, checkPath string) *haproxyProc {
	t.Helper()
	front := hostPort(freePort(t))
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `global
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    no option redispatch
    retries 0
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    timeout http-keep-alive 30s

frontend fe
    bind %s
    default_backend be

backend be
    balance roundrobin
    option httpchk GET %s
    default-server inter 100ms fall 1 rise 2
`, front, checkPath)
	for _, s := range servers {
		fmt.Fprintf(&cfg, "    server %s %s check port %d\n", s.name, s.addr, s.checkPort)
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	out := newLogBuf()
	cmd := exec.Command(bin, "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("haproxy -f %s -db\n--- config ---\n%s--- output ---\n%s", path, cfg.String(), tail(out.String(), 8<<10))
		}
	})
	eventually(t, startTimeout, "haproxy accepting on "+front, func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("haproxy exited at start:\n%s\nconfig:\n%s", out.String(), cfg.String())
		default:
		}
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err != nil {
			return false, err.Error()
		}
		_ = c.Close()
		return true, ""
	})
	return &haproxyProc{front: front, out: out}
}

// loadResult is what a load run saw.
type loadResult struct {
	total, failed int
	errs          []string // the first few failures
}

// load is constant traffic from a few keep-alive clients: mostly fast
// requests, every fifth one /slow?d=300ms. It counts failures (a transport
// error or any status but 200) and which instance (X-Instance) answered.
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu      sync.Mutex
	res     loadResult
	seen    map[string]int // successes by X-Instance
	changed chan struct{}  // closed and replaced on every success
}

// maxErrs is how many failures a load keeps for the report.
const maxErrs = 10

// startLoad starts workers, each with its own keep-alive connection pool,
// sending to base until finish or bound, whichever is first. Each worker
// sends at most one request per 5ms and at most 10000 in all.
func startLoad(t *testing.T, base string, workers int, bound time.Duration) *load {
	l := &load{stop: make(chan struct{}), seen: map[string]int{}, changed: make(chan struct{})}
	deadline := time.Now().Add(bound)
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tr := &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 1,
				DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			pace := time.NewTicker(5 * time.Millisecond)
			defer pace.Stop()
			for n := 0; n < 10000 && time.Now().Before(deadline); n++ {
				select {
				case <-l.stop:
					return
				case <-pace.C:
				}
				path := "/"
				if (n+w)%5 == 4 {
					path = "/slow?d=300ms"
				}
				instance, err := l.send(c, base+path)
				l.record(path, instance, err)
			}
		}()
	}
	t.Cleanup(func() { l.finish() })
	return l
}

// send returns the answering instance, or an error.
func (l *load) send(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("status %d, reading the body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %q", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return resp.Header.Get("X-Instance"), nil
}

func (l *load) record(path, instance string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.total++
	if err != nil {
		l.res.failed++
		if len(l.res.errs) < maxErrs {
			l.res.errs = append(l.res.errs, fmt.Sprintf("%s GET %s: %v", time.Now().Format("15:04:05.000"), path, err))
		}
		return
	}
	l.seen[instance]++
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitAnswers waits until instance has answered n requests.
func (l *load) waitAnswers(t *testing.T, instance string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got, changed, res, seen := l.seen[instance], l.changed, l.res, fmt.Sprint(l.seen)
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("instance %s did not answer %d requests within %s (answers so far %v; %d of %d failed: %v)",
				instance, n, timeout, seen, res.failed, res.total, res.errs)
		}
	}
}

// finish stops the workers, waits for their last requests, and returns the
// totals. It may be called more than once.
func (l *load) finish() loadResult {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}
