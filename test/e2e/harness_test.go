package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// Deadlines. Generous enough for a loaded CI machine under the race
// detector; a healthy run is far below each.
const (
	startTimeout = 15 * time.Second // child process to phase serving
	exitTimeout  = 10 * time.Second // child process to exit after a signal
	waitTimeout  = 5 * time.Second  // an event the test is waiting for
)

// logBuf collects a child's output and lets tests wait for a line.
type logBuf struct {
	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced on every write
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.partial = append(b.partial, p...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		b.lines = append(b.lines, string(b.partial[:i]))
		b.partial = b.partial[i+1:]
	}
	close(b.changed)
	b.changed = make(chan struct{})
	return len(p), nil
}

// String returns everything written so far.
func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s strings.Builder
	for _, l := range b.lines {
		s.WriteString(l)
		s.WriteByte('\n')
	}
	s.Write(b.partial)
	return s.String()
}

// from returns the complete lines from index i on, and a channel closed at
// the next write.
func (b *logBuf) from(i int) ([]string, chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i > len(b.lines) {
		i = len(b.lines)
	}
	return append([]string(nil), b.lines[i:]...), b.changed
}

// jsonLines returns every complete line that is a JSON object.
func (b *logBuf) jsonLines() []map[string]any {
	lines, _ := b.from(0)
	var out []map[string]any
	for _, l := range lines {
		if m, ok := parseJSONLine(l); ok {
			out = append(out, m)
		}
	}
	return out
}

func parseJSONLine(l string) (map[string]any, bool) {
	if !strings.HasPrefix(l, "{") {
		return nil, false
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(l), &m); err != nil {
		return nil, false
	}
	return m, true
}

// tidegate is one child process of the binary under test.
type tidegate struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *logBuf
	stderr *logBuf
	exited chan struct{} // closed when the process has exited and its output is read
	code   int           // exit code, valid once exited is closed

	// Bound addresses, read from the "phase serving" log line.
	Listen, Health, Admin string
}

