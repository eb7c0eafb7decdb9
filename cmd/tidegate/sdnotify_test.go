package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// testWatchdog is WATCHDOG_USEC in these tests: pings every 10ms, checks
// bounded by 5ms.
const testWatchdog = 20 * time.Millisecond

// notifySocket is a fake systemd notify socket: a real unixgram socket that
// the test reads.
type notifySocket struct {
	t    *testing.T
	name string // NOTIFY_SOCKET
	conn *net.UnixConn
}

// listenNotify binds a notify socket at name, or in t.TempDir() if name is
// empty.
func listenNotify(t *testing.T, name string) *notifySocket {
	t.Helper()
	if name == "" {
		name = filepath.Join(t.TempDir(), "notify.sock")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on notify socket %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{t: t, name: name, conn: conn}
}

// env is a getenv that serves NOTIFY_SOCKET and the given variables.
func (s *notifySocket) env(kv ...string) func(string) string {
	m := map[string]string{"NOTIFY_SOCKET": s.name}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// read returns the next datagram within timeout, or "" and false.
func (s *notifySocket) read(timeout time.Duration) (string, bool) {
	s.t.Helper()
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		s.t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := s.conn.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", false
		}
		s.t.Fatalf("read notify socket: %v", err)
	}
	return string(buf[:n]), true
}

// next is the next datagram; it fails the test if none comes within 5s.
func (s *notifySocket) next() string {
	s.t.Helper()
	msg, ok := s.read(5 * time.Second)
	if !ok {
		s.t.Fatal("no sd_notify message within 5s")
	}
	return msg
}

// drain discards the datagrams already queued.
func (s *notifySocket) drain() {
	s.t.Helper()
	for {
		if _, ok := s.read(time.Millisecond); !ok {
			return
		}
	}
}

// none fails the test if a datagram is queued.
func (s *notifySocket) none(what string) {
	s.t.Helper()
	if msg, ok := s.read(time.Millisecond); ok {
		s.t.Fatalf("%s: got %q, want no message", what, msg)
	}
}

// monotonicUsec is CLOCK_MONOTONIC in µs, read the way systemd does.
func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("clock_gettime(CLOCK_MONOTONIC): %v", err)
	}
	return ts.Nano() / 1000
}

func TestNotifierSendsLifecycleMessagesInOrder(t *testing.T) {
	sock := listenNotify(t, "")
	n := newNotifier(zap.NewNop(), sock.env())
	if !n.Enabled() {
		t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
	}

	n.Status("starting: waiting for the app's probes")
	n.Status("starting: waiting for the app's probes") // deduplicated
	n.Ready("serving")
	n.Ready("serving again") // sent once
	n.Status("serving")      // what Ready sent last: deduplicated
	before := monotonicUsec(t)
	n.Reloading()
	after := monotonicUsec(t)
	n.Reloaded("serving (reloaded)")
	n.Stopping("draining: 3 in flight")
	n.Status("draining: 2 in flight")
	n.ExtendTimeout(12*time.Second + 1500*time.Nanosecond) // rounded up to whole µs
	n.ExtendTimeout(0)                                     // nothing
	n.Ready("ready after stopping")                        // never
	n.Reloading()                                          // never
	n.Reloaded("closing")                                  // status only
	n.Status("closing")                                    // deduplicated

	want := []string{
		"STATUS=starting: waiting for the app's probes\n",
		"READY=1\nSTATUS=serving\n",
		"RELOADING=1\nMONOTONIC_USEC=*\n",
		"READY=1\nSTATUS=serving (reloaded)\n",
		"STOPPING=1\nSTATUS=draining: 3 in flight\n",
		"STATUS=draining: 2 in flight\n",
		"EXTEND_TIMEOUT_USEC=12000002\n",
		"STATUS=closing\n",
	}
	for i, w := range want {
		got := sock.next()
		if prefix, ok := strings.CutSuffix(w, "*\n"); ok {
			rest, found := strings.CutPrefix(got, prefix)
			if !found || !strings.HasSuffix(rest, "\n") {
				t.Fatalf("message %d = %q, want %q", i, got, w)
			}
			usec, err := strconv.ParseInt(strings.TrimSuffix(rest, "\n"), 10, 64)
			if err != nil {
				t.Fatalf("message %d = %q: MONOTONIC_USEC is not a number: %v", i, got, err)
			}
			if usec < before || usec > after {
				t.Fatalf("MONOTONIC_USEC=%d, want CLOCK_MONOTONIC at the call, between %d and %d µs", usec, before, after)
			}
			continue
		}
		if got != w {
			t.Fatalf("message %d = %q, want %q", i, got, w)
		}
	}
	sock.none("after the last message")
}

