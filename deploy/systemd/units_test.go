package systemd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/need"
	"sigs.k8s.io/yaml"
)

const (
	mainUnit   = "tidegate.service"        // Type=notify-reload, systemd 253+
	pre253Unit = "tidegate-pre253.service" // Type=notify, for older systemd
	execPath   = "/usr/local/bin/tidegate" // where the units expect tidegate
)

// directive is one Key=value line of a unit file, with its section.
type directive struct {
	section, key, value string
	line                int
}

func (d directive) String() string { return fmt.Sprintf("[%s] %s=%s", d.section, d.key, d.value) }

// readUnit parses a unit file's directives in order; comments and blank
// lines are dropped. The units use no line continuations, and the test
// fails if one appears.
func readUnit(t *testing.T, name string) []directive {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ds []directive
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: a continued line; readUnit does not join them", name, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s:%d: %q is neither a section, a comment nor Key=value", name, n, line)
			}
			ds = append(ds, directive{section: section, key: strings.TrimSpace(k), value: strings.TrimSpace(v), line: n})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ds
}

// get is the value of the last key in section [Service], and whether it is set.
func get(ds []directive, key string) (string, bool) {
	for i := len(ds) - 1; i >= 0; i-- {
		if ds[i].section == "Service" && ds[i].key == key {
			return ds[i].value, true
		}
	}
	return "", false
}

// systemdVersion is the major version of systemd-analyze at path.
func systemdVersion(t *testing.T, path string) int {
	t.Helper()
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", path, err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s --version: no version in %q", path, out)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// TestUnitsVerify runs `systemd-analyze verify` on each unit. verify fails a
// unit whose ExecStart binary does not exist, and tidegate is not installed
// at /usr/local/bin here; so the test verifies a copy of the unit, installed
// as tidegate.service in a temporary directory, whose ExecStart runs an
// executable script in that directory instead (with the same arguments).
// verify only checks that the file is executable; it runs nothing. Every
// other line is verified as written. Warnings (an unknown key, a bad value)
// leave verify's exit status 0, so the test wants its output empty.
//
// systemd before 253 does not know Type=notify-reload: for tidegate.service
// it then warns "Failed to parse service type, ignoring: notify-reload",
// and that line alone is allowed.
func TestUnitsVerify(t *testing.T) {
	analyze := need.Tool(t, "systemd-analyze", "/usr/bin/systemd-analyze")
	version := systemdVersion(t, analyze)
	t.Logf("%s: systemd %d", analyze, version)
	for _, name := range []string{mainUnit, pre253Unit} {
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			stand := filepath.Join(dir, "tidegate")
			if err := os.WriteFile(stand, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(src), "\n")
			replaced := 0
			for i, l := range lines {
				if rest, ok := strings.CutPrefix(l, "ExecStart="+execPath+" "); ok {
					lines[i] = "ExecStart=" + stand + " " + rest
					replaced++
				}
			}
			if replaced != 1 {
				t.Fatalf("%s: %d lines start ExecStart=%s, want 1", name, replaced, execPath)
			}
			unit := filepath.Join(dir, "tidegate.service")
			if err := os.WriteFile(unit, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, analyze, "verify", unit).CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze verify %s (%s): %v\n%s", unit, name, err, out)
			}
			var complaints []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l == "" {
					continue
				}
				if version < 253 && name == mainUnit && strings.HasSuffix(l, ": Failed to parse service type, ignoring: notify-reload") {
					t.Logf("systemd %d does not know Type=notify-reload (253 does); allowed: %s", version, l)
					continue
				}
				complaints = append(complaints, l)
			}
			if len(complaints) > 0 {
				t.Fatalf("systemd-analyze verify %s (%s) complains:\n%s", unit, name, strings.Join(complaints, "\n"))
			}
		})
	}
}

