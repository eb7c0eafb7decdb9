package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// notifier tells systemd where tidegate's lifecycle is, through the
// sd_notify(3) protocol: READY=1 once serving, RELOADING=1 and READY=1
// around a reload (Type=notify-reload), STOPPING=1 when the stop is
// certain, STATUS= for `systemctl status`, EXTEND_TIMEOUT_USEC= while a
// drain needs longer than TimeoutStopSec, and WATCHDOG=1 while tidegate is
// healthy (WatchdogSec=).
//
// Without NOTIFY_SOCKET (not under systemd, or a unit without
// Type=notify/notify-reload and without NotifyAccess=) every method is a
// no-op, and Watchdog only waits for its context.
//
// Each message is one datagram of newline-separated fields, sent on a new
// unixgram socket (as libsystemd's sd_notify does, so a restarted or
// re-executed systemd is found again) with a write deadline of writeTimeout:
// a manager that does not read its socket costs a caller that long at most,
// never a blocked goroutine. A send error is logged once (again only after a
// send worked in between) and is never fatal: systemd then times out on its
// own terms.
//
// go-systemd's daemon.SdNotify and daemon.SdWatchdogEnabled read the
// process environment and write without a deadline, so the notifier reads
// NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID through the getenv it is
// given and does its own bounded write; it takes the field names and
// MONOTONIC_USEC (daemon.SdNotifyMonotonicUsec) from go-systemd.
//
// Once Stopping was sent, READY=1 and RELOADING=1 are never sent again:
// systemd cannot go back to running, and must not be told it did. READY=1
// is never sent before Ready: a reload during start-up does not finish the
// start.
//
// The methods are safe for concurrent use; sends are serialised.
type notifier struct {
	log *zap.Logger
	// addr is NOTIFY_SOCKET; nil makes every method a no-op.
	addr *net.UnixAddr
	// watchdog is WATCHDOG_USEC when it is meant for this process; 0 is no
	// watchdog.
	watchdog time.Duration
	// writeTimeout bounds one send (default notifyWriteTimeout).
	writeTimeout time.Duration

	mu         sync.Mutex // serialises sends; guards the fields below
	ready      bool       // READY=1 was sent by Ready
	reloading  bool       // RELOADING=1 was sent; Reloaded answers it
	stopping   bool       // STOPPING=1 was sent
	lastStatus string     // the last STATUS= sent, for Status's deduplication
	sendFailed bool       // a send error was logged and no send worked since
}

// notifyWriteTimeout bounds one sd_notify send. systemd reads its socket at
// once; a queue still full after this long means PID 1 is stuck, and the
// message is dropped (and logged) rather than stalling the lifecycle.
const notifyWriteTimeout = 250 * time.Millisecond

// minWatchdogPeriod keeps an absurdly small WATCHDOG_USEC from turning the
// watchdog loop into a busy loop.
const minWatchdogPeriod = time.Millisecond

// newNotifier reads the sd_notify environment through getenv (os.Getenv in
// main): NOTIFY_SOCKET (an absolute path, or "@name" for an abstract
// socket; anything else, such as systemd's vsock: addresses, is logged and
// ignored), WATCHDOG_USEC (a positive number of microseconds) and
// WATCHDOG_PID (when set, the watchdog is only ours if it is our pid). A
// nil log discards the notifier's logs.
func newNotifier(log *zap.Logger, getenv func(string) string) *notifier {
	if log == nil {
		log = zap.NewNop()
	}
	n := &notifier{log: log, writeTimeout: notifyWriteTimeout}
	sock := getenv("NOTIFY_SOCKET")
	switch {
	case sock == "":
		return n
	case strings.HasPrefix(sock, "/") || (strings.HasPrefix(sock, "@") && len(sock) > 1):
		// Go's net package maps a leading '@' to the abstract namespace.
		n.addr = &net.UnixAddr{Name: sock, Net: "unixgram"}
	default:
		log.Warn("NOTIFY_SOCKET is not a Unix socket path or @abstract name; not notifying systemd",
			zap.String("reason", "sd_notify"), zap.String("notify_socket", sock))
		return n
	}
	n.watchdog = watchdogInterval(log, getenv)
	log.Info("notifying systemd", zap.String("notify_socket", sock), zap.Duration("watchdog", n.watchdog))
	return n
}

