package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// buildTimeout bounds go build.
const buildTimeout = 5 * time.Minute

// runHarness is the harness: it sets up the machine, runs the workloads and
// the memory mode as Options say, and prints the Markdown report (and
// writes it to Options.Out, when every step succeeded). Every process it
// started is stopped before it returns.
func runHarness(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	started := time.Now()
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "tidegate-bench-")
	if err != nil {
		return err
	}
	if o.KeepTmp {
		fmt.Fprintf(stderr, "temporary files in %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	procs := &procSet{}
	defer procs.stopAll()

	b, err := setUp(ctx, o, tmp, procs, stderr)
	if err != nil {
		return err
	}
	rep := &strings.Builder{}
	out := io.MultiWriter(stdout, rep)
	fmt.Fprintf(out, "## tidegate benchmark\n\nmachine: %s\n\ncommand: `go run ./test/bench %s`\n\n",
		machineLine(ctx, b.tools), strings.Join(args, " "))

	if o.Mode != modeMem {
		fmt.Fprintf(out, "%s\n\n", b.setup())
		if err := b.runWorkloads(ctx, out, stderr); err != nil {
			return err
		}
	}
	if o.Mode != modeLoad {
		res, err := b.runMem(ctx, stderr)
		if err != nil {
			return fmt.Errorf("memory mode: %w", err)
		}
		fmt.Fprintln(out, renderMem(res))
	}
	if n := b.notes.list(); len(n) > 0 {
		fmt.Fprintf(out, "Notes:\n\n- %s\n\n", strings.Join(n, "\n- "))
	}
	fmt.Fprintf(out, "Total wall time: %s.\n", time.Since(started).Round(time.Second))
	if o.Out != "" {
		if err := os.WriteFile(o.Out, []byte(rep.String()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "report written to %s\n", o.Out)
	}
	return nil
}

// setUp finds (or installs) the tools, decides the pinning, raises the open
// files limit, builds tidegate and starts the app.
func setUp(ctx context.Context, o Options, tmp string, procs *procSet, log io.Writer) (*bench, error) {
	b := &bench{opts: o, procs: procs, tmp: tmp, notes: &notes{}}
	b.tools = findTools(ctx, o.Install, log)
	if o.LoadCPU < 0 || o.ServerCPU < 0 || runtime.NumCPU() < 2 || b.tools.path("taskset") == "" {
		b.opts.LoadCPU, b.opts.ServerCPU = -1, -1
		b.notes.add("no CPU pinning (it needs two CPUs and taskset): load generators and servers share the CPUs")
	}
	if err := raiseOpenFiles(); err != nil {
		b.notes.add("could not raise the open files limit: %v", err)
	}
	b.clkTck = clockTicks(ctx)
	var err error
	if b.self, err = os.Executable(); err != nil {
		return nil, err
	}
	b.tidegate = filepath.Join(tmp, "tidegate")
	fmt.Fprintf(log, "building tidegate in %s\n", o.Module)
	if _, err := runTool(ctx, buildTimeout, -1, o.Go, "-C", o.Module, "build", "-o", b.tidegate, "./cmd/tidegate"); err != nil {
		return nil, fmt.Errorf("build tidegate: %w", err)
	}
	if err := b.startApp(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// startApp starts the upstream app on the server CPU with GOMAXPROCS=1 and
// waits until it answers HTTP/1.1, h2c and gRPC.
func (b *bench) startApp(ctx context.Context) error {
	var err error
	if b.appHTTP, err = freePort(); err != nil {
		return err
	}
	if b.appGRPC, err = freePort(); err != nil {
		return err
	}
	app, err := b.procs.start(procSpec{Name: "app", CPU: b.opts.ServerCPU, Bin: b.self,
		Args: []string{"app", "-http", b.appHTTP, "-grpc", b.appGRPC},
		Env:  []string{"GOMAXPROCS=1"}, Log: filepath.Join(b.tmp, "app.log")})
	if err != nil {
		return err
	}
	return errors.Join(
		waitReady(ctx, app, protoHTTP1, b.appHTTP, "/1k", false),
		waitReady(ctx, app, protoH2C, b.appHTTP, "/1k", false),
		waitReady(ctx, app, protoGRPC, b.appGRPC, "", false))
}

// setup describes the run's pinning and lengths, for the report.
func (b *bench) setup() string {
	o := b.opts
	pin := "no CPU pinning"
	if o.LoadCPU >= 0 {
		pin = fmt.Sprintf("load generators on CPU %d (taskset); the app and the proxy under test share CPU %d, "+
			"each limited to one thread of execution (app and tidegate GOMAXPROCS=1, nginx worker_processes 1, haproxy nbthread 1)",
			o.LoadCPU, o.ServerCPU)
	}
	rounds := ""
	if o.Rounds > 1 {
		rounds = fmt.Sprintf(" Each workload measures every path %d times, in rounds (each path once per round, so that a noisy "+
			"stretch of the machine's time falls on all of them alike); the tables give the median of each figure over the rounds, "+
			"and each round's req/s (open loop: p99).", o.Rounds)
	}
	return fmt.Sprintf("Each run: %s warm-up, then %s measured; one proxy at a time, started afresh per run; %s. "+
		"CPU s/100k req is the proxy's utime+stime during the measured run per 100,000 successful requests; "+
		"peak RSS is its VmHWM (nginx: master + worker); other load is the CPUs that processes other than these kept busy "+
		"during the run (a quiet machine shows about 0).%s", o.Warmup, o.Duration, pin, rounds)
}

// runWorkloads runs the selected workloads in order, printing each table
// when it is done. The open-loop rate, unless given, is half of direct's
// req/s in the http1 workload (measured for the purpose if http1 is not
// selected); openloop-light's is half of the slowest proxy's there, or a
// quarter of direct's without http1.
func (b *bench) runWorkloads(ctx context.Context, out, progress io.Writer) error {
	var direct float64 // direct's http1 req/s, once known
	var slowest float64
	n := 0
	for _, name := range allWorkloads {
		if !b.opts.has(name) {
			continue
		}
		var rate float64
		note := ""
		switch name {
		case wlOpenLoop:
			if rate = b.opts.OpenLoopRate; rate <= 0 {
				d, err := b.directRate(ctx, direct, progress)
				if err != nil {
					return err
				}
				direct, rate, note = d, d/2, " (the rate is half of direct's req/s with wrk)"
			}
		case wlOpenLoopLight:
			switch rate = b.opts.OpenLoopLightRate; {
			case rate > 0:
			case slowest > 0:
				rate, note = slowest/2, " (the rate is half of the slowest proxy's req/s with wrk, so that every proxy keeps up)"
			default:
				d, err := b.directRate(ctx, direct, progress)
				if err != nil {
					return err
				}
				direct, rate, note = d, d/4, " (the rate is a quarter of direct's req/s with wrk)"
			}
		}
		w, err := b.workload(name, rate)
		if err != nil {
			return err
		}
		w.title += note
		rows, err := b.runWorkload(ctx, w, progress)
		if err != nil {
			return err
		}
		if name == wlHTTP1 {
			direct, slowest = rps(rows, pathDirect), slowestProxy(rows)
		}
		n++
		fmt.Fprintln(out, renderTable(n, w, rows))
	}
	return nil
}

// slowestProxy returns the lowest req/s among rows other than direct's,
// or 0 if none was measured.
func slowestProxy(rows []row) float64 {
	var low float64
	for _, r := range rows {
		if r.Path == pathDirect || r.Skipped != "" || r.M.RPS <= 0 {
			continue
		}
		if low == 0 || r.M.RPS < low {
			low = r.M.RPS
		}
	}
	return low
}

// directRate returns direct's req/s in the http1 workload: known, if
// positive, else measured now.
func (b *bench) directRate(ctx context.Context, known float64, progress io.Writer) (float64, error) {
	if known > 0 {
		return known, nil
	}
	w, err := b.workload(wlHTTP1, 0)
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(progress, "openloop: measuring direct's rate with wrk first\n")
	r, err := b.measurePath(ctx, w, pathDirect)
	if err != nil {
		return 0, fmt.Errorf("direct rate for the open loop: %w", err)
	}
	return r.M.RPS, nil
}