func TestNotifierReadyOnlyAfterReady(t *testing.T) {
	sock := listenNotify(t, "")
	n := newNotifier(zap.NewNop(), sock.env())
	// A SIGHUP during start-up: the reload must not finish the start.
	n.Reloading()
	n.Reloaded("starting: reloaded")
	if got := sock.next(); got != "STATUS=starting: reloaded\n" {
		t.Fatalf("reload before Ready sent %q, want only the status", got)
	}
	n.Reloaded("starting: reloaded twice") // no Reloading before it: status only
	if got := sock.next(); got != "STATUS=starting: reloaded twice\n" {
		t.Fatalf("Reloaded without Reloading sent %q, want only the status", got)
	}
	sock.none("before Ready")
}

func TestNotifierStatusIsOneLine(t *testing.T) {
	sock := listenNotify(t, "")
	n := newNotifier(zap.NewNop(), sock.env())
	n.Status("serving\nREADY=1\r\nSTOPPING=1")
	if got, want := sock.next(), "STATUS=serving READY=1 STOPPING=1\n"; got != want {
		t.Fatalf("got %q, want %q: a status must not add fields", got, want)
	}
}

func TestNotifierAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@tidegate-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	sock := listenNotify(t, name)
	n := newNotifier(zap.NewNop(), sock.env())
	n.Ready("serving")
	if got, want := sock.next(), "READY=1\nSTATUS=serving\n"; got != want {
		t.Fatalf("on abstract socket %s: got %q, want %q", name, got, want)
	}
}

func TestNotifierNoopWithoutNotifySocket(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	env := map[string]string{"WATCHDOG_USEC": "20000"}
	n := newNotifier(zap.New(core), func(k string) string { return env[k] })
	if n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatalf("without NOTIFY_SOCKET: Enabled() = %v, WatchdogInterval() = %s; want false, 0", n.Enabled(), n.WatchdogInterval())
	}
	n.Ready("serving")
	n.Reloading()
	n.Reloaded("serving")
	n.Status("serving")
	n.ExtendTimeout(time.Second)
	n.Stopping("stopping")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var calls atomic.Int64
	go func() {
		defer close(done)
		n.Watchdog(ctx, func(context.Context) error { calls.Add(1); return nil })
	}()
	select {
	case <-done:
		t.Fatal("Watchdog returned before its context ended")
	default:
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog did not return within 5s of its context ending")
	}
	if calls.Load() != 0 {
		t.Fatalf("healthy was called %d times without a watchdog", calls.Load())
	}
	if logs.Len() != 0 {
		t.Fatalf("logged %d lines without NOTIFY_SOCKET: %v", logs.Len(), logs.All())
	}
}

func TestNotifierIgnoresUnsupportedSocket(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	n := newNotifier(zap.New(core), func(k string) string {
		return map[string]string{"NOTIFY_SOCKET": "vsock:2:1234"}[k]
	})
	if n.Enabled() {
		t.Fatal("Enabled() = true for a vsock: NOTIFY_SOCKET")
	}
	n.Ready("serving")
	if got := logs.FilterField(zap.String("notify_socket", "vsock:2:1234")).Len(); got != 1 {
		t.Fatalf("want one log line naming the unsupported NOTIFY_SOCKET, got %d: %v", got, logs.All())
	}
}

