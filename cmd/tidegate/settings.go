package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/proxy"
)

// setting is one configurable value of `tidegate run`. The same table drives
// the command-line flags, the TIDEGATE_* environment variables, the YAML
// file, /config, and `tidegate run --help`, so the four can never disagree.
type setting struct {
	flag   string // flag name without dashes; the env var is TIDEGATE_ + upper(flag with - → _)
	key    string // dotted key in the YAML file
	usage  string // one line for --help
	def    string // default, in the same syntax as the flag
	arg    string // what the value looks like, for --help: "ADDR", "DURATION", …
	list   bool   // repeatable flag; comma-separated env; YAML list
	bool   bool   // the flag may be given without a value (--access-log)
	secret bool   // redacted in /config and /status

	// set parses vs (one value unless list) into c. Errors describe the
	// value; the caller adds where it came from.
	set func(c *Config, vs []string) error
	// get formats c's value in the syntax set accepts.
	get func(c *Config) string
	// check validates the merged value; nil means no check beyond set.
	check func(c *Config) error
}

// envName returns the environment variable for a setting's flag name.
func envName(flag string) string {
	return "TIDEGATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func last(vs []string) string { return vs[len(vs)-1] }

func strSetting(flag, key, def, arg, usage string, field func(*Config) *string, check func(string) error) setting {
	s := setting{flag: flag, key: key, def: def, arg: arg, usage: usage,
		set: func(c *Config, vs []string) error { *field(c) = strings.TrimSpace(last(vs)); return nil },
		get: func(c *Config) string { return *field(c) },
	}
	if check != nil {
		s.check = func(c *Config) error { return check(*field(c)) }
	}
	return s
}

func durSetting(flag, key, def, usage string, field func(*Config) *time.Duration) setting {
	return setting{flag: flag, key: key, def: def, arg: "DURATION", usage: usage,
		set: func(c *Config, vs []string) error {
			d, err := parseDuration(last(vs))
			if err == nil {
				*field(c) = d
			}
			return err
		},
		get: func(c *Config) string { return formatDuration(*field(c)) },
	}
}

func bytesSetting(flag, key, def, usage string, field func(*Config) *int64) setting {
	return setting{flag: flag, key: key, def: def, arg: "SIZE", usage: usage,
		set: func(c *Config, vs []string) error {
			n, err := parseBytes(last(vs))
			if err == nil {
				*field(c) = n
			}
			return err
		},
		get: func(c *Config) string { return formatBytes(*field(c)) },
	}
}

func intSetting(flag, key, def, usage string, field func(*Config) *int) setting {
	return setting{flag: flag, key: key, def: def, arg: "N", usage: usage,
		set: func(c *Config, vs []string) error {
			n, err := strconv.Atoi(strings.TrimSpace(last(vs)))
			if err != nil || n < 0 {
				return fmt.Errorf("%q is not a whole number of 0 or more", last(vs))
			}
			*field(c) = n
			return nil
		},
		get: func(c *Config) string { return strconv.Itoa(*field(c)) },
	}
}

func boolSetting(flag, key, usage string, field func(*Config) *bool) setting {
	return setting{flag: flag, key: key, def: "false", arg: "BOOL", bool: true, usage: usage,
		set: func(c *Config, vs []string) error {
			b, err := parseBool(last(vs))
			*field(c) = b
			return err
		},
		get: func(c *Config) string { return strconv.FormatBool(*field(c)) },
	}
}

func minIntSetting(flag, key, def string, lo int, usage string, field func(*Config) *int) setting {
	s := intSetting(flag, key, def, usage, field)
	s.check = func(c *Config) error {
		if n := *field(c); n < lo {
			return fmt.Errorf("%d is less than %d", n, lo)
		}
		return nil
	}
	return s
}

func probeURLSetting(flag, key, usage string, field func(*Config) *[]string) setting {
	return listSetting(flag, key, "", "URL", usage, field)
}

// listSetting is a repeatable flag, a comma-separated env var and a YAML
// scalar or list; later sources replace the whole list.
func listSetting(flag, key, def, arg, usage string, field func(*Config) *[]string) setting {
	return setting{flag: flag, key: key, def: def, arg: arg, list: true, usage: usage,
		set: func(c *Config, vs []string) error {
			*field(c) = (*field(c))[:0]
			for _, v := range vs {
				if v = strings.TrimSpace(v); v != "" {
					*field(c) = append(*field(c), v)
				}
			}
			return nil
		},
		get: func(c *Config) string { return strings.Join(*field(c), ",") },
	}
}

// commaListSetting is a listSetting whose flag also takes a
// comma-separated list (--forward-signals SIGHUP,SIGUSR1), like its env var.
func commaListSetting(flag, key, def, arg, usage string, field func(*Config) *[]string) setting {
	s := listSetting(flag, key, def, arg, usage, field)
	set := s.set
	s.set = func(c *Config, vs []string) error {
		var split []string
		for _, v := range vs {
			split = append(split, strings.Split(v, ",")...)
		}
		return set(c, split)
	}
	return s
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "on", "yes", "1", "":
		return true, nil
	case "false", "off", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", v)
}

func oneOf(allowed ...string) func(string) error {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// listenAddr checks a listener address: host:port with a port from 0 to
// 65535; optional listeners may also be "off".
func listenAddr(optional bool) func(string) error {
	return func(v string) error {
		if optional && v == off {
			return nil
		}
		if v == "" {
			if optional {
				return fmt.Errorf("address is empty: give host:port, :port, or %q to disable", off)
			}
			return fmt.Errorf("address is empty: give host:port or :port")
		}
		if _, _, err := proxy.SplitHostPort(v); err != nil {
			return fmt.Errorf("%q: %w", v, err)
		}
		return nil
	}
}

// settings returns the table, in --help order.
func settings() []setting {
	return []setting{
		listSetting("listen", "listen", ":8080", "ADDR",
			"public listener, repeatable: clients and load balancers connect here (or a YAML listeners: list)",
			func(c *Config) *[]string { return &c.Listen }),
		listSetting("protocol", "protocol", "http", "PROTO",
			"protocol of each --listen, by position (one applies to all): http (HTTP/1.1 and h2c) or tcp (raw bytes)",
			func(c *Config) *[]string { return &c.Protocol }),
		strSetting("upstream", "upstream.address", "", "ADDR",
			"the app: host:port, http://host:port or unix:///path.sock (required unless every listener names its own)",
			func(c *Config) *string { return &c.Upstream.Address }, nil),
		strSetting("health-listen", "health_listen", ":8081", "ADDR",
			"kubelet-facing health listener (/readyz, /livez, /startupz), or off",
			func(c *Config) *string { return &c.HealthListen }, listenAddr(true)),
		strSetting("admin-listen", "admin_listen", "127.0.0.1:9901", "ADDR",
			"admin listener (/metrics, /status, /config, /debug/pprof/), or off",
			func(c *Config) *string { return &c.AdminListen }, listenAddr(true)),
		boolSetting("admin-listen-public", "admin_listen_public",
			"allow an --admin-listen address that is not loopback (0.0.0.0:9901, :9901, a pod IP). Dangerous: the admin listener has no authentication, and whoever reaches it can drain tidegate, reload its config and profile it; restrict it with a firewall or NetworkPolicy",
			func(c *Config) *bool { return &c.AdminListenPublic }),
		strSetting("metrics-listen", "metrics_listen", "off", "ADDR",
			"a listener that serves only GET /metrics (the admin listener's series), for Prometheus on the pod network; any address, no --admin-listen-public needed; or off",
			func(c *Config) *string { return &c.MetricsListen }, listenAddr(true)),

		strSetting("upstream-protocol", "upstream.protocol", "auto", "PROTO",
			"how requests reach the app: http1, h2c (HTTP/2 with prior knowledge), or auto (h2c for gRPC that arrived over HTTP/2, else http1)",
			func(c *Config) *string { return &c.Upstream.Protocol }, oneOf("auto", "http1", "h2c")),
		durSetting("upstream-dial-timeout", "upstream.dial_timeout", "5s",
			"bound on connecting to the app (past it: 504)",
			func(c *Config) *time.Duration { return &c.Upstream.DialTimeout }),
		durSetting("upstream-response-header-timeout", "upstream.response_header_timeout", "60s",
			"bound on waiting for the app's response headers (past it: 504); 0 = none",
			func(c *Config) *time.Duration { return &c.Upstream.ResponseHeaderTimeout }),
		durSetting("upstream-idle-timeout", "upstream.idle_timeout", "1s",
			"close pooled app connections idle this long; keep below the app's own keep-alive timeout (gunicorn 2s, Node 5s)",
			func(c *Config) *time.Duration { return &c.Upstream.IdleTimeout }),
		intSetting("upstream-max-idle-conns", "upstream.max_idle_conns", "1024",
			"idle app connections kept for reuse; at least the expected client concurrency",
			func(c *Config) *int { return &c.Upstream.MaxIdleConns }),
		durSetting("upstream-expect-continue-timeout", "upstream.expect_continue_timeout", "1s",
			"wait this long for the app's 100 Continue before sending an announced body",
			func(c *Config) *time.Duration { return &c.Upstream.ExpectContinueTimeout }),

		durSetting("read-header-timeout", "server.read_header_timeout", "10s",
			"bound on reading a client's request headers (slowloris)",
			func(c *Config) *time.Duration { return &c.Server.ReadHeaderTimeout }),
		durSetting("idle-timeout", "server.idle_timeout", "620s",
			"close client keep-alive connections idle this long; keep above your load balancer's idle timeout",
			func(c *Config) *time.Duration { return &c.Server.IdleTimeout }),
		durSetting("write-stall-timeout", "server.write_stall_timeout", "60s",
			"cut a client (or a tunnel's peer) that takes none of the bytes tidegate has for it for this long, as nginx's send_timeout; idle connections are not cut",
			func(c *Config) *time.Duration { return &c.Server.WriteStallTimeout }),
		// The automatic limit: see proxy.MaxConnectionsFor.
		intSetting("max-connections", "server.max_connections", "0",
			"most client connections open at once on each public listener; more wait in the kernel's listen backlog until one closes. 0 = from the open-file limit (ulimit -n): (limit - reserve) / 2 / listeners, reserve = max(64, limit/10), since a proxied connection may hold two files (client and app)",
			func(c *Config) *int { return &c.Server.MaxConnections }),
		bytesSetting("max-header-bytes", "server.max_header_bytes", "64KiB",
			"largest request line plus headers (larger: 431)",
			func(c *Config) *int64 { return &c.Server.MaxHeaderBytes }),
		boolSetting("net-http-only", "server.net_http_only",
			"serve every request with Go's net/http, not tidegate's own HTTP/1.1 path for plain requests (an escape hatch; about twice the CPU per request)",
			func(c *Config) *bool { return &c.Server.NetHTTPOnly }),
		boolSetting("plain-syscalls", "server.plain_syscalls",
			"read and write sockets through Go's ordinary system calls, not the raw ones tidegate uses on Linux to spare the Go scheduler's monitor thread (an escape hatch; 15-20% more CPU per request below saturation)",
			func(c *Config) *bool { return &c.Server.PlainSyscalls }),
		bytesSetting("max-body-bytes", "server.max_body_bytes", "0",
			"largest request body (larger: 413); 0 = no limit",
			func(c *Config) *int64 { return &c.Server.MaxBodyBytes }),
		strSetting("forwarded-headers", "server.forwarded_headers", "append", "MODE",
			"append: trust the previous hop's X-Forwarded-*; replace: overwrite them; off: pass the client's through and add none",
			func(c *Config) *string { return &c.Server.Forwarded }, oneOf("append", "replace", "off")),
		strSetting("request-id", "server.request_id", "generate", "MODE",
			"generate: keep a valid client X-Request-Id or make one, send it to the app and back; off: make none and add none (a client's passes through)",
			func(c *Config) *string { return &c.Server.RequestID }, oneOf("generate", "off")),
		intSetting("max-hops", "server.max_hops", "8",
			"loop detection: each request to the app gets a Via entry naming this tidegate; one that arrives with it, or with more than N tidegate entries, is answered 508 (reason loop). 0 = add and check no Via",
			func(c *Config) *int { return &c.Server.MaxHops }),
		{
			flag: "probe-user-agent", key: "probe_user_agents", def: "kube-probe/", arg: "PREFIX", list: true,
			usage: "User-Agent prefix of health checkers, whose requests never count as activity (repeatable)",
			set: func(c *Config, vs []string) error {
				c.ProbeUserAgents = c.ProbeUserAgents[:0]
				for _, v := range vs {
					if v = strings.TrimSpace(v); v != "" {
						c.ProbeUserAgents = append(c.ProbeUserAgents, v)
					}
				}
				return nil
			},
			get: func(c *Config) string { return strings.Join(c.ProbeUserAgents, ",") },
		},

		{
			flag: "app-probes", key: "app_probes", def: "", arg: "JSON",
			usage: `the app's probes as a JSON list in the schema of the YAML probes: list, added to it: [{"container":"app","readinessProbe":{"httpGet":{"path":"/ready","port":8080}}}] (what tidegate-inject moves out of the pod spec; ports by number)`,
			set:   func(c *Config, vs []string) error { c.AppProbes = strings.TrimSpace(last(vs)); return nil },
			get:   func(c *Config) string { return c.AppProbes },
		},
		probeURLSetting("readiness", "probe.readiness", "readiness probe of the app, repeatable: http://host:port/path, https://…, tcp://host:port, grpc://host:port[/service] or exec:command args",
			func(c *Config) *[]string { return &c.Probe.Readiness }),
		probeURLSetting("liveness", "probe.liveness", "liveness probe of the app, repeatable; same forms as --readiness",
			func(c *Config) *[]string { return &c.Probe.Liveness }),
		probeURLSetting("startup", "probe.startup", "startup probe of the app (gates readiness and liveness until it passes); same forms",
			func(c *Config) *[]string { return &c.Probe.Startup }),
		durSetting("probe-period", "probe.period", "10s", "how often the flag probes run (periodSeconds)",
			func(c *Config) *time.Duration { return &c.Probe.Period }),
		durSetting("probe-timeout", "probe.timeout", "1s", "bound on one attempt of a flag probe (timeoutSeconds)",
			func(c *Config) *time.Duration { return &c.Probe.Timeout }),
		minIntSetting("probe-failure-threshold", "probe.failure_threshold", "3", 1, "consecutive failures that fail a flag probe (failureThreshold)",
			func(c *Config) *int { return &c.Probe.FailureThreshold }),
		minIntSetting("probe-success-threshold", "probe.success_threshold", "1", 1, "consecutive successes that pass a flag readiness probe (successThreshold; always 1 for liveness and startup)",
			func(c *Config) *int { return &c.Probe.SuccessThreshold }),
		strSetting("default-readiness", "probe.default_readiness", "upstream", "MODE",
			"readiness when no readiness probe is configured: upstream = the upstream accepts a connection (checked every 50ms until it first does, then every 1s, 3 failures fail it); none = ready as soon as tidegate is",
			func(c *Config) *string { return &c.Probe.DefaultReadiness }, oneOf("upstream", "none")),
		durSetting("hold-until-ready", "hold_until_ready", "0s",
			"hold requests that arrive before the app is first ready up to this long; 0 answers them 503 with Retry-After",
			func(c *Config) *time.Duration { return &c.HoldUntilReady }),
		boolSetting("gate-unready", "gate_unready",
			"answer 503 at once while readiness fails after start-up, instead of forwarding to the app",
			func(c *Config) *bool { return &c.GateUnready }),
		strSetting("grpc-health-listen", "grpc_health_listen", "off", "ADDR",
			"a separate listener for the grpc.health.v1 service (it is also on the health listener, over h2c), or off",
			func(c *Config) *string { return &c.GRPCHealthListen }, listenAddr(true)),

		durSetting("drain-delay", "drain.delay", "5s",
			"after SIGTERM, keep accepting this long so load balancers notice the failed readiness",
			func(c *Config) *time.Duration { return &c.Drain.Delay }),
		durSetting("drain-quiet", "drain.quiet", "1s",
			"after the delay, close once nothing is in flight and no new request came for this long",
			func(c *Config) *time.Duration { return &c.Drain.Quiet }),
		durSetting("drain-timeout", "drain.timeout", "30s",
			"hard bound on the drain, counted from the trigger: what is still in flight then is cut",
			func(c *Config) *time.Duration { return &c.Drain.Timeout }),
		{
			flag: "drain-token", key: "drain.token", def: "", arg: "TOKEN", secret: true,
			usage: "enables GET /drain?wait= on the health listener for requests with header X-Tidegate-Drain-Token: TOKEN",
			set:   func(c *Config, vs []string) error { c.Drain.Token = strings.TrimSpace(last(vs)); return nil },
			get:   func(c *Config) string { return c.Drain.Token },
		},
		strSetting("drain-report-file", "drain.report_file", "", "FILE",
			"when tidegate exits, write a short summary here (exit code, and how the drain went, or the start-up error), at most 4096 bytes: /dev/termination-log makes it the container's termination message in kubectl describe pod",
			func(c *Config) *string { return &c.Drain.ReportFile }, nil),
		strSetting("copy-binary-to", "copy_binary_to", "", "DIR",
			"at start, copy this binary to DIR/tidegate (mode 0555; skipped if identical), and the drain token to DIR/drain-token (mode 0444), for another container's `tidegate prestop --token-file` hook; DIR must be writable, like an emptyDir volume",
			func(c *Config) *string { return &c.CopyBinaryTo }, nil),

		strSetting("app-stop", "app.stop", "auto", "STRATEGY",
			"how the app is stopped after the drain: child, pid, http, command or none; auto = child if a command follows --, else none",
			func(c *Config) *string { return &c.App.Stop }, oneOf("auto", "child", "pid", "http", "command", "none")),
		strSetting("app-stop-signal", "app.stop_signal", "SIGTERM", "SIGNAL",
			"signal sent to the app (child or pid strategy)",
			func(c *Config) *string { return &c.App.StopSignal }, func(v string) error { _, err := drain.ParseSignal(v); return err }),
		durSetting("app-stop-timeout", "app.stop_timeout", "10s",
			"wait this long for the app to stop; then a child is killed with SIGKILL",
			func(c *Config) *time.Duration { return &c.App.StopTimeout }),
		intSetting("app-pid", "app.pid", "0", "signal this pid (pid strategy; a shared process namespace)",
			func(c *Config) *int { return &c.App.PID }),
		strSetting("app-pidfile", "app.pidfile", "", "FILE",
			"read the app's pid from this file when stopping it (pid strategy)",
			func(c *Config) *string { return &c.App.PIDFile }, nil),
		strSetting("app-stop-url", "app.stop_url", "", "URL",
			"POST here to stop the app (http strategy)",
			func(c *Config) *string { return &c.App.StopURL }, nil),
		strSetting("app-stop-command", "app.stop_command", "", "CMD",
			"run this shell command to stop the app (command strategy)",
			func(c *Config) *string { return &c.App.StopCommand }, nil),
		strSetting("app-restart", "app.restart", "never", "POLICY",
			"restart a child that exits on its own: never, on-failure or always",
			func(c *Config) *string { return &c.App.Restart }, oneOf("never", "on-failure", "always")),
		durSetting("app-restart-backoff", "app.restart_backoff", "500ms",
			"first wait before a restart; doubles each time, with ±20% jitter",
			func(c *Config) *time.Duration { return &c.App.RestartBackoff }),
		durSetting("app-restart-max-backoff", "app.restart_max_backoff", "30s",
			"longest wait between restarts; a run longer than this resets the backoff",
			func(c *Config) *time.Duration { return &c.App.RestartMax }),
		intSetting("app-restart-limit", "app.restart_limit", "5",
			"consecutive quick crashes restarted before tidegate gives up (crash loop) and exits",
			func(c *Config) *int { return &c.App.RestartLimit }),
		commaListSetting("forward-signals", "app.forward_signals", "", "SIGNALS",
			"pass these signals to the app child instead of acting on them, comma-separated: some of SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH (for apps that reload on SIGHUP; tidegate's own reload is then POST /reload on the admin listener)",
			func(c *Config) *[]string { return &c.App.ForwardSignals }),
		boolSetting("reap-orphans", "app.reap_orphans",
			"become a child subreaper and reap orphaned processes (always on when tidegate is PID 1)",
			func(c *Config) *bool { return &c.App.ReapOrphans }),

		strSetting("log-level", "log.level", "info", "LEVEL",
			"debug, info, warn or error",
			func(c *Config) *string { return &c.Log.Level }, oneOf("debug", "info", "warn", "error")),
		strSetting("log-format", "log.format", "json", "FORMAT",
			"json or console",
			func(c *Config) *string { return &c.Log.Format }, oneOf("json", "console")),
		{
			flag: "access-log", key: "access_log", def: off, arg: "DEST", bool: true,
			usage: "one line per request to stdout, stderr or a file path; --access-log alone means stdout; off disables",
			set: func(c *Config, vs []string) error {
				switch v := strings.TrimSpace(last(vs)); v {
				case "true", "on", "":
					c.AccessLog = "stdout"
				case "false":
					c.AccessLog = off
				default:
					c.AccessLog = v
				}
				return nil
			},
			get: func(c *Config) string { return c.AccessLog },
		},
	}
}
