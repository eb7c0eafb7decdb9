package e2e

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

// binary is the path of the binary under test, built once by TestMain.
var binary string

// fakeappBinary is the path of test/fakeapp/cmd/fakeapp, the controllable
// app as a real process, built once by TestMain next to binary.
var fakeappBinary string

// The version and commit stamped into the binary, the way the Makefile does.
const (
	stampVersion = "v0.0.0-e2e"
	stampCommit  = "e2ec0ffee"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tidegate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	if err := raiseFileLimit(8192); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { _ = os.RemoveAll(dir) }))
}

// raceBinaryEnv, set to 1 while the suite itself runs with -race, builds the
// binary under test with the race detector too. Off by default: a
// race-built proxy is several times slower and schedules differently from
// the binary that ships, and the timing and pool assertions are about that
// one.
const raceBinaryEnv = "TIDEGATE_E2E_RACE"

// build compiles ./cmd/tidegate and ./test/fakeapp/cmd/fakeapp from the
// repository root into dir. The fakeapp is never built with -race: it is a
// peer, not the code under test.
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
	args := []string{"build", "-o", binary,
		"-ldflags", "-X main.version=" + stampVersion + " -X main.commit=" + stampCommit}
	if raceEnabled && os.Getenv(raceBinaryEnv) == "1" {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/tidegate")
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	fakeappBinary = filepath.Join(dir, "fakeapp")
	args = []string{"build", "-o", fakeappBinary, "./test/fakeapp/cmd/fakeapp"}
	cmd = exec.Command(goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// repoRoot walks up from the working directory (test/e2e under go test) to
// the directory holding tidegate's go.mod.
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

// raiseFileLimit makes sure this process, and the tidegate children that
// inherit its limits, may open at least want files: the pool test holds
// thousands of sockets.
func raiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		want = lim.Max
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit NOFILE to %d: %w", want, err)
	}
	return nil
}
