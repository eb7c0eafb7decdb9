package main

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime/debug"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tidegate/tidegate/proxy"
)

// TestConnectionLimitFromTheFileLimit: 0 derives the limit from this
// process's open-file limit; a value that fits is kept quietly; a larger
// one is kept with a warning that names what fits.
func TestConnectionLimitFromTheFileLimit(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	fit := proxy.MaxConnectionsFor(lim.Cur, 2)
	if fit == 0 {
		t.Fatalf("the test process's open-file limit %d leaves no limit to check", lim.Cur)
	}
	for _, c := range []struct {
		configured, want int
		warn             bool
	}{
		{0, fit, false},
		{1, 1, false},
		{fit, fit, false},
		{fit + 1, fit + 1, true},
	} {
		core, logs := observer.New(zap.InfoLevel)
		var cfg Config
		cfg.Server.MaxConnections = c.configured
		got := setLimits(&cfg, 2, zap.New(core))
		if got.maxConnections != c.want {
			t.Errorf("--max-connections %d: limit %d, want %d", c.configured, got.maxConnections, c.want)
		}
		warned := logs.FilterField(zap.String("reason", "max_connections")).FilterField(zap.Int("fits", fit)).Len() == 1
		if warned != c.warn {
			t.Errorf("--max-connections %d: warned %v, want %v: %v", c.configured, warned, c.warn, logs.All())
		}
		start := logs.FilterMessage("resource limits").All()
		if len(start) != 1 || start[0].ContextMap()["max_connections"] != int64(c.want) ||
			start[0].ContextMap()["open_files"] != lim.Cur {
			t.Errorf("--max-connections %d: start log %v", c.configured, start)
		}
	}
}

// TestMemoryLimitSource: GOMEMLIMIT in the environment wins and is left
// alone; AUTOMEMLIMIT=off leaves no cgroup limit.
func TestMemoryLimitSource(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })

	t.Setenv("GOMEMLIMIT", "1GiB")
	if src, err := setMemoryLimit(); src != memFromEnv || err != nil {
		t.Errorf("with GOMEMLIMIT set: source %q, %v; want env", src, err)
	}
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Errorf("with GOMEMLIMIT set the limit moved from %d to %d", before, got)
	}

	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("AUTOMEMLIMIT", "off")
	if src, err := setMemoryLimit(); src != memFromNone || err != nil {
		t.Errorf("with AUTOMEMLIMIT=off: source %q, %v; want none", src, err)
	}
}

// TestStatusShowsLimits: /status carries the limits the sidecar runs with.
func TestStatusShowsLimits(t *testing.T) {
	app := httptest.NewServer(http.NotFoundHandler())
	defer app.Close()
	sc, sig, reports := startSidecar(t, app, "--max-connections", "7", "--drain-delay", "0s")
	defer func() { sig <- syscall.SIGTERM; <-reports }()

	rec := httptest.NewRecorder()
	sc.adminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	var st struct {
		Limits map[string]any `json:"limits"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, rec.Body)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	l := st.Limits
	procs, _ := l["gomaxprocs"].(float64)
	if l["max_connections"] != 7.0 || l["open_files"] != float64(lim.Cur) || l["open_files_max"] != float64(lim.Max) ||
		procs < 1 || l["memory_limit_source"] == "" {
		t.Errorf("/status limits = %v", l)
	}
	mem, present := l["memory_limit_bytes"]
	if limit := debug.SetMemoryLimit(-1); (limit == math.MaxInt64) == present || (present && mem != float64(limit)) {
		t.Errorf("memory_limit_bytes = %v (present %v) with a Go memory limit of %d", mem, present, limit)
	}
}
