package healthz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidegate/tidegate/test/wait"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// app is a real HTTP app whose health the test flips.
type app struct {
	*httptest.Server
	code    atomic.Int32
	hits    atomic.Int32
	newConn atomic.Int32
	mu      sync.Mutex
	agents  []string
}

func newApp(t *testing.T) *app {
	a := &app{}
	a.code.Store(200)
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		a.mu.Lock()
		a.agents = append(a.agents, r.UserAgent())
		a.mu.Unlock()
		w.WriteHeader(int(a.code.Load()))
		_, _ = io.WriteString(w, "status body")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, strings.Repeat("x", 20<<10)) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	mux.HandleFunc("/redirect-local", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/health", http.StatusFound) })
	mux.HandleFunc("/redirect-away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://elsewhere.invalid/health", http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	a.Server = httptest.NewUnstartedServer(mux)
	a.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			a.newConn.Add(1)
		}
	}
	a.Start()
	t.Cleanup(a.Close)
	return a
}

func (a *app) port() int { return a.Listener.Addr().(*net.TCPAddr).Port }

func testRunner(t *testing.T, s Spec) *runner {
	t.Helper()
	s = s.WithDefaults()
	if s.Name == "" {
		s.Name = "test"
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	m, err := newProbeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return newRunner(s, "v9", zap.NewNop(), m)
}

func once(t *testing.T, r *runner) Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), r.spec.Timeout)
	defer cancel()
	return r.prober.probe(ctx)
}

func TestHTTPThresholdsCountedExactly(t *testing.T) {
	a := newApp(t)
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/health"}, FailureThreshold: 3, SuccessThreshold: 2})
	ctx := context.Background()
	if r.status().Healthy {
		t.Fatal("readiness starts healthy; Kubernetes starts it not ready")
	}
	r.attempt(ctx)
	if r.status().Healthy {
		t.Fatal("ready after 1 success with successThreshold 2")
	}
	r.attempt(ctx)
	if !r.status().Healthy {
		t.Fatal("not ready after 2 successes")
	}
	a.code.Store(500)
	for i := 1; i <= 2; i++ {
		r.attempt(ctx)
		if !r.status().Healthy {
			t.Fatalf("unready after %d failures with failureThreshold 3", i)
		}
	}
	r.attempt(ctx)
	if st := r.status(); st.Healthy || st.Reason != "HTTP 500" || st.Failures != 3 {
		t.Fatalf("after 3 failures: %+v", st)
	}
	a.code.Store(200)
	r.attempt(ctx)
	if r.status().Healthy {
		t.Fatal("recovered after 1 success with successThreshold 2")
	}
	r.attempt(ctx)
	if !r.status().Healthy {
		t.Fatal("not recovered after 2 successes")
	}
	if got := testutil.ToFloat64(r.m.transitions.WithLabelValues("test", "readiness")); got != 3 {
		t.Fatalf("transitions %v, want 3 (ready, unready, ready)", got)
	}
	if got := testutil.ToFloat64(r.m.up.WithLabelValues("test", "readiness")); got != 1 {
		t.Fatalf("tidegate_probe_up %v, want 1", got)
	}
	a.code.Store(500)
	for range 3 {
		r.attempt(ctx)
	}
	if got := testutil.ToFloat64(r.m.up.WithLabelValues("test", "readiness")); got != 0 {
		t.Fatalf("tidegate_probe_up %v after 3 failures, want 0", got)
	}
}

func TestLivenessStartsHealthyAndRecoversOnOneSuccess(t *testing.T) {
	a := newApp(t)
	r := testRunner(t, Spec{Kind: Liveness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/health"}})
	if !r.status().Healthy {
		t.Fatal("liveness starts unhealthy")
	}
	a.code.Store(503)
	for range 3 {
		r.attempt(context.Background())
	}
	if r.status().Healthy {
		t.Fatal("alive after 3 failures")
	}
	a.code.Store(200)
	r.attempt(context.Background())
	if !r.status().Healthy {
		t.Fatal("1 success did not recover liveness")
	}
}

func TestHTTPSemantics(t *testing.T) {
	a := newApp(t)
	for _, tc := range []struct {
		path, reason string
		code         int
		ok           bool
	}{
		{"/health", "", 200, true},
		{"/health", "", 204, true},
		{"/health", "HTTP 302 (redirect not followed)", 302, true}, // a 3xx without Location the client stops at
		{"/health", "HTTP 404", 404, false},
		{"/health", "HTTP 500", 500, false},
		{"/redirect-local", "", 200, true},
		{"/redirect-away", "HTTP 302 (redirect not followed)", 200, true},
	} {
		a.code.Store(int32(tc.code))
		r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: tc.path}})
		out := once(t, r)
		if out.OK != tc.ok || out.Reason != tc.reason {
			t.Errorf("%s with %d: %+v, want ok=%v reason %q", tc.path, tc.code, out, tc.ok, tc.reason)
		}
	}
	a.code.Store(200)
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/loop"}})
	if out := once(t, r); out.OK || !strings.Contains(out.Reason, "10 redirects") {
		t.Errorf("redirect loop: %+v", out)
	}
}