// TestPre253UnitMatchesMainUnit keeps the two units from drifting apart: the
// older-systemd unit has the same directives, in the same order, but
// Type=notify and an ExecReload= that sends SIGHUP, where the main unit has
// Type=notify-reload (whose ReloadSignal= is SIGHUP by default).
func TestPre253UnitMatchesMainUnit(t *testing.T) {
	want := []string{}
	for _, d := range readUnit(t, mainUnit) {
		if d.section == "Service" && d.key == "Type" {
			if d.value != "notify-reload" {
				t.Fatalf("%s:%d: Type=%s, want notify-reload", mainUnit, d.line, d.value)
			}
			want = append(want, "[Service] Type=notify", "[Service] ExecReload=/bin/kill -HUP $MAINPID")
			continue
		}
		want = append(want, d.String())
	}
	var got []string
	for _, d := range readUnit(t, pre253Unit) {
		got = append(got, d.String())
	}
	if !slices.Equal(got, want) {
		for i := 0; i < max(len(got), len(want)); i++ {
			g, w := "(none)", "(none)"
			if i < len(got) {
				g = got[i]
			}
			if i < len(want) {
				w = want[i]
			}
			if g != w {
				t.Fatalf("%s differs from %s with Type=notify and ExecReload=: directive %d is %s, want %s",
					pre253Unit, mainUnit, i+1, g, w)
			}
		}
	}
}

// TestUnitSettings checks what the units promise in their comments: sd_notify
// from tidegate alone, a watchdog whose kill is restarted, SIGTERM to
// tidegate alone so the drain runs before the app is signalled, and a stop
// timeout above what tidegate.yaml lets the drain and the app's stop take.
func TestUnitSettings(t *testing.T) {
	var cfg struct {
		Drain struct {
			Timeout string `json:"timeout"`
		} `json:"drain"`
		App struct {
			StopTimeout string `json:"stop_timeout"`
		} `json:"app"`
	}
	raw, err := os.ReadFile("tidegate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("tidegate.yaml: %v", err)
	}
	duration := func(what, s string) time.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s = %q: not a duration this test reads (write it like 30s): %v", what, s, err)
		}
		return d
	}
	drainTimeout := duration("tidegate.yaml drain.timeout", cfg.Drain.Timeout)
	appStop := duration("tidegate.yaml app.stop_timeout", cfg.App.StopTimeout)
	const margin = 10 * time.Second // health and admin shutdown (2s), drain report, log flush

	for _, name := range []string{mainUnit, pre253Unit} {
		t.Run(name, func(t *testing.T) {
			ds := readUnit(t, name)
			for key, want := range map[string]string{
				"NotifyAccess": "main",       // the app's sd_notify messages do not count
				"KillMode":     "mixed",      // SIGTERM to tidegate alone: the drain runs before the app is signalled
				"KillSignal":   "SIGTERM",    // what starts tidegate's drain
				"Restart":      "on-failure", // includes a watchdog timeout
			} {
				if got, ok := get(ds, key); got != want {
					t.Errorf("%s: %s=%q (set: %v), want %q", name, key, got, ok, want)
				}
			}
			// Go exits 2 on SIGABRT and SIGQUIT; a unit that does not restart
			// on 2 must not kill a hung tidegate with either.
			if prevent, _ := get(ds, "RestartPreventExitStatus"); slices.Contains(strings.Fields(prevent), "2") {
				if sig, ok := get(ds, "WatchdogSignal"); !ok || sig == "SIGABRT" || sig == "SIGQUIT" {
					t.Errorf("%s: RestartPreventExitStatus=%s with WatchdogSignal=%q (default SIGABRT): a watchdog kill would not be restarted",
						name, prevent, sig)
				}
			}
			if families, _ := get(ds, "RestrictAddressFamilies"); !slices.Contains(strings.Fields(families), "AF_UNIX") {
				t.Errorf("%s: RestrictAddressFamilies=%s lacks AF_UNIX, which the notify socket needs", name, families)
			}

			watchdog, ok := get(ds, "WatchdogSec")
			if !ok {
				t.Fatalf("%s: no WatchdogSec", name)
			}
			if w := duration(name+" WatchdogSec", watchdog); w < 2*time.Second {
				t.Errorf("%s: WatchdogSec=%s: tidegate's check gets WatchdogSec/4; keep it at 2s or more", name, watchdog)
			}
			stop, ok := get(ds, "TimeoutStopSec")
			if !ok {
				t.Fatalf("%s: no TimeoutStopSec", name)
			}
			if s := duration(name+" TimeoutStopSec", stop); s < drainTimeout+appStop+margin {
				t.Errorf("%s: TimeoutStopSec=%s is below tidegate.yaml's drain.timeout %s + app.stop_timeout %s + %s: systemd would SIGKILL a drain that goes to plan",
					name, stop, drainTimeout, appStop, margin)
			}
		})
	}
}