func TestNotifierWatchdogEnvironment(t *testing.T) {
	sock := listenNotify(t, "")
	for _, tc := range []struct {
		name, usec, pid string
		want            time.Duration
	}{
		{"ours by pid", "20000", strconv.Itoa(os.Getpid()), 20 * time.Millisecond},
		{"no pid", "10000000", "", 10 * time.Second},
		{"another process", "20000", strconv.Itoa(os.Getpid() + 1), 0},
		{"unset", "", "", 0},
		{"not a number", "10s", "", 0},
		{"zero", "0", "", 0},
		{"bad pid", "20000", "me", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.WarnLevel)
			n := newNotifier(zap.New(core), sock.env("WATCHDOG_USEC", tc.usec, "WATCHDOG_PID", tc.pid))
			if got := n.WatchdogInterval(); got != tc.want {
				t.Fatalf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: interval %s, want %s", tc.usec, tc.pid, got, tc.want)
			}
			invalid := tc.name == "not a number" || tc.name == "zero" || tc.name == "bad pid"
			if warned := logs.FilterField(zap.String("reason", "watchdog")).Len() == 1; warned != invalid {
				t.Fatalf("warned about the watchdog variables: %v, want %v (logs %v)", warned, invalid, logs.All())
			}
		})
	}
}

