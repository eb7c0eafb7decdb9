package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidegate/tidegate/healthz"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tidegate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	l, err := loadConfig([]string{"--upstream", "127.0.0.1:3000"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	c := l.cfg
	if len(c.Listen) != 1 || c.Listen[0] != ":8080" || len(l.listeners) != 1 || l.listeners[0] != (listenerSpec{Name: "public", Address: ":8080", Protocol: "http", Upstream: "127.0.0.1:3000"}) || c.HealthListen != ":8081" || c.AdminListen != "127.0.0.1:9901" {
		t.Errorf("listeners %q %q %q", c.Listen, c.HealthListen, c.AdminListen)
	}
	if c.Upstream.DialTimeout != 5*time.Second || c.Upstream.ResponseHeaderTimeout != 60*time.Second ||
		c.Upstream.IdleTimeout != time.Second || c.Upstream.MaxIdleConns != 1024 || c.Upstream.ExpectContinueTimeout != time.Second {
		t.Errorf("upstream defaults %+v", c.Upstream)
	}
	if c.Server.ReadHeaderTimeout != 10*time.Second || c.Server.IdleTimeout != 620*time.Second ||
		c.Server.MaxHeaderBytes != 64<<10 || c.Server.MaxBodyBytes != 0 || c.Server.Forwarded != "append" {
		t.Errorf("server defaults %+v", c.Server)
	}
	if c.Drain.Timeout != 30*time.Second || c.Log.Level != "info" || c.Log.Format != "json" || c.AccessLog != "off" {
		t.Errorf("defaults %+v %+v %q", c.Drain, c.Log, c.AccessLog)
	}
	if len(c.ProbeUserAgents) != 1 || c.ProbeUserAgents[0] != "kube-probe/" {
		t.Errorf("probe user agents %q", c.ProbeUserAgents)
	}
}

func TestPrecedenceFlagEnvFileDefault(t *testing.T) {
	file := writeFile(t, `
upstream: 127.0.0.1:3000
drain:
  timeout: 11s
server:
  idle_timeout: 12s
  read_header_timeout: 13s
log:
  level: warn
`)
	l, err := loadConfig([]string{"--config", file, "--drain-timeout", "21s"},
		envOf(map[string]string{"TIDEGATE_DRAIN_TIMEOUT": "31s", "TIDEGATE_IDLE_TIMEOUT": "32s", "TIDEGATE_LOG_LEVEL": ""}))
	if err != nil {
		t.Fatal(err)
	}
	c := l.cfg
	if c.Drain.Timeout != 21*time.Second {
		t.Errorf("flag did not win over env and file: %v", c.Drain.Timeout)
	}
	if c.Server.IdleTimeout != 32*time.Second {
		t.Errorf("env did not win over file: %v", c.Server.IdleTimeout)
	}
	if c.Server.ReadHeaderTimeout != 13*time.Second || c.Log.Level != "warn" {
		t.Errorf("file did not win over default: %v %q (an empty env var must count as unset)", c.Server.ReadHeaderTimeout, c.Log.Level)
	}
	if c.Upstream.DialTimeout != 5*time.Second {
		t.Errorf("default lost: %v", c.Upstream.DialTimeout)
	}
	eff := l.effective()
	if eff["drain.timeout"] != "21s" || eff["upstream.address"] != "127.0.0.1:3000" || eff["server.max_header_bytes"] != "64KiB" {
		t.Errorf("effective config %v", eff)
	}
}

