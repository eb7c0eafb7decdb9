package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzConfigFile feeds arbitrary bytes to the YAML config loader: it must
// never panic, and every rejection must be a usage error (exit 2).
func FuzzConfigFile(f *testing.F) {
	for _, seed := range []string{
		"upstream: :3000\n",
		"upstream: {address: \"unix:///run/app.sock\", dial_timeout: 1s}\nserver:\n  max_header_bytes: 8KiB\n",
		"drain: {delay: 5s, quiet: 1s, timeout: 30s}\napp: {stop: child, reap_orphans: off}\n",
		"probe_user_agents: [kube-probe/, \"ELB-HealthChecker/\"]\nlisten: off\n",
		"- a\n- b\n", "upstream: [1, 2]\n", "a: &x {b: *x}\n", "\t\x00", "",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig([]string{"--config", p}, func(string) string { return "" })
		var ue usageError
		if err != nil && !errors.As(err, &ue) {
			t.Fatalf("rejection is not a usage error: %v", err)
		}
	})
}
