package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Workload names, in the order they run.
const (
	wlHTTP1    = "http1"     // HTTP/1.1 keep-alive, 1 KiB responses, wrk
	wlHTTP1Big = "http1-64k" // HTTP/1.1 keep-alive, 64 KiB responses, wrk
	wlH2C      = "h2c"       // h2c, 1 KiB responses, h2load
	wlGRPC     = "grpc"      // gRPC unary, grpcload
	wlOpenLoop = "openloop"  // fixed-rate HTTP/1.1 at half of direct's rate, openloop
	// wlOpenLoopLight is the same at a rate every proxy sustains: half of
	// the slowest proxy's req/s in http1. At half of direct's rate a proxy
	// on this setup may not keep up, and its latencies are then time queued.
	wlOpenLoopLight = "openloop-light"
)

var allWorkloads = []string{wlHTTP1, wlHTTP1Big, wlH2C, wlGRPC, wlOpenLoop, wlOpenLoopLight}

// Path names: what stands between the load generator and the app.
// tidegate adds X-Forwarded-For, -Proto, -Host and an X-Request-Id to each
// request (and the id to the answer); nginx and haproxy are configured to
// add the same, so that all three do the same work and the app parses the
// same requests. haproxy-bare is HAProxy as it comes, adding nothing, and
// tidegate-bare is tidegate told to add nothing (--forwarded-headers off
// --request-id off): the like-for-like pair of the bare ones.
const (
	pathDirect   = "direct"
	pathTidegate = "tidegate"
	// pathTidegatePlain is tidegate with --plain-syscalls: its sockets
	// read and written through Go's ordinary system calls, as before the
	// raw ones (proxy/rawsyscall_linux.go); side by side, the difference.
	pathTidegatePlain = "tidegate-plain"
	// pathTidegateBare is tidegate adding no header, as haproxy-bare.
	pathTidegateBare = "tidegate-bare"
	pathNginx        = "nginx"
	pathHAProxy      = "haproxy"
	pathHAProxyBare  = "haproxy-bare"
	pathReverseProxy = "reverseproxy"
)

var allPaths = []string{pathDirect, pathTidegate, pathTidegatePlain, pathTidegateBare, pathNginx, pathHAProxy, pathHAProxyBare, pathReverseProxy}

// addsHeaders says whether path adds the forwarding headers and the request
// id. The Go reference proxy (httputil.ReverseProxy with Rewrite) adds none.
func addsHeaders(path string) bool {
	return path == pathTidegate || path == pathTidegatePlain || path == pathNginx || path == pathHAProxy
}

// Modes: what one run does.
const (
	modeAll  = "all"  // the workloads, then the memory mode
	modeLoad = "load" // the workloads only
	modeMem  = "mem"  // the memory mode only
)

// Options configure one run of the harness. The zero value is not useful;
// parseOptions fills in the defaults named on each field.
type Options struct {
	// Mode is all, load or mem. Default all.
	Mode string
	// Workloads to run, a subset of allWorkloads, in any order (they always
	// run in allWorkloads' order). Default all of them.
	Workloads []string
	// Paths to measure, a subset of allPaths. Default all of them; a
	// workload measures only the paths it supports (reverseproxy: gRPC
	// only, unless ReverseProxyAll).
	Paths []string
	// ReverseProxyAll measures the reference httputil.ReverseProxy in every
	// workload, not only gRPC; it reaches the app over HTTP/1.1 there.
	// Default false.
	ReverseProxyAll bool

	// Duration of each measured run. Default 5s.
	Duration time.Duration
	// Warmup is a run of the same load, not measured, before each measured
	// run. Default 1s; 0 skips it.
	Warmup time.Duration
	// Rounds is how many times each workload measures every path, round
	// after round (each path once per round, so that a noisy stretch of
	// the machine's time falls on all of them alike); the table gives the
	// median of each figure over the rounds, and every round's req/s (for
	// the open loop, its p99). Default 3.
	Rounds int

	// WrkConns is wrk's -c (its -t is 1). Default 32.
	WrkConns int
	// H2Conns and H2Streams are h2load's -c and -m. Defaults 8 and 16.
	H2Conns, H2Streams int
	// GRPCConns is the number of gRPC client connections, GRPCCallers the
	// number of concurrent callers spread over them. Defaults 4 and 32.
	GRPCConns, GRPCCallers int
	// OpenLoopConns bounds the open-loop generator's keep-alive connection
	// pool (and so its requests in flight). Default 64.
	OpenLoopConns int
	// OpenLoopRate is the open-loop request rate per second. Default 0:
	// half of direct's req/s in the http1 workload.
	OpenLoopRate float64
	// OpenLoopLightRate is openloop-light's rate. Default 0: half of the
	// slowest proxy's req/s in the http1 workload, or a quarter of
	// direct's if http1 did not run.
	OpenLoopLightRate float64

	// LoadCPU is the CPU the load generators are pinned to, ServerCPU the
	// one the app and the proxy under test share. Defaults 0 and 1; -1
	// disables pinning (it is also off with fewer than two CPUs or without
	// taskset).
	LoadCPU, ServerCPU int

	// MemHTTP1Conns and MemH2CConns are the idle connections the memory
	// mode opens. Defaults 10000 and 1000.
	MemHTTP1Conns, MemH2CConns int

	// Install missing tools (nginx, haproxy, wrk, h2load) with apt-get when
	// running as root. Default true.
	Install bool
	// Go is the go command that builds tidegate. Default "go".
	Go string
	// Module is the directory of tidegate's go.mod. Default ".".
	Module string
	// Out is a file the Markdown report is also written to. Default "":
	// stdout only.
	Out string
	// KeepTmp keeps the temporary directory (configs, logs, binaries).
	// Default false.
	KeepTmp bool
}

