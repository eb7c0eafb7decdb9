package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// until reads sd_notify messages until one contains want, and returns
// them all; it fails the test if none does within 5s.
func (s *notifySocket) until(want string) []string {
	s.t.Helper()
	var seen []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		msg, ok := s.read(time.Until(deadline))
		if !ok {
			break
		}
		seen = append(seen, msg)
		if strings.Contains(msg, want) {
			return seen
		}
	}
	s.t.Fatalf("no sd_notify message with %q within 5s; got %q", want, seen)
	return nil
}

// TestSidecarTellsSystemd: a sidecar under a fake systemd says READY once
// serving, pings the watchdog while its event loop turns (and stops while
// the loop is stuck), wraps a reload in RELOADING/READY, and says STOPPING
// and extends its stop timeout on SIGTERM.
func TestSidecarTellsSystemd(t *testing.T) {
	sock := listenNotify(t, "")
	app := namedApp(t, "a", nil)
	sc, sig, reports := startWithEnv(t, sock.env("WATCHDOG_USEC", "100000"),
		"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.Listener.Addr().String(), "--drain-delay", "200ms", "--drain-quiet", "0s")

	seen := sock.until("READY=1")
	if msg := seen[len(seen)-1]; !strings.Contains(msg, "STATUS=serving") {
		t.Fatalf("READY=1 without the serving status: %q", msg)
	}
	sock.until("WATCHDOG=1")

	sig <- syscall.SIGHUP
	seen = sock.until("RELOADING=1")
	if msg := seen[len(seen)-1]; !strings.Contains(msg, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING=1 without MONOTONIC_USEC: %q", msg)
	}
	sock.until("READY=1")

	// A stuck event loop: the pings stop, and come back when it turns.
	sc.stall <- struct{}{}
	for { // what was under way when the loop stopped may still arrive
		if _, ok := sock.read(150 * time.Millisecond); !ok {
			break
		}
	}
	deadline := time.Now().Add(400 * time.Millisecond) // four watchdog periods
	for time.Now().Before(deadline) {
		if msg, ok := sock.read(time.Until(deadline)); ok && strings.Contains(msg, "WATCHDOG=1") {
			t.Fatal("WATCHDOG=1 while the event loop was stuck")
		}
	}
	sc.stall <- struct{}{}
	sock.until("WATCHDOG=1")

	sig <- syscall.SIGTERM
	sock.until("STOPPING=1")
	sock.until("EXTEND_TIMEOUT_USEC=")
	waitReport(t, reports)
}