// watchdogInterval is WATCHDOG_USEC if it is set, valid and meant for this
// process (WATCHDOG_PID unset or our pid), else 0.
func watchdogInterval(log *zap.Logger, getenv func(string) string) time.Duration {
	usec, pid := getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID")
	if usec == "" {
		return 0
	}
	us, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || us <= 0 || us > int64(time.Duration(1<<62)/time.Microsecond) {
		log.Warn("WATCHDOG_USEC is not a positive number of microseconds; no watchdog pings (check WatchdogSec= in the unit)",
			zap.String("reason", "watchdog"), zap.String("watchdog_usec", usec))
		return 0
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			log.Warn("WATCHDOG_PID is not a process id; no watchdog pings",
				zap.String("reason", "watchdog"), zap.String("watchdog_pid", pid))
			return 0
		}
		if p != os.Getpid() {
			log.Debug("the watchdog is another process's", zap.Int("watchdog_pid", p))
			return 0
		}
	}
	return time.Duration(us) * time.Microsecond
}

// Enabled says whether NOTIFY_SOCKET was set: whether the calls do anything.
func (n *notifier) Enabled() bool { return n.addr != nil }

// WatchdogInterval is WATCHDOG_USEC when the watchdog is ours, else 0.
func (n *notifier) WatchdogInterval() time.Duration { return n.watchdog }

// Ready sends READY=1 and STATUS=status once: when the lifecycle first
// reaches serving. Later calls, and calls after Stopping, do nothing.
func (n *notifier) Ready(status string) {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ready || n.stopping {
		return
	}
	if n.sendStatusLocked(status, daemon.SdNotifyReady) {
		n.ready = true
	}
}

// Reloading sends RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC now, in
// µs), which Type=notify-reload requires, at the start of a reload. It does
// nothing before Ready or after Stopping.
func (n *notifier) Reloading() {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.ready || n.stopping {
		return
	}
	fields := []string{daemon.SdNotifyReloading}
	if mono := strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"); mono != "" {
		fields = append(fields, mono)
	}
	if n.sendLocked(fields...) {
		n.reloading = true
	}
}

// Reloaded ends a reload: READY=1 and STATUS=status after Reloading. Without
// a Reloading before it (or after Stopping) it sends only the status.
func (n *notifier) Reloaded(status string) {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.reloading || n.stopping {
		n.sendStatusLocked(status)
		return
	}
	if n.sendStatusLocked(status, daemon.SdNotifyReady) {
		n.reloading = false
	}
}

// Stopping sends STOPPING=1 and STATUS=status: the service is going away
// for good. After it, Ready, Reloading and Reloaded send no READY=1 or
// RELOADING=1 again; a second Stopping sends only a changed status.
func (n *notifier) Stopping(status string) {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		n.sendStatusLocked(status)
		return
	}
	if n.sendStatusLocked(status, daemon.SdNotifyStopping) {
		n.stopping = true
	}
}

// Status sends STATUS=status (shown by `systemctl status`) unless it is the
// text sent last. Newlines in status become spaces: one status is one line
// and cannot smuggle in other fields.
func (n *notifier) Status(status string) {
	if n.addr == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sendStatusLocked(status)
}

