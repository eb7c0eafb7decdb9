//go:build linux

package attack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// binary is the path of the tidegate binary under test, built once by
// TestMain.
var binary string

// longEnv, set to 1, runs the long form of every row (more connections,
// longer holds, bigger floods): `make test-attack`.
const longEnv = "TIDEGATE_ATTACK_LONG"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tidegate-attack-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(1)
	}
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	if err := raiseFileLimit(16384); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { _ = os.RemoveAll(dir) }))
}

// build compiles ./cmd/tidegate from the repository root into dir, without
// the race detector: the memory and timing measured are the shipped
// binary's.
func build(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("no go tool on PATH: %w", err)
	}
	binary = filepath.Join(dir, "tidegate")
	args := []string{"build", "-o", binary, "./cmd/tidegate"}
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// repoRoot walks up from the working directory (test/attack under go test)
// to the directory holding tidegate's go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 10 {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/tidegate/tidegate\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("cannot find the repository root (go.mod of github.com/tidegate/tidegate) above the working directory")
}

// raiseFileLimit lets this process, and the tidegate children that inherit
// its limits, open up to want files (or the hard limit, if lower): the idle
// row holds thousands of sockets on both sides.
func raiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit NOFILE to %d: %w", lim.Cur, err)
	}
	return nil
}
