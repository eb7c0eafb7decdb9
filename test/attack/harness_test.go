//go:build linux

package attack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadlines of the harness. Generous for a loaded 2-core machine; a healthy
// run is far below each.
const (
	startTimeout = 15 * time.Second // tidegate to phase serving
	exitTimeout  = 10 * time.Second // tidegate to exit after SIGKILL
	httpTimeout  = 5 * time.Second  // one admin or warm-up request
)

// lines collects a child's output, line by line, and wakes waiters on each
// write.
type lines struct {
	mu      sync.Mutex
	all     []string
	partial []byte
	changed chan struct{} // closed and replaced on every write
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (b *lines) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		// Keep a bounded tail: a hostile row may make tidegate log a lot.
		if len(b.all) >= 4096 {
			b.all = append(b.all[:0], b.all[2048:]...)
		}
		b.all = append(b.all, string(b.partial[:i]))
		b.partial = b.partial[i+1:]
	}
	close(b.changed)
	b.changed = make(chan struct{})
	return len(p), nil
}

func (b *lines) snapshot() ([]string, chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.all...), b.changed
}

func (b *lines) String() string {
	l, _ := b.snapshot()
	s := strings.Join(l, "\n")
	if len(s) > 16<<10 {
		s = "…" + s[len(s)-16<<10:]
	}
	return s
}

// tidegate is one running `tidegate run` process.
type tidegate struct {
	t      *testing.T
	cmd    *exec.Cmd
	pid    int
	out    *lines
	exited chan struct{}

	Listen, Admin string // bound addresses, from the "phase serving" line
	admin         *http.Client
}

// startTidegate runs the binary on free loopback ports in front of upstream
// with args added, and waits until it serves. The test's cleanup kills it.
func startTidegate(t *testing.T, upstream string, args ...string) *tidegate {
	t.Helper()
	all := append([]string{"run",
		"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", upstream}, args...)
	tg := &tidegate{t: t, out: newLines(), exited: make(chan struct{})}
	tg.cmd = exec.Command(binary, all...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIDEGATE_") && !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			env = append(env, kv)
		}
	}
	tg.cmd.Env = env
	tg.cmd.Stdout = tg.out
	tg.cmd.Stderr = tg.out
	tg.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := tg.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	tg.pid = tg.cmd.Process.Pid
	go func() {
		_ = tg.cmd.Wait()
		close(tg.exited)
	}()
	tr := &http.Transport{Proxy: nil, DisableCompression: true, DisableKeepAlives: true}
	tg.admin = &http.Client{Transport: tr, Timeout: httpTimeout}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		_ = tg.cmd.Process.Kill()
		select {
		case <-tg.exited:
		case <-time.After(exitTimeout):
			t.Errorf("tidegate pid %d did not exit after SIGKILL", tg.pid)
		}
		if out := tg.out.String(); strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") {
			t.Errorf("tidegate panicked:\n%s", out)
		} else if t.Failed() {
			t.Logf("tidegate %s\n--- output ---\n%s", strings.Join(all, " "), out)
		}
	})
	tg.waitServing()
	return tg
}

// waitServing waits for the "phase changed" line to serving and reads the
// bound addresses from it.
func (tg *tidegate) waitServing() {
	tg.t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		all, changed := tg.out.snapshot()
		for _, l := range all {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != "phase changed" || m["phase"] != "serving" {
				continue
			}
			tg.Listen, _ = m["listen"].(string)
			tg.Admin, _ = m["admin_listen"].(string)
			if tg.Listen == "" || tg.Admin == "" {
				tg.t.Fatalf("serving log line lacks listen or admin_listen: %s", l)
			}
			return
		}
		select {
		case <-changed:
		case <-tg.exited:
			tg.t.Fatalf("tidegate exited before serving:\n%s", tg.out.String())
		case <-deadline.C:
			tg.t.Fatalf("tidegate did not log phase serving within %s", startTimeout)
		}
	}
}

// alive reports whether the process still runs.
func (tg *tidegate) alive() bool {
	select {
	case <-tg.exited:
		return false
	default:
		return true
	}
}

// metrics scrapes the admin listener's /metrics and returns every sample
// whose name is asked for, summed over its label sets.
func (tg *tidegate) metrics(names ...string) (map[string]float64, error) {
	resp, err := tg.admin.Get("http://" + tg.Admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			if j := strings.LastIndexByte(line, '}'); j >= 0 {
				rest = strings.TrimSpace(line[j+1:])
			}
		}
		for _, want := range names {
			if name == want {
				f := strings.Fields(rest)
				if len(f) == 0 {
					continue
				}
				v, err := strconv.ParseFloat(f[0], 64)
				if err != nil {
					return nil, fmt.Errorf("/metrics %s: %w", line, err)
				}
				out[name] += v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, want := range names {
		if _, ok := out[want]; !ok {
			out[want] = 0 // a vector with no series yet
		}
	}
	return out, nil
}

const (
	heapInuse   = "go_memstats_heap_inuse_bytes"
	connsActive = "tidegate_connections_active"
)

// gc makes tidegate collect garbage twice (the second empties what
// sync.Pool kept through the first): GET /debug/pprof/heap?gc=1 runs
// runtime.GC before it writes the profile.
func (tg *tidegate) gc() error {
	for range 2 {
		resp, err := tg.admin.Get("http://" + tg.Admin + "/debug/pprof/heap?gc=1")
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /debug/pprof/heap?gc=1: %s", resp.Status)
		}
	}
	return nil
}

// statusKiB returns a "Key:  N kB" line of /proc/PID/status.
func statusKiB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, key)
}

// rssKiB returns VmRSS, failing the test if /proc cannot say.
func (tg *tidegate) rssKiB() int64 {
	tg.t.Helper()
	v, err := statusKiB(tg.pid, "VmRSS")
	if err != nil {
		tg.t.Fatal(err)
	}
	return v
}

// warm sends a few requests over HTTP/1.1 and h2c, so that the baseline
// includes what the first request of each kind allocates for good (pools,
// the app connection, the HTTP/2 server's tables).
func (tg *tidegate) warm(ctx context.Context) error {
	h1 := &http.Transport{Proxy: nil, DisableCompression: true}
	defer h1.CloseIdleConnections()
	h2 := newH2CTransport()
	defer h2.CloseIdleConnections()
	for _, rt := range []http.RoundTripper{h1, h2} {
		c := &http.Client{Transport: rt, Timeout: httpTimeout}
		for _, path := range []string{"/fast", "/fast", "/big?n=1048576", "/fast"} {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+tg.Listen+path, nil)
			if err != nil {
				return err
			}
			resp, err := c.Do(req)
			if err != nil {
				return fmt.Errorf("warm-up GET %s: %w", path, err)
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				return fmt.Errorf("warm-up GET %s: %s %v", path, resp.Status, err)
			}
		}
	}
	return nil
}
