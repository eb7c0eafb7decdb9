package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// grpcHealthServer is a real gRPC server with the standard health service,
// standing for an app's gRPC health endpoint.
func grpcHealthServer(t *testing.T) (*health.Server, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	served := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	return hs, ln.Addr().(*net.TCPAddr).Port
}

// TestProbesThroughTheBinary runs the sidecar with a gRPC readiness probe, an
// exec liveness probe and a TCP startup probe against real peers, and checks
// what load balancers and the kubelet see.
func TestProbesThroughTheBinary(t *testing.T) {
	app := fakeapp.Start(t)
	appPort := app.Addr[strings.LastIndexByte(app.Addr, ':')+1:]
	hs, grpcPort := grpcHealthServer(t)
	alive := filepath.Join(t.TempDir(), "alive")
	if err := os.WriteFile(alive, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	listen, healthAddr, admin := hostPort(freePort(t)), hostPort(freePort(t)), hostPort(freePort(t))
	tg := launch(t, nil, "run", "--listen", listen, "--health-listen", healthAddr, "--admin-listen", admin,
		"--upstream", app.Addr,
		"--readiness", "grpc://127.0.0.1:"+strconv.Itoa(grpcPort),
		"--liveness", "exec:test -f "+alive,
		"--startup", "tcp://127.0.0.1:"+appPort,
		"--probe-period", "50ms", "--probe-failure-threshold", "2", "--drain-delay", "0s")
	c := newClient(t)
	status := func(url string) (int, string) {
		code, body, err := statusCode(c, url)
		if err != nil {
			return 0, err.Error()
		}
		return code, body
	}

	// Starting: the app's gRPC health says NOT_SERVING.
	eventually(t, waitTimeout, "readyz to name the failing gRPC probe", func() (bool, string) {
		code, body := status("http://" + healthAddr + "/readyz?verbose")
		return code == 503 && strings.Contains(body, "[-]app/readiness failed: gRPC status NOT_SERVING"), body
	})
	resp, body := get(t, c, "http://"+listen+"/status?code=200")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(body), "not ready yet") {
		t.Fatalf("a request while the app is not ready: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if app.Requests("/status") != 0 {
		t.Fatal("a request reached the app before it was ready")
	}
	if code, body := status("http://" + healthAddr + "/startupz"); code != 200 {
		t.Fatalf("startupz with the app's port open: %d %q", code, body)
	}

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	tg.waitServing()
	if resp, _ := get(t, c, tg.URL("/status?code=200")); resp.StatusCode != 200 || app.Requests("/status") != 1 {
		t.Fatalf("once ready: %d, app saw %d", resp.StatusCode, app.Requests("/status"))
	}
	if code, body := status("http://" + healthAddr + "/app-health/app/readyz"); code != 200 {
		t.Fatalf("/app-health/app/readyz: %d %q", code, body)
	}

	// The liveness command starts failing: after 2 failures /livez fails,
	// readiness does not care.
	if err := os.Remove(alive); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "livez to fail", func() (bool, string) {
		code, body := status("http://" + healthAddr + "/livez")
		return code == 503 && strings.Contains(body, "[-]app/liveness failed: exit code 1 (2 in a row)"), body
	})
	if code, body := status("http://" + healthAddr + "/readyz"); code != 200 {
		t.Fatalf("readiness with only liveness failing: %d %q", code, body)
	}
	// The probe's gauge is set a moment after its status (healthz's
	// runner.apply), which /livez reads: poll.
	metricEventually(t, c, tg, 0, "tidegate_probe_up", "probe", "app/liveness", "kind", "liveness")
	if err := os.WriteFile(alive, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "livez to recover after one success", func() (bool, string) {
		code, body := status("http://" + healthAddr + "/livez")
		return code == 200, body
	})

	// gRPC health of the sidecar itself, over h2c on the health listener.
	conn, err := grpc.NewClient(healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "gRPC Watch SERVING", func() (bool, string) {
		m, err := watch.Recv()
		return err == nil && m.Status == healthpb.HealthCheckResponse_SERVING, m.String()
	})

	// The app turns unready after start-up: readiness follows (no gate: the
	// request is still forwarded).
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if m, err := watch.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("gRPC Watch after the app went unready: %v %v", m, err)
	}
	if resp, _ := get(t, c, tg.URL("/status?code=200")); resp.StatusCode != 200 {
		t.Fatalf("without --gate-unready requests are still forwarded: %d", resp.StatusCode)
	}
	tg.stop()
}

func TestProbeConfigFromYAML(t *testing.T) {
	app := fakeapp.Start(t)
	appPort := app.Addr[strings.LastIndexByte(app.Addr, ':')+1:]
	cfg := filepath.Join(t.TempDir(), "tidegate.yaml")
	yaml := `upstream: ` + app.Addr + `
probes:
  - container: web
    readinessProbe:
      httpGet: {path: "/status?code=204", port: ` + appPort + `, httpHeaders: [{name: X-Probe, value: "yes"}]}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: "` + appPort + `"}
`
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := start(t, "--config", cfg)
	c := newClient(t)
	for _, path := range []string{"/readyz", "/livez", "/startupz", "/app-health/web/readyz", "/app-health/web/livez", "/readyz/web/readiness"} {
		if code, body, err := statusCode(c, "http://"+tg.Health+path); err != nil || code != 200 {
			t.Errorf("%s: %d %q %v", path, code, body, err)
		}
	}
	var st struct {
		Probes []struct {
			Name    string `json:"name"`
			Healthy bool   `json:"healthy"`
			Target  string `json:"target"`
		} `json:"probes"`
	}
	_, body := get(t, c, "http://"+tg.Admin+"/status")
	decodeJSON(t, body, &st)
	if len(st.Probes) != 2 || st.Probes[0].Name != "web/readiness" || !st.Probes[0].Healthy ||
		st.Probes[0].Target != "http://127.0.0.1:"+appPort+"/status" { // a target has no query: it may carry a token
		t.Fatalf("/status probes: %+v", st.Probes)
	}
	tg.stop()
}

func TestProbeConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--readiness", "ftp://127.0.0.1:21/"}, `scheme "ftp"`},
		{[]string{"--readiness", "http://127.0.0.1:70000/"}, "70000"},
		{[]string{"--liveness", "tcp://127.0.0.1:3000", "--probe-success-threshold", "2", "--startup", "exec:true", "--startup", "exec:true"}, "already has a startup probe"},
	} {
		res := runOnce(t, nil, append([]string{"run", "--upstream", "127.0.0.1:3000"}, tc.args...)...)
		if res.code != 2 || !strings.Contains(res.stderr, tc.want) || strings.Contains(res.stderr, "goroutine ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, res.code, res.stderr, tc.want)
		}
	}
}
