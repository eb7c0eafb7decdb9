package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestCheckNamesTheBadValue(t *testing.T) {
	for _, tc := range []struct {
		procs int
		max   time.Duration
		want  string
	}{
		{1, time.Hour, ""},
		{2, time.Hour, ""},
		{0, time.Hour, "--procs 0: want 1..2"},
		{3, time.Hour, "--procs 3: want 1..2"},
		{1, 0, "--max 0s: want a positive duration"},
		{1, -time.Second, "--max -1s: want a positive duration"},
	} {
		err := check(tc.procs, tc.max, 2)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("check(%d, %v): %v, want nil", tc.procs, tc.max, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("check(%d, %v): %v, want an error with %q", tc.procs, tc.max, err, tc.want)
		}
	}
}

func TestRunStopsAtMax(t *testing.T) {
	var out strings.Builder
	start := time.Now()
	if code := run([]string{"--procs", "1", "--max", "50ms"}, &out); code != 0 {
		t.Fatalf("exit %d, want 0; stderr %q", code, out.String())
	}
	if took := time.Since(start); took < 50*time.Millisecond || took > 10*time.Second {
		t.Errorf("stopped after %v, want from 50ms to 10s", took)
	}
	if !strings.Contains(out.String(), "--max 50ms reached") {
		t.Errorf("stderr %q, want it to say why burn stopped", out.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--procs", "0"}, {"--max", "0s"}, {"--nope"}, {"--check", "--procs", "0"}} {
		if code := run(args, io.Discard); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}

func TestCheckOnlyReturnsAtOnce(t *testing.T) {
	var out strings.Builder
	// Without --check this would burn for an hour.
	if code := run([]string{"--check", "--procs", "1", "--max", "1h"}, &out); code != 0 || out.Len() != 0 {
		t.Fatalf("run --check with good flags = %d, stderr %q; want 0 and nothing said", code, out.String())
	}
}
