// Command bench is tidegate's benchmark harness (issue 6): one run that
// measures, side by side and against the same upstream app, what a request
// costs when it goes to the app directly, through tidegate, through nginx,
// through HAProxy and (for gRPC) through a plain httputil.ReverseProxy.
//
// tidegate adds X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and an
// X-Request-Id to every request, and the id to the answer. The nginx and
// HAProxy paths are configured to add the same, so that the three proxies do
// the same work and the app parses the same requests; the check before each
// measurement asks the app which of these headers it saw. The haproxy-bare
// path is HAProxy as it comes, adding none of them: the report gives the
// ratio to both. The tidegate-bare path is tidegate told to add none of them
// either (--forwarded-headers off --request-id off), the like-for-like pair
// of haproxy-bare. The tidegate-plain path is tidegate with --plain-syscalls
// (Go's ordinary system calls instead of the raw ones), side by side.
//
// Usage:
//
//	make bench                     every workload, then the memory mode
//	make bench-mem                 the memory mode alone
//	go run ./test/bench -h         the flags (see Options)
//
// It builds tidegate from this checkout, starts the upstream app (this same
// binary, subcommand "app"), and for each workload and each path starts the
// proxy afresh, checks that one request goes through it, warms it up, and
// measures it. The workloads:
//
//  1. HTTP/1.1 keep-alive, 1 KiB responses (wrk)
//  2. HTTP/1.1 keep-alive, 64 KiB responses (wrk)
//  3. h2c, 1 KiB responses (h2load)
//  4. gRPC unary calls (subcommand "grpcload")
//  5. open-loop HTTP/1.1 at half of direct's rate in workload 1, latency
//     counted from each request's intended send time, on connections all
//     opened before the schedule begins (subcommand "openloop")
//  6. the same at half of the slowest proxy's rate in workload 1, which
//     every proxy sustains: its p99 is latency, not time queued
//
// Each workload measures every path in rounds (-rounds, default 3, each
// run 5s after a 1s warm-up), each path once per round, and reports the
// medians: on a small shared machine req/s moves by a few percent and the
// open loop's p99 by up to 2x from run to run, as much as between proxies.
//
// The memory mode starts tidegate alone and reports its idle RSS and the RSS
// that each idle HTTP/1.1 keep-alive or h2c connection adds.
//
// Invariants: the load generators run on one CPU (Options.LoadCPU) and every
// server (the app and the proxy under test) on the other (Options.ServerCPU),
// each limited to one thread of execution (GOMAXPROCS=1, worker_processes 1,
// nbthread 1); only one proxy runs at a time; every address is on loopback;
// every process the harness starts is in its own process group, dies with
// the harness (Pdeathsig), and is killed before the harness returns, error or
// not; every process and network call has a deadline. The harness only
// measures: it runs tidegate with its default data-path settings.
package main
