package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// generator runs one load against addr for d.
type generator func(ctx context.Context, addr string, d time.Duration) (measurement, error)

// workload is one row set of the report: a load, the protocol it speaks,
// and the paths it is measured on.
type workload struct {
	name    string
	title   string
	command string // the generator, as a reader would type it
	proto   proto
	path    string // the app's endpoint
	paths   []string
	gen     generator
}

// workload returns the definition of the workload called name. rate is the
// open-loop request rate.
func (b *bench) workload(name string, rate float64) (workload, error) {
	o := b.opts
	secs := strconv.Itoa(max(1, int(o.Duration.Round(time.Second)/time.Second)))
	proxies := []string{pathDirect, pathTidegate, pathTidegatePlain, pathTidegateBare, pathNginx, pathHAProxy, pathHAProxyBare}
	if o.ReverseProxyAll {
		proxies = append(proxies, pathReverseProxy)
	}
	wrk := func(path string) workload {
		return workload{proto: protoHTTP1, path: path, paths: proxies,
			command: fmt.Sprintf("wrk -t1 -c%d -d%ss --timeout 5s --latency http://ADDR%s", o.WrkConns, secs, path),
			gen: func(ctx context.Context, addr string, d time.Duration) (measurement, error) {
				return runWrk(ctx, o.LoadCPU, o.WrkConns, d, "http://"+addr+path)
			}}
	}
	switch name {
	case wlHTTP1:
		w := wrk("/1k")
		w.title = "HTTP/1.1 keep-alive, 1 KiB responses"
		return w.named(name), nil
	case wlHTTP1Big:
		w := wrk("/64k")
		w.title = "HTTP/1.1 keep-alive, 64 KiB responses"
		return w.named(name), nil
	case wlH2C:
		return workload{name: name, title: "h2c (prior knowledge), 1 KiB responses; the proxies reach the app over HTTP/1.1",
			proto: protoH2C, path: "/1k", paths: proxies,
			command: fmt.Sprintf("h2load -t1 -c %d -m %d -D %s -T 5 --log-file FILE http://ADDR/1k", o.H2Conns, o.H2Streams, secs),
			gen: func(ctx context.Context, addr string, d time.Duration) (measurement, error) {
				b.seq++
				log := filepath.Join(b.tmp, "h2load-"+strconv.Itoa(b.seq)+".log")
				return runH2load(ctx, o.LoadCPU, o.H2Conns, o.H2Streams, d, "http://"+addr+"/1k", log)
			}}, nil
	case wlGRPC:
		return workload{name: name, title: "gRPC unary calls, 1 KiB responses; the proxies reach the app over h2c",
			proto: protoGRPC, paths: []string{pathDirect, pathTidegate, pathTidegatePlain, pathTidegateBare, pathNginx, pathHAProxy, pathHAProxyBare, pathReverseProxy},
			command: fmt.Sprintf("bench grpcload -conns %d -callers %d -duration %s -addr ADDR", o.GRPCConns, o.GRPCCallers, o.Duration),
			gen: func(ctx context.Context, addr string, d time.Duration) (measurement, error) {
				return b.goGenerator(ctx, d, "grpcload", "-addr", addr, "-conns", strconv.Itoa(o.GRPCConns),
					"-callers", strconv.Itoa(o.GRPCCallers), "-duration", d.String())
			}}, nil
	case wlOpenLoop, wlOpenLoopLight:
		r := strconv.FormatFloat(rate, 'f', 0, 64)
		return workload{name: name, title: fmt.Sprintf("open loop: HTTP/1.1, 1 KiB responses, %s req/s on a fixed schedule, latency from each request's intended send time", r),
			proto: protoHTTP1, path: "/1k", paths: proxies,
			command: fmt.Sprintf("bench openloop -rate %s -conns %d -duration %s -addr ADDR -path /1k", r, o.OpenLoopConns, o.Duration),
			gen: func(ctx context.Context, addr string, d time.Duration) (measurement, error) {
				return b.goGenerator(ctx, d, "openloop", "-addr", addr, "-path", "/1k", "-rate", r,
					"-conns", strconv.Itoa(o.OpenLoopConns), "-duration", d.String())
			}}, nil
	}
	return workload{}, fmt.Errorf("unknown workload %q", name)
}

func (w workload) named(name string) workload { w.name = name; return w }

// goGenerator runs one of this binary's load generators on the load CPU and
// decodes the measurement it prints.
func (b *bench) goGenerator(ctx context.Context, d time.Duration, args ...string) (measurement, error) {
	var m measurement
	out, err := runTool(ctx, d+30*time.Second, b.opts.LoadCPU, b.self, args...)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return m, fmt.Errorf("%s: %w: %q", args[0], err, out)
	}
	return m, nil
}

// row is one path's result in a workload.
type row struct {
	Path    string
	M       measurement
	CPU     float64 // CPU seconds per 100k requests of the proxy; <0: not measured
	PeakMiB float64 // peak RSS of the proxy (all its processes); <0: not measured
	Skipped string  // why the path was not measured; the row has no numbers
	Others  float64 // CPUs that other processes on the machine kept busy during the run
	// Rounds is each round's measurement, when the row combines rounds.
	Rounds []measurement
}

// othersThreshold is the load of other processes (in CPUs) past which the
// report flags a run as disturbed.
const othersThreshold = 0.1