func TestConfigFileFromEnvAndFullSchema(t *testing.T) {
	file := writeFile(t, `
listen: "127.0.0.1:18080"
health_listen: off
admin_listen: "off"
upstream:
  address: unix:///run/app.sock
  dial_timeout: 1s
  response_header_timeout: 2s
  idle_timeout: 3s
  max_idle_conns: 10
  expect_continue_timeout: 0
server:
  read_header_timeout: 4s
  idle_timeout: 5s
  max_header_bytes: 8KiB
  max_body_bytes: 10MB
  forwarded_headers: replace
probe_user_agents: [kube-probe/, ELB-HealthChecker/]
drain:
  timeout: 6s
log:
  level: debug
  format: console
access_log: /tmp/access.log
`)
	l, err := loadConfig(nil, envOf(map[string]string{"TIDEGATE_CONFIG": file}))
	if err != nil {
		t.Fatal(err)
	}
	c := l.cfg
	if c.HealthListen != "off" || c.AdminListen != "off" || c.Upstream.Address != "unix:///run/app.sock" ||
		c.Upstream.MaxIdleConns != 10 || c.Server.MaxHeaderBytes != 8192 || c.Server.MaxBodyBytes != 10_000_000 ||
		c.Server.Forwarded != "replace" || len(c.ProbeUserAgents) != 2 || c.Log.Format != "console" ||
		c.AccessLog != "/tmp/access.log" || c.Drain.Timeout != 6*time.Second || c.Upstream.ExpectContinueTimeout != 0 {
		t.Fatalf("config from file: %+v", c)
	}
}

