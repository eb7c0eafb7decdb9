package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/healthz"
	"github.com/tidegate/tidegate/test/wait"
)

// The injector moves a pod's probes into TIDEGATE_APP_PROBES: they run
// with the kubelet's semantics and answer under /app-health/<container>/,
// beside the config file's probes.
func TestAppProbesFromEnv(t *testing.T) {
	app := newFlippable(t)
	port := app.Listener.Addr().(*net.TCPAddr).Port
	probes := fmt.Sprintf(`[{"container":"app","readinessProbe":{"httpGet":{"path":"/health","port":%d,"httpHeaders":[{"name":"Authorization","value":"Bearer s3cret"}]},"periodSeconds":1,"failureThreshold":2},`+
		`"livenessProbe":{"tcpSocket":{"port":%d},"periodSeconds":1}}]`, port, port)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	if err := os.WriteFile(file, fmt.Appendf(nil, "probes:\n  - container: worker\n    startupProbe:\n      tcpSocket: {port: %d}\n      periodSeconds: 1\n", port), 0o600); err != nil {
		t.Fatal(err)
	}
	getenv := envOf(map[string]string{"TIDEGATE_APP_PROBES": probes, "TIDEGATE_CONFIG": file})
	sc, sig, reports, _ := runSidecar(t, getenv, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--drain-delay", "0s", "--drain-quiet", "0s")
	health := "http://" + sc.aux[0].ln.Addr().String()

	if code, _, body := get(t, health+"/app-health/app/readyz?verbose"); code != 503 || !strings.Contains(body, "app/readiness") {
		t.Fatalf("readyz while the app's /health fails: %d %q", code, body)
	}
	app.healthy.Store(true)
	eventually(t, "the app's readiness to pass", func() bool {
		code, _, _ := get(t, health+"/app-health/app/readyz")
		return code == 200
	})
	for _, path := range []string{"/app-health/app/livez", "/app-health/worker/startupz", "/readyz"} {
		wait.Until(t, 5*time.Second, path+" to pass", func() (bool, string) {
			code, _, body := get(t, health+path+"?verbose")
			return code == 200, fmt.Sprintf("%d %s", code, body)
		})
	}

	// failureThreshold 2: one failure leaves it ready, the second fails it.
	app.healthy.Store(false)
	readiness := func() healthz.Status {
		for _, st := range sc.probes.Statuses() {
			if st.Container == "app" && st.Kind == healthz.Readiness {
				return st
			}
		}
		t.Fatal("no app readiness probe in /status")
		return healthz.Status{}
	}
	wait.Until(t, 5*time.Second, "one failed readiness attempt", func() (bool, string) {
		st := readiness()
		return st.Failures >= 1, fmt.Sprintf("%+v", st)
	})
	code, _, _ := get(t, health+"/app-health/app/readyz")
	if st := readiness(); st.Failures == 1 && code != 200 {
		t.Errorf("after 1 of 2 allowed failures: readyz %d, want 200 (failureThreshold 2)", code)
	}
	wait.Until(t, 5*time.Second, "readiness to fail after 2 failures", func() (bool, string) {
		code, _, body := get(t, health+"/app-health/app/readyz?verbose")
		return code == 503, fmt.Sprintf("%d %s", code, body)
	})
	if st := readiness(); st.Failures < 2 {
		t.Errorf("readiness failed after %d failures, want 2", st.Failures)
	}

	// /config shows the targets, never a probe's headers.
	if shown := sc.conf.Load().effective()["app_probes"]; strings.Contains(shown, "s3cret") || !strings.Contains(shown, fmt.Sprintf("app readiness http://127.0.0.1:%d/health", port)) {
		t.Errorf("/config app_probes = %q", shown)
	}
	sig <- syscall.SIGTERM
	waitReport(t, reports)
}

func TestAppProbesErrors(t *testing.T) {
	base := []string{"--upstream", "127.0.0.1:3000"}
	for _, tc := range []struct {
		env, flag string
		want      []string
	}{
		{env: `[{"container":"app","readinessProbe":{"httpGet":{"port":8080}}},{"container":"web","livenessProbe":{"httpGet":{"port":"http"}}}]`,
			want: []string{"TIDEGATE_APP_PROBES", "app_probes[1]", `"http" is a named port`}},
		{env: `{"container":"app"}`, want: []string{"TIDEGATE_APP_PROBES", "want a JSON list", "not an object"}},
		{env: `[{"container":"app","readinessProbe":{"httpGet":{"port":8080}}}`, want: []string{"TIDEGATE_APP_PROBES", "not valid JSON"}},
		{env: `[{"container":"app"}]`, want: []string{"TIDEGATE_APP_PROBES", "app_probes[0]", "no readinessProbe"}},
		{flag: `[{"container":"app","readinessProbe":{"httpGet":{"port":8080},"periodSecond":3}}]`, want: []string{"--app-probes", "app_probes[0]", "periodSecond"}},
		{flag: `[{"readinessProbe":{"httpGet":{"port":8080}}}] []`, want: []string{"--app-probes", "more than one JSON value"}},
	} {
		args := base
		if tc.flag != "" {
			args = append(args, "--app-probes", tc.flag)
		}
		_, err := loadConfig(args, envOf(map[string]string{"TIDEGATE_APP_PROBES": tc.env}))
		if err == nil {
			t.Errorf("env %s flag %s: accepted", tc.env, tc.flag)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("env %s flag %s: error %q does not say %q", tc.env, tc.flag, err, w)
			}
		}
		if exitCode(err) != 2 {
			t.Errorf("%v: exit %d, want 2", err, exitCode(err))
		}
	}
	// In a file, app_probes takes a YAML list too.
	file := filepath.Join(t.TempDir(), "t.yaml")
	if err := os.WriteFile(file, []byte("upstream: 127.0.0.1:3000\napp_probes:\n  - container: app\n    readinessProbe: {tcpSocket: {port: 3000}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := loadConfig([]string{"--config", file}, envOf(nil))
	if err != nil || len(l.appProbes) != 1 || l.appProbes[0].TCPSocket == nil || l.appProbes[0].TCPSocket.Port != 3000 {
		t.Fatalf("app_probes as a YAML list: %v %+v", err, l)
	}
}

// --metrics-listen serves the admin listener's series and nothing else, on
// any address, without --admin-listen-public.
func TestMetricsListener(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	sc, sig, reports := startSidecar(t, app, "--metrics-listen", ":0", "--drain-delay", "0s", "--drain-quiet", "0s")
	waitServing(t, sc)
	var metricsAddr, adminAddr string
	for _, a := range sc.aux {
		switch a.name {
		case "metrics":
			metricsAddr = a.ln.Addr().String()
		case "admin":
			adminAddr = a.ln.Addr().String()
		}
	}
	if host, _, _ := net.SplitHostPort(metricsAddr); !net.ParseIP(host).IsUnspecified() {
		t.Fatalf("metrics listener on %s, want a wildcard address", metricsAddr)
	}
	_, port, _ := net.SplitHostPort(metricsAddr)
	base := "http://127.0.0.1:" + port
	code, _, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, `tidegate_phase{phase="serving"} 1`) {
		t.Fatalf("GET /metrics: %d %.300q", code, body)
	}
	_, _, adminBody := get(t, "http://"+adminAddr+"/metrics")
	if got, want := metricNames(body), metricNames(adminBody); got != want {
		t.Errorf("metrics listener series differ from the admin listener's:\n%s\nvs\n%s", got, want)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"HEAD", "/metrics", 200}, {"GET", "/debug/pprof/", 404}, {"GET", "/config", 404}, {"GET", "/status", 404},
		{"POST", "/drain", 404}, {"POST", "/metrics", 405}, {"GET", "/", 404}, {"GET", "/readyz", 404},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
	if p := sc.life.Phase(); p != drain.Serving {
		t.Errorf("phase %s after POST /drain on the metrics listener", p)
	}

	// The connection bound: with metricsMaxConns connections held open, the
	// next one waits in the backlog until one of them closes.
	var held []net.Conn
	for range metricsMaxConns {
		conn, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		held = append(held, conn)
	}
	// Each held connection is accepted once it answers a request.
	for _, conn := range held {
		fmt.Fprint(conn, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "HEAD"})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	extra, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	fmt.Fprint(extra, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(extra)
	_ = extra.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := br.ReadByte(); err == nil {
		t.Fatalf("connection %d was served while %d were open", metricsMaxConns+1, metricsMaxConns)
	}
	held[0].Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("connection %d after one closed: %v %v", metricsMaxConns+1, resp, err)
	}
	resp.Body.Close()

	sig <- syscall.SIGTERM
	waitReport(t, reports)
}

// metricNames is the sorted # TYPE lines of a Prometheus text page.
func metricNames(page string) string {
	var names []string
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, "# TYPE ") {
			names = append(names, l)
		}
	}
	return strings.Join(names, "\n")
}

