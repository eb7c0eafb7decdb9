package kubeenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

// A run killed before its cleanups leaves its cluster directory; the next
// launch removes it once that test process is gone, and only then: never a
// live process's directory, a kept one, or anything else in the temp dir.
func TestSweepRemovesDirsOfGoneRuns(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("processAlive is Linux-only; elsewhere nothing is swept")
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := strconv.Itoa(gone.Process.Pid)
	tmp := t.TempDir()
	mk := func(name string, kept bool) string {
		dir := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Join(dir, "etcd"), 0o700); err != nil {
			t.Fatal(err)
		}
		if kept {
			if err := os.WriteFile(filepath.Join(dir, keptMarker), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	stale := mk(dirPrefix+dead+"-123", false)
	keep := []string{
		mk(dirPrefix+dead+"-456", true),
		mk(dirPrefix+strconv.Itoa(os.Getpid())+"-789", false),
		mk(dirPrefix+"1-1", false), // pid 1 is alive
		mk(dirPrefix+"notapid", false),
		mk("other-"+dead+"-1", false),
	}
	sweepDirs(tmp, t.Logf)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("%s, of a gone process, is still there: %v", stale, err)
	}
	for _, d := range keep {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was swept: %v", d, err)
		}
	}
}
