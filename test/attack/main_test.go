//go:build linux

package attack

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tidegate/tidegate/test/gobuild"
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
	if err := gobuild.RaiseFileLimit(16384); err != nil {
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
	root, err := gobuild.RepoRoot()
	if err != nil {
		return err
	}
	binary = filepath.Join(dir, "tidegate")
	return gobuild.Build(root, binary, "./cmd/tidegate")
}
