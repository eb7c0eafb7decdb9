package main

import (
	"strings"
	"testing"
)

// TestDemo runs `tidegate demo` in-process, shortened, and checks the story
// it tells: load, SIGTERM with requests in flight, readiness failing, every
// request answered, exit 0.
func TestDemo(t *testing.T) {
	var out, errOut strings.Builder
	code := cli([]string{"demo", "--load", "400ms", "--slow", "200ms", "--concurrency", "4", "--drain-delay", "200ms"},
		env{getenv: func(string) string { return "" }, stdout: &out, stderr: &errOut})
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{
		"readiness 200", "SIGTERM → sidecar", "readiness 503", "balancer takes the sidecar out of rotation",
		"last in-flight request answered", "listeners closed (complete)", "after the last request ended",
		"requests failed       0", "0 cut",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	var out, errOut strings.Builder
	if code := cli([]string{"demo", "--concurrency", "0"}, env{getenv: func(string) string { return "" }, stdout: &out, stderr: &errOut}); code != 2 {
		t.Fatalf("demo --concurrency 0 exited %d, want 2", code)
	}
}
