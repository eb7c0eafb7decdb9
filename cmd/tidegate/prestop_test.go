package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/test/wait"
)

// syncBuf is a bytes.Buffer safe for a writer and a reader at once.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type prestopResult struct {
	code           int
	stdout, stderr string
}

// runPrestop runs `tidegate prestop args...` in-process; signals may be nil.
func runPrestop(getenv func(string) string, signals <-chan os.Signal, args ...string) <-chan prestopResult {
	out := make(chan prestopResult, 1)
	go func() {
		var stdout, stderr syncBuf
		code := cli(append([]string{"prestop"}, args...), env{getenv: getenv, stdout: &stdout, stderr: &stderr, signals: signals})
		out <- prestopResult{code, stdout.String(), stderr.String()}
	}()
	return out
}

func prestopDone(t *testing.T, ch <-chan prestopResult) prestopResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("tidegate prestop did not return")
		return prestopResult{}
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// The original exec hook runs only once the drain has reached
// stopping_app: the test holds the drain with a request in flight, writes
// "released" to an events file, then lets the request end; the hook
// appends "hook" to the same file.
func TestPrestopDrainsBeforeTheHook(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
	}))
	defer app.Close()
	sc, _, reports := startSidecar(t, app, "--drain-token", "s3cr3t-token", "--drain-delay", "0s", "--drain-quiet", "0s", "--drain-timeout", "20s")
	waitServing(t, sc)
	slow := make(chan error, 1)
	go func() { _, err := oneShot("http://" + sc.publicAddr() + "/slow"); slow <- err }()
	<-entered

	events := filepath.Join(t.TempDir(), "events")
	res := runPrestop(envOf(nil), nil, "--health", sc.aux[0].ln.Addr().String(), "--token", "s3cr3t-token", "--wait", "15s",
		"--", "sh", "-c", `echo hook >> "$0"`, events)
	wait.Until(t, 5*time.Second, "the prestop drain to start the drain", func() (bool, string) {
		p := sc.life.Phase()
		return p == drain.Draining, "phase " + p.String()
	})
	if err := os.WriteFile(events, []byte("released\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	close(release)
	r := prestopDone(t, res)
	if r.code != 0 || !strings.Contains(r.stderr, "drain: reached phase stop") || strings.Contains(r.stderr, "s3cr3t") {
		t.Errorf("prestop: exit %d, stderr %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(events); string(b) != "released\nhook\n" {
		t.Errorf("events %q: the hook ran before the drain reached stopping_app", b)
	}
	if err := <-slow; err != nil {
		t.Errorf("the request in flight: %v", err)
	}
	if rep := waitReport(t, reports); rep.Trigger != "prestop" || rep.Result != "complete" {
		t.Errorf("drain report: trigger %q result %q", rep.Trigger, rep.Result)
	}
}

// --then-http-get: the request reaches a real server after the drain, with
// the headers given; 3xx is success and is not followed.
func TestPrestopHTTPHook(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	sc, _, reports := startSidecar(t, app, "--drain-token", "tok", "--drain-delay", "0s", "--drain-quiet", "0s")
	waitServing(t, sc)

	type seen struct {
		phase  drain.Phase
		header http.Header
		path   string
	}
	hits := make(chan seen, 4)
	var status atomic.Int32
	status.Store(302)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- seen{sc.life.Phase(), r.Header.Clone(), r.URL.RequestURI()}
		if status.Load() == 302 {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer hook.Close()

	r := prestopDone(t, runPrestop(envOf(map[string]string{"TIDEGATE_DRAIN_TOKEN": "tok"}), nil,
		"--health", sc.aux[0].ln.Addr().String(), "--wait", "10s",
		"--then-http-get", hook.URL+"/stop?now=1", "--then-header", "X-Stop: yes", "--then-header", "Authorization: Bearer abc"))
	if r.code != 0 {
		t.Errorf("http hook answering 302: exit %d, stderr %q", r.code, r.stderr)
	}
	h := <-hits
	if h.phase < drain.StoppingApp || h.path != "/stop?now=1" || h.header.Get("X-Stop") != "yes" || h.header.Get("Authorization") != "Bearer abc" {
		t.Errorf("hook request: phase %s, path %s, header %v", h.phase, h.path, h.header)
	}
	if len(hits) != 0 {
		t.Error("the redirect was followed")
	}
	waitReport(t, reports)

	// The sidecar is gone now: the drain call fails, the hook still runs,
	// and a 500 is exit 1.
	status.Store(500)
	r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "tok", "--wait", "1s",
		"--then-http-get", hook.URL+"/stop"))
	if r.code != 1 || len(hits) != 1 || !strings.Contains(r.stderr, "running the original hook anyway") || !strings.Contains(r.stderr, "500") {
		t.Errorf("http hook answering 500 after a failed drain: exit %d, hits %d, stderr %q", r.code, len(hits), r.stderr)
	}
	// Nothing listening: exit 1.
	r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "tok", "--then-http-get", "http://"+closedAddr(t)+"/stop"))
	if r.code != 1 {
		t.Errorf("http hook to a closed port: exit %d", r.code)
	}
}