func TestNotifierWatchdogOfAnotherProcessIsNotPinged(t *testing.T) {
	sock := listenNotify(t, "")
	n := newNotifier(zap.NewNop(), sock.env("WATCHDOG_USEC", "20000", "WATCHDOG_PID", strconv.Itoa(os.Getpid()+1)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var calls atomic.Int64
	go func() {
		defer close(done)
		n.Watchdog(ctx, func(context.Context) error { calls.Add(1); return nil })
	}()
	n.Status("serving") // other messages still go
	if got := sock.next(); got != "STATUS=serving\n" {
		t.Fatalf("got %q, want the status and no watchdog ping", got)
	}
	cancel()
	<-done
	sock.none("after Watchdog returned")
	if calls.Load() != 0 {
		t.Fatalf("healthy was called %d times for another process's watchdog", calls.Load())
	}
}

// healthMode is what the test's health check does when called.
type healthMode int32

const (
	healthOK      healthMode = iota
	healthFail               // returns an error at once
	healthBlock              // blocks until its context ends
	healthIgnored            // blocks until the test releases it, ignoring its context
)

// healthCheck is a health check that the test steers, and that reports
// each call.
type healthCheck struct {
	mode     atomic.Int32
	calls    chan healthMode // each call's mode, as it starts; the test reads them
	returned chan struct{}   // each call in mode healthIgnored, as it returns
	release  chan struct{}   // closed: healthIgnored calls return
}

func newHealthCheck() *healthCheck {
	return &healthCheck{calls: make(chan healthMode, 1024), returned: make(chan struct{}, 1024), release: make(chan struct{})}
}

func (h *healthCheck) check(ctx context.Context) error {
	m := healthMode(h.mode.Load())
	select {
	case h.calls <- m:
	default: // the test stopped reading: the bound is the channel's capacity
	}
	switch m {
	case healthFail:
		return errors.New("app connection refused")
	case healthBlock:
		<-ctx.Done()
		return ctx.Err()
	case healthIgnored:
		<-h.release
		h.returned <- struct{}{}
		return nil
	}
	return nil
}

// nextCall waits for the check's next call and returns its mode.
func (h *healthCheck) nextCall(t *testing.T) healthMode {
	t.Helper()
	select {
	case m := <-h.calls:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog did not call the health check within 5s")
		return 0
	}
}

// startWatchdog runs n.Watchdog until the test ends.
func startWatchdog(t *testing.T, n *notifier, healthy func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Watchdog(ctx, healthy) }()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Watchdog did not return within 5s of its context ending")
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitPing waits for a WATCHDOG=1 (some rounds may time out on a busy
// machine: their pings are withheld, which is right).
func waitPing(t *testing.T, sock *notifySocket) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		msg, ok := sock.read(time.Until(deadline))
		if ok && msg == "WATCHDOG=1\n" {
			return
		}
		if ok {
			t.Fatalf("got %q, want WATCHDOG=1", msg)
		}
	}
	t.Fatal("no WATCHDOG=1 within 5s")
}

func TestNotifierWatchdogWithholdsPingsWhileUnhealthy(t *testing.T) {
	for _, mode := range []healthMode{healthFail, healthBlock} {
		t.Run(map[healthMode]string{healthFail: "fails", healthBlock: "blocks"}[mode], func(t *testing.T) {
			sock := listenNotify(t, "")
			core, logs := observer.New(zap.InfoLevel)
			n := newNotifier(zap.New(core), sock.env("WATCHDOG_USEC", strconv.Itoa(int(testWatchdog/time.Microsecond)),
				"WATCHDOG_PID", strconv.Itoa(os.Getpid())))
			h := newHealthCheck()
			startWatchdog(t, n, h.check)
			waitPing(t, sock)

			// Rounds are sequential: when a round's check starts, the round
			// before it has sent its ping or withheld it.
			h.mode.Store(int32(mode))
			for h.nextCall(t) != mode {
			}
			h.nextCall(t) // the first unhealthy round is over
			sock.drain()  // pings of the rounds before it
			withheld := func() *observer.ObservedLogs {
				return logs.FilterMessageSnippet("withholding the watchdog ping").FilterField(zap.String("reason", "watchdog"))
			}
			spell := withheld().Len()
			if spell == 0 {
				t.Fatal("an unhealthy round withheld its ping without a log line (reason=watchdog)")
			}
			if err, _ := withheld().All()[spell-1].ContextMap()["error"].(string); err == "" {
				t.Fatalf("the withheld ping's log line has no error: %v", withheld().All()[spell-1].ContextMap())
			}
			for i := range 5 {
				h.nextCall(t) // the previous unhealthy round is over
				sock.none(fmt.Sprintf("unhealthy round %d", i+1))
			}
			if got := withheld().Len(); got != spell {
				t.Fatalf("logged %d more withheld pings during one unhealthy spell, want none (transitions only)", got-spell)
			}

			h.mode.Store(int32(healthOK))
			waitPing(t, sock)
			// Each spell is logged when it starts and when it ends (a round
			// that timed out on a busy machine is a spell of its own).
			wait.Until(t, 5*time.Second, "one resumption logged per withholding", func() (bool, string) {
				w, r := withheld().Len(), logs.FilterMessage("watchdog pings resumed").Len()
				return w == r, fmt.Sprintf("%d withheld, %d resumed", w, r)
			})
		})
	}
}

func TestNotifierWatchdogSurvivesCheckThatIgnoresItsContext(t *testing.T) {
	sock := listenNotify(t, "")
	core, logs := observer.New(zap.InfoLevel)
	n := newNotifier(zap.New(core), sock.env("WATCHDOG_USEC", strconv.Itoa(int(testWatchdog/time.Microsecond))))
	h := newHealthCheck()
	h.mode.Store(int32(healthIgnored))
	stop := startWatchdog(t, n, h.check)

	if m := h.nextCall(t); m != healthIgnored {
		t.Fatalf("first call in mode %d", m)
	}
	wait.For(t, "the stuck check's ping is withheld", func() bool {
		return logs.FilterMessageSnippet("withholding the watchdog ping").Len() == 1
	})
	// The loop goes on without the stuck check: nothing is pinged, and no
	// second check piles onto the first for three more rounds.
	if msg, ok := sock.read(3 * testWatchdog / 2); ok {
		t.Fatalf("got %q while the check was stuck, want no ping", msg)
	}
	select {
	case m := <-h.calls:
		t.Fatalf("a second check (mode %d) started while the first was stuck", m)
	default:
	}

	h.mode.Store(int32(healthOK))
	close(h.release)
	<-h.returned
	waitPing(t, sock)

	// And a stuck check does not hold up the end of the loop.
	h2 := newHealthCheck()
	h2.mode.Store(int32(healthIgnored))
	stop()
	stop2 := startWatchdog(t, n, h2.check)
	h2.nextCall(t)
	stop2() // returns although the check is still running
	close(h2.release)
	<-h2.returned
}

func TestNotifierSendErrorLoggedOnceAndNotFatal(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	missing := filepath.Join(t.TempDir(), "no-such.sock")
	n := newNotifier(zap.New(core), func(k string) string { return map[string]string{"NOTIFY_SOCKET": missing}[k] })
	n.Ready("serving")
	n.Status("a")
	n.Status("b")
	n.Stopping("stopping")
	failures := logs.FilterField(zap.String("reason", "sd_notify"))
	if failures.Len() != 1 {
		t.Fatalf("logged %d send failures for 4 failed sends, want 1: %v", failures.Len(), logs.All())
	}
	if !strings.Contains(failures.All()[0].ContextMap()["error"].(string), "no-such.sock") {
		t.Fatalf("the send failure does not name the socket: %v", failures.All()[0].ContextMap())
	}
}

func TestNotifierSendIsBoundedWhenSystemdDoesNotRead(t *testing.T) {
	sock := listenNotify(t, "") // never read until the end: its queue fills up
	core, logs := observer.New(zap.InfoLevel)
	n := newNotifier(zap.New(core), sock.env())
	n.writeTimeout = 20 * time.Millisecond
	// net.unix.max_dgram_qlen (10 to 512) datagrams fit; then a send waits
	// writeTimeout and gives up.
	const sends = 600
	start := time.Now()
	failed := -1
	for i := range sends {
		n.Status(strconv.Itoa(i))
		if logs.FilterField(zap.String("reason", "sd_notify")).Len() > 0 {
			failed = i
			break
		}
	}
	if failed < 0 {
		t.Fatalf("%d sends to a socket nobody reads never timed out: %v", sends, logs.All())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("%d sends to a full socket took %s, want about one writeTimeout (%s)", failed+1, took, n.writeTimeout)
	}
	// The status that failed was not recorded as sent: once systemd reads
	// again, the same text goes out; and a failure is logged once.
	sock.drain()
	n.Status(strconv.Itoa(failed))
	if msg, want := sock.next(), "STATUS="+strconv.Itoa(failed)+"\n"; msg != want {
		t.Fatalf("after the queue drained: got %q, want %q", msg, want)
	}
	if got := logs.FilterField(zap.String("reason", "sd_notify")).Len(); got != 1 {
		t.Fatalf("send failures logged: %d, want 1", got)
	}
}

func TestWithoutNotifyEnv(t *testing.T) {
	env := []string{"PATH=/usr/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=10000000",
		"WATCHDOG_PID=1", "NOTIFY_SOCKETS=kept", "TIDEGATE_DRAIN_DELAY=10s"}
	orig := slices.Clone(env)
	got := withoutNotifyEnv(env)
	want := []string{"PATH=/usr/bin", "NOTIFY_SOCKETS=kept", "TIDEGATE_DRAIN_DELAY=10s"}
	if !slices.Equal(got, want) {
		t.Fatalf("withoutNotifyEnv = %q, want %q", got, want)
	}
	if !slices.Equal(env, orig) {
		t.Fatalf("withoutNotifyEnv changed its argument: %q", env)
	}
}
