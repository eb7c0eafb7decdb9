package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"go.uber.org/zap"

	"github.com/tidegate/tidegate/proxy"
)

// startLimits is what tidegate decided about its resources at start.
type startLimits struct {
	maxConnections    int    // per public listener; 0: none
	memoryLimitSource string // GOMEMLIMIT from: env, cgroup or none
}

// Where GOMEMLIMIT comes from, for the start log and /status.
const (
	memFromEnv    = "env"    // GOMEMLIMIT was set; the runtime applied it
	memFromCgroup = "cgroup" // 90% of the cgroup's memory limit
	memFromNone   = "none"   // no limit: no cgroup limit, none readable, or AUTOMEMLIMIT=off
)

// memLimitRatio is the share of the cgroup's memory limit that GOMEMLIMIT
// gets: the rest is headroom for what the Go heap does not count (stacks
// of goroutines blocked in system calls, C memory, page cache charged to
// the cgroup).
const memLimitRatio = 0.9

// setLimits sets GOMEMLIMIT from the cgroup unless GOMEMLIMIT is set,
// decides the connection limit of each of listeners public listeners, and
// logs both once. Called once per sidecar, at its start.
func setLimits(cfg *Config, listeners int, log *zap.Logger) startLimits {
	var sl startLimits
	var memErr error
	sl.memoryLimitSource, memErr = setMemoryLimit()

	soft, hard, fileErr := openFileLimit()
	fit := 0 // the most the open-file limit allows; 0: unknown or unlimited
	if fileErr == nil {
		fit = proxy.MaxConnectionsFor(soft, listeners)
	}
	sl.maxConnections = cfg.Server.MaxConnections
	if sl.maxConnections == 0 {
		sl.maxConnections = fit
	} else if fit > 0 && sl.maxConnections > fit {
		log.Warn("max_connections is more than the open-file limit allows: once the files run out, accepts fail with EMFILE, on the health and admin listeners too",
			zap.String("reason", "max_connections"), zap.Int("max_connections", sl.maxConnections),
			zap.Int("fits", fit), zap.Uint64("open_files", soft), zap.Int("listeners", listeners))
	}

	fields := []zap.Field{zap.Int("max_connections", sl.maxConnections),
		zap.Int("gomaxprocs", runtime.GOMAXPROCS(0)), zap.String("memory_limit_source", sl.memoryLimitSource)}
	if mem := debug.SetMemoryLimit(-1); mem != math.MaxInt64 {
		fields = append(fields, zap.Int64("memory_limit_bytes", mem))
	}
	if memErr != nil {
		fields = append(fields, zap.NamedError("memory_limit_error", memErr))
	}
	if fileErr == nil {
		fields = append(fields, zap.Uint64("open_files", soft), zap.Uint64("open_files_max", hard))
	} else {
		fields = append(fields, zap.NamedError("open_files_error", fileErr))
	}
	log.Info("resource limits", fields...)
	return sl
}

// setMemoryLimit sets GOMEMLIMIT to memLimitRatio of the cgroup's memory
// limit when the environment does not set GOMEMLIMIT, and says where the
// limit in force comes from. AUTOMEMLIMIT (a ratio, or "off") overrides the
// ratio, as automemlimit documents. An error means no cgroup limit could be
// read; the limit is then left as it was.
func setMemoryLimit() (source string, err error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return memFromEnv, nil
	}
	fromCgroup := false
	_, err = memlimit.Set(memlimit.WithRatio(memLimitRatio), memlimit.WithProvider(func() (uint64, error) {
		limit, err := memlimit.FromCgroup()
		fromCgroup = err == nil
		return limit, err
	}))
	if err != nil || !fromCgroup {
		return memFromNone, err
	}
	return memFromCgroup, nil
}

// openFileLimit returns RLIMIT_NOFILE: the soft limit, which is what
// counts (the Go runtime raises it to the hard one at start), and the hard
// one.
func openFileLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	return lim.Cur, lim.Max, nil
}

// limitsStatus is the "limits" part of /status.
type limitsStatus struct {
	OpenFiles         uint64 `json:"open_files"`     // soft RLIMIT_NOFILE
	OpenFilesMax      uint64 `json:"open_files_max"` // hard RLIMIT_NOFILE
	GOMAXPROCS        int    `json:"gomaxprocs"`
	MemoryLimit       *int64 `json:"memory_limit_bytes,omitempty"` // GOMEMLIMIT; absent: none
	MemoryLimitSource string `json:"memory_limit_source"`          // env, cgroup or none
	MaxConnections    int    `json:"max_connections"`              // per public listener; 0: none
}

func (s *sidecar) limitsStatus() limitsStatus {
	st := limitsStatus{GOMAXPROCS: runtime.GOMAXPROCS(0), MemoryLimitSource: s.limits.memoryLimitSource,
		MaxConnections: s.limits.maxConnections}
	st.OpenFiles, st.OpenFilesMax, _ = openFileLimit()
	if mem := debug.SetMemoryLimit(-1); mem != math.MaxInt64 {
		st.MemoryLimit = &mem
	}
	return st
}
