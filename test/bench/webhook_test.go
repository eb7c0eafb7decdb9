package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

func TestIsWebhookMode(t *testing.T) {
	for args, want := range map[string]bool{
		"-mode webhook": true, "--mode=webhook": true, "-rate 5 -mode=webhook": true,
		"-mode load": false, "": false, "webhook": false, "-paths webhook": false,
	} {
		if got := isWebhookMode(strings.Fields(args)); got != want {
			t.Errorf("isWebhookMode(%q) = %v, want %v", args, got, want)
		}
	}
}

// TestWebhookBenchRuns runs the webhook mode briefly: every admission is
// answered with a patch and the report has its table.
func TestWebhookBenchRuns(t *testing.T) {
	var out bytes.Buffer
	if err := runWebhookBench(context.Background(), []string{"-mode", "webhook", "-rate", "50", "-duration", "200ms"}, &out, io.Discard); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "| 10 | 0 |") {
		t.Errorf("report:\n%s", out.String())
	}
}
