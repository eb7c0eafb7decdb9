package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// reloadStatus is the part of the admin /status the reload tests read.
type reloadStatus struct {
	Phase         string            `json:"phase"`
	ConfigVersion int64             `json:"config_version"`
	ConfigHash    string            `json:"config_hash"`
	Config        map[string]string `json:"config"`
	Probes        []struct {
		Name     string `json:"name"`
		Target   string `json:"target"`
		Healthy  bool   `json:"healthy"`
		Implicit bool   `json:"implicit"`
	} `json:"probes"`
	App struct {
		PID     int   `json:"pid"`
		Running *bool `json:"running"`
	} `json:"app"`
	LastReload *struct {
		At      time.Time `json:"at"`
		Trigger string    `json:"trigger"`
		Result  string    `json:"result"`
		Error   string    `json:"error"`
		Changed []string  `json:"changed"`
	} `json:"last_reload"`
}

func readStatus(t *testing.T, c *http.Client, tg *tidegate) reloadStatus {
	t.Helper()
	resp, body := get(t, c, "http://"+tg.Admin+"/status")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /status: %d %s", resp.StatusCode, body)
	}
	var st reloadStatus
	decodeJSON(t, body, &st)
	return st
}

// waitStatus polls /status until cond holds, and returns it. The log line
// of a reload may come a moment before /status shows it.
func waitStatus(t *testing.T, c *http.Client, tg *tidegate, what string, cond func(reloadStatus) bool) reloadStatus {
	t.Helper()
	var st reloadStatus
	eventually(t, waitTimeout, what, func() (bool, string) {
		st = readStatus(t, c, tg)
		lr := "none"
		if st.LastReload != nil {
			lr = fmt.Sprintf("%+v", *st.LastReload)
		}
		return cond(st), fmt.Sprintf("phase %s, config_version %d, config_hash %s, last_reload %s", st.Phase, st.ConfigVersion, st.ConfigHash, lr)
	})
	return st
}

// writeConfig replaces the config file whole (a new file renamed over the
// old, as configuration tools and Kubernetes' ConfigMap volumes do), so
// that a reload never reads half of it.
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitNthLog waits for the n-th (from 1) JSON line on stdout for which
// match is true, and returns it.
func (tg *tidegate) waitNthLog(n int, what string, match func(map[string]any) bool) map[string]any {
	tg.t.Helper()
	seen := 0
	return tg.waitLog(waitTimeout, what, func(m map[string]any) bool {
		if match(m) {
			seen++
		}
		return seen == n
	})
}

// countLogs returns how many JSON lines on stdout so far match.
func (tg *tidegate) countLogs(match func(map[string]any) bool) int {
	n := 0
	for _, m := range tg.stdout.jsonLines() {
		if match(m) {
			n++
		}
	}
	return n
}

func isReloaded(m map[string]any) bool { return m["msg"] == "config reloaded" }

func isRefused(m map[string]any) bool {
	return m["msg"] == "config reload refused; the running config stays"
}

func isDrainReport(m map[string]any) bool { return m["msg"] == "drain report" }

// logTime is the time of a log line.
func logTime(t *testing.T, m map[string]any) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["ts"]))
	if err != nil {
		t.Fatalf("log line %v: ts: %v", m, err)
	}
	return ts
}

// strs returns a log line's list field as strings.
func strs(v any) []string {
	items, _ := v.([]any)
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, fmt.Sprint(it))
	}
	return out
}

// answers returns how many requests instance has answered so far.
func (l *load) answers(instance string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[instance]
}

// checkLoad finishes the load and fails the test unless it sent requests
// and none failed.
func checkLoad(t *testing.T, l *load, during string) loadResult {
	t.Helper()
	res := l.finish()
	if res.total == 0 {
		t.Errorf("no request was sent during %s", during)
	}
	if res.failed != 0 {
		t.Errorf("%d of %d requests failed during %s, want 0:\n%s", res.failed, res.total, during, strings.Join(res.errs, "\n"))
	}
	t.Logf("load during %s: %d requests, %d failed", during, res.total, res.failed)
	return res
}

