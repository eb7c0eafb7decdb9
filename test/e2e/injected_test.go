package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tidegate/tidegate/deploy/inject"
	"github.com/tidegate/tidegate/test/fakeapp"
	"github.com/tidegate/tidegate/test/wait"
)

// The contract between tidegate-inject and the sidecar, with real
// processes: the injector writes a pod; this test plays the kubelet. It
// starts the binary with exactly the sidecar's args and env (the only
// changes: listeners on 127.0.0.1 instead of every interface, and the
// termination-log and emptyDir paths moved into a temp dir), calls the
// probes the injector rewrote, sends traffic to the port the app's port
// name moved to, and runs the app's preStop hook as written.

// freeLoopbackPorts returns n distinct ports that were free a moment ago.
func freeLoopbackPorts(t *testing.T, n int) []int32 {
	t.Helper()
	var ports []int32
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // held until all are picked: distinct
		ports = append(ports, int32(ln.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

// injectedPod injects a pod whose app container listens at appAddr, with
// an HTTP readiness probe and a TCP liveness probe on its named port, and
// the preStop hook given (nil: none). It returns the pod and the params.
func injectedPod(t *testing.T, appAddr string, preStop *corev1.LifecycleHandler) (*corev1.Pod, inject.Params) {
	t.Helper()
	_, portStr, err := net.SplitHostPort(appAddr)
	if err != nil {
		t.Fatal(err)
	}
	appPort, _ := strconv.Atoi(portStr)
	ports := freeLoopbackPorts(t, 4)
	p := inject.Params{ListenPort: ports[0], HealthPort: ports[1], MetricsPort: ports[2], AdminPort: ports[3],
		DrainDelay: 200 * time.Millisecond, DrainTimeout: 10 * time.Second,
		Token: func() (string, error) { return "e2e-token-0123456789abcdef", nil }}
	named := intstr.FromString("http")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "app",
			Image: "example.com/web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(appPort)}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/status?code=200", Port: named}},
				PeriodSeconds: 1, FailureThreshold: 2},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: named}},
				PeriodSeconds: 1},
		}}},
	}
	if preStop != nil {
		pod.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: preStop}
	}
	res, err := inject.InjectPod(&pod.ObjectMeta, &pod.Spec, inject.InjectUnlessRefused, p)
	if err != nil || !res.Injected {
		t.Fatalf("inject: %+v %v", res, err)
	}
	return pod, p
}

// runSidecar starts the binary as the injected sidecar container says.
func runSidecar(t *testing.T, pod *corev1.Pod, dir string) *tidegate {
	t.Helper()
	var sc *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == inject.SidecarName {
			sc = &pod.Spec.InitContainers[i]
		}
	}
	if sc == nil || len(sc.Args) == 0 || sc.Args[0] != "run" {
		t.Fatalf("no native tidegate sidecar running `run`: %+v", pod.Spec.InitContainers)
	}
	var args []string
	for _, a := range sc.Args {
		name, val, _ := strings.Cut(a, "=")
		switch {
		case (name == "--listen" || name == "--health-listen" || name == "--metrics-listen") && strings.HasPrefix(val, ":"):
			a = name + "=127.0.0.1" + val
		case name == "--drain-report-file":
			a = name + "=" + filepath.Join(dir, "termination-log")
		case name == "--copy-binary-to": // the emptyDir, which exists before any container starts
			bin := filepath.Join(dir, "tidegate-bin")
			if err := os.Mkdir(bin, 0o777); err != nil {
				t.Fatal(err)
			}
			a = name + "=" + bin
		}
		args = append(args, a)
	}
	var env []string
	for _, e := range sc.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	tg := launch(t, env, args...)
	tg.waitServing()
	return tg
}

// kubeletGet is an httpGet probe or hook as the kubelet sends it to the pod
// (127.0.0.1 standing in for the pod IP); it returns status and body.
func kubeletGet(t *testing.T, h *corev1.HTTPGetAction, timeout time.Duration) (int, string, error) {
	t.Helper()
	if h.Port.Type != intstr.Int {
		t.Fatalf("httpGet port %v: the injector must write numbers (named ports resolve only within their own container)", h.Port)
	}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", h.Port.IntVal, h.Path), nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	for _, hd := range h.HTTPHeaders {
		req.Header.Set(hd.Name, hd.Value)
	}
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), nil
}

