package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/test/wait"
)

// runLogged runs an in-process sidecar with exactly args, its logs kept in
// the returned lockedLog, and stops it at the end of the test.
func runLogged(t *testing.T, args ...string) (*sidecar, chan os.Signal, <-chan drain.Report, *lockedLog) {
	t.Helper()
	l, err := loadConfig(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedLog{}
	logs, err := newLoggers(&l.cfg, out, out)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		t.Fatal(err)
	}
	sig := make(chan os.Signal, 8)
	reports := make(chan drain.Report, 1)
	done := make(chan struct{})
	go func() { _, rep := sc.run(sig); reports <- rep; close(done) }()
	t.Cleanup(func() {
		for range 2 { // the second means stop now
			select {
			case sig <- syscall.SIGINT:
			default:
			}
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("the sidecar did not stop")
		}
	})
	return sc, sig, reports, out
}

// auxURL is "http://" and the address of the health or admin listener.
func auxURL(t *testing.T, sc *sidecar, name string) string {
	t.Helper()
	for _, a := range sc.aux {
		if a.name == name {
			return "http://" + a.ln.Addr().String()
		}
	}
	t.Fatalf("no %s listener", name)
	return ""
}

// call sends one request without keep-alive; hdr are name, value pairs,
// and "Host" sets the request's Host.
func call(t *testing.T, method, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func mustNotContain(t *testing.T, where, s string, secrets ...string) {
	t.Helper()
	for _, x := range secrets {
		if strings.Contains(s, x) {
			t.Errorf("%s shows the secret %q:\n%s", where, x, s)
		}
	}
}

// /debug/pprof/cmdline used to be pprof.Cmdline: the drain token and a URL
// password in full, to whoever reached the admin listener.
func TestPprofCmdlineRedactsSecrets(t *testing.T) {
	app := namedApp(t, "a", nil)
	sc, _, _, _ := runLogged(t, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--drain-token", "tok-flag", "--drain-delay", "0s",
		"--app-stop", "http", "--app-stop-url=http://ops:hunter2@127.0.0.1:1/stop")
	waitServing(t, sc)
	code, body := call(t, http.MethodGet, auxURL(t, sc, "admin")+"/debug/pprof/cmdline")
	if code != http.StatusOK {
		t.Fatalf("cmdline: %d %q", code, body)
	}
	mustNotContain(t, "/debug/pprof/cmdline", body, "tok-flag", "hunter2")
	argv := strings.Split(body, "\x00")
	for _, want := range []string{"run", "--drain-token", redacted, "--app-stop-url=http://ops:xxxxx@127.0.0.1:1/stop", "--drain-delay", "0s"} {
		if !slices.Contains(argv, want) {
			t.Errorf("cmdline %q lacks %q", argv, want)
		}
	}
	if i := slices.Index(argv, "--drain-token"); i < 0 || i+1 >= len(argv) || argv[i+1] != redacted {
		t.Errorf("cmdline %q: the value after --drain-token is not %s", argv, redacted)
	}
}

func TestRedactArgs(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"tidegate", "run", "--drain-token", "T"}, []string{"tidegate", "run", "--drain-token", redacted}},
		{[]string{"run", "--drain-token=T", "-drain-token", "T", "-drain-token=T"}, []string{"run", "--drain-token=" + redacted, "-drain-token", redacted, "-drain-token=" + redacted}},
		{[]string{"--readiness", "http://u:p@h:1/r?x=1", "--drain-delay", "1s"}, []string{"--readiness", "http://u:xxxxx@h:1/r?x=1", "--drain-delay", "1s"}},
		// After --: the app's own flags, not tidegate's; URL passwords still go.
		{[]string{"--", "/app", "--drain-token", "mine", "--db=postgres://app:pw@db/x"}, []string{"--", "/app", "--drain-token", "mine", "--db=postgres://app:xxxxx@db/x"}},
	} {
		if got := redactArgs(tc.in, settings()); !slices.Equal(got, tc.want) {
			t.Errorf("redactArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for in, want := range map[string]string{
		"http://ops:hunter2@h:1/stop":             "http://ops:xxxxx@h:1/stop",
		"a=http://u:p@h,https://v:q:r@k/p":        "a=http://u:xxxxx@h,https://v:xxxxx@k/p",
		`POST "http://u:p%40ss@h/": refused`:      `POST "http://u:xxxxx@h/": refused`,
		"http://token@h/ http://h:80/x?u=a:b@c/d": "http://token@h/ http://h:80/x?u=a:b@c/d",
	} {
		if got := redactURLs(in); got != want {
			t.Errorf("redactURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// /config, /status, reload outcomes and logs showed --app-stop-url's
// password; a changed drain token did not even count as a change.
func TestConfigStatusReloadAndLogsHideSecrets(t *testing.T) {
	app := namedApp(t, "a", nil)
	var auth atomic.Value
	auth.Store("")
	stop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		auth.Store(user + ":" + pass)
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	t.Cleanup(stop.Close)
	stopURL := strings.Replace(stop.URL, "http://", "http://ops:hunter2@", 1) + "/stop"
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(token, stopURL string) string {
		return "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() +
			"\ndrain: {token: " + token + ", delay: 0s, quiet: 0s}\napp: {stop: http, stop_url: \"" + stopURL + "\"}\n"
	}
	writeConfig(t, file, conf("tok-one", stopURL))
	sc, sig, reports, logs := runLogged(t, "--config", file)
	waitServing(t, sc)
	admin := auxURL(t, sc, "admin")
	secrets := []string{"hunter2", "swordfish", "tok-one", "tok-two"}
	shown := strings.Replace(stopURL, "hunter2", "xxxxx", 1)

	code, body := call(t, http.MethodGet, admin+"/config")
	var cfg map[string]string
	if err := json.Unmarshal([]byte(body), &cfg); code != 200 || err != nil {
		t.Fatalf("/config: %d %v %s", code, err, body)
	}
	if cfg["app.stop_url"] != shown || cfg["drain.token"] != redacted {
		t.Errorf("/config app.stop_url %q drain.token %q, want %q and %q", cfg["app.stop_url"], cfg["drain.token"], shown, redacted)
	}
	mustNotContain(t, "/config", body, secrets...)
	_, body = call(t, http.MethodGet, admin+"/status")
	mustNotContain(t, "/status", body, secrets...)
	if !strings.Contains(body, shown) {
		t.Errorf("/status does not show the stop URL as %q:\n%s", shown, body)
	}

	// A new token is a change, though both show as <redacted>.
	writeConfig(t, file, conf("tok-two", stopURL))
	sig <- syscall.SIGHUP
	wait.For(t, "the token reload applied", func() bool { return sc.version.Load() == 2 })
	if out := sc.lastReload.Load(); !slices.Contains(out.Changed, "drain.token") {
		t.Errorf("reload changed %q, want drain.token among them", out.Changed)
	}
	// A new password in the frozen stop URL is refused, and the refusal
	// says so without showing either password.
	writeConfig(t, file, conf("tok-two", strings.Replace(stopURL, "hunter2", "swordfish", 1)))
	sig <- syscall.SIGHUP
	wait.For(t, "the stop URL reload refused", func() bool {
		return testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == 1
	})
	out := sc.lastReload.Load()
	if want := `app.stop_url changed from "` + shown + `" to "` + shown + `"`; !strings.Contains(out.Error, want) || !strings.Contains(out.Error, "redacted secret") {
		t.Errorf("refused reload says %q, want %q and that a redacted secret changed", out.Error, want)
	}
	mustNotContain(t, "the refused reload's error", out.Error, secrets...)
	_, body = call(t, http.MethodGet, admin+"/status")
	mustNotContain(t, "/status after the reloads", body, secrets...)

	sig <- syscall.SIGTERM
	rep := waitReport(t, reports)
	if got := auth.Load(); got != "ops:hunter2" {
		t.Errorf("the stop URL got credentials %q, want ops:hunter2", got)
	}
	if want := "POST " + shown + " answered 500"; !strings.Contains(rep.App.Detail, want) {
		t.Errorf("drain report app detail %q, want %q", rep.App.Detail, want)
	}
	wait.For(t, "the drain report logged", func() bool { return strings.Contains(logs.String(), `"app_detail"`) })
	mustNotContain(t, "the logs", logs.String(), secrets...)
}

// Validation errors quote the value they refuse: printed at start, logged
// on reload and shown in /status, they must not carry a URL password.
func TestConfigErrorsHideURLPasswords(t *testing.T) {
	for _, args := range [][]string{
		{"--upstream", "127.0.0.1:3000", "--app-stop", "http", "--app-stop-url", "ftp://ops:hunter2@h/stop"},
		{"--upstream", "http://ops:hunter2@127.0.0.1:3000"},
		{"--upstream", "127.0.0.1:3000", "--readiness", "http://ops:hunter2@127.0.0.1/ready?token=probe-secret"},
		{"--upstream", "127.0.0.1:3000", "--liveness", "gopher://127.0.0.1:70/?token=probe-secret"},
	} {
		_, err := loadConfig(args, envOf(nil))
		var ue usageError
		if err == nil || !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error", args, err)
			continue
		}
		mustNotContain(t, "the error", err.Error(), "hunter2", "probe-secret")
		if !strings.Contains(err.Error(), "ops:xxxxx@") && !strings.Contains(err.Error(), "127.0.0.1") {
			t.Errorf("%q: %q no longer names the value", args, err)
		}
	}
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	writeConfig(t, file, "upstream: 127.0.0.1:3000\nprobes:\n  - readinessProbe: {httpGet: {path: \"ready?token=probe-secret\", port: 3000}}\n")
	_, err := loadConfig([]string{"--config", file}, envOf(nil))
	if err == nil || !strings.Contains(err.Error(), `httpGet.path "ready" must start with /`) {
		t.Errorf("a YAML probe path without /: %v", err)
	}
}

// A probe URL's query (a token, often) showed in the health listener's
// /readyz?verbose, which listens on every interface, and in the logs.
func TestProbeQueryStaysOffTheHealthListenerAndLogs(t *testing.T) {
	var ready atomic.Bool
	var query atomic.Value
	query.Store("")
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ready" {
			query.Store(r.URL.RawQuery)
			if !ready.Load() {
				http.Error(w, "not yet", http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(app.Close)
	sc, _, _, logs := runLogged(t, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--readiness", app.URL+"/ready?token=probe-secret",
		"--probe-period", "20ms", "--probe-failure-threshold", "1")
	health, admin := auxURL(t, sc, "health"), auxURL(t, sc, "admin")
	wait.For(t, "the probe's first failure logged", func() bool { return strings.Contains(logs.String(), "probe not passing yet") })
	target := app.URL + "/ready"
	code, body := call(t, http.MethodGet, health+"/readyz?verbose")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "("+target+", last") {
		t.Errorf("/readyz?verbose while failing: %d %q, want 503 naming %s", code, body, target)
	}
	mustNotContain(t, "/readyz?verbose", body, "probe-secret", "token=")
	ready.Store(true)
	waitServing(t, sc)
	for _, hdr := range [][]string{nil, {"Accept", "application/json"}} {
		code, body = call(t, http.MethodGet, health+"/readyz?verbose", hdr...)
		if code != http.StatusOK || !strings.Contains(body, target) {
			t.Errorf("/readyz?verbose %q: %d %q, want 200 naming %s", hdr, code, body, target)
		}
		mustNotContain(t, "/readyz?verbose", body, "probe-secret", "token=")
	}
	_, body = call(t, http.MethodGet, admin+"/status")
	mustNotContain(t, "/status probes", body[strings.Index(body, `"probes"`):strings.Index(body, `"build"`)], "probe-secret")
	// The full URL is on the admin listener's /config only.
	if _, body = call(t, http.MethodGet, admin+"/config"); !strings.Contains(body, "/ready?token=probe-secret") {
		t.Errorf("/config lost the probe's query:\n%s", body)
	}
	if q := query.Load(); q != "token=probe-secret" {
		t.Errorf("the app got query %q, want token=probe-secret", q)
	}
	wait.For(t, "the probe's pass logged", func() bool { return strings.Contains(logs.String(), "probe passing") })
	mustNotContain(t, "the logs", logs.String(), "probe-secret")
}

// --admin-listen 0.0.0.0:P was accepted silently: the admin API (drain,
// reload, pprof) on every interface, with no authentication.
func TestAdminListenMustBeLoopbackUnlessPublic(t *testing.T) {
	base := []string{"--upstream", "127.0.0.1:3000"}
	for _, addr := range []string{"0.0.0.0:9901", ":9901", "[::]:9901", "10.1.2.3:9901", "admin.example:9901"} {
		_, err := loadConfig(append(base, "--admin-listen", addr), envOf(nil))
		want := `--admin-listen: "` + addr + `" is not a loopback address`
		if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "--admin-listen-public") {
			t.Errorf("--admin-listen %s: %v, want %q… naming --admin-listen-public", addr, err, want)
		}
		if _, err := loadConfig(append(base, "--admin-listen", addr, "--admin-listen-public"), envOf(nil)); err != nil {
			t.Errorf("--admin-listen %s --admin-listen-public: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:9901", "[::1]:9901", "localhost:9901", "127.0.0.2:0", "off"} {
		if _, err := loadConfig(append(base, "--admin-listen", addr), envOf(nil)); err != nil {
			t.Errorf("--admin-listen %s: %v", addr, err)
		}
	}
	if _, err := loadConfig(base, envOf(map[string]string{"TIDEGATE_ADMIN_LISTEN": ":9901"})); err == nil || !strings.HasPrefix(err.Error(), `TIDEGATE_ADMIN_LISTEN: ":9901" is not a loopback address`) {
		t.Errorf("TIDEGATE_ADMIN_LISTEN=:9901: %v", err)
	}
	if _, err := loadConfig(base, envOf(map[string]string{"TIDEGATE_ADMIN_LISTEN": ":9901", "TIDEGATE_ADMIN_LISTEN_PUBLIC": "true"})); err != nil {
		t.Errorf("TIDEGATE_ADMIN_LISTEN=:9901 with TIDEGATE_ADMIN_LISTEN_PUBLIC: %v", err)
	}

	// The config file, at start and on reload.
	app := namedApp(t, "a", nil)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	good := "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() + "\n"
	writeConfig(t, file, strings.Replace(good, "admin_listen: 127.0.0.1:0", "admin_listen: 0.0.0.0:0", 1))
	if _, err := loadConfig([]string{"--config", file}, envOf(nil)); err == nil || !strings.Contains(err.Error(), `config file key admin_listen: "0.0.0.0:0" is not a loopback address`) {
		t.Errorf("admin_listen: 0.0.0.0:0 in the file: %v", err)
	}
	writeConfig(t, file, good)
	sc, sig, _, _ := runLogged(t, "--config", file)
	waitServing(t, sc)
	writeConfig(t, file, strings.Replace(good, "admin_listen: 127.0.0.1:0", "admin_listen: 0.0.0.0:0", 1))
	sig <- syscall.SIGHUP
	wait.For(t, "the reload refused", func() bool {
		return testutil.ToFloat64(sc.reloads.total.WithLabelValues("failure")) == 1
	})
	if out := sc.lastReload.Load(); !strings.Contains(out.Error, `"0.0.0.0:0" is not a loopback address`) {
		t.Errorf("reload to admin_listen 0.0.0.0:0: %q", out.Error)
	}
}

// A web page could POST /drain to 127.0.0.1:9901 (a foreign Origin), or
// read and write the admin API through a name that resolves to 127.0.0.1
// (DNS rebinding: a foreign Host).
func TestAdminRefusesRequestsFromWebPages(t *testing.T) {
	app := namedApp(t, "a", nil)
	sc, _, reports, logs := runLogged(t, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--drain-token", "tok", "--drain-delay", "0s", "--drain-quiet", "0s")
	waitServing(t, sc)
	admin, health := auxURL(t, sc, "admin"), auxURL(t, sc, "health")
	self := strings.TrimPrefix(admin, "http://")
	_, port, _ := strings.Cut(self, ":")
	for _, tc := range []struct {
		path string
		hdr  []string
		want string
	}{
		{"/drain", []string{"Origin", "http://evil.example"}, `Origin "http://evil.example" is not this listener`},
		{"/drain", []string{"Origin", "null"}, `Origin "null" is not this listener`},
		{"/drain", []string{"Origin", "http://127.0.0.1:8080"}, `Origin "http://127.0.0.1:8080" is not this listener`},
		{"/drain", []string{"Host", "rebind.evil.example:" + port}, `Host "rebind.evil.example:` + port + `" is not this admin listener's address`},
		{"/drain", []string{"Host", "rebind.evil.example:" + port, "Origin", "http://rebind.evil.example:" + port}, `Host "rebind.evil.example:` + port + `"`},
		{"/drain", []string{"Sec-Fetch-Site", "cross-site"}, `Sec-Fetch-Site is "cross-site"`},
		{"/drain", []string{"Sec-Fetch-Site", "same-site"}, `Sec-Fetch-Site is "same-site"`},
		{"/reload", []string{"Origin", "http://evil.example"}, "Origin"},
		{"/undrain", []string{"Sec-Fetch-Site", "cross-site"}, "Sec-Fetch-Site"},
	} {
		code, body := call(t, http.MethodPost, admin+tc.path, tc.hdr...)
		if code != http.StatusForbidden || !strings.Contains(body, tc.want) {
			t.Errorf("POST %s %q: %d %q, want 403 saying %q", tc.path, tc.hdr, code, body, tc.want)
		}
	}
	if p := sc.life.Phase(); p != drain.Serving || sc.version.Load() != 1 {
		t.Fatalf("after refused requests: phase %s, config version %d; want serving, 1", p, sc.version.Load())
	}
	// The preStop endpoint on the health listener: the right token, from a
	// web page's request, is refused all the same.
	if code, body := call(t, http.MethodGet, health+"/drain", DrainTokenHeader, "tok", "Origin", "http://evil.example"); code != http.StatusForbidden || !strings.Contains(body, "Origin") {
		t.Fatalf("GET /drain on the health listener with a foreign Origin: %d %q", code, body)
	}
	if !strings.Contains(logs.String(), `"reason":"foreign_origin"`) || !strings.Contains(logs.String(), `"reason":"foreign_host"`) {
		t.Errorf("refusals not logged with their reason:\n%s", logs.String())
	}

	// Reads pass; curl, tidegate drain and same-origin pages pass.
	if code, _ := call(t, http.MethodGet, admin+"/status", "Origin", "http://evil.example"); code != http.StatusOK {
		t.Errorf("GET /status with an Origin: %d", code)
	}
	for _, hdr := range [][]string{{"Origin", admin}, {"Host", "localhost:" + port}, {"Sec-Fetch-Site", "same-origin", "Origin", admin}} {
		if code, body := call(t, http.MethodPost, admin+"/reload", hdr...); code != http.StatusOK {
			t.Errorf("POST /reload %q: %d %q, want 200", hdr, code, body)
		}
	}
	if code, body := call(t, http.MethodPost, admin+"/drain"); code != http.StatusAccepted {
		t.Fatalf("POST /drain as curl sends it: %d %q", code, body)
	}
	if rep := waitReport(t, reports); rep.Trigger != "admin" {
		t.Fatalf("drain report %+v, want trigger admin", rep)
	}
}