// TestReloadUnderLoad: SIGHUP applies an edited config file while requests
// keep flowing: the readiness probe, the log level and the drain delay
// change, none of the requests fails, and /status, /config, the log and the
// metrics all say so.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	app := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a")
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(probePath, period, level, delay string) string {
		return fmt.Sprintf("upstream: %s\nprobe:\n  readiness: http://%s%s\n  period: %s\nlog:\n  level: %s\ndrain:\n  delay: %s\n  quiet: 100ms\n",
			app.Addr, app.Addr, probePath, period, level, delay)
	}
	writeConfig(t, file, conf("/healthz", "1s", "info", "200ms"))
	tg := start(t, "--config", file)
	c := newClient(t)

	before := readStatus(t, c, tg)
	if before.ConfigVersion != 1 || before.ConfigHash == "" || before.LastReload != nil {
		t.Fatalf("/status at start: config_version %d, config_hash %q, last_reload %+v; want 1, a hash, none",
			before.ConfigVersion, before.ConfigHash, before.LastReload)
	}
	if len(before.Probes) != 1 || before.Probes[0].Target != "http://"+app.Addr+"/healthz" || before.Probes[0].Implicit {
		t.Fatalf("/status probes at start: %+v, want the file's readiness probe on /healthz", before.Probes)
	}

	l := startLoad(t, tg.URL(""), 4, 20*time.Second)
	l.waitAnswers(t, "a", 40, waitTimeout)
	writeConfig(t, file, conf("/readyz", "300ms", "debug", "1s"))
	tg.signal(syscall.SIGHUP)
	rl := tg.waitLog(waitTimeout, "the config reloaded line", isReloaded)
	if rl["logger"] != "config" || rl["trigger"] != "SIGHUP" || rl["config_version"] != 2.0 {
		t.Errorf("reload line %v: want logger config, trigger SIGHUP, config_version 2", rl)
	}
	wantChanged := []string{"drain.delay", "log.level", "probe.period", "probe.readiness"}
	if got := strs(rl["changed"]); !slices.Equal(got, wantChanged) {
		t.Errorf("reload line changed %v, want %v", got, wantChanged)
	}
	// The load goes on well past the reload.
	l.waitAnswers(t, "a", l.answers("a")+40, waitTimeout)
	checkLoad(t, l, "the reload")

	waitStatus(t, c, tg, "/status showing the reload", func(st reloadStatus) bool {
		lr := st.LastReload
		return st.ConfigVersion == 2 && st.ConfigHash != before.ConfigHash && st.Phase == "serving" &&
			lr != nil && lr.Result == "success" && lr.Trigger == "SIGHUP" && lr.Error == "" && slices.Equal(lr.Changed, wantChanged)
	})
	// The new probe runs (every 300ms) and passes.
	eventually(t, waitTimeout, "the new readiness probe passing", func() (bool, string) {
		st := readStatus(t, c, tg)
		ok := len(st.Probes) == 1 && st.Probes[0].Target == "http://"+app.Addr+"/readyz" && st.Probes[0].Healthy
		return ok, fmt.Sprintf("probes %+v", st.Probes)
	})
	resp, body := get(t, c, "http://"+tg.Admin+"/config")
	var cfg map[string]string
	decodeJSON(t, body, &cfg)
	if resp.StatusCode != http.StatusOK || cfg["log.level"] != "debug" || cfg["drain.delay"] != "1s" || cfg["probe.period"] != "300ms" {
		t.Errorf("/config after the reload: %d log.level %q drain.delay %q probe.period %q; want debug, 1s, 300ms",
			resp.StatusCode, cfg["log.level"], cfg["drain.delay"], cfg["probe.period"])
	}

	// Debug lines: none before the reload, and one now for a signal that
	// is logged only at debug.
	lines := tg.stdout.jsonLines()
	for _, m := range lines {
		if m["level"] == "debug" {
			t.Errorf("a debug line at log.level info: %v", m)
		}
		if isReloaded(m) {
			break
		}
	}
	tg.signal(syscall.SIGUSR2)
	tg.waitLog(waitTimeout, "a debug line after the reload to log.level debug", func(m map[string]any) bool {
		return m["level"] == "debug" && m["msg"] == "signal ignored"
	})

	ms := scrape(t, c, tg)
	if s, f := ms.value("tidegate_config_reloads_total", "result", "success"), ms.value("tidegate_config_reloads_total", "result", "failure"); s != 1 || f != 0 {
		t.Errorf("tidegate_config_reloads_total success %v failure %v, want 1 and 0", s, f)
	}
	if v, ok := ms.get("tidegate_config_last_reload_successful"); !ok || v != 1 {
		t.Errorf("tidegate_config_last_reload_successful %v (present %v), want 1", v, ok)
	}

	// The drain uses the new delay: 1s before closing, not 200ms.
	tg.stop()
	rep := tg.report()
	if closing, _ := rep["closing_after"].(float64); closing < 1.0 {
		t.Errorf("drain report %v: closing_after %.3fs, want at least the reloaded drain.delay 1s", rep, closing)
	}
}

