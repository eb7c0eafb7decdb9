package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tidegate/tidegate/deploy/webhook"
)

// certsCmd writes ca.crt, tls.crt and tls.key for the webhook: the
// self-contained path, without cert-manager (ca.crt goes into the
// MutatingWebhookConfiguration's caBundle).
func certsCmd(args []string, e env) error {
	fs := flag.NewFlagSet("tidegate-inject certs", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	hosts := fs.String("hosts", "", "comma-separated DNS names and IP addresses of the webhook, e.g. tidegate-inject.tidegate-system.svc (required)")
	out := fs.String("out", "", "directory to write ca.crt, tls.crt and tls.key to (required)")
	validity := fs.Duration("validity", 365*24*time.Hour, "how long the certificates are valid")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *hosts == "" || *out == "" {
		return usagef("--hosts and --out are required")
	}
	caPEM, certPEM, keyPEM, err := webhook.GenerateCerts(strings.Split(*hosts, ","), *validity)
	if err != nil {
		return usageError{err}
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"ca.crt", caPEM, 0o644}, {"tls.crt", certPEM, 0o644}, {"tls.key", keyPEM, 0o600}}
	if !*force {
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(*out, f.name)); err == nil {
				return usagef("%s exists: pass --force to replace it", filepath.Join(*out, f.name))
			}
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(*out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "wrote %s, %s and %s (valid until %s)\n", filepath.Join(*out, "ca.crt"), filepath.Join(*out, "tls.crt"),
		filepath.Join(*out, "tls.key"), time.Now().Add(*validity).UTC().Format(time.RFC3339))
	return nil
}

// writeFileAtomic writes a temporary file and renames it over path, so a
// webhook watching path never reads half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