// parseOptions parses the harness's flags.
func parseOptions(args []string, stderr io.Writer) (Options, error) {
	var o Options
	var workloads, paths string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Mode, "mode", modeAll, "all (workloads, then memory), load (workloads) or mem (memory)")
	fs.StringVar(&workloads, "workloads", strings.Join(allWorkloads, ","), "comma-separated workloads")
	fs.StringVar(&paths, "paths", strings.Join(allPaths, ","), "comma-separated paths")
	fs.BoolVar(&o.ReverseProxyAll, "reverseproxy-all", false, "measure the reference ReverseProxy in every workload, not only gRPC")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each measured run")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "unmeasured run before each measured run (0: none)")
	fs.IntVar(&o.Rounds, "rounds", 3, "times each workload measures every path, interleaved (medians are reported)")
	fs.IntVar(&o.WrkConns, "wrk-conns", 32, "wrk -c")
	fs.IntVar(&o.H2Conns, "h2-conns", 8, "h2load -c")
	fs.IntVar(&o.H2Streams, "h2-streams", 16, "h2load -m")
	fs.IntVar(&o.GRPCConns, "grpc-conns", 4, "gRPC client connections")
	fs.IntVar(&o.GRPCCallers, "grpc-callers", 32, "concurrent gRPC callers")
	fs.IntVar(&o.OpenLoopConns, "openloop-conns", 64, "open-loop connection pool size")
	fs.Float64Var(&o.OpenLoopRate, "openloop-rate", 0, "open-loop req/s (0: half of direct's http1 req/s)")
	fs.Float64Var(&o.OpenLoopLightRate, "openloop-light-rate", 0, "openloop-light req/s (0: half of the slowest proxy's http1 req/s)")
	fs.IntVar(&o.LoadCPU, "load-cpu", 0, "CPU of the load generators (-1: no pinning)")
	fs.IntVar(&o.ServerCPU, "server-cpu", 1, "CPU of the app and the proxy (-1: no pinning)")
	fs.IntVar(&o.MemHTTP1Conns, "mem-http1-conns", 10000, "idle HTTP/1.1 connections in the memory mode")
	fs.IntVar(&o.MemH2CConns, "mem-h2c-conns", 1000, "idle h2c connections in the memory mode")
	fs.BoolVar(&o.Install, "install", true, "apt-get install missing tools when root")
	fs.StringVar(&o.Go, "go", "go", "go command that builds tidegate")
	fs.StringVar(&o.Module, "module", ".", "directory of tidegate's go.mod")
	fs.StringVar(&o.Out, "out", "", "also write the Markdown report to this file")
	fs.BoolVar(&o.KeepTmp, "keep-tmp", false, "keep the temporary directory")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var err error
	if o.Workloads, err = subset("workload", workloads, allWorkloads); err != nil {
		return o, err
	}
	if o.Paths, err = subset("path", paths, allPaths); err != nil {
		return o, err
	}
	if !slices.Contains([]string{modeAll, modeLoad, modeMem}, o.Mode) {
		return o, fmt.Errorf("-mode %q: want all, load or mem", o.Mode)
	}
	if o.Duration <= 0 || o.Warmup < 0 {
		return o, errors.New("-duration must be positive and -warmup not negative")
	}
	for _, n := range []int{o.WrkConns, o.H2Conns, o.H2Streams, o.GRPCConns, o.GRPCCallers, o.OpenLoopConns, o.MemHTTP1Conns, o.MemH2CConns} {
		if n < 1 {
			return o, errors.New("every connection and caller count must be at least 1")
		}
	}
	if o.Rounds < 1 {
		return o, fmt.Errorf("-rounds %d: want at least 1", o.Rounds)
	}
	return o, nil
}

// subset splits a comma-separated list and checks each item against valid.
func subset(what, list string, valid []string) ([]string, error) {
	var out []string
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if !slices.Contains(valid, item) {
			return nil, fmt.Errorf("unknown %s %q (valid: %s)", what, item, strings.Join(valid, ", "))
		}
		out = append(out, item)
	}
	return out, nil
}

func (o Options) has(workload string) bool { return slices.Contains(o.Workloads, workload) }