// TestReloadRefused: a config file that cannot be applied is refused whole,
// whether it is not YAML, has a bad value, changes a setting that cannot
// change while tidegate runs, or comes by POST /reload; the old config keeps
// serving every request, and the log, /status and the metrics say why. A
// good file afterwards is applied.
func TestReloadRefused(t *testing.T) {
	t.Parallel()
	app := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a")
	h1, h2 := hostPort(freePort(t)), hostPort(freePort(t))
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	good := fmt.Sprintf("upstream: %s\nhealth_listen: %s\ndrain:\n  delay: 200ms\n  quiet: 100ms\n", app.Addr, h1)
	writeConfig(t, file, good)
	tg := launch(t, noEnv, "run", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config", file)
	tg.waitServing()
	if tg.Health != h1 {
		t.Fatalf("health listener on %s, want the file's %s", tg.Health, h1)
	}
	c := newClient(t)
	hash := readStatus(t, c, tg).ConfigHash

	l := startLoad(t, tg.URL(""), 4, 30*time.Second)
	l.waitAnswers(t, "a", 20, waitTimeout)
	cases := []struct {
		name  string
		yaml  string
		admin bool     // POST /reload instead of SIGHUP
		want  []string // in the error
	}{
		{"not YAML", "upstream: [" + app.Addr + "\n", false, []string{"not valid YAML", file}},
		{"negative drain delay", strings.Replace(good, "delay: 200ms", "delay: -1s", 1), false,
			[]string{"drain.delay", `"-1s"`, "negative"}},
		{"health_listen changed", strings.Replace(good, h1, h2, 1), false,
			[]string{"health_listen", `"` + h1 + `"`, `"` + h2 + `"`, "restart tidegate"}},
		{"bad log level by POST /reload", good + "log:\n  level: loud\n", true, []string{"log.level", `"loud"`}},
	}
	for i, tc := range cases {
		writeConfig(t, file, tc.yaml)
		trigger := "SIGHUP"
		if tc.admin {
			trigger = "admin"
			resp, body := post(t, c, "http://"+tg.Admin+"/reload")
			var ans struct {
				Result        string `json:"result"`
				Error         string `json:"error"`
				ConfigVersion int64  `json:"config_version"`
			}
			decodeJSON(t, body, &ans)
			if resp.StatusCode != http.StatusUnprocessableEntity || ans.Result != "failure" || ans.ConfigVersion != 1 || !strings.Contains(ans.Error, "loud") {
				t.Errorf("%s: POST /reload answered %d %s; want 422, result failure naming the value, config_version 1", tc.name, resp.StatusCode, body)
			}
		} else {
			tg.signal(syscall.SIGHUP)
		}
		m := tg.waitNthLog(i+1, fmt.Sprintf("refused reload %d (%s)", i+1, tc.name), isRefused)
		errText, _ := m["error"].(string)
		for _, w := range tc.want {
			if !strings.Contains(errText, w) {
				t.Errorf("%s: the refusal's error %q does not name %q", tc.name, errText, w)
			}
		}
		if m["logger"] != "config" || m["level"] != "error" || m["trigger"] != trigger || m["config_version"] != 1.0 || m["reason"] != "reload_refused" {
			t.Errorf("%s: refusal line %v: want logger config, level error, trigger %s, config_version 1, reason reload_refused", tc.name, m, trigger)
		}
		waitStatus(t, c, tg, tc.name+": /status showing the refusal and the old config serving", func(st reloadStatus) bool {
			lr := st.LastReload
			return st.ConfigVersion == 1 && st.ConfigHash == hash && st.Phase == "serving" &&
				lr != nil && lr.Result == "failure" && lr.Error == errText && lr.Trigger == trigger
		})
		ms := scrape(t, c, tg)
		if f, s := ms.value("tidegate_config_reloads_total", "result", "failure"), ms.value("tidegate_config_reloads_total", "result", "success"); f != float64(i+1) || s != 0 {
			t.Errorf("%s: tidegate_config_reloads_total failure %v success %v, want %d and 0", tc.name, f, s, i+1)
		}
		if v := ms.value("tidegate_config_last_reload_successful"); v != 0 {
			t.Errorf("%s: tidegate_config_last_reload_successful %v, want 0", tc.name, v)
		}
		// The old config serves on: the app answers, the health
		// listener is where it was.
		l.waitAnswers(t, "a", l.answers("a")+20, waitTimeout)
		if code, body, err := statusCode(c, "http://"+h1+"/readyz"); err != nil || code != http.StatusOK {
			t.Errorf("%s: /readyz on %s: %d %q %v, want 200", tc.name, h1, code, body, err)
		}
	}

	// A good file is applied.
	writeConfig(t, file, strings.Replace(good, "delay: 200ms", "delay: 300ms", 1))
	tg.signal(syscall.SIGHUP)
	rl := tg.waitLog(waitTimeout, "the config reloaded line", isReloaded)
	if rl["config_version"] != 2.0 || !slices.Equal(strs(rl["changed"]), []string{"drain.delay"}) {
		t.Errorf("reload line %v: want config_version 2 changing drain.delay", rl)
	}
	metricEventually(t, c, tg, 1, "tidegate_config_last_reload_successful")
	metricEventually(t, c, tg, 1, "tidegate_config_reloads_total", "result", "success")
	metricEventually(t, c, tg, float64(len(cases)), "tidegate_config_reloads_total", "result", "failure")
	waitStatus(t, c, tg, "/status showing the good reload", func(st reloadStatus) bool {
		return st.ConfigVersion == 2 && st.LastReload != nil && st.LastReload.Result == "success" && st.LastReload.Error == ""
	})
	l.waitAnswers(t, "a", l.answers("a")+20, waitTimeout)
	checkLoad(t, l, "the refused reloads")
	tg.stop()
}

// TestReloadUpstream: a reload that points the listener at another app
// while a slow request is in flight on the first: the slow request ends with
// 200 from the first app, every new request goes to the second, and no
// request of the load fails.
func TestReloadUpstream(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	recA := filepath.Join(dir, "a.jsonl")
	a := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a", "--record", recA)
	b := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "b")
	file := filepath.Join(dir, "tidegate.yaml")
	conf := func(up string) string {
		return "upstream: " + up + "\ndrain:\n  delay: 200ms\n  quiet: 100ms\n  timeout: 10s\n"
	}
	writeConfig(t, file, conf(a.Addr))
	tg := start(t, "--config", file)

	// The slow request goes first, so that it is the only /slow a has
	// seen when the test waits for it.
	type answer struct {
		at             time.Time
		status         int
		instance, body string
		err            error
	}
	slowDone := make(chan answer, 1)
	slowClient := newClient(t)
	go func() {
		resp, err := slowClient.Get(tg.URL("/slow?d=3s"))
		if err != nil {
			slowDone <- answer{at: time.Now(), err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		slowDone <- answer{time.Now(), resp.StatusCode, resp.Header.Get("X-Instance"), string(body), err}
	}()
	waitEvent(t, recA, waitTimeout, "a receiving the slow request", isEvent("request_start", "/slow"))

	l := startLoad(t, tg.URL(""), 4, 20*time.Second)
	l.waitAnswers(t, "a", 20, waitTimeout)
	writeConfig(t, file, conf(b.Addr))
	tg.signal(syscall.SIGHUP)
	rl := tg.waitLog(waitTimeout, "the config reloaded line", isReloaded)
	if !slices.Contains(strs(rl["changed"]), "upstream.address") {
		t.Errorf("reload line %v: want upstream.address among the changes", rl)
	}
	reloadedAt := logTime(t, rl)
	l.waitAnswers(t, "b", 40, waitTimeout)

	// New connections go to b only.
	fresh := newClient(t)
	for i := range 10 {
		resp, body := get(t, fresh, tg.URL("/"))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Instance") != "b" {
			t.Fatalf("request %d after the reload: %d from %q %q, want 200 from b", i, resp.StatusCode, resp.Header.Get("X-Instance"), body)
		}
	}
	slow := recv(t, slowDone, 10*time.Second, "the slow request in flight during the reload")
	if slow.err != nil || slow.status != http.StatusOK || slow.instance != "a" || !strings.Contains(slow.body, "slept 3s") {
		t.Errorf("the slow request: %d from %q %q %v; want 200 from a after 3s", slow.status, slow.instance, slow.body, slow.err)
	}
	if !slow.at.After(reloadedAt) {
		t.Errorf("the slow request ended at %s, before the reload at %s: it was not in flight during it", slow.at, reloadedAt)
	}
	retired := tg.waitLog(waitTimeout, "the old server retired", func(m map[string]any) bool { return m["msg"] == "old server retired" })
	if retired["result"] != "complete" {
		t.Errorf("old server retired %v: want result complete (the slow request was not cut)", retired)
	}
	checkLoad(t, l, "the upstream change")
	if st := readStatus(t, fresh, tg); st.Config["upstream.address"] != b.Addr || st.ConfigVersion != 2 {
		t.Errorf("/status after the reload: upstream.address %q config_version %d; want %s, 2", st.Config["upstream.address"], st.ConfigVersion, b.Addr)
	}
	tg.stop()
}

// TestReloadListenAddress: a reload that moves the public listener to
// another port serves on the new port at once, while the old one keeps
// answering for drain.delay (load balancers still sending there) and then
// refuses connections.
func TestReloadListenAddress(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	p1, p2 := hostPort(freePort(t)), hostPort(freePort(t))
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	const delay = time.Second
	conf := func(listen string) string {
		return fmt.Sprintf("listen: %s\nupstream: %s\ndrain:\n  delay: %s\n  quiet: 100ms\n", listen, app.Addr, delay)
	}
	writeConfig(t, file, conf(p1))
	tg := launch(t, noEnv, "run", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config", file)
	tg.waitServing()
	if tg.Listen != p1 {
		t.Fatalf("listening on %s, want the file's %s", tg.Listen, p1)
	}
	// One connection per request: what a new client sees.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: waitTimeout}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	once := &http.Client{Transport: tr, Timeout: waitTimeout}
	if resp, body := get(t, once, "http://"+p1+"/status?code=200"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET on %s before the reload: %d %s", p1, resp.StatusCode, body)
	}

	writeConfig(t, file, conf(p2))
	tg.signal(syscall.SIGHUP)
	rl := tg.waitLog(waitTimeout, "the config reloaded line", isReloaded)
	if !slices.Equal(strs(rl["changed"]), []string{"listen"}) {
		t.Errorf("reload line %v: want listen the only change", rl)
	}
	retire := tg.waitLog(waitTimeout, "the old server retiring", func(m map[string]any) bool {
		return m["msg"] == "retiring the listener's old server"
	})
	if retire["address"] != p1 || retire["delay"] != delay.Seconds() {
		t.Errorf("retiring line %v: want address %s, delay %v", retire, p1, delay.Seconds())
	}
	retiredAt := logTime(t, retire)
	if resp, body := get(t, once, "http://"+p2+"/status?code=200"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET on the new address %s at once after the reload: %d %s", p2, resp.StatusCode, body)
	}

	// The old address answers every request until the delay is over, then
	// refuses connections.
	var answered int
	var refusedAt time.Time
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	deadline := time.Now().Add(delay + waitTimeout)
	for n := 0; n < 1000 && time.Now().Before(deadline); n++ {
		code, body, err := statusCode(once, "http://"+p1+"/status?code=200")
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("GET on the old address %s, %s after the reload (%d answered): %v; want 200 or, after the delay, connection refused",
					p1, time.Since(retiredAt), answered, err)
			}
			refusedAt = time.Now()
			break
		}
		if code != http.StatusOK {
			t.Fatalf("GET on the old address %s, %s after the reload: %d %q, want 200", p1, time.Since(retiredAt), code, body)
		}
		answered++
		<-pace.C
	}
	if refusedAt.IsZero() {
		t.Fatalf("the old address %s still answered %s after the reload (%d requests)", p1, delay+waitTimeout, answered)
	}
	if early := refusedAt.Sub(retiredAt); early < delay {
		t.Errorf("the old address refused connections %s after the reload, before drain.delay %s", early, delay)
	}
	if answered < 2 {
		t.Errorf("the old address answered %d requests after the reload, want it to answer during drain.delay", answered)
	}
	t.Logf("the old address answered %d requests after the reload and refused connections %s after it",
		answered, refusedAt.Sub(retiredAt).Round(time.Millisecond))
	if m := tg.waitLog(waitTimeout, "the old server retired", func(m map[string]any) bool { return m["msg"] == "old server retired" }); m["address"] != p1 || m["result"] != "complete" {
		t.Errorf("old server retired %v: want address %s, result complete", m, p1)
	}
	if resp, body := get(t, once, "http://"+p2+"/status?code=200"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET on the new address %s after the old one closed: %d %s", p2, resp.StatusCode, body)
	}
	c := newClient(t)
	if st := readStatus(t, c, tg); st.Config["listen"] != p2 || st.ConfigVersion != 2 || st.Phase != "serving" {
		t.Errorf("/status: listen %q config_version %d phase %s; want %s, 2, serving", st.Config["listen"], st.ConfigVersion, st.Phase, p2)
	}
	tg.stop()
}