func TestHTTPSProbeDoesNotVerify(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Scheme: "HTTPS", Port: port, Path: "/"}})
	if out := once(t, r); !out.OK {
		t.Fatalf("https probe against a self-signed certificate: %+v", out)
	}
}

func TestHTTPBodyCapUserAgentNoKeepAlive(t *testing.T) {
	a := newApp(t)
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/big"}})
	if out := once(t, r); !out.OK || len(out.Output) != 10<<10 {
		t.Fatalf("body of 20 KiB read as %d bytes", len(out.Output))
	}
	r = testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/health"}})
	before := a.newConn.Load()
	for range 3 {
		once(t, r)
	}
	if n := a.newConn.Load() - before; n != 3 {
		t.Fatalf("3 probes used %d connections; the kubelet opens one per probe", n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if ua := a.agents[len(a.agents)-1]; ua != "tidegate-probe/v9" {
		t.Fatalf("User-Agent %q", ua)
	}
}

func TestHTTPHeadersAndHost(t *testing.T) {
	seen := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r }))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: port, Path: "/p?x=1",
		Headers: http.Header{"X-Probe": {"yes"}, "Host": {"app.example"}}}})
	if out := once(t, r); !out.OK {
		t.Fatal(out)
	}
	req := <-seen
	if req.Header.Get("X-Probe") != "yes" || req.Host != "app.example" || req.URL.RawQuery != "x=1" {
		t.Fatalf("probe request: host %q header %v query %q", req.Host, req.Header, req.URL.RawQuery)
	}
}

func TestTimeoutPerAttempt(t *testing.T) {
	a := newApp(t)
	r := testRunner(t, Spec{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/slow"}, Timeout: 100 * time.Millisecond})
	start := time.Now()
	out := once(t, r)
	if out.OK || out.Reason != "timeout" || time.Since(start) > 2*time.Second {
		t.Fatalf("slow app: %+v after %s", out, time.Since(start))
	}
	r = testRunner(t, Spec{Kind: Readiness, Exec: &ExecAction{Command: []string{"sleep", "5"}}, Timeout: 100 * time.Millisecond})
	start = time.Now()
	if out := once(t, r); out.OK || !strings.HasPrefix(out.Reason, "timeout") || time.Since(start) > 2*time.Second {
		t.Fatalf("slow command: %+v after %s", out, time.Since(start))
	}
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	r := testRunner(t, Spec{Kind: Liveness, TCPSocket: &TCPSocketAction{Port: port}})
	if out := once(t, r); !out.OK {
		t.Fatalf("open port: %+v", out)
	}
	ln.Close()
	if out := once(t, r); out.OK || !strings.Contains(out.Reason, "refused") {
		t.Fatalf("closed port: %+v", out)
	}
}

func TestExecProbe(t *testing.T) {
	r := testRunner(t, Spec{Kind: Liveness, Exec: &ExecAction{Command: []string{"sh", "-c", "echo hello; exit 0"}}})
	if out := once(t, r); !out.OK || out.Output != "hello\n" {
		t.Fatalf("exit 0: %+v", out)
	}
	r = testRunner(t, Spec{Kind: Liveness, Exec: &ExecAction{Command: []string{"sh", "-c", "echo bad >&2; exit 3"}}})
	if out := once(t, r); out.OK || out.Reason != "exit code 3" || out.Output != "bad\n" {
		t.Fatalf("exit 3: %+v", out)
	}
	r = testRunner(t, Spec{Kind: Liveness, Exec: &ExecAction{Command: []string{"sh", "-c", "head -c 30000 /dev/zero"}}})
	if out := once(t, r); !out.OK || len(out.Output) != 10<<10 {
		t.Fatalf("output capped at %d bytes", len(out.Output))
	}
	r = testRunner(t, Spec{Kind: Liveness, Exec: &ExecAction{Command: []string{"/nonexistent/check"}}})
	if out := once(t, r); out.OK {
		t.Fatal("a missing command passed")
	}
}

func startGRPC(t *testing.T) (*GRPCHealth, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	g := NewGRPCHealth("app")
	g.Register(s)
	served := make(chan struct{})
	go func() { _ = s.Serve(ln); close(served) }()
	t.Cleanup(func() { s.Stop(); <-served })
	return g, ln.Addr().(*net.TCPAddr).Port
}

func TestGRPCProbe(t *testing.T) {
	g, port := startGRPC(t)
	r := testRunner(t, Spec{Kind: Readiness, GRPC: &GRPCAction{Port: port}})
	if out := once(t, r); out.OK || !strings.Contains(out.Reason, "NOT_SERVING") {
		t.Fatalf("NOT_SERVING: %+v", out)
	}
	g.Set("", true)
	if out := once(t, r); !out.OK {
		t.Fatalf("SERVING: %+v", out)
	}
	r = testRunner(t, Spec{Kind: Readiness, GRPC: &GRPCAction{Port: port, Service: "nope"}})
	if out := once(t, r); out.OK || !strings.Contains(out.Reason, "NotFound") {
		t.Fatalf("unknown service: %+v", out)
	}
}

func TestGRPCWatchSeesTheDrainForGood(t *testing.T) {
	g, port := startGRPC(t)
	g.Set("", true)
	conn, err := grpc.NewClient("127.0.0.1:"+strconv.Itoa(port), grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message %v, %v", m, err)
	}
	g.Drain()
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("after Drain %v, %v", m, err)
	}
	g.Set("", true) // ignored: the latch holds
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Check after Drain and Set(true): %v, %v", resp, err)
	}
	g.Undrain() // stays NOT_SERVING until Set: no SERVING flash
	resp, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "app"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Check app after Undrain: %v, %v", resp, err)
	}
	g.Set("", true)
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch after Undrain and Set(true): %v %v", m, err)
	}
}

