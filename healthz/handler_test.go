package healthz

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
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
