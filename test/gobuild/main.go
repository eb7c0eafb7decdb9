package gobuild

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main is the TestMain of a suite that runs built binaries: it makes a
// temporary directory, calls build with the repository root and that
// directory, raises the open-file limit to fileLimit, runs the tests under
// goleak, and removes the directory. It does not return (os.Exit). suite
// prefixes its errors and names the directory ("e2e" → tidegate-e2e-*).
func Main(m *testing.M, suite string, fileLimit uint64, build func(root, dir string) error) {
	fail := func(dir string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "tidegate-"+suite+"-")
	if err != nil {
		fail("", err)
	}
	root, err := RepoRoot()
	if err != nil {
		fail(dir, err)
	}
	if err := build(root, dir); err != nil {
		fail(dir, err)
	}
	if err := RaiseFileLimit(fileLimit); err != nil {
		fail(dir, err)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { _ = os.RemoveAll(dir) }))
}
