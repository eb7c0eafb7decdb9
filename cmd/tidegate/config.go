package main

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is everything `tidegate run` can be told. Every field is one
// setting of the table in settings.go, which says its flag, env var, YAML
// key and default; Config itself holds only values.
type Config struct {
	Listen       []string // public listeners; see listeners for the resolved list
	Protocol     []string // by position with Listen; one applies to all
	HealthListen string   // "off" disables the health listener
	AdminListen  string   // "off" disables the admin listener
	// AdminListenPublic allows an AdminListen that is not a loopback
	// address (the admin API has no authentication). Default false.
	AdminListenPublic bool
	// MetricsListen is a listener serving only GET /metrics, for
	// Prometheus on the pod network; "off" (the default) disables it.
	MetricsListen string
	// CopyBinaryTo is a directory the running binary is copied to at start
	// (as DIR/tidegate), for another container's preStop hook; "" (the
	// default) copies nothing.
	CopyBinaryTo string

	Upstream UpstreamConfig
	Server   ServerConfig

	Drain struct {
		Delay   time.Duration
		Quiet   time.Duration
		Timeout time.Duration
		Token   string // secret: enables GET /drain on the health listener
		// ReportFile receives a short summary of the exit (the drain report,
		// or the start-up error) when tidegate exits: the Kubernetes
		// termination message. "" (the default) writes none.
		ReportFile string
	}

	App struct {
		Command        []string // after "--": run the app as tidegate's child
		Stop           string   // auto, child, pid, http, command, none
		StopSignal     string
		StopTimeout    time.Duration
		PID            int
		PIDFile        string
		StopURL        string
		StopCommand    string
		Restart        string
		RestartBackoff time.Duration
		RestartMax     time.Duration
		RestartLimit   int
		ReapOrphans    bool
		ForwardSignals []string // signals passed to the child instead of acted on
	}

	ProbeUserAgents []string

	// AppProbes is a JSON list in the YAML "probes" schema (the
	// injector's TIDEGATE_APP_PROBES), added to the file's list; "" (the
	// default) adds none. Parsed into loaded.appProbes.
	AppProbes string

	// Probe holds the flag shorthands for the app's probes; the YAML
	// "probes" list (Kubernetes schema) is kept apart, in loaded.fileProbes.
	Probe struct {
		Readiness, Liveness, Startup []string // probe URLs
		Period, Timeout              time.Duration
		FailureThreshold             int
		SuccessThreshold             int
		DefaultReadiness             string // "upstream" or "none": readiness when no readiness probe is configured
	}
	HoldUntilReady   time.Duration
	GateUnready      bool
	GRPCHealthListen string // "off" or an address for a gRPC-only health listener

	Log struct {
		Level  string
		Format string
	}
	AccessLog string // "off", "stdout", "stderr" or a file path
}

// UpstreamConfig is how tidegate reaches the app (the upstream.* keys).
type UpstreamConfig struct {
	Address               string
	Protocol              string
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	IdleTimeout           time.Duration
	MaxIdleConns          int
	ExpectContinueTimeout time.Duration
}

// ServerConfig is how the public listeners serve clients (the server.*
// keys).
type ServerConfig struct {
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	WriteStallTimeout time.Duration // each write to a client, and to a tunnel's peer; 0: 60s
	MaxConnections    int           // per public listener; 0: from the open-file limit
	MaxHeaderBytes    int64
	MaxBodyBytes      int64
	Forwarded         string
	RequestID         string
	MaxHops           int // tidegate Via entries a request may carry; 0: loop detection off
	NetHTTPOnly       bool
	PlainSyscalls     bool
}

// listenerSpec is one public listener, from --listen/--protocol or the YAML
// "listeners" list.
type listenerSpec struct {
	Name     string `json:"name"`
	Address  string `json:"address"`
	Protocol string `json:"protocol"` // http (HTTP/1.1 and h2c) or tcp
	Upstream string `json:"upstream"` // empty: the global upstream
	TLS      *struct {
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"tls"` // http listeners only: TLS with ALPN h2 and http/1.1
}

// off is the value that disables an optional listener or the access log.
const off = "off"

// parseDuration parses a Go duration ("500ms", "5s", "1m30s"); "0" is
// accepted, negatives are not.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write a number with a unit, like 500ms, 5s or 1m", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative: durations must be 0 or more", s)
	}
	return d, nil
}

func formatDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	return d.String()
}

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// parseBytes parses a size: a whole number of bytes, optionally with a unit
// (B, KiB, MiB, GiB binary; KB, MB, GB decimal), like 64KiB or 10MB.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size: write a whole number of bytes with an optional unit, like 65536, 64KiB or 10MB", s)
	}
	return n * mult, nil
}

func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// redacted replaces a secret setting's value wherever config is shown or
// logged: /config, /status, reload errors, /debug/pprof/cmdline.
const redacted = "<redacted>"

// urlPassword matches the userinfo of a URL with a password
// (scheme://user:password@), wherever it stands in a string: a setting's
// value, a list of them, an app command or an error message. The password
// ends at the last @ before the host; it cannot reach past a /, ?, # or
// space, so two URLs in one string stay apart.
var urlPassword = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s"']*):[^/?#\s"']*@`)

// redactURLs replaces the password of every URL in s with "xxxxx", as
// url.URL.Redacted does; the user name stays, so that an operator can tell
// which account is used.
func redactURLs(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return urlPassword.ReplaceAllString(s, "${1}:xxxxx@")
}

// redactedError is an error whose text has URL passwords redacted; it
// unwraps to the original, so errors.As (usageError) still sees it.
type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.err }

// redactErr hides URL passwords in err's text. Validation errors quote the
// value they refuse (a stop URL, a probe URL), and they are printed at start,
// logged on reload and shown in /status.
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); redactURLs(msg) != msg {
		return redactedError{msg: redactURLs(msg), err: err}
	}
	return err
}

// redactArgs returns tidegate's command line with secrets hidden: the value
// of every flag the settings table marks secret (--drain-token T,
// --drain-token=T, -drain-token T) becomes <redacted>, and every URL
// password (in flags or the app command after --) becomes xxxxx.
func redactArgs(args []string, table []setting) []string {
	out := make([]string, len(args))
	hideNext, flags := false, true
	for i, a := range args {
		switch {
		case hideNext:
			out[i], hideNext = redacted, false
			continue
		case a == "--":
			flags = false
		case flags && strings.HasPrefix(a, "-"):
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if slices.ContainsFunc(table, func(s setting) bool { return s.secret && s.flag == name }) {
				if hasValue {
					out[i] = a[:strings.Index(a, "=")+1] + redacted
				} else {
					out[i], hideNext = a, true
				}
				continue
			}
		}
		out[i] = redactURLs(a)
	}
	return out
}
