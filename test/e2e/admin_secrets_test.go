package e2e

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// TestAdminSurfaceKeepsSecrets runs the real binary, whose
// /debug/pprof/cmdline is its own argv: the drain token, a URL password and
// a probe's query stay off the admin and health listeners and the logs; a
// public admin address is refused; a web page's POST /drain is refused.
func TestAdminSurfaceKeepsSecrets(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	stopURL := "http://ops:hunter2@" + deadAddr(t) + "/stop"
	tg := start(t, "--upstream", app.Addr, "--drain-token", "tok-e2e", "--readiness", "http://"+app.Addr+"/echo?token=probe-secret",
		"--probe-period", "100ms", "--app-stop", "http", "--app-stop-url", stopURL)
	c := newClient(t)
	secrets := []string{"tok-e2e", "hunter2", "probe-secret"}
	clean := func(where string, body []byte, secrets ...string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(string(body), s) {
				t.Errorf("%s shows %q:\n%s", where, s, body)
			}
		}
	}

	resp, body := get(t, c, "http://"+tg.Admin+"/debug/pprof/cmdline")
	argv := strings.Split(string(body), "\x00")
	if resp.StatusCode != http.StatusOK || len(argv) < 3 || argv[1] != "run" {
		t.Fatalf("cmdline: %d %q", resp.StatusCode, argv)
	}
	if i := slices.Index(argv, "--drain-token"); i < 0 || argv[i+1] != "<redacted>" || !slices.Contains(argv, strings.Replace(stopURL, "hunter2", "xxxxx", 1)) {
		t.Errorf("cmdline %q: want the token <redacted> and the stop URL's password xxxxx", argv)
	}
	clean("/debug/pprof/cmdline", body, "tok-e2e", "hunter2")
	for _, path := range []string{"/config", "/status"} {
		_, body = get(t, c, "http://"+tg.Admin+path)
		clean(path, body, "tok-e2e", "hunter2")
	}
	resp, body = get(t, c, "http://"+tg.Health+"/readyz?verbose")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), app.Addr+"/echo") {
		t.Errorf("/readyz?verbose: %d %q", resp.StatusCode, body)
	}
	clean("/readyz?verbose", body, secrets...)

	for _, hdr := range [][2]string{{"Origin", "http://evil.example"}, {"Host", "rebind.evil.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+tg.Admin+"/drain", nil)
		if hdr[0] == "Host" {
			req.Host = hdr[1]
		} else {
			req.Header.Set(hdr[0], hdr[1])
		}
		resp, body = do(t, c, req)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), hdr[0]) {
			t.Errorf("POST /drain with %s: %d %q, want 403 naming it", hdr, resp.StatusCode, body)
		}
	}
	resp, body = get(t, c, "http://"+tg.Admin+"/status")
	if !strings.Contains(string(body), `"phase": "serving"`) {
		t.Errorf("after refused drains: %d %s", resp.StatusCode, body)
	}
	clean("the logs", []byte(tg.stdout.String()+tg.stderr.String()), secrets...)

	res := runOnce(t, nil, "run", "--upstream", app.Addr, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0")
	if res.code != 2 || !strings.Contains(res.stderr, `--admin-listen: "0.0.0.0:0" is not a loopback address`) || !strings.Contains(res.stderr, "--admin-listen-public") {
		t.Errorf("--admin-listen 0.0.0.0:0: exit %d, stderr %q", res.code, res.stderr)
	}
}