// scripted is a prober whose outcomes the test sets.
type scripted struct {
	ok    atomic.Bool
	calls atomic.Int32
}

func (s *scripted) probe(context.Context) Outcome {
	s.calls.Add(1)
	if s.ok.Load() {
		return Outcome{OK: true}
	}
	return Outcome{Reason: "scripted failure"}
}

func TestScheduleAndStartupGating(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zap.InfoLevel)
		set, err := NewSet([]Spec{
			{Kind: Startup, Exec: &ExecAction{Command: []string{"x"}}, Period: time.Second, FailureThreshold: 30},
			{Kind: Readiness, Exec: &ExecAction{Command: []string{"x"}}, InitialDelay: 5 * time.Second, Period: 10 * time.Second},
			{Kind: Liveness, Exec: &ExecAction{Command: []string{"x"}}, Period: 10 * time.Second},
		}, SetOptions{Logger: zap.New(core)})
		if err != nil {
			t.Fatal(err)
		}
		probes := make([]*scripted, 3)
		for i, r := range set.runners {
			probes[i] = &scripted{}
			r.prober = probes[i]
		}
		startup, ready, live := probes[0], probes[1], probes[2]
		ready.ok.Store(true)
		live.ok.Store(true)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { set.Run(ctx); close(done) }()

		time.Sleep(3500 * time.Millisecond)
		if n := startup.calls.Load(); n != 4 {
			t.Fatalf("startup probe ran %d times in 3.5s with a 1s period, want 4", n)
		}
		if ready.calls.Load() != 0 || live.calls.Load() != 0 {
			t.Fatal("readiness or liveness probed before the startup probe passed")
		}
		if set.Healthy(Readiness, "") || !set.Healthy(Liveness, "") || set.Healthy(Startup, "") {
			t.Fatal("during start-up: want not ready, live (not evaluated), not started")
		}
		if err := set.Checks(Readiness, "app")[0].Func(ctx); err == nil || !strings.Contains(err.Error(), "startup") {
			t.Fatalf("readiness during start-up: %v", err)
		}

		startup.ok.Store(true)
		time.Sleep(time.Second) // the next startup attempt passes at t=4s
		if !set.Healthy(Startup, "") {
			t.Fatal("startup probe did not pass")
		}
		time.Sleep(100 * time.Second)
		if n := startup.calls.Load(); n != 5 {
			t.Fatalf("the startup probe kept running after it passed: %d calls", n)
		}
		// Readiness: initial delay 5s after start-up (t=9s), then every 10s → t=9,19,…,99 = 10 probes by t=104s.
		if n := ready.calls.Load(); n != 10 {
			t.Fatalf("readiness ran %d times, want 10", n)
		}
		if !set.Healthy(Readiness, "") {
			t.Fatal("not ready after the readiness probe passed")
		}
		if logs.FilterMessage("probe passing").Len() != 2 || logs.FilterMessage("probe failing").Len() != 0 {
			t.Fatalf("logs: want one line per transition only, got %d passing, %d failing",
				logs.FilterMessage("probe passing").Len(), logs.FilterMessage("probe failing").Len())
		}
		cancel()
		<-done
	})
}

