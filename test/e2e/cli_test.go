package e2e

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// TestConfigErrors: bad configuration exits non-zero at once with one clear
// line on stderr naming the culprit, never a panic or a stack trace.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	inUse, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inUse.Close() })
	busy := inUse.Addr().String()

	dir := t.TempDir()
	writeFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	typoFile := writeFile("typo.yaml", "upstream:\n  adress: 127.0.0.1:3000\n")
	typoFile2 := writeFile("typo2.yaml", "upstream: 127.0.0.1:3000\nserver:\n  max_body_byte: 1KiB\n")

	free := "--listen=127.0.0.1:0 --health-listen=127.0.0.1:0 --admin-listen=127.0.0.1:0"
	cases := []struct {
		name string
		env  []string
		args string
		code int
		want []string // substrings of stderr
	}{
		{"unknown YAML key", nil, "run --config " + typoFile + " " + free, 2,
			[]string{`"upstream.adress"`, `did you mean "upstream.address"`, typoFile}},
		{"unknown nested YAML key", nil, "run --config " + typoFile2 + " " + free, 2,
			[]string{`"server.max_body_byte"`, `"server.max_body_bytes"`}},
		{"bad duration flag", nil, "run --upstream 127.0.0.1:3000 --drain-timeout 5parsecs " + free, 2,
			[]string{"--drain-timeout", `"5parsecs"`, "duration"}},
		{"bad duration env", []string{"TIDEGATE_DRAIN_TIMEOUT=forever"}, "run --upstream 127.0.0.1:3000 " + free, 2,
			[]string{"TIDEGATE_DRAIN_TIMEOUT", `"forever"`}},
		{"bad listen address", nil, "run --upstream 127.0.0.1:3000 --listen localhost --health-listen=off --admin-listen=off", 2,
			[]string{"--listen", `"localhost"`}},
		{"bad port", nil, "run --upstream 127.0.0.1:3000 --listen=127.0.0.1:0 --health-listen 127.0.0.1:70000 --admin-listen=off", 2,
			[]string{"--health-listen", "70000"}},
		{"bad upstream", nil, "run --upstream ftp://app:21 " + free, 2,
			[]string{"ftp://app:21"}},
		{"missing upstream", nil, "run " + free, 2,
			[]string{"--upstream"}},
		{"port in use", nil, "run --upstream 127.0.0.1:3000 --listen " + busy + " --health-listen=127.0.0.1:0 --admin-listen=127.0.0.1:0", 1,
			[]string{busy, "in use"}},
		{"admin port in use", nil, "run --upstream 127.0.0.1:3000 --listen=127.0.0.1:0 --health-listen=127.0.0.1:0 --admin-listen " + busy, 1,
			[]string{"admin", busy, "in use"}},
		{"unknown command", nil, "frobnicate", 2,
			[]string{`unknown command "frobnicate"`, "Usage"}},
		{"unknown flag", nil, "run --upstream 127.0.0.1:3000 --drain-timout 5s " + free, 2,
			[]string{"--drain-timout", "did you mean --drain-timeout"}},
		{"drain delay past the timeout", []string{"TIDEGATE_DRAIN_TIMEOUT=5s"}, "run --upstream 127.0.0.1:3000 --drain-delay 10s " + free, 2,
			[]string{"--drain-delay 10s", "TIDEGATE_DRAIN_TIMEOUT"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runOnce(t, tc.env, strings.Fields(tc.args)...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d\nstderr: %s", r.code, tc.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, ".go:") {
				t.Errorf("stderr has a panic or stack trace:\n%s", r.stderr)
			}
			if strings.Contains(r.stdout, "phase changed") {
				t.Errorf("tidegate started serving despite the error:\n%s", r.stdout)
			}
		})
	}
}

// TestConfigPrecedence: flag > environment > file > default, as /config
// shows the effective settings.
func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	yaml := "upstream:\n" +
		"  address: " + app.Addr + "\n" +
		"  dial_timeout: 3s\n" + // file only
		"  idle_timeout: 4s\n" + // file, overridden by env
		"drain:\n" +
		"  timeout: 6s\n" // file, env, overridden by flag
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := startEnv(t,
		[]string{"TIDEGATE_CONFIG=" + file, "TIDEGATE_UPSTREAM_IDLE_TIMEOUT=5s", "TIDEGATE_DRAIN_TIMEOUT=7s"},
		"--drain-timeout", "8s")
	c := newClient(t)

	resp, body := get(t, c, "http://"+tg.Admin+"/config")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /config: status %d %s", resp.StatusCode, body)
	}
	var cfg map[string]string
	decodeJSON(t, body, &cfg)
	want := map[string]string{
		"upstream.address":                 app.Addr,   // file
		"upstream.dial_timeout":            "3s",       // file over default
		"upstream.idle_timeout":            "5s",       // env over file
		"drain.timeout":                    "8s",       // flag over env over file
		"server.read_header_timeout":       "10s",      // default
		"upstream.max_idle_conns":          "1024",     // default
		"server.forwarded_headers":         "append",   // default
		"server.request_id":                "generate", // default
		"listen":                           "127.0.0.1:0",
		"upstream.expect_continue_timeout": "1s",
	}
	for k, w := range want {
		if got, ok := cfg[k]; !ok || got != w {
			t.Errorf("/config %s = %q (present %v), want %q", k, got, ok, w)
		}
	}
	// The proxy really uses the file's upstream.
	if resp, body := get(t, c, tg.URL("/status?code=200")); resp.StatusCode != http.StatusOK {
		t.Errorf("proxied request: status %d %s", resp.StatusCode, body)
	}
}

