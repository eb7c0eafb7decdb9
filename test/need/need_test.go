package need

import (
	"os/exec"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestToolOnPath(t *testing.T) {
	want, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("sh is not on PATH: %v", err)
	}
	if got := Tool(t, "sh"); got != want {
		t.Errorf("Tool(sh) = %q, want %q", got, want)
	}
}

func TestToolAtAPath(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("sh is not on PATH: %v", err)
	}
	dir := t.TempDir() // a directory is not a program: skipped over
	if got := Tool(t, "tidegate-no-such-tool", dir, sh); got != sh {
		t.Errorf("Tool(no such tool, %s, %s) = %q, want %q", dir, sh, got, sh)
	}
}
