package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/test/wait"
)

// flippable is an app whose /health answers what the test says.
type flippable struct {
	*httptest.Server
	healthy atomic.Bool
}

func newFlippable(t *testing.T) *flippable {
	f := &flippable{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if !f.healthy.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		_, _ = io.WriteString(w, "from the app")
	}))
	t.Cleanup(f.Close)
	return f
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.For(t, what, cond)
}

func TestProbesGateStartAndTraffic(t *testing.T) {
	app := newFlippable(t)
	sc, _, reports := startSidecar(t, app.Server, "--readiness", app.URL+"/health",
		"--probe-period", "20ms", "--probe-failure-threshold", "1", "--gate-unready", "--drain-delay", "200ms", "--drain-quiet", "0s")
	public := "http://" + sc.publicAddr()
	health := "http://" + sc.aux[0].ln.Addr().String()

	// Starting: the app's probe fails, so tidegate answers for it.
	code, hdr, body := get(t, public+"/")
	if code != 503 || hdr.Get("Retry-After") != "1" || !strings.Contains(body, "not ready yet") {
		t.Fatalf("while starting: %d %v %q", code, hdr, body)
	}
	if sc.life.Phase() != drain.Starting {
		t.Fatalf("phase %s while the readiness probe fails", sc.life.Phase())
	}
	eventually(t, "readyz to show the failing probe", func() bool {
		code, _, body = get(t, health+"/readyz?verbose")
		return code == 503 && strings.Contains(body, "[-]app/readiness failed: HTTP 503")
	})

	app.healthy.Store(true)
	eventually(t, "phase serving", func() bool { return sc.life.Phase() == drain.Serving })
	if code, _, body := get(t, public+"/"); code != 200 || body != "from the app" {
		t.Fatalf("serving: %d %q", code, body)
	}
	if code, _, _ := get(t, health+"/app-health/app/readyz"); code != 200 {
		t.Fatalf("/app-health/app/readyz: %d", code)
	}

	// --gate-unready: the app turns unready after start-up.
	app.healthy.Store(false)
	eventually(t, "readiness to fail", func() bool { c, _, _ := get(t, health+"/readyz"); return c == 503 })
	if code, _, body := get(t, public+"/"); code != 503 || !strings.Contains(body, "not ready") {
		t.Fatalf("gate-unready: %d %q", code, body)
	}
	app.healthy.Store(true)
	eventually(t, "readiness to recover", func() bool { c, _, _ := get(t, health+"/readyz"); return c == 200 })

	// gRPC health over h2c on the health listener, then the drain latch.
	conn, err := grpc.NewClient(sc.aux[0].ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	eventually(t, "gRPC SERVING", func() bool {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	})
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch app: %v %v", m, err)
	}
	sc.drainer.Trigger("admin")
	if m, err := watch.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after the drain: %v %v", m, err)
	}
	if rep := waitReport(t, reports); rep.Trigger != "admin" {
		t.Fatalf("report %+v", rep)
	}
}

func TestHoldUntilReady(t *testing.T) {
	app := newFlippable(t)
	sc, sig, reports := startSidecar(t, app.Server, "--readiness", app.URL+"/health",
		"--probe-period", "20ms", "--hold-until-ready", "5s", "--drain-delay", "0s", "--drain-quiet", "0s")
	public := "http://" + sc.publicAddr()
	got := make(chan int, 1)
	go func() { c, _, _ := get(t, public+"/"); got <- c }()
	select {
	case c := <-got:
		t.Fatalf("a request was answered (%d) before the app was ready", c)
	case <-time.After(200 * time.Millisecond):
	}
	app.healthy.Store(true)
	if c := <-got; c != 200 {
		t.Fatalf("held request: %d, want 200 once the app was ready", c)
	}
	sig <- syscall.SIGTERM
	waitReport(t, reports)
}

// During the drain readiness is 503 and stays so, whatever the probes say;
// liveness stays 200.
func TestDrainLatchesReadinessNotLiveness(t *testing.T) {
	app := newFlippable(t)
	app.healthy.Store(true)
	sc, sig, reports := startSidecar(t, app.Server, "--readiness", app.URL+"/health", "--liveness", app.URL+"/health",
		"--probe-period", "20ms", "--drain-delay", "1500ms", "--drain-quiet", "0s")
	health := "http://" + sc.aux[0].ln.Addr().String()
	eventually(t, "phase serving", func() bool { return sc.life.Phase() == drain.Serving })
	sig <- syscall.SIGTERM
	eventually(t, "readiness 503", func() bool { c, _, _ := get(t, health+"/readyz"); return c == 503 })
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	status := func(path string) (int, bool) {
		resp, err := c.Get(health + path)
		if err != nil {
			return 0, false // the drain finished and the health listener closed
		}
		resp.Body.Close()
		return resp.StatusCode, true
	}
	checked := 0
	for sc.life.Phase() == drain.Draining {
		r, ok1 := status("/readyz")
		l, ok2 := status("/livez")
		if !ok1 || !ok2 {
			break
		}
		if r != 503 || l != 200 {
			t.Fatalf("during the drain: readiness %d, liveness %d; want 503, 200", r, l)
		}
		checked++
		<-time.After(20 * time.Millisecond)
	}
	if checked < 3 { // a loaded 2-core CI machine still manages far more in 1.5s
		t.Fatalf("only %d checks during a 1.5s drain delay", checked)
	}
	waitReport(t, reports)
}

func TestSeparateGRPCHealthListener(t *testing.T) {
	app := newFlippable(t)
	app.healthy.Store(true)
	sc, sig, reports := startSidecar(t, app.Server, "--readiness", app.URL+"/health", "--probe-period", "20ms",
		"--grpc-health-listen", "127.0.0.1:0", "--drain-delay", "0s")
	conn, err := grpc.NewClient(sc.grpcLn.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	eventually(t, "SERVING on --grpc-health-listen", func() bool {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "app"})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	})
	sig <- syscall.SIGTERM
	waitReport(t, reports)
}

// An undrain of a drain begun before the app was ever ready goes back to
// starting: the gate still answers for the app.
func TestUndrainDuringStartKeepsTheGate(t *testing.T) {
	app := newFlippable(t)
	sc, sig, reports := startSidecar(t, app.Server, "--readiness", app.URL+"/health", "--probe-period", "20ms",
		"--drain-delay", "5s", "--drain-timeout", "10s")
	admin := "http://" + sc.aux[1].ln.Addr().String()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for _, path := range []string{"/drain", "/undrain"} {
		resp, err := c.Post(admin+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("POST %s: %d", path, resp.StatusCode)
		}
	}
	if p := sc.life.Phase(); p != drain.Starting {
		t.Fatalf("after drain and undrain while starting: phase %s, want starting", p)
	}
	if code, _, body := get(t, "http://"+sc.publicAddr()+"/"); code != 503 || !strings.Contains(body, "not ready yet") {
		t.Fatalf("after the undrain: %d %q, want the start gate's 503", code, body)
	}
	app.healthy.Store(true)
	eventually(t, "phase serving", func() bool { return sc.life.Phase() == drain.Serving })
	sig <- syscall.SIGTERM
	sig <- syscall.SIGTERM
	waitReport(t, reports)
}