// TestVersion: `tidegate version` prints the stamped version and commit and
// the Go version.
func TestVersion(t *testing.T) {
	t.Parallel()
	r := runOnce(t, nil, "version")
	if r.code != 0 {
		t.Fatalf("exit code %d\n%s", r.code, r.stderr)
	}
	for _, w := range []string{"tidegate " + stampVersion, "commit " + stampCommit, runtime.Version()} {
		if !strings.Contains(r.stdout, w+"\n") && !strings.Contains(r.stdout, w+" ") {
			t.Errorf("version output lacks %q:\n%s", w, r.stdout)
		}
	}
}

// TestStatusAndHealth: /status tells the phase, traffic and config; the
// health listener answers the three probes while serving.
func TestStatusAndHealth(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	c := newClient(t)

	for range 2 {
		get(t, c, tg.URL("/status?code=204"))
	}
	var st struct {
		Phase    string `json:"phase"`
		Upstream string `json:"upstream"`
		Traffic  struct {
			InFlight    *int64           `json:"inflight_requests"`
			Requests    *uint64          `json:"requests_total"`
			Connections map[string]int64 `json:"connections"`
		} `json:"traffic"`
		Build struct {
			Version string `json:"version"`
			Commit  string `json:"commit"`
		} `json:"build"`
		Config map[string]string `json:"config"`
	}
	var body []byte
	// A request leaves the in-flight count as its handler returns, a moment
	// after the client has the whole response.
	eventually(t, waitTimeout, "/status showing nothing in flight", func() (bool, string) {
		var resp *http.Response
		resp, body = get(t, c, "http://"+tg.Admin+"/status")
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("GET /status: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		decodeJSON(t, body, &st)
		return st.Traffic.InFlight != nil && *st.Traffic.InFlight == 0, string(body)
	})
	if st.Phase != "serving" {
		t.Errorf("phase %q, want serving", st.Phase)
	}
	if st.Traffic.Requests == nil || *st.Traffic.Requests != 2 {
		t.Errorf("traffic.requests_total %v, want 2\n%s", st.Traffic.Requests, body)
	}
	if st.Traffic.Connections["http1"] != 1 {
		t.Errorf("traffic.connections.http1 %d with one keep-alive connection open, want 1\n%s", st.Traffic.Connections["http1"], body)
	}
	if st.Config["upstream.address"] != app.Addr || st.Upstream != app.Addr {
		t.Errorf("upstream %q, config upstream.address %q, want %q", st.Upstream, st.Config["upstream.address"], app.Addr)
	}
	if st.Build.Version != stampVersion || st.Build.Commit != stampCommit {
		t.Errorf("build %+v, want version %s commit %s", st.Build, stampVersion, stampCommit)
	}

	for _, ep := range []string{"/livez", "/readyz", "/startupz"} {
		resp, body := get(t, c, "http://"+tg.Health+ep)
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
			t.Errorf("GET %s: %d %q, want 200 ok", ep, resp.StatusCode, body)
		}
	}
	resp, body := get(t, c, "http://"+tg.Health+"/readyz?verbose")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "[+]lifecycle ok") {
		t.Errorf("GET /readyz?verbose: %d %q, want 200 listing [+]lifecycle ok", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+tg.Health+"/readyz", nil)
	req.Header.Set("Accept", "application/json")
	resp, body = do(t, c, req)
	var rep struct {
		Status string `json:"status"`
		Checks []struct {
			Name string `json:"name"`
			OK   bool   `json:"ok"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(body, &rep); err != nil || resp.StatusCode != http.StatusOK ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /readyz as JSON: %d %s %q (%v)", resp.StatusCode, resp.Header.Get("Content-Type"), body, err)
	}
	lifecycle := false
	for _, ch := range rep.Checks {
		if !ch.OK {
			t.Errorf("/readyz JSON: check %s is not ok while serving: %s", ch.Name, body)
		}
		lifecycle = lifecycle || ch.Name == "lifecycle"
	}
	if rep.Status != "ok" || !lifecycle {
		t.Errorf("/readyz JSON %s, want status ok listing the lifecycle check", body)
	}
}