// ExtendTimeout sends EXTEND_TIMEOUT_USEC=d: systemd waits d more (from
// now) for the next message before its start, stop or runtime timeout may
// fire; it only ever lengthens TimeoutStartSec/TimeoutStopSec. d is rounded
// up to a whole µs; d <= 0 does nothing.
func (n *notifier) ExtendTimeout(d time.Duration) {
	if n.addr == nil || d <= 0 {
		return
	}
	us := (d + time.Microsecond - 1) / time.Microsecond
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sendLocked("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(int64(us), 10))
}

// Watchdog pings systemd's watchdog (WatchdogSec=) until ctx ends. Every
// WATCHDOG_USEC/2, starting at once, it calls healthy with a context that
// ends after WATCHDOG_USEC/4 and sends WATCHDOG=1 only if healthy returned
// nil by then; so a wedged tidegate misses two pings and systemd kills it.
// At most one check runs at a time: a check that ignores its context and
// is still running at the next round withholds that ping too, without
// starting another, and is abandoned (not waited for) when ctx ends. A
// withheld ping is logged (reason=watchdog) when pings stop and when they
// resume, not every round.
//
// Without a watchdog for this process (no NOTIFY_SOCKET or WATCHDOG_USEC,
// or WATCHDOG_PID is another process), Watchdog just waits for ctx, so it
// can run as one actor among the sidecar's others.
func (n *notifier) Watchdog(ctx context.Context, healthy func(context.Context) error) {
	if n.addr == nil || n.watchdog <= 0 {
		<-ctx.Done()
		return
	}
	period, timeout := max(n.watchdog/2, minWatchdogPeriod), max(n.watchdog/4, minWatchdogPeriod/2)
	results := make(chan error, 1) // the one check in flight reports here, never blocking
	inFlight := false
	withholding := false
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		if inFlight { // the last check outlived its timeout: has it returned since?
			select {
			case <-results: // a late verdict; this round checks afresh
				inFlight = false
			default:
			}
		}
		var err error
		if inFlight {
			err = errors.New("the previous health check ignored its timeout and has not returned")
		} else {
			err = n.check(ctx, healthy, timeout, results, &inFlight)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if n.ping() && withholding {
				withholding = false
				n.log.Info("watchdog pings resumed", zap.String("reason", "watchdog"))
			}
		} else if !withholding {
			withholding = true
			n.log.Warn("health check failed; withholding the watchdog ping (systemd kills tidegate if this lasts WatchdogSec)",
				zap.String("reason", "watchdog"), zap.Duration("watchdog", n.watchdog), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// check runs healthy with a timeout and waits for it that long at most. A
// check that outlives its timeout keeps running; *inFlight then stays true,
// and it reports on results when it returns.
func (n *notifier) check(ctx context.Context, healthy func(context.Context) error, timeout time.Duration,
	results chan error, inFlight *bool) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	*inFlight = true
	go func() { results <- healthy(cctx) }()
	select {
	case err := <-results:
		*inFlight = false
		return err
	case <-cctx.Done():
	}
	select { // a check that returned as its context ended still counts
	case err := <-results:
		*inFlight = false
		return err
	default:
		return fmt.Errorf("health check did not return within %s: %w", timeout, cctx.Err())
	}
}

// ping sends WATCHDOG=1.
func (n *notifier) ping() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sendLocked(daemon.SdNotifyWatchdog)
}

// sendStatusLocked sends fields followed by STATUS=status (one line), or
// nothing if there are no fields and status is the one sent last.
func (n *notifier) sendStatusLocked(status string, fields ...string) bool {
	status = strings.Join(strings.FieldsFunc(status, func(r rune) bool { return r == '\n' || r == '\r' }), " ")
	if len(fields) == 0 && status == n.lastStatus {
		return true
	}
	if !n.sendLocked(append(fields, "STATUS="+status)...) {
		return false
	}
	n.lastStatus = status
	return true
}

// sendLocked sends one datagram of newline-separated fields, with the
// write bounded by writeTimeout. It logs the first failure after a success.
func (n *notifier) sendLocked(fields ...string) bool {
	err := n.write([]byte(strings.Join(fields, "\n") + "\n"))
	if err == nil {
		n.sendFailed = false
		return true
	}
	if !n.sendFailed {
		n.sendFailed = true
		n.log.Warn("cannot notify systemd; later failures are not logged until a message gets through",
			zap.String("reason", "sd_notify"), zap.String("notify_socket", n.addr.Name), zap.Error(err))
	}
	return false
}

func (n *notifier) write(msg []byte) error {
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(n.writeTimeout)); err != nil {
		return err
	}
	_, err = conn.Write(msg)
	return err
}

// withoutNotifyEnv is env without NOTIFY_SOCKET, WATCHDOG_USEC and
// WATCHDOG_PID: the environment for the app in child mode. systemd's
// notify socket and watchdog are tidegate's (NotifyAccess=main); an app
// that speaks sd_notify would only have its messages rejected, with a
// warning in the journal for each. env is not modified.
func withoutNotifyEnv(env []string) []string {
	out := make([]string, 0, len(env))
next:
	for _, kv := range env {
		for _, name := range [...]string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
			if strings.HasPrefix(kv, name+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