func TestInjectedPodRunsAsWritten(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	pod, p := injectedPod(t, app.Addr, nil)
	dir := t.TempDir()
	tg := runSidecar(t, pod, dir)
	var sc corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if c.Name == inject.SidecarName {
			sc = c
		}
	}
	appC := pod.Spec.Containers[0]

	// The kubelet's view: the sidecar's startup probe, then the app's
	// rewritten probes, answered by tidegate from the app's own.
	if code, body, err := kubeletGet(t, sc.StartupProbe.HTTPGet, 2*time.Second); err != nil || code != 200 {
		t.Fatalf("sidecar startupProbe %s: %d %q %v", sc.StartupProbe.HTTPGet.Path, code, body, err)
	}
	for _, pr := range []*corev1.Probe{appC.ReadinessProbe, appC.LivenessProbe} {
		wait.Until(t, 10*time.Second, "the app's rewritten probe "+pr.HTTPGet.Path+" passes", func() (bool, string) {
			code, body, err := kubeletGet(t, pr.HTTPGet, 2*time.Second)
			return err == nil && code == 200, fmt.Sprintf("%d %q %v", code, body, err)
		})
	}

	// Traffic: the port that took the app port's name reaches the app.
	var public int32
	for _, cp := range sc.Ports {
		if cp.Name == "http" {
			public = cp.ContainerPort
		}
	}
	if public != p.ListenPort {
		t.Fatalf("sidecar port named http: %d, want the listen port %d", public, p.ListenPort)
	}
	c := newClient(t)
	resp, body := get(t, c, fmt.Sprintf("http://127.0.0.1:%d/echo", public))
	if resp.StatusCode != 200 {
		t.Fatalf("GET through the sidecar's public port: %d %s", resp.StatusCode, body)
	}

	// Prometheus scrapes the annotated port; it serves metrics and nothing else.
	if pod.Annotations["prometheus.io/port"] != strconv.Itoa(int(p.MetricsPort)) {
		t.Errorf("prometheus.io/port %q, want %d", pod.Annotations["prometheus.io/port"], p.MetricsPort)
	}
	resp, body = get(t, c, fmt.Sprintf("http://127.0.0.1:%d%s", p.MetricsPort, pod.Annotations["prometheus.io/path"]))
	if resp.StatusCode != 200 || !strings.Contains(string(body), "tidegate_phase") {
		t.Errorf("metrics port: %d, tidegate_phase present: %v", resp.StatusCode, strings.Contains(string(body), "tidegate_phase"))
	}
	if resp, _ := get(t, c, fmt.Sprintf("http://127.0.0.1:%d/config", p.MetricsPort)); resp.StatusCode != 404 {
		t.Errorf("metrics port /config: %d, want 404 (admin stays on loopback)", resp.StatusCode)
	}

	// Pod deletion: a request in flight, then the app's preStop hook as
	// written. It returns once the drain has reached stopping_app, after the
	// request has completed; the kubelet would signal the app only then.
	slow := inBackground(c, fmt.Sprintf("http://127.0.0.1:%d/slow?d=600ms", public))
	recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow")
	hook := appC.Lifecycle.PreStop.HTTPGet
	if hook == nil {
		t.Fatalf("the app's preStop is not an httpGet: %+v", appC.Lifecycle.PreStop)
	}
	code, hookBody, err := kubeletGet(t, hook, 30*time.Second)
	// 200 with the phase reached: stopping_app, or stopped already (with
	// --app-stop=none the sidecar has nothing to wait for there).
	if err != nil || code != 200 || !(strings.Contains(hookBody, `"stopping_app"`) || strings.Contains(hookBody, `"stopped"`)) {
		t.Fatalf("preStop %s: %d %q %v", hook.Path, code, hookBody, err)
	}
	select {
	case o := <-slow:
		if o.err != nil || o.status != 200 {
			t.Errorf("the request in flight at the preStop: %d %v", o.status, o.err)
		}
	default:
		t.Errorf("the preStop hook returned before the request in flight completed")
	}
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("sidecar exit %d, want 0", code)
	}
	report, err := os.ReadFile(filepath.Join(dir, "termination-log"))
	if err != nil || !strings.Contains(string(report), "trigger prestop, result complete") {
		t.Errorf("termination message: %v\n%s", err, report)
	}
}