// TestStraySignals: the signals a person or a tool may send by mistake do
// not end tidegate: SIGUSR2, SIGWINCH and SIGPIPE are ignored (logged at
// debug), SIGUSR1 reopens the access log (logrotate), and through all of it
// tidegate serves on with no drain.
func TestStraySignals(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	access := filepath.Join(t.TempDir(), "access.log")
	tg := start(t, "--upstream", app.Addr, "--log-level", "debug", "--access-log="+access, "--drain-delay", "100ms", "--drain-quiet", "50ms")
	c := newClient(t)
	serving := func(after string) {
		t.Helper()
		if resp, body := get(t, c, tg.URL("/status?code=200")); resp.StatusCode != http.StatusOK {
			t.Fatalf("request after %s: %d %s", after, resp.StatusCode, body)
		}
		if p := phaseOf(t, c, tg); p != "serving" {
			t.Fatalf("phase %q after %s, want serving", p, after)
		}
	}
	serving("the start")

	for _, s := range []struct {
		sig   syscall.Signal
		names []string // as tidegate may log it
	}{
		{syscall.SIGUSR2, []string{"SIGUSR2"}},
		{syscall.SIGWINCH, []string{"SIGWINCH"}},
		{syscall.SIGPIPE, []string{"SIGPIPE", "13"}},
	} {
		tg.signal(s.sig)
		m := tg.waitLog(waitTimeout, s.sig.String()+" logged as ignored", func(m map[string]any) bool {
			return m["msg"] == "signal ignored" && slices.Contains(s.names, fmt.Sprint(m["signal"]))
		})
		if m["level"] != "debug" {
			t.Errorf("%v: %v, want a debug line", s.sig, m)
		}
		if m["signal"] != s.names[0] {
			t.Logf("%v is logged as signal %q, not %q", s.sig, m["signal"], s.names[0])
		}
		serving(s.sig.String())
	}

	// SIGUSR1 after logrotate moved the file: a new file is started.
	eventually(t, waitTimeout, "the access log's first lines", func() (bool, string) {
		n := accessLines(t, access, "/status")
		return n > 0, fmt.Sprintf("%d lines for /status", n)
	})
	rotated := access + ".1"
	if err := os.Rename(access, rotated); err != nil {
		t.Fatal(err)
	}
	tg.signal(syscall.SIGUSR1)
	if m := tg.waitLog(waitTimeout, "the access log reopened", func(m map[string]any) bool { return m["msg"] == "access log reopened" }); m["access_log"] != access || m["trigger"] != "SIGUSR1" {
		t.Errorf("reopen line %v: want access_log %s, trigger SIGUSR1", m, access)
	}
	serving("SIGUSR1")
	if resp, body := get(t, c, tg.URL("/echo")); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /echo after SIGUSR1: %d %s", resp.StatusCode, body)
	}
	eventually(t, waitTimeout, "the request after SIGUSR1 in the new access log", func() (bool, string) {
		n := accessLines(t, access, "/echo")
		return n == 1, fmt.Sprintf("%d lines for /echo", n)
	})
	if n := accessLines(t, rotated, "/echo"); n != 0 {
		t.Errorf("the rotated access log got %d lines after SIGUSR1, want 0", n)
	}

	if n := tg.countLogs(func(m map[string]any) bool {
		return isDrainReport(m) || (m["msg"] == "phase changed" && m["phase"] != "serving")
	}); n != 0 {
		t.Errorf("%d drain lines after stray signals, want none:\n%s", n, tg.stdout.String())
	}
	if st := readStatus(t, c, tg); st.ConfigVersion != 1 {
		t.Errorf("config_version %d after stray signals, want 1 (none is a reload)", st.ConfigVersion)
	}
	tg.stop()
	if rep := tg.report(); rep["trigger"] != "SIGTERM" {
		t.Errorf("drain report %v: want trigger SIGTERM", rep)
	}
}

