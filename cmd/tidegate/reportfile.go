package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/tidegate/tidegate/drain"
)

// --drain-report-file: when tidegate exits it writes a few lines saying
// how: the exit code and why, how the drain went (the drain.Report that
// the "drain report" log line also shows), or the start-up error. In
// Kubernetes the file is /dev/termination-log, and `kubectl describe pod`
// shows it as the container's termination message.

// reportFileMax is what the kubelet reads of a termination message: the
// file never gets more.
const reportFileMax = 4096

// reportErrorMax and reportAppMax bound the error and the app stop lines,
// the two that may carry long text, so that either leaves room for the
// rest of the summary.
const (
	reportErrorMax = 2048
	reportAppMax   = 1024
)

// truncatedMarker ends a summary that was cut to reportFileMax.
const truncatedMarker = "…[truncated]\n"

// exitSummary is the text of the report file: code is tidegate's exit
// code, rep the drain (nil when tidegate stopped before serving), err the
// start-up failure (nil if none). URL passwords and the drain token (if
// not "") are redacted; the text is at most reportFileMax bytes.
func exitSummary(code int, rep *drain.Report, err error, token string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tidegate exited with code %d: %s\n", code, exitReason(code, rep, err))
	if rep != nil {
		fmt.Fprintf(&b, "drain: trigger %s, result %s, took %s\n", rep.Trigger, resultText(rep.Result), rep.Duration().Round(time.Millisecond))
		fmt.Fprintf(&b, "requests: %d in flight at the trigger, %d served during the drain, %d cut at the end\n",
			rep.InFlightAtTrigger, rep.Completed, rep.Cut)
		fmt.Fprintf(&b, "client connections open at closing: %d\n", rep.ConnsClosed)
		app := rep.App
		if err != nil && app.Detail == err.Error() {
			app.Detail = "see the error below" // the app's start error: shown once
		}
		fmt.Fprintf(&b, "app stop: %s\n", capText(app.String(), reportAppMax))
	}
	if err != nil {
		fmt.Fprintf(&b, "error: %s\n", capText(err.Error(), reportErrorMax))
	}
	text := redactURLs(b.String())
	if token != "" {
		text = strings.ReplaceAll(text, token, redacted)
	}
	if len(text) > reportFileMax {
		text = cutUTF8(text, reportFileMax-len(truncatedMarker)) + truncatedMarker
	}
	return text
}

// exitReason says in a few words why tidegate exited.
func exitReason(code int, rep *drain.Report, err error) string {
	switch {
	case rep == nil && err != nil:
		return "start-up failed"
	case rep == nil:
		return "stopped"
	case rep.Trigger == "app_start_failed":
		return "the app could not be started"
	case rep.Trigger == "app_exit":
		return "the app exited on its own"
	case rep.Trigger == "listener_error":
		return "a listener failed"
	case code != 0 && rep.App.Strategy == "child":
		return "drained after " + rep.Trigger + "; the exit code is the app's"
	}
	return "drained after " + rep.Trigger
}

func resultText(result string) string {
	switch result {
	case "complete":
		return "complete (nothing was left in flight)"
	case "timeout":
		return "timeout (what was left in flight at --drain-timeout was cut)"
	case "forced":
		return "forced (a second signal, or the app could not start: what was in flight was cut)"
	}
	return result
}

// capText cuts s to at most n bytes, marked.
func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutUTF8(s, n) + "…[truncated]"
}

// cutUTF8 returns the longest prefix of s of at most n bytes that does not
// split a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// writeReportFile writes text to path: atomically (a temporary file in the
// same directory, synced, then renamed over path) when it can, else in
// place, truncating. /dev/termination-log is the "else": it exists, is
// bind-mounted (a rename onto it fails), and /dev is not writable.
func writeReportFile(path, text string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return writeInPlace(path, text)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return writeInPlace(path, text)
	}
	name := tmp.Name()
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		_ = os.Remove(name)
		return writeInPlace(path, text)
	}
	return nil
}

// reportOpenFlags open the report file without blocking: a FIFO with no
// reader fails at once (ENXIO) instead of holding tidegate's start or exit
// forever, and a full one fails the write (the text fits PIPE_BUF, so it
// is never written in part).
const reportOpenFlags = os.O_WRONLY | syscall.O_NONBLOCK

func writeInPlace(path, text string) error {
	f, err := os.OpenFile(path, reportOpenFlags|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if serr := f.Sync(); err == nil && !errors.Is(serr, syscall.EINVAL) { // a device may not sync
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkReportFile makes sure at start that the report file can be written
// at exit, without changing it: an existing file opens for writing, or its
// directory is writable.
func checkReportFile(path string) error {
	if f, err := os.OpenFile(path, reportOpenFlags, 0); err == nil {
		return f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(path)
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return fmt.Errorf("cannot create a file in %s: %w", dir, err)
	}
	return nil
}