func TestListsFromEnvAndFlags(t *testing.T) {
	l, err := loadConfig([]string{"--upstream", ":3000", "--probe-user-agent", "a/", "--probe-user-agent", "b/"},
		envOf(map[string]string{"TIDEGATE_PROBE_USER_AGENT": "x/,y/,z/"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(l.cfg.ProbeUserAgents, " "); got != "a/ b/" {
		t.Fatalf("flags should replace the env list: %q", got)
	}
	l, err = loadConfig([]string{"--upstream", ":3000"}, envOf(map[string]string{"TIDEGATE_PROBE_USER_AGENT": "x/, y/"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(l.cfg.ProbeUserAgents, " "); got != "x/ y/" {
		t.Fatalf("env list: %q", got)
	}
}

func TestAccessLogFlagForms(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--access-log"}, "stdout"},
		{[]string{"--access-log=stderr"}, "stderr"},
		{[]string{"--access-log=/var/log/a.log"}, "/var/log/a.log"},
		{[]string{"--access-log=false"}, "off"},
		{nil, "off"},
	} {
		l, err := loadConfig(append([]string{"--upstream", ":3000"}, tc.args...), envOf(nil))
		if err != nil {
			t.Fatal(err)
		}
		if l.cfg.AccessLog != tc.want {
			t.Errorf("%v: access log %q, want %q", tc.args, l.cfg.AccessLog, tc.want)
		}
	}
}

func TestConfigErrorsNameTheValue(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		file string
		want []string
	}{
		{"missing upstream", nil, nil, "", []string{"no upstream", "--upstream"}},
		{"bad duration flag", []string{"--upstream", ":3000", "--drain-timeout", "5x"}, nil, "", []string{"--drain-timeout", `"5x"`, "duration"}},
		{"negative duration", []string{"--upstream", ":3000", "--drain-timeout=-1s"}, nil, "", []string{"--drain-timeout", `"-1s"`, "negative"}},
		{"bad duration env", []string{"--upstream", ":3000"}, map[string]string{"TIDEGATE_DRAIN_TIMEOUT": "soon"}, "", []string{"TIDEGATE_DRAIN_TIMEOUT", `"soon"`}},
		{"bad address", []string{"--upstream", ":3000", "--listen", "8080"}, nil, "", []string{"--listen", `"8080"`}},
		{"port out of range", []string{"--upstream", ":3000", "--admin-listen", "127.0.0.1:70000"}, nil, "", []string{"--admin-listen", `"70000"`}},
		{"bad upstream", []string{"--upstream", "ftp://x:21"}, nil, "", []string{"--upstream", `"ftp"`}},
		{"bad enum", []string{"--upstream", ":3000", "--log-format", "xml"}, nil, "", []string{"--log-format", `"xml"`, "json, console"}},
		{"bad size", []string{"--upstream", ":3000", "--max-header-bytes", "lots"}, nil, "", []string{"--max-header-bytes", `"lots"`}},
		{"zero header bytes", []string{"--upstream", ":3000", "--max-header-bytes", "0"}, nil, "", []string{"--max-header-bytes", "more than 0"}},
		{"bad int", []string{"--upstream", ":3000", "--upstream-max-idle-conns", "-3"}, nil, "", []string{"--upstream-max-idle-conns", `"-3"`}},
		{"same port twice", []string{"--upstream", ":3000", "--listen", ":9000", "--health-listen", "127.0.0.1:9000"}, nil, "", []string{"--listen", "--health-listen", "own port"}},
		{"upstream loops", []string{"--upstream", "127.0.0.1:8080"}, nil, "", []string{"--upstream", "loop"}},
		{"unknown flag", []string{"--upstrem", ":3000"}, nil, "", []string{"unknown flag --upstrem", "did you mean --upstream?"}},
		{"positional", []string{"--upstream", ":3000", "extra"}, nil, "", []string{`"extra"`}},
		{"bool flag with a spaced value", []string{"--upstream", ":3000", "--access-log", "stderr"}, nil, "", []string{"--access-log=stderr"}},
		{"delay over timeout", []string{"--upstream", ":3000", "--drain-delay", "40s"}, nil, "", []string{"--drain-delay", "40s", "--drain-timeout (default)", "30s"}},
		{"child without command", []string{"--upstream", ":3000", "--app-stop", "child"}, nil, "", []string{"--app-stop", "no app command", "--"}},
		{"command with another strategy", []string{"--upstream", ":3000", "--app-stop", "none", "--", "/bin/app"}, nil, "", []string{"only the child strategy"}},
		{"nothing after --", []string{"--upstream", ":3000", "--"}, nil, "", []string{"nothing after --"}},
		{"pid without pid", []string{"--upstream", ":3000", "--app-stop", "pid"}, nil, "", []string{"--app-pid", "--app-pidfile"}},
		{"http without url", []string{"--upstream", ":3000", "--app-stop", "http", "--app-stop-url", "localhost/stop"}, nil, "", []string{"--app-stop-url", `"localhost/stop"`}},
		{"command without command", []string{"--upstream", ":3000", "--app-stop", "command"}, nil, "", []string{"--app-stop-command"}},
		{"restart without child", []string{"--upstream", ":3000", "--app-restart", "always"}, nil, "", []string{"--app-restart", "child"}},
		{"bad signal", []string{"--upstream", ":3000", "--app-stop-signal", "SIGFOO"}, nil, "", []string{"--app-stop-signal", `"SIGFOO"`}},
		{"bad restart policy", []string{"--upstream", ":3000", "--app-restart", "sometimes"}, nil, "", []string{"--app-restart", `"sometimes"`}},
		{"unknown key", nil, nil, "upstream: :3000\nserver:\n  idel_timeout: 5s\n", []string{`"server.idel_timeout"`, `did you mean "server.idle_timeout"`}},
		{"unknown section", nil, nil, "upstream: :3000\nfrobnicate: {a: 1}\n", []string{`"frobnicate"`}},
		{"protocol count", []string{"--upstream", ":3000", "--listen", ":1", "--listen", ":2", "--listen", ":4", "--protocol", "http", "--protocol", "tcp"}, nil, "", []string{"2 --protocol values for 3 --listen"}},
		{"bad protocol", []string{"--upstream", ":3000", "--protocol", "udp"}, nil, "", []string{"--listen", `"udp"`}},
		{"listeners tls missing files", nil, nil, "upstream: :3000\nlisteners:\n- {address: \":1\", tls: {cert: /nonexistent/a.crt, key: /nonexistent/a.key}}\n", []string{"listeners[0]", "/nonexistent/a.crt"}},
		{"listeners tls on tcp", nil, nil, "upstream: :3000\nlisteners:\n- {address: \":1\", protocol: tcp, tls: {cert: a, key: b}}\n", []string{"listeners[0]", "tls is for http listeners"}},
		{"listeners unknown field", nil, nil, "upstream: :3000\nlisteners:\n- {address: \":1\", proto: tcp}\n", []string{"listeners[0]", `"proto"`}},
		{"listeners and listen", nil, nil, "upstream: :3000\nlisten: \":1\"\nlisteners:\n- {address: \":2\"}\n", []string{"not both"}},
		{"listener without upstream", nil, nil, "listeners:\n- {name: a, address: \":1\", upstream: \":3000\"}\n- {name: b, address: \":2\"}\n", []string{"--upstream", "no upstream"}},
		{"protocol flag with YAML listeners", []string{"--protocol", "tcp"}, nil, "upstream: :3000\nlisteners:\n- {address: \":1\"}\n", []string{"--protocol", "own protocol"}},
		{"listener names twice", nil, nil, "upstream: :3000\nlisteners:\n- {name: a, address: \":1\"}\n- {name: a, address: \":2\"}\n", []string{`"a" is used twice`}},
		{"probe named port", nil, nil, "upstream: :3000\nprobes:\n- readinessProbe: {httpGet: {path: /r, port: http}}\n", []string{"probes[0]", `named port`}},
		{"probe unknown field", nil, nil, "upstream: :3000\nprobes:\n- readinessProbe: {httpGett: {port: 1}}\n", []string{"probes[0]", `"httpGett"`}},
		{"probe liveness success threshold", nil, nil, "upstream: :3000\nprobes:\n- livenessProbe: {tcpSocket: {port: 3000}, successThreshold: 2}\n", []string{"app/liveness", "successThreshold is 2"}},
		{"probe port out of range", nil, nil, "upstream: :3000\nprobes:\n- readinessProbe: {tcpSocket: {port: 70000}}\n", []string{"app/readiness", "tcpSocket.port 70000"}},
		{"probe empty entry", nil, nil, "upstream: :3000\nprobes:\n- container: app\n", []string{"probes[0]", "no readinessProbe"}},
		{"probe bad scheme flag", []string{"--upstream", ":3000", "--readiness", "ftp://127.0.0.1:21/"}, nil, "", []string{"--readiness", `scheme "ftp"`}},
		{"probe no port flag", []string{"--upstream", ":3000", "--liveness", "http://127.0.0.1/healthz"}, nil, "", []string{"--liveness", "give a port"}},
		{"probe threshold zero", []string{"--upstream", ":3000", "--probe-failure-threshold", "0"}, nil, "", []string{"--probe-failure-threshold", "less than 1"}},
		{"bad value in file", nil, nil, "upstream: :3000\ndrain:\n  timeout: 5 seconds\n", []string{"drain.timeout", `"5 seconds"`}},
		{"list for scalar", nil, nil, "upstream: :3000\ndrain: {delay: [1s, 2s]}\n", []string{"drain.delay", "not a list"}},
		{"duplicate key", nil, nil, "upstream: :3000\nlisten: :1\nlisten: :2\n", []string{"not valid YAML"}},
		{"not a mapping", nil, nil, "- a\n- b\n", []string{"top level"}},
		{"bad value in file, validated", nil, nil, "upstream: :3000\nlisten: nowhere\n", []string{"config file key listen", `"nowhere"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", writeFile(t, tc.file)}, args...)
			}
			_, err := loadConfig(args, envOf(tc.env))
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not a usage error (exit 2)", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestAppCommandAndAuto(t *testing.T) {
	l, err := loadConfig([]string{"--upstream", ":3000", "--", "/app/server", "--port", "3000"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l.cfg.App.Stop != "child" || strings.Join(l.cfg.App.Command, " ") != "/app/server --port 3000" {
		t.Fatalf("child mode: stop %q command %q", l.cfg.App.Stop, l.cfg.App.Command)
	}
	if eff := l.effective(); eff["app.command"] != "/app/server --port 3000" || eff["app.stop"] != "child" {
		t.Fatalf("effective config %v", eff)
	}
	l, err = loadConfig([]string{"--upstream", ":3000"}, envOf(nil))
	if err != nil || l.cfg.App.Stop != "none" {
		t.Fatalf("without a command auto means none: %q %v", l.cfg.App.Stop, err)
	}
}

func TestSecretsAreRedacted(t *testing.T) {
	l, err := loadConfig([]string{"--upstream", ":3000", "--drain-token", "hunter2"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l.cfg.Drain.Token != "hunter2" {
		t.Fatal("token not loaded")
	}
	for k, v := range l.effective() {
		if strings.Contains(v, "hunter2") {
			t.Fatalf("%s shows the secret: %q", k, v)
		}
	}
	if got := l.effective()["drain.token"]; got != "<redacted>" {
		t.Fatalf("drain.token shows %q", got)
	}
}

func TestReapOrphansYAMLFalse(t *testing.T) {
	l, err := loadConfig([]string{"--config", writeFile(t, "upstream: :3000\napp:\n  reap_orphans: false\n")}, envOf(nil))
	if err != nil || l.cfg.App.ReapOrphans {
		t.Fatalf("reap_orphans: false → %v, %v", l.cfg.App.ReapOrphans, err)
	}
}

func TestProbesFromFileAndFlags(t *testing.T) {
	file := writeFile(t, `
upstream: :3000
probes:
  - container: web
    readinessProbe:
      httpGet:
        path: /ready
        port: "3000"
        scheme: HTTP
        httpHeaders: [{name: X-Probe, value: tidegate}]
      initialDelaySeconds: 2
      periodSeconds: 5
      timeoutSeconds: 2
      failureThreshold: 4
      successThreshold: 2
    livenessProbe:
      tcpSocket: {port: 3000}
      terminationGracePeriodSeconds: 30
    startupProbe:
      grpc: {port: 9000, service: web}
  - readinessProbe:
      exec: {command: [cat, /tmp/ready]}
`)
	l, err := loadConfig([]string{"--config", file, "--readiness", "http://localhost:3000/healthz?full=1",
		"--liveness", "exec:test -f /tmp/alive", "--probe-period", "3s", "--probe-failure-threshold", "5"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.probes) != 6 {
		t.Fatalf("%d probes, want 6", len(l.probes))
	}
	r := l.probes[0]
	if r.Container != "web" || r.Kind != healthz.Readiness || r.HTTPGet == nil || r.HTTPGet.Port != 3000 || r.HTTPGet.Path != "/ready" ||
		r.HTTPGet.Headers.Get("X-Probe") != "tidegate" || r.InitialDelay != 2*time.Second || r.Period != 5*time.Second ||
		r.Timeout != 2*time.Second || r.FailureThreshold != 4 || r.SuccessThreshold != 2 {
		t.Fatalf("pasted readiness probe: %+v %+v", r, r.HTTPGet)
	}
	if l.probes[1].TCPSocket == nil || l.probes[2].GRPC == nil || l.probes[2].GRPC.Service != "web" || l.probes[2].Kind != healthz.Startup {
		t.Fatalf("liveness/startup: %+v %+v", l.probes[1], l.probes[2])
	}
	if e := l.probes[3]; e.Exec == nil || strings.Join(e.Exec.Command, " ") != "cat /tmp/ready" || e.Container != "" {
		t.Fatalf("exec probe: %+v", e)
	}
	f := l.probes[4]
	if f.HTTPGet == nil || f.HTTPGet.Host != "127.0.0.1" || f.HTTPGet.Path != "/healthz?full=1" || f.Period != 3*time.Second || f.FailureThreshold != 5 {
		t.Fatalf("flag readiness probe: %+v %+v", f, f.HTTPGet)
	}
	if e := l.probes[5]; e.Exec == nil || e.Kind != healthz.Liveness || strings.Join(e.Exec.Command, " ") != "test -f /tmp/alive" || e.SuccessThreshold != 1 {
		t.Fatalf("flag liveness probe: %+v", e)
	}
}

func TestListeners(t *testing.T) {
	l, err := loadConfig([]string{"--upstream", ":3000", "--listen", ":1", "--listen", ":2", "--protocol", "http", "--protocol", "tcp"}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := []listenerSpec{{Name: "http-1", Address: ":1", Protocol: "http", Upstream: ":3000"}, {Name: "tcp-2", Address: ":2", Protocol: "tcp", Upstream: ":3000"}}
	if len(l.listeners) != 2 || l.listeners[0] != want[0] || l.listeners[1] != want[1] {
		t.Fatalf("listeners %+v, want %+v", l.listeners, want)
	}
	l, err = loadConfig([]string{"--upstream", ":3000"}, envOf(map[string]string{"TIDEGATE_LISTEN": ":1,:2", "TIDEGATE_PROTOCOL": "tcp"}))
	if err != nil || len(l.listeners) != 2 || l.listeners[1].Protocol != "tcp" {
		t.Fatalf("one protocol for all: %+v %v", l.listeners, err)
	}
	file := writeFile(t, `
listeners:
  - {name: web, address: ":8080", upstream: "127.0.0.1:3000"}
  - {name: db, address: ":5433", protocol: tcp, upstream: "127.0.0.1:5432"}
`)
	l, err = loadConfig([]string{"--config", file}, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if l.listeners[0] != (listenerSpec{Name: "web", Address: ":8080", Protocol: "http", Upstream: "127.0.0.1:3000"}) ||
		l.listeners[1] != (listenerSpec{Name: "db", Address: ":5433", Protocol: "tcp", Upstream: "127.0.0.1:5432"}) {
		t.Fatalf("YAML listeners without a global upstream: %+v", l.listeners)
	}
	if !strings.Contains(l.effective()["listeners"], "db=tcp://:5433→127.0.0.1:5432") {
		t.Fatalf("/config listeners: %q", l.effective()["listeners"])
	}
	// A --listen flag replaces the file's list (flag > file).
	l, err = loadConfig([]string{"--config", file, "--listen", ":9000", "--upstream", ":3000"}, envOf(nil))
	if err != nil || len(l.listeners) != 1 || l.listeners[0].Address != ":9000" {
		t.Fatalf("--listen over a YAML list: %+v %v", l.listeners, err)
	}
}

func TestMissingConfigFile(t *testing.T) {
	_, err := loadConfig([]string{"--config", "/nonexistent/tidegate.yaml"}, envOf(nil))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/tidegate.yaml") || exitCode(err) != 2 {
		t.Fatalf("missing config file: %v", err)
	}
}

func TestHelp(t *testing.T) {
	if _, err := loadConfig([]string{"--help"}, envOf(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	var b strings.Builder
	writeRunUsage(&b)
	for _, s := range settings() {
		for _, w := range []string{"--" + s.flag, envName(s.flag), "file key " + s.key} {
			if !strings.Contains(b.String(), w) {
				t.Errorf("run --help does not mention %s", w)
			}
		}
	}
}

func TestSettingsTableIsConsistent(t *testing.T) {
	flags, keys := map[string]bool{}, map[string]bool{}
	for _, s := range settings() {
		if flags[s.flag] || keys[s.key] {
			t.Errorf("setting %s / %s is listed twice", s.flag, s.key)
		}
		flags[s.flag], keys[s.key] = true, true
		if s.usage == "" || s.arg == "" || s.set == nil || s.get == nil {
			t.Errorf("setting %s is incomplete", s.flag)
		}
		// The default must parse, and what get prints must parse back to the
		// same value, so that /config output can be pasted into a file.
		var c1, c2 Config
		if err := s.set(&c1, splitList(s, s.def)); err != nil {
			t.Errorf("default of %s does not parse: %v", s.flag, err)
			continue
		}
		printed := s.get(&c1)
		if err := s.set(&c2, splitList(s, printed)); err != nil || s.get(&c2) != printed {
			t.Errorf("%s: %q does not read back (%v)", s.flag, printed, err)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "64KiB": 65536, "1MiB": 1 << 20, "10MB": 10_000_000, "2 GiB": 2 << 30, "7B": 7} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "ten", "1TiB", "99999999999GiB"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) accepted", in)
		}
	}
	if formatBytes(65536) != "64KiB" || formatBytes(1000) != "1000" || formatBytes(3<<30) != "3GiB" {
		t.Error("formatBytes")
	}
}

// TestREADMEDocumentsEverySetting keeps the configuration reference honest.
func TestREADMEDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, s := range settings() {
		for _, want := range []string{"--" + s.flag, envName(s.flag), s.key} {
			if !strings.Contains(readme, want) {
				t.Errorf("README.md does not mention %s", want)
			}
		}
	}
}
