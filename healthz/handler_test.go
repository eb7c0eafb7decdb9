package healthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tidegate/tidegate/test/wait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func serve(t *testing.T, o Options) *httptest.Server {
	t.Helper()
	h, err := NewHandler(o)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func call(t *testing.T, s *httptest.Server, path string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestEndpoints(t *testing.T) {
	var appReady atomic.Bool
	s := serve(t, Options{
		Readiness: []Check{
			{Name: "lifecycle", Func: func(context.Context) error { return nil }},
			{Name: "app", Func: func(context.Context) error {
				if !appReady.Load() {
					return errors.New("GET /health answered 500")
				}
				return nil
			}},
		},
		Liveness: []Check{{Name: "lifecycle", Func: func(context.Context) error { return nil }}},
	})

	code, body, hdr := call(t, s, "/readyz")
	if code != 503 || !strings.Contains(body, "[-]app failed: GET /health answered 500") || strings.Contains(body, "[+]") {
		t.Fatalf("readyz while the app fails: %d %q", code, body)
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("health answers may be cached: %v", hdr)
	}
	appReady.Store(true)
	if code, body, _ := call(t, s, "/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("readyz: %d %q", code, body)
	}
	if code, body, _ := call(t, s, "/readyz?verbose"); code != 200 || body != "[+]lifecycle ok\n[+]app ok\nreadyz check passed\n" {
		t.Fatalf("readyz?verbose: %d %q", code, body)
	}
	if code, body, _ := call(t, s, "/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("livez: %d %q", code, body)
	}
	if code, _, _ := call(t, s, "/startupz"); code != 200 {
		t.Fatalf("startupz with no checks: %d", code)
	}
}

func TestJSONAndSingleCheck(t *testing.T) {
	s := serve(t, Options{Readiness: []Check{
		{Name: "good", Func: func(context.Context) error { return nil }},
		{Name: "bad", Func: func(context.Context) error { return errors.New("phase is draining") }},
	}})
	code, body, hdr := call(t, s, "/readyz", "Accept", "application/json")
	if code != 503 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("json readyz: %d %v", code, hdr)
	}
	var rep Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatal(err)
	}
	want := Report{Status: "failed", Checks: []Result{{Name: "good", OK: true}, {Name: "bad", Reason: "phase is draining"}}}
	if rep.Status != want.Status || len(rep.Checks) != 2 || rep.Checks[0] != want.Checks[0] || rep.Checks[1] != want.Checks[1] {
		t.Fatalf("json report %+v, want %+v", rep, want)
	}
	if code, _, _ := call(t, s, "/readyz/good"); code != 200 {
		t.Fatalf("/readyz/good: %d", code)
	}
	if code, body, _ := call(t, s, "/readyz/bad"); code != 503 || !strings.Contains(body, "phase is draining") {
		t.Fatalf("/readyz/bad: %d %q", code, body)
	}
	if code, _, _ := call(t, s, "/readyz/missing"); code != 404 {
		t.Fatalf("/readyz/missing: %d", code)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	s := serve(t, Options{})
	resp, err := s.Client().Post(s.URL+"/livez", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Fatalf("POST /livez: %d", resp.StatusCode)
	}
}

func TestBadChecksRejected(t *testing.T) {
	ok := func(context.Context) error { return nil }
	for _, o := range []Options{
		{Readiness: []Check{{Name: "a", Func: ok}, {Name: "a", Func: ok}}},
		{Startup: []Check{{Name: "", Func: ok}}},
		{Readiness: []Check{{Name: "nil"}}},
	} {
		if _, err := NewHandler(o); err == nil {
			t.Errorf("NewHandler(%+v) accepted a bad check", o)
		}
	}
}

// A probe URL's query may hold a token. /readyz?verbose (served on every
// interface), /status and the logs showed it, in the target and in the
// reason of a failed attempt (net/http's error quotes the whole URL).
func TestProbeQueryStaysOffVerboseOutputAndLogs(t *testing.T) {
	var healthy atomic.Bool
	var query atomic.Value
	query.Store("")
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query.Store(r.URL.RawQuery)
		if healthy.Load() {
			_, _ = io.WriteString(w, "ok")
			return
		}
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = buf.WriteString("HTTP/1.1 abc\r\n\r\n") // malformed: the client's error names the URL
		_ = buf.Flush()
		_ = c.Close()
	}))
	t.Cleanup(app.Close)
	core, logs := observer.New(zap.InfoLevel)
	set, err := NewSet([]Spec{{Name: "app/readiness", Kind: Readiness,
		HTTPGet: &HTTPGetAction{Scheme: "http", Host: "127.0.0.1", Port: portOf(app.Listener), Path: "/ready?token=probe-secret"},
		Period:  20 * time.Millisecond, Timeout: time.Second, FailureThreshold: 1}}, SetOptions{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, set)
	s := serve(t, Options{Readiness: set.Checks(Readiness, "")})
	target := "http://" + app.Listener.Addr().String() + "/ready"
	secretFree := func(where, text string) {
		t.Helper()
		if strings.Contains(text, "probe-secret") {
			t.Errorf("%s shows the probe's query: %s", where, text)
		}
	}
	logged := func() string {
		var b strings.Builder
		for _, e := range logs.All() {
			fmt.Fprintf(&b, "%s %v\n", e.Message, e.ContextMap())
		}
		return b.String()
	}

	wait.For(t, "a failed attempt", func() bool { st, _ := statusOf(set, "app/readiness"); return st.Probed })
	code, body, _ := call(t, s, "/readyz?verbose")
	if code != 503 || !strings.Contains(body, "[-]app/readiness failed: ") || !strings.Contains(body, "("+target+", last") {
		t.Errorf("/readyz?verbose while failing: %d %q, want 503 naming %s", code, body, target)
	}
	secretFree("/readyz?verbose", body)
	st, _ := statusOf(set, "app/readiness")
	if st.Target != target {
		t.Errorf("status target %q, want %q", st.Target, target)
	}
	secretFree("the status reason", st.Reason)

	healthy.Store(true)
	wait.For(t, "the probe passing", func() bool { return set.Healthy(Readiness, "") })
	for _, accept := range []string{"text/plain", "application/json"} {
		code, body, _ = call(t, s, "/readyz?verbose", "Accept", accept)
		if code != 200 || !strings.Contains(body, target) {
			t.Errorf("/readyz?verbose (%s): %d %q, want 200 naming %s", accept, code, body, target)
		}
		secretFree("/readyz?verbose", body)
	}
	if q := query.Load(); q != "token=probe-secret" {
		t.Errorf("the app got query %q, want token=probe-secret", q)
	}
	out := logged()
	if !strings.Contains(out, "probe not passing yet") || !strings.Contains(out, "probe passing") {
		t.Errorf("transitions not logged:\n%s", out)
	}
	secretFree("the logs", out)
}