// The hook runs even when the drain call fails (nothing listening, or a
// wrong token), and its exit status passes through.
func TestPrestopHookAfterFailedDrainAndExitCodes(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	r := prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "tok", "--wait", "1s",
		"--", "sh", "-c", `echo ran > "$0"; exit 7`, ran))
	if _, err := os.Stat(ran); err != nil || r.code != 7 || !strings.Contains(r.stderr, "failed") {
		t.Errorf("after a failed drain: hook ran %v, exit %d, stderr %q", err == nil, r.code, r.stderr)
	}

	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	sc, sig, reports := startSidecar(t, app, "--drain-token", "right", "--drain-delay", "0s", "--drain-quiet", "0s")
	waitServing(t, sc)
	r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", sc.aux[0].ln.Addr().String(), "--token", "wrong", "--", "true"))
	if r.code != 0 || !strings.Contains(r.stderr, "403") || sc.life.Phase() != drain.Serving {
		t.Errorf("wrong token: exit %d, phase %s, stderr %q", r.code, sc.life.Phase(), r.stderr)
	}
	// Without a hook: 1 when the drain was not reached.
	if r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", sc.aux[0].ln.Addr().String(), "--token", "wrong")); r.code != 1 {
		t.Errorf("no hook, wrong token: exit %d", r.code)
	}
	sig <- syscall.SIGTERM
	waitReport(t, reports)

	// A hook that dies of a signal: 128+N, as a shell reports it.
	if r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "t", "--", "sh", "-c", "kill -TERM $$")); r.code != 128+int(syscall.SIGTERM) {
		t.Errorf("hook killed by SIGTERM: exit %d", r.code)
	}
	// No such command: 127.
	if r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "t", "--", filepath.Join(dir, "missing"))); r.code != 127 {
		t.Errorf("missing hook command: exit %d, stderr %q", r.code, r.stderr)
	}
	// A sleep hook: 0.
	if r = prestopDone(t, runPrestop(envOf(nil), nil, "--health", closedAddr(t), "--token", "t", "--then-sleep", "1ms")); r.code != 0 {
		t.Errorf("sleep hook: exit %d, stderr %q", r.code, r.stderr)
	}
}

// The exec hook gets the signals prestop gets.
func TestPrestopPassesSignals(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	signals := make(chan os.Signal, 1)
	res := runPrestop(envOf(nil), signals, "--health", closedAddr(t), "--token", "t", "--wait", "1s",
		"--", "sh", "-c", `trap 'exit 42' TERM; touch "$0"; while :; do sleep 0.01; done`, ready)
	wait.For(t, "the hook to start", func() bool { _, err := os.Stat(ready); return err == nil })
	signals <- syscall.SIGTERM
	if r := prestopDone(t, res); r.code != 42 {
		t.Errorf("hook trapping SIGTERM: exit %d, want 42; stderr %q", r.code, r.stderr)
	}
}

func TestPrestopUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--wait", "5s"}, "--token"},
		{[]string{"--token", "t", "--wait", "soon"}, "--wait"},
		{[]string{"--token", "t", "--health", "nohost"}, "--health"},
		{[]string{"--token", "t", "--then-sleep", "5s", "--then-http-get", "http://:8080/"}, "at most one of"},
		{[]string{"--token", "t", "--then-sleep", "5s", "--", "true"}, "at most one of"},
		{[]string{"--token", "t", "--then-header", "X: y"}, "--then-header needs --then-http-get"},
		{[]string{"--token", "t", "--then-http-get", "http://:8080/", "--then-header", "no colon"}, "--then-header"},
		{[]string{"--token", "t", "--then-http-get", "ftp://x/"}, "--then-http-get"},
		{[]string{"--token", "t", "--then-sleep", "-1s"}, "--then-sleep"},
		{[]string{"--token", "t", "--"}, "nothing after --"},
		{[]string{"--token", "t", "stray"}, "unexpected argument"},
		{[]string{"--tokn", "t"}, "tokn"},
	} {
		args := tc.args
		if !slices.Contains(args, "--health") {
			args = append([]string{"--health", closedAddr(t)}, args...) // bad hook flags still try the drain
		}
		r := prestopDone(t, runPrestop(envOf(nil), nil, args...))
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("prestop %q: exit %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if r := prestopDone(t, runPrestop(envOf(nil), nil, "--help")); r.code != 0 || !strings.Contains(r.stdout, "--then-http-get") {
		t.Errorf("prestop --help: %d %q", r.code, r.stdout)
	}
	var b strings.Builder
	writeUsage(&b)
	if !strings.Contains(b.String(), "prestop") {
		t.Error("tidegate --help does not list prestop")
	}
}