// runWorkload measures w on every path in both w.paths and Options.Paths,
// one after the other, in Options.Rounds rounds, and returns one row per
// path (combineRounds of its rounds). progress gets a line per step.
func (b *bench) runWorkload(ctx context.Context, w workload, progress io.Writer) ([]row, error) {
	rounds := max(1, b.opts.Rounds)
	var paths []string
	for _, path := range w.paths {
		if slices.Contains(b.opts.Paths, path) {
			paths = append(paths, path)
		}
	}
	measured := make(map[string][]row, len(paths))
	skipped := make(map[string]string)
	for round := 1; round <= rounds; round++ {
		for _, path := range paths {
			if _, ok := skipped[path]; ok {
				continue
			}
			label := path
			if rounds > 1 {
				label = fmt.Sprintf("%s (round %d of %d)", path, round, rounds)
			}
			fmt.Fprintf(progress, "%s: %s\n", w.name, label)
			r, err := b.measurePath(ctx, w, path)
			if sk := (skipError{}); errors.As(err, &sk) {
				b.notes.add("%s: %s skipped: %s", w.name, path, sk.reason)
				skipped[path] = sk.reason
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("%s via %s: %w", w.name, label, err)
			}
			b.noteRun(w.name, label, r)
			measured[path] = append(measured[path], r)
		}
	}
	var rows []row
	for _, path := range paths {
		if reason, ok := skipped[path]; ok {
			rows = append(rows, row{Path: path, Skipped: reason})
			continue
		}
		rows = append(rows, combineRounds(measured[path]))
	}
	return rows, nil
}

// noteRun notes what went wrong in one measured run of label.
func (b *bench) noteRun(workload, label string, r row) {
	if r.Others > othersThreshold {
		b.notes.add("%s: %s: other processes on the machine kept %.2f CPUs busy during the run: its numbers are disturbed", workload, label, r.Others)
	}
	if r.M.Rate > 0 && r.M.RPS < 0.95*r.M.Rate {
		b.notes.add("%s: %s did not keep up with %.0f req/s (it answered %.0f req/s): its latencies are mostly time queued behind the schedule",
			workload, label, r.M.Rate, r.M.RPS)
	}
	switch {
	case r.M.Unsent > 0:
		b.notes.add("%s: %s: %d request(s) failed, %d of them never sent (the schedule's end plus %s passed first)",
			workload, label, r.M.Errors, r.M.Unsent, requestTimeout)
	case r.M.Errors > 0:
		b.notes.add("%s: %s: %d request(s) failed", workload, label, r.M.Errors)
	}
}

// combineRounds makes one row of a path's rounds: the median of each rate,
// latency and CPU figure (each on its own), the sums of the counts, the
// largest peak RSS and other load, and every round's measurement in
// Rounds. One round is returned as it is.
func combineRounds(rs []row) row {
	if len(rs) == 1 {
		return rs[0]
	}
	out := row{Path: rs[0].Path}
	med := func(get func(row) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		if n := len(v); n%2 == 0 {
			return (v[n/2-1] + v[n/2]) / 2
		}
		return v[len(v)/2]
	}
	medDur := func(get func(measurement) time.Duration) time.Duration {
		return time.Duration(med(func(r row) float64 { return float64(get(r.M)) }))
	}
	out.M.RPS = med(func(r row) float64 { return r.M.RPS })
	out.M.Seconds = med(func(r row) float64 { return r.M.Seconds })
	out.M.Rate = rs[0].M.Rate
	out.M.P50 = medDur(func(m measurement) time.Duration { return m.P50 })
	out.M.P99 = medDur(func(m measurement) time.Duration { return m.P99 })
	out.M.P999 = medDur(func(m measurement) time.Duration { return m.P999 })
	out.CPU = med(func(r row) float64 { return r.CPU })
	out.PeakMiB = -1
	for _, r := range rs {
		out.M.Requests += r.M.Requests
		out.M.Errors += r.M.Errors
		out.M.Unsent += r.M.Unsent
		out.PeakMiB = max(out.PeakMiB, r.PeakMiB)
		out.Others = max(out.Others, r.Others)
		out.Rounds = append(out.Rounds, r.M)
	}
	return out
}

// measurePath starts path's proxy, checks one request, warms it up, and
// measures it, sampling the proxy's CPU time around the measured run only.
func (b *bench) measurePath(ctx context.Context, w workload, path string) (res row, err error) {
	res = row{Path: path, CPU: -1, PeakMiB: -1}
	r, err := b.startPath(path, w.proto)
	if err != nil {
		return res, err
	}
	defer func() {
		if stopErr := b.stop(r, w.name+": "+path); err == nil && stopErr != nil {
			b.notes.add("%s: %s: %v", w.name, path, stopErr)
		}
	}()
	if err := waitReady(ctx, r.pr, w.proto, r.addr, w.path, addsHeaders(path)); err != nil {
		return res, fmt.Errorf("the proxy does not work: %w", err)
	}
	if b.opts.Warmup > 0 {
		if _, err := w.gen(ctx, r.addr, b.opts.Warmup); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
	}
	var before usage
	if r.pr != nil {
		if before, err = sampleTree(r.pr.pid()); err != nil {
			return res, err
		}
	}
	others, err := startOthersMeter()
	if err != nil {
		return res, err
	}
	if res.M, err = w.gen(ctx, r.addr, b.opts.Duration); err != nil {
		return res, err
	}
	if res.Others, err = others.cpus(b.clkTck); err != nil {
		return res, err
	}
	if res.M.Requests == 0 {
		return res, errNoRequests
	}
	if r.pr != nil {
		after, err := sampleTree(r.pr.pid())
		if err != nil {
			return res, fmt.Errorf("%s after the run: %w", path, err)
		}
		if after.Ticks == before.Ticks {
			return res, fmt.Errorf("%s used no CPU time during the run: did the load go through it?", path)
		}
		cpu := float64(after.Ticks-before.Ticks) / float64(b.clkTck)
		res.CPU = cpu / float64(res.M.Requests) * 1e5
		res.PeakMiB = float64(after.HWMKiB) / 1024
	}
	return res, nil
}
