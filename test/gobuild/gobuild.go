// Package gobuild builds tidegate's binaries for the suites that run them
// as child processes (test/e2e, test/attack): it finds the repository root,
// runs the go tool there, and raises the open-file limit the children
// inherit.
package gobuild

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// RepoRoot walks up from the working directory (a package under test/,
// under go test) to the directory holding tidegate's go.mod.
func RepoRoot() (string, error) {
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

// Build runs `go build -o out [flags...] pkg` in root; the error carries
// the go tool's output.
func Build(root, out, pkg string, flags ...string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("no go tool on PATH: %w", err)
	}
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