func TestPodAddress(t *testing.T) {
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := "127.0.0.1"
	if addrs, err := net.DefaultResolver.LookupHost(context.Background(), name); err == nil && len(addrs) > 0 {
		want = addrs[0]
	}
	if got := podAddress(os.Hostname, net.DefaultResolver.LookupHost); got != want {
		t.Errorf("podAddress = %s, want %s (the first address of %s)", got, want, name)
	}
	fail := func(context.Context, string) ([]string, error) { return nil, errors.New("no such host") }
	if got := podAddress(os.Hostname, fail); got != "127.0.0.1" {
		t.Errorf("unresolvable host name: %s", got)
	}
	noName := func() (string, error) { return "", errors.New("no host name") }
	if got := podAddress(noName, net.DefaultResolver.LookupHost); got != "127.0.0.1" {
		t.Errorf("no host name: %s", got)
	}
	two := func(context.Context, string) ([]string, error) { return []string{"10.1.2.3", "fd00::3"}, nil }
	if got := podAddress(os.Hostname, two); got != "10.1.2.3" {
		t.Errorf("two addresses: %s", got)
	}
}

// drainRecorder is a stand-in health listener that answers GET /drain as a
// sidecar that reached stopping_app, recording the tokens it got.
func drainRecorder(t *testing.T) (addr string, tokens func() []string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get(DrainTokenHeader))
		mu.Unlock()
		fmt.Fprintln(w, `{"phase": "stopping_app"}`)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// A malformed hook argument (a header the kubelet would not send either)
// is reported after the drain, never instead of it.
func TestPrestopBadHookStillDrains(t *testing.T) {
	addr, tokens := drainRecorder(t)
	r := prestopDone(t, runPrestop(envOf(nil), nil, "--health", addr, "--token", "tok", "--wait", "2s",
		"--then-http-get", "http://:8080/quit", "--then-header", "X-Bad: a\x01b", "--then-header", "no colon"))
	if r.code != 2 || !strings.Contains(r.stderr, "the drain ran") || !strings.Contains(r.stderr, "X-Bad") {
		t.Errorf("exit %d, stderr %q; want 2 naming the header, after the drain", r.code, r.stderr)
	}
	if got := tokens(); !slices.Equal(got, []string{"tok"}) {
		t.Errorf("drain calls with tokens %q, want one with tok", got)
	}
}

// --token-file: the token from the file the sidecar's --copy-binary-to
// writes, so that it is not on the hook's command line.
func TestPrestopTokenFile(t *testing.T) {
	addr, tokens := drainRecorder(t)
	dir := t.TempDir()
	if err := writeTokenFile(dir, "tok-from-file"); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, tokenFileName)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("token file: %v %v; want mode 0444", fi, err)
	}
	r := prestopDone(t, runPrestop(envOf(nil), nil, "--health", addr, "--token-file", file, "--wait", "2s"))
	if r.code != 0 || !slices.Equal(tokens(), []string{"tok-from-file"}) {
		t.Errorf("exit %d (stderr %q), tokens %q; want 0 and tok-from-file", r.code, r.stderr, tokens())
	}
	if strings.Contains(r.stderr, "tok-from-file") {
		t.Errorf("the token is in the output: %q", r.stderr)
	}

	huge := filepath.Join(dir, "huge")
	if err := os.WriteFile(huge, bytes.Repeat([]byte("x"), maxTokenFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(dir, "missing"), huge} {
		r := prestopDone(t, runPrestop(envOf(nil), nil, "--health", addr, "--token-file", f))
		if r.code != 2 || !strings.Contains(r.stderr, "--token-file "+f) {
			t.Errorf("--token-file %s: exit %d, stderr %q; want 2 naming it", f, r.code, r.stderr)
		}
	}

	// An empty token (a sidecar without --drain-token) removes a stale file.
	if err := writeTokenFile(dir, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("token file after an empty token: %v; want it gone", err)
	}
}
