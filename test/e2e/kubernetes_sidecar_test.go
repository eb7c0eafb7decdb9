package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// What an injected pod's sidecar does at exit: --drain-report-file
// (/dev/termination-log in Kubernetes) holds how the drain went.
func TestDrainReportFileAfterSIGTERM(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	report := filepath.Join(t.TempDir(), "termination-log")
	tg := start(t, append([]string{"--upstream", app.Addr, "--drain-report-file", report}, quickDrain...)...)
	c := newClient(t)
	slow := inBackground(c, tg.URL("/slow?d=400ms"))
	recv(t, app.SlowStarted(), waitTimeout, "the app receiving /slow")
	tg.stop()
	if o := recv(t, slow, waitTimeout, "the request in flight"); o.err != nil || o.status != 200 {
		t.Errorf("the request in flight: %d %v", o.status, o.err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{"tidegate exited with code 0: drained after SIGTERM\n", "trigger SIGTERM, result complete",
		"requests: 1 in flight at the trigger, 1 served during the drain, 0 cut at the end", "app stop: none: none"} {
		if !strings.Contains(text, want) {
			t.Errorf("report file lacks %q:\n%s", want, text)
		}
	}
	if len(b) > 4096 {
		t.Errorf("report file is %d bytes, more than the kubelet reads", len(b))
	}
}

// An app command that cannot start, with an error of several KB: the
// report file says so in at most 4096 bytes.
func TestDrainReportFileHugeStartError(t *testing.T) {
	t.Parallel()
	report := filepath.Join(t.TempDir(), "termination-log")
	huge := "/" + strings.Repeat("no-such-dir/", 500) + "app"
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := free.Addr().String()
	free.Close()
	tg := launch(t, nil, "run", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", upstream, "--drain-report-file", report, "--", huge)
	if code := tg.waitExit(exitTimeout); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if len(b) > 4096 || !strings.HasPrefix(text, "tidegate exited with code 1: the app could not be started\n") ||
		!strings.Contains(text, "result forced") || !strings.Contains(text, "app stop: child: failed (see the error below)") ||
		!strings.Contains(text, "error: start app \"/no-such-dir/") || !strings.HasSuffix(text, "…[truncated]\n") {
		t.Errorf("report file (%d bytes):\n%.1500s", len(b), text)
	}
}

// The chained preStop of an injected app container, with real processes:
// the sidecar copies its binary (--copy-binary-to), the copy runs
// `tidegate prestop`, whose original hook is `tidegate drain` against the
// admin listener: it prints the phase the sidecar is in when the hook runs,
// which must be stopping_app (the app stop is held there).
func TestPrestopChainedHookRealBinary(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	hold := newStopHold(t)
	bin := t.TempDir()
	tg := startEnv(t, []string{"TIDEGATE_DRAIN_TOKEN=tok-e2e"},
		append(append([]string{"--upstream", app.Addr, "--copy-binary-to", bin}, quickDrain...), hold.args()...)...)
	copied := filepath.Join(bin, "tidegate")
	if fi, err := os.Stat(copied); err != nil || fi.Mode().Perm() != 0o555 {
		t.Fatalf("copied binary: %v %v", fi, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, copied, "prestop", "--health", tg.Health, "--wait", "8s",
		"--", binary, "drain", "--admin", tg.Admin)
	cmd.Env = baseEnv("TIDEGATE_DRAIN_TOKEN=tok-e2e")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || !strings.Contains(stdout.String(), `"phase": "stopping_app"`) ||
		!strings.Contains(stderr.String(), "drain: reached phase stopping_app") || strings.Contains(stderr.String(), "tok-e2e") {
		t.Errorf("prestop: %v\nstdout %q\nstderr %q", err, stdout.String(), stderr.String())
	}
	hold.release(t)
	if code := tg.waitExit(exitTimeout); code != 0 {
		t.Errorf("sidecar exit %d", code)
	}
	m := tg.waitLog(waitTimeout, "the drain report", func(m map[string]any) bool { return m["msg"] == "drain report" })
	if m["trigger"] != "prestop" {
		t.Errorf("drain trigger %v, want prestop", m["trigger"])
	}

	// A second start finds the identical binary and leaves it.
	before, _ := os.Stat(copied)
	tg2 := start(t, append([]string{"--upstream", app.Addr, "--copy-binary-to", bin}, quickDrain...)...)
	tg2.waitLog(waitTimeout, "the copy skipped", func(m map[string]any) bool {
		return strings.Contains(m["msg"].(string), "already in place")
	})
	if after, _ := os.Stat(copied); !os.SameFile(before, after) {
		t.Error("an identical binary was copied again")
	}
	tg2.signal(syscall.SIGTERM)
	tg2.waitExit(exitTimeout)
}