// baseEnv is this process's environment without TIDEGATE_* variables, so
// that the operator's environment never leaks into a test.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TIDEGATE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// start runs `tidegate run` on free loopback ports with args added, and
// waits until it serves.
func start(t *testing.T, args ...string) *tidegate {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with extra environment variables (KEY=VALUE).
func startEnv(t *testing.T, env []string, args ...string) *tidegate {
	t.Helper()
	all := append([]string{"run",
		"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)
	tg := launch(t, env, all...)
	tg.waitServing()
	return tg
}

// launch starts the binary with args and does not wait for anything. The
// test's cleanup kills it if it is still running, fails the test if it
// reported a data race or a panic, and prints its output if the test failed.
func launch(t *testing.T, env []string, args ...string) *tidegate {
	t.Helper()
	return launchProgram(t, env, binary, args...)
}

// launchProgram is launch for a program that runs tidegate in turn (such as
// unshare): the logs are tidegate's, the process and its exit code the
// program's.
func launchProgram(t *testing.T, env []string, program string, args ...string) *tidegate {
	t.Helper()
	tg := &tidegate{t: t, stdout: newLogBuf(), stderr: newLogBuf(), exited: make(chan struct{})}
	tg.cmd = exec.Command(program, args...)
	tg.cmd.Env = baseEnv(env...)
	tg.cmd.Stdout = tg.stdout
	tg.cmd.Stderr = tg.stderr
	tg.cmd.SysProcAttr = sysProcAttr()
	if err := tg.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	go func() {
		_ = tg.cmd.Wait()
		tg.code = tg.cmd.ProcessState.ExitCode()
		close(tg.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-tg.exited:
		default:
			_ = tg.cmd.Process.Kill()
			select {
			case <-tg.exited:
			case <-time.After(exitTimeout):
				t.Errorf("%s pid %d did not exit after SIGKILL", program, tg.cmd.Process.Pid)
			}
		}
		errOut := tg.stderr.String()
		if strings.Contains(errOut, "WARNING: DATA RACE") {
			t.Errorf("tidegate reported a data race")
		}
		if strings.Contains(errOut, "panic:") || strings.Contains(errOut, "goroutine ") {
			t.Errorf("tidegate panicked or printed a stack trace")
		}
		if t.Failed() {
			t.Logf("%s %s\n--- stdout ---\n%s\n--- stderr ---\n%s",
				filepath.Base(program), strings.Join(args, " "), tail(tg.stdout.String(), 16<<10), tail(errOut, 16<<10))
		}
	})
	return tg
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// waitLog waits for a JSON line on stdout for which match is true and
// returns it. It fails the test at the deadline or if the process exits
// without printing one.
func (tg *tidegate) waitLog(timeout time.Duration, what string, match func(map[string]any) bool) map[string]any {
	tg.t.Helper()
	m, err := tg.findLog(timeout, match)
	if err != nil {
		tg.t.Fatalf("waiting for %s: %v", what, err)
	}
	return m
}

func (tg *tidegate) findLog(timeout time.Duration, match func(map[string]any) bool) (map[string]any, error) {
	m, err := findLine(tg.stdout, tg.exited, timeout, match)
	if errors.Is(err, errExited) {
		return nil, fmt.Errorf("tidegate exited with code %d first", tg.code)
	}
	return m, err
}

// errExited is findLine's error when the process exited without printing
// the line.
var errExited = errors.New("the process exited first")

// findLine waits for a JSON line in buf for which match is true, until
// timeout or until exited is closed (buf is then complete).
func findLine(buf *logBuf, exited <-chan struct{}, timeout time.Duration, match func(map[string]any) bool) (map[string]any, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		lines, changed := buf.from(seen)
		seen += len(lines)
		for _, l := range lines {
			if m, ok := parseJSONLine(l); ok && match(m) {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-exited:
			// The output is complete once exited is closed: one last look.
			lines, _ := buf.from(seen)
			for _, l := range lines {
				if m, ok := parseJSONLine(l); ok && match(m) {
					return m, nil
				}
			}
			return nil, errExited
		case <-deadline.C:
			return nil, fmt.Errorf("not logged within %s", timeout)
		}
	}
}

// waitServing waits for the "phase changed" line to serving and reads the
// bound addresses from it.
func (tg *tidegate) waitServing() {
	tg.t.Helper()
	m := tg.waitLog(startTimeout, `the "phase":"serving" log line`, func(m map[string]any) bool {
		return m["msg"] == "phase changed" && m["phase"] == "serving"
	})
	tg.Listen, _ = m["listen"].(string)
	tg.Health, _ = m["health_listen"].(string)
	tg.Admin, _ = m["admin_listen"].(string)
	if tg.Listen == "" || tg.Health == "" || tg.Admin == "" {
		tg.t.Fatalf("serving log line lacks listen, health_listen or admin_listen: %v", m)
	}
}

// URL returns the public URL of path.
func (tg *tidegate) URL(path string) string { return "http://" + tg.Listen + path }

// signal sends sig to the process.
func (tg *tidegate) signal(sig syscall.Signal) {
	tg.t.Helper()
	if err := tg.cmd.Process.Signal(sig); err != nil {
		tg.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the process to exit and returns its exit code.
func (tg *tidegate) waitExit(timeout time.Duration) int {
	tg.t.Helper()
	select {
	case <-tg.exited:
		return tg.code
	case <-time.After(timeout):
		tg.t.Fatalf("tidegate did not exit within %s", timeout)
		return -1
	}
}

// stop sends SIGTERM and waits for exit 0.
func (tg *tidegate) stop() {
	tg.t.Helper()
	tg.signal(syscall.SIGTERM)
	if code := tg.waitExit(exitTimeout); code != 0 {
		tg.t.Fatalf("tidegate exited with code %d after SIGTERM, want 0", code)
	}
}

// result is the outcome of a tidegate command that runs to completion.
type result struct {
	code           int
	stdout, stderr string
}

// runOnce runs the binary with args to completion (bounded by exitTimeout).
func runOnce(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = baseEnv(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = sysProcAttr()
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run tidegate %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("tidegate %s did not finish within %s", strings.Join(args, " "), exitTimeout)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// newClient returns a client with its own connection pool, closed at the
// end of the test. It never follows redirects and never asks for gzip.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
		DialContext:         (&net.Dialer{Timeout: waitTimeout}).DialContext,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do sends req and reads the whole response body.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// get sends a GET and reads the whole response.
func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

// decodeJSON unmarshals body into v or fails the test showing the body.
func decodeJSON(t *testing.T, body []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("response is not the expected JSON: %v\n%s", err, body)
	}
}

// eventually polls cond every few milliseconds until it holds or timeout
// passes; then it fails the test with cond's last explanation.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	wait.Until(t, timeout, what, cond)
}

// recv waits for one value on ch or fails the test.
func recv[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("%s: nothing within %s", what, timeout)
		var zero T
		return zero
	}
}

// rawConn is a client connection to write exact bytes and read responses.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.SetDeadline(time.Now().Add(2 * waitTimeout)); err != nil {
		t.Fatal(err)
	}
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

func (c *rawConn) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readResponse reads one response, and its whole body, from the connection.
func (c *rawConn) readResponse(t *testing.T, method string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(c.r, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, body
}