// TestConcurrentCallersNeverMultiplyProbes: 100 concurrent /readyz calls
// read the cached result; the app sees the schedule's probes only.
func TestConcurrentCallersNeverMultiplyProbes(t *testing.T) {
	a := newApp(t)
	set, err := NewSet([]Spec{{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/health"}, Period: time.Hour}}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { set.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, func() bool { return set.Healthy(Readiness, "") })
	h, err := NewHandler(Options{Readiness: set.Checks(Readiness, "")})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range 100 {
		wg.Go(func() {
			resp, err := srv.Client().Get(srv.URL + "/readyz")
			if err == nil {
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if ok.Load() != 100 {
		t.Fatalf("%d of 100 /readyz calls answered 200", ok.Load())
	}
	if n := a.hits.Load(); n != 1 {
		t.Fatalf("the app was probed %d times for 100 /readyz calls in one period, want 1", n)
	}
}

func TestVerboseAndJSONShowProbeDetail(t *testing.T) {
	a := newApp(t)
	a.code.Store(500)
	set, err := NewSet([]Spec{{Kind: Readiness, HTTPGet: &HTTPGetAction{Port: a.port(), Path: "/health"}, FailureThreshold: 1}}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	set.runners[0].attempt(context.Background())
	h, err := NewHandler(Options{Readiness: set.Checks(Readiness, ""), Apps: map[string]Options{"app": {Readiness: set.Checks(Readiness, "app")}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/readyz", nil)
	req.Header.Set("Accept", "application/json")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if rep.Status != "failed" || len(rep.Checks) != 1 || rep.Checks[0].Name != "app/readiness" || rep.Checks[0].OK ||
		rep.Checks[0].Reason != "HTTP 500 (1 in a row)" || !strings.Contains(rep.Checks[0].Info, "/health, last ") {
		t.Fatalf("JSON report %+v", rep)
	}
	for _, path := range []string{"/readyz?verbose", "/app-health/app/readyz?verbose", "/readyz/app/readiness?verbose"} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("[-]app/readiness failed: HTTP 500 (1 in a row) (http://127.0.0.1:%d/health, last ", a.port())
		if resp.StatusCode != 503 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d %q, want it to contain %q", path, resp.StatusCode, b, want)
		}
	}
}

func TestBadSpecsNameTheField(t *testing.T) {
	h := func(a HTTPGetAction) *HTTPGetAction { return &a }
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Kind: Readiness, HTTPGet: h(HTTPGetAction{Scheme: "ftp", Port: 80})}, `httpGet.scheme "ftp"`},
		{Spec{Kind: Readiness, HTTPGet: h(HTTPGetAction{Port: 70000})}, "httpGet.port 70000"},
		{Spec{Kind: Readiness, TCPSocket: &TCPSocketAction{}}, "tcpSocket.port 0"},
		{Spec{Kind: Liveness, Exec: &ExecAction{Command: []string{"true"}}, SuccessThreshold: 2}, "successThreshold is 2: it must be 1 for liveness"},
		{Spec{Kind: Startup, Exec: &ExecAction{Command: []string{"true"}}, SuccessThreshold: 3}, "must be 1 for startup"},
		{Spec{Kind: Readiness}, "no action"},
		{Spec{Kind: Readiness, Exec: &ExecAction{}}, "exec.command is empty"},
		{Spec{Kind: "sometimes", Exec: &ExecAction{Command: []string{"true"}}}, `kind "sometimes"`},
		{Spec{Kind: Readiness, Exec: &ExecAction{Command: []string{"true"}}, TCPSocket: &TCPSocketAction{Port: 1}}, "more than one action"},
	} {
		_, err := NewSet([]Spec{tc.spec}, SetOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "probe 1") {
			t.Errorf("%+v: error %v, want one naming the probe and saying %q", tc.spec, err, tc.want)
		}
	}
	two := Spec{Kind: Startup, Exec: &ExecAction{Command: []string{"true"}}}
	if _, err := NewSet([]Spec{two, two}, SetOptions{}); err == nil || !strings.Contains(err.Error(), "already has a startup probe") {
		t.Errorf("two startup probes: %v", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	wait.For(t, "condition", cond)
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