func TestExitSummary(t *testing.T) {
	rep := &drain.Report{Trigger: "SIGTERM", Result: "timeout", InFlightAtTrigger: 3, Completed: 7, Cut: 1, ConnsClosed: 2,
		TriggeredAt: time.Unix(100, 0), StoppedAt: time.Unix(105, 250e6),
		App: drain.AppExit{Strategy: "child", Status: "exited", Code: 0}}
	got := exitSummary(0, rep, nil, "")
	for _, w := range []string{"exited with code 0: drained after SIGTERM", "trigger SIGTERM", "result timeout", "took 5.25s",
		"3 in flight at the trigger", "7 served during the drain", "1 cut at the end", "app stop: child: exited 0"} {
		if !strings.Contains(got, w) {
			t.Errorf("summary lacks %q:\n%s", w, got)
		}
	}

	// Huge: an app stop detail and an error of 10 KB each, with a URL
	// password and the drain token in them.
	huge := strings.Repeat("é", 5000) + " http://user:hunter2@app/stop tok3n"
	rep.App = drain.AppExit{Strategy: "http", Status: "failed", Detail: huge}
	got = exitSummary(1, rep, fmt.Errorf("stop: %s", huge), "tok3n")
	if len(got) > reportFileMax || !strings.HasSuffix(got, truncatedMarker) || !utf8.ValidString(got) {
		t.Errorf("huge summary: %d bytes, valid UTF-8 %v, ends %q", len(got), utf8.ValidString(got), got[max(0, len(got)-40):])
	}
	if !strings.HasPrefix(got, "tidegate exited with code 1") {
		t.Errorf("huge summary starts %q", got[:60])
	}
	small := exitSummary(1, nil, fmt.Errorf("listen on :8080 (http://u:hunter2@x) tok3n: %s", strings.Repeat("x", 5000)), "tok3n")
	if len(small) > reportFileMax || strings.Contains(small, "hunter2") || strings.Contains(small, "tok3n") || !strings.Contains(small, "start-up failed") {
		t.Errorf("start-up failure summary (%d bytes):\n%.300s", len(small), small)
	}
}

func TestWriteReportFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "termination-log")
	for _, text := range []string{"first, longer text\n", "second\n"} {
		if err := writeReportFile(path, text); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != text {
			t.Errorf("file holds %q, want %q", b, text)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	// Not a regular file: written in place (a device may not sync).
	if err := writeReportFile(os.DevNull, "to a device\n"); err != nil {
		t.Errorf("write to %s: %v", os.DevNull, err)
	}
	if err := checkReportFile(filepath.Join(dir, "no", "such", "dir")); err == nil {
		t.Error("a report file in a missing directory passed the start-up check")
	}
}

// A start-up failure after the config was read (a port in use) is
// written to the report file, with its error.
func TestReportFileOnStartupFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	path := filepath.Join(t.TempDir(), "report")
	var stderr bytes.Buffer
	code := cli([]string{"run", "--listen", "127.0.0.1:0", "--health-listen", taken.Addr().String(), "--admin-listen", "off",
		"--upstream", "127.0.0.1:1", "--drain-report-file", path}, env{getenv: envOf(nil), stdout: io.Discard, stderr: &stderr})
	b, _ := os.ReadFile(path)
	if code != 1 || !strings.Contains(string(b), "exited with code 1: start-up failed") || !strings.Contains(string(b), "error: health listener: listen on "+taken.Addr().String()) {
		t.Errorf("exit %d, stderr %q, report file:\n%s", code, stderr.String(), b)
	}
}

func TestCopyBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	content := bytes.Repeat([]byte("tidegate binary "), 1<<16)
	if err := os.WriteFile(src, content, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "tidegate")
	copied, err := copyBinary(src, dir)
	if err != nil || !copied {
		t.Fatalf("first copy: %v %v", copied, err)
	}
	fi, err := os.Stat(dst)
	if b, _ := os.ReadFile(dst); err != nil || !bytes.Equal(b, content) || fi.Mode().Perm() != 0o555 {
		t.Fatalf("copy: %v, mode %v, same content %v", err, fi.Mode(), bytes.Equal(b, content))
	}
	// Identical: skipped (the same file, not a new one).
	copied, err = copyBinary(src, dir)
	if fi2, _ := os.Stat(dst); err != nil || copied || !os.SameFile(fi, fi2) {
		t.Errorf("second copy of an identical binary: copied %v, %v, same file %v", copied, err, os.SameFile(fi, fi2))
	}
	// Same size, other content: replaced.
	changed := bytes.Clone(content)
	changed[len(changed)/2] ^= 1
	if err := os.WriteFile(src, changed, 0o755); err != nil {
		t.Fatal(err)
	}
	if copied, err = copyBinary(src, dir); err != nil || !copied {
		t.Errorf("copy of a changed binary: %v %v", copied, err)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, changed) {
		t.Error("the changed binary was not copied")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	// Not a directory, or none: an error naming it and what to do.
	for _, bad := range []string{src, filepath.Join(dir, "missing")} {
		_, err := copyBinary(src, bad)
		if err == nil || !strings.Contains(err.Error(), "--copy-binary-to "+bad) || !strings.Contains(err.Error(), "emptyDir") {
			t.Errorf("copy to %s: %v", bad, err)
		}
	}
	// Through the command: the running binary is copied before serving,
	// and a failure exits 1.
	var stderr bytes.Buffer
	code := cli([]string{"run", "--upstream", "127.0.0.1:1", "--copy-binary-to", src}, env{getenv: envOf(nil), stdout: io.Discard, stderr: &stderr})
	if code != 1 || !strings.Contains(stderr.String(), "--copy-binary-to "+src) {
		t.Errorf("run --copy-binary-to a file: exit %d, %q", code, stderr.String())
	}
}