// accessLines counts the access log lines of a file for path.
func accessLines(t *testing.T, file, path string) int {
	t.Helper()
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := parseJSONLine(sc.Text()); ok && m["msg"] == "request" && m["path"] == path {
			n++
		}
	}
	return n
}

// TestForwardSignals: with --forward-signals SIGHUP and SIGUSR1 those signals go
// to the app child, which keeps running (it reloads on them), and tidegate
// does not act on them itself: no reload, no reopen. POST /reload still
// reloads tidegate's config.
func TestForwardSignals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := filepath.Join(dir, "app.jsonl")
	file := filepath.Join(dir, "tidegate.yaml")
	writeConfig(t, file, "drain:\n  delay: 200ms\n  quiet: 100ms\n")
	tg := startWithChild(t, []string{"--config", file, "--forward-signals", "SIGHUP", "--forward-signals", "SIGUSR1"},
		"--on-hup", "record", "--record", rec, "--id", "child")
	c := newClient(t)
	pid := readStatus(t, c, tg).App.PID

	for _, s := range []struct {
		sig  syscall.Signal
		name string
	}{{syscall.SIGHUP, "SIGHUP"}, {syscall.SIGUSR1, "SIGUSR1"}} {
		tg.signal(s.sig)
		waitEvent(t, rec, waitTimeout, "the app receiving "+s.name, func(e appEvent) bool { return e.Event == "signal" && e.Signal == s.name })
		m := tg.waitLog(waitTimeout, s.name+" forwarded", func(m map[string]any) bool {
			return m["msg"] == "signal forwarded to the app" && m["signal"] == s.name
		})
		if m["pid"] != float64(pid) {
			t.Errorf("forward line %v: want the app's pid %d", m, pid)
		}
		if resp, body := get(t, c, tg.URL("/")); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Instance") != "child" {
			t.Fatalf("request after %s: %d %s, want 200 from the app", s.name, resp.StatusCode, body)
		}
	}
	st := readStatus(t, c, tg)
	if st.ConfigVersion != 1 || st.LastReload != nil || st.App.PID != pid || st.App.Running == nil || !*st.App.Running || st.Phase != "serving" {
		t.Errorf("/status after forwarded signals: config_version %d last_reload %+v app %+v phase %s; want 1, none, the same app running, serving",
			st.ConfigVersion, st.LastReload, st.App, st.Phase)
	}
	if n := tg.countLogs(func(m map[string]any) bool {
		return isReloaded(m) || isRefused(m) || m["msg"] == "access log reopened" || isDrainReport(m)
	}); n != 0 {
		t.Errorf("tidegate acted on a forwarded signal itself (%d lines):\n%s", n, tg.stdout.String())
	}

	// tidegate's own reload is POST /reload.
	writeConfig(t, file, "drain:\n  delay: 300ms\n  quiet: 100ms\n")
	resp, body := post(t, c, "http://"+tg.Admin+"/reload")
	var ans struct {
		Result        string `json:"result"`
		ConfigVersion int64  `json:"config_version"`
	}
	decodeJSON(t, body, &ans)
	if resp.StatusCode != http.StatusOK || ans.Result != "success" || ans.ConfigVersion != 2 {
		t.Errorf("POST /reload: %d %s, want 200, success, config_version 2", resp.StatusCode, body)
	}
	waitStatus(t, c, tg, "/status showing the reload by POST /reload", func(st reloadStatus) bool {
		return st.ConfigVersion == 2 && st.Config["drain.delay"] == "300ms" && st.LastReload != nil && st.LastReload.Trigger == "admin"
	})
	if n := len(findEvents(readEvents(t, rec), isEvent("signal", ""))); n != 2 {
		t.Errorf("the app recorded %d signals, want the 2 forwarded (POST /reload signals nothing)", n)
	}
	tg.stop()
}
