package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/wait"
)

// A report file that is a FIFO nobody reads (a careless mount, or a
// hostile one) must not hold tidegate's start or exit forever: both the
// start-up check and the write at exit fail at once.
func TestReportFileFIFONoReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"start-up check": func() error { return checkReportFile(path) },
		"write at exit":  func() error { return writeReportFile(path, "tidegate exited\n") },
	} {
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s of a FIFO with no reader: no error", name)
			}
		case <-time.After(10 * time.Second):
			// Let the blocked open go, so that the test ends.
			r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err == nil {
				<-done
				r.Close()
			}
			t.Fatalf("%s of a FIFO with no reader blocked for 10s", name)
		}
	}
}

// A FIFO that is read gets the whole text, and a directory is an error.
func TestReportFileFIFOReadAndDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := writeReportFile(path, "tidegate exited with code 0\n"); err != nil {
		t.Fatalf("write to a read FIFO: %v", err)
	}
	buf := make([]byte, 100)
	if n, _ := r.Read(buf); string(buf[:n]) != "tidegate exited with code 0\n" {
		t.Errorf("the FIFO's reader got %q", buf[:n])
	}
	if err := checkReportFile(dir); err == nil {
		t.Error("a directory passed the start-up check")
	}
	if err := writeReportFile(dir, "x\n"); err == nil {
		t.Error("a directory was written")
	}
}

// A symbolic link named tidegate in --copy-binary-to's directory is never
// followed: even when it points at an identical binary (which may change
// later, or live outside the volume), the link is replaced by a real copy
// and its target is left alone.
func TestCopyBinaryReplacesSymlink(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	content := bytes.Repeat([]byte("tidegate binary "), 1<<12)
	if err := os.WriteFile(src, content, 0o755); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(elsewhere, content, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, copiedBinaryName)
	if err := os.Symlink(elsewhere, dst); err != nil {
		t.Fatal(err)
	}
	copied, err := copyBinary(src, dir)
	if err != nil || !copied {
		t.Fatalf("copy over a symlink to an identical file: copied %v, %v", copied, err)
	}
	fi, err := os.Lstat(dst)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o555 {
		t.Fatalf("%s after the copy: %v, %v: want a regular file, mode 0555", dst, fi, err)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, content) {
		t.Error("the copy's content differs")
	}
	vi, err := os.Stat(elsewhere)
	if b, _ := os.ReadFile(elsewhere); err != nil || !bytes.Equal(b, content) || vi.Mode().Perm() != 0o644 {
		t.Errorf("the link's target was changed: mode %v, %v", vi.Mode(), err)
	}
}

// A reload that changes the drain token rewrites --copy-binary-to's
// drain-token file: a chained preStop hook reading the stale token would be
// refused (403) and skip the drain.
func TestReloadRewritesTheTokenFile(t *testing.T) {
	app := namedApp(t, "a", nil)
	dir := t.TempDir()
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	base := "listen: 127.0.0.1:0\nhealth_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: " + app.Listener.Addr().String() +
		"\ncopy_binary_to: " + dir + "\n"
	writeConfig(t, file, base+"drain: {token: first}\n")
	if err := writeTokenFile(dir, "first"); err != nil { // as run does at start
		t.Fatal(err)
	}
	sc, sig, _ := startWith(t, "--config", file)
	writeConfig(t, file, base+"drain: {token: second}\n")
	sig <- syscall.SIGHUP
	wait.For(t, "config version 2", func() bool { return sc.version.Load() == 2 })
	b, err := os.ReadFile(filepath.Join(dir, tokenFileName))
	if err != nil || string(b) != "second" {
		t.Fatalf("token file after the reload: %q %v; want the new token", b, err)
	}
	r := prestopDone(t, runPrestop(envOf(nil), nil, "--health", sc.aux[0].ln.Addr().String(), "--token-file", filepath.Join(dir, tokenFileName), "--wait", "0s"))
	if strings.Contains(r.stderr, "403") {
		t.Errorf("prestop with the token file after the reload was refused: %q", r.stderr)
	}
}