// An app with its own preStop hook: the injector chains it through the
// binary the sidecar copies to the shared emptyDir; the drain comes first,
// then the app's hook, which sees the sidecar already at stopping_app.
func TestInjectedChainedPreStopRunsAsWritten(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	dir := t.TempDir()
	hookOut := filepath.Join(dir, "hook-ran")
	pod, _ := injectedPod(t, app.Addr, &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
		Command: []string{"/bin/sh", "-c", "echo ran > " + hookOut}}})
	tg := runSidecar(t, pod, dir)

	cmd := pod.Spec.Containers[0].Lifecycle.PreStop.Exec.Command
	if len(cmd) == 0 || cmd[0] != inject.BinDir+"/tidegate" {
		t.Fatalf("chained preStop %q: want %s/tidegate first", cmd, inject.BinDir)
	}
	for _, a := range cmd {
		if strings.Contains(a, "e2e-token-0123456789abcdef") {
			t.Errorf("chained preStop argument %q carries the drain token: the kubelet prints a failed hook's command in events", a)
		}
	}
	copied := filepath.Join(dir, "tidegate-bin", "tidegate")
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	var args []string // the emptyDir's mount point moved into the temp dir
	for _, a := range cmd[1:] {
		args = append(args, strings.ReplaceAll(a, inject.BinDir+"/", filepath.Join(dir, "tidegate-bin")+"/"))
	}
	run := exec.CommandContext(ctx, copied, args...)
	run.Env = baseEnv()
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("chained preStop %q: %v\n%s", cmd, err, out)
	}
	if b, err := os.ReadFile(hookOut); err != nil || string(b) != "ran\n" {
		t.Errorf("the app's own hook: %q %v", b, err)
	}
	if !strings.Contains(string(out), "stopping_app") && !strings.Contains(string(out), "stopped") {
		t.Errorf("prestop output does not show the drain reaching stopping_app before the hook:\n%s", out)
	}
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("sidecar exit %d, want 0", code)
	}
	report, err := os.ReadFile(filepath.Join(dir, "termination-log"))
	if err != nil || !strings.Contains(string(report), "trigger prestop") {
		t.Errorf("termination message: %v\n%s", err, report)
	}
}

// An app that fails its own liveness probe fails the app container's
// rewritten probe, and not the sidecar's: the kubelet restarts the app,
// and tidegate (the native sidecar) keeps running.
func TestInjectedSidecarLivenessIgnoresTheApp(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	pod, _ := injectedPod(t, app.Addr, nil)
	runSidecar(t, pod, t.TempDir())
	var sc corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if c.Name == inject.SidecarName {
			sc = c
		}
	}
	appLive := pod.Spec.Containers[0].LivenessProbe.HTTPGet
	wait.Until(t, 10*time.Second, "the app's rewritten liveness probe passes", func() (bool, string) {
		code, body, err := kubeletGet(t, appLive, 2*time.Second)
		return err == nil && code == 200, fmt.Sprintf("%d %q %v", code, body, err)
	})
	app.Close() // its TCP liveness probe fails from now on
	wait.Until(t, 15*time.Second, "the app's rewritten liveness probe fails", func() (bool, string) {
		code, body, err := kubeletGet(t, appLive, 2*time.Second)
		return err == nil && code == 503, fmt.Sprintf("%d %q %v", code, body, err)
	})
	for _, pr := range []*corev1.Probe{sc.LivenessProbe, sc.StartupProbe} {
		if code, body, err := kubeletGet(t, pr.HTTPGet, 2*time.Second); err != nil || code != 200 {
			t.Errorf("sidecar probe %s with the app's liveness failing: %d %q %v; want 200 (restart the app, not tidegate)", pr.HTTPGet.Path, code, body, err)
		}
	}
}
