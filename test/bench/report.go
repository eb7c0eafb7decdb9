package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// renderTable renders one workload's rows as a Markdown section. Ratios
// are of req/s: this path's over direct's, over HAProxy's (adding the same
// headers as tidegate) and over bare HAProxy's (adding none).
func renderTable(n int, w workload, rows []row) string {
	var s strings.Builder
	fmt.Fprintf(&s, "### %d. %s\n\n", n, w.title)
	fmt.Fprintf(&s, "`%s`\n\n", w.command)

	lat := []latColumn{p99Column}
	openLoop := w.name == wlOpenLoop || w.name == wlOpenLoopLight
	if openLoop {
		lat = []latColumn{p50Column, p99Column, p999Column}
	}
	rounds := false
	for _, r := range rows {
		rounds = rounds || len(r.Rounds) > 1
	}
	// Each round's figure that the workload is about: req/s, or the open
	// loop's p99.
	eachName := "req/s of each round"
	fmtEach := func(m measurement) string { return fmtInt(m.RPS) }
	if openLoop {
		eachName = "p99 of each round"
		fmtEach = func(m measurement) string { return strings.TrimSuffix(fmtLatency(m.P99), " ms") }
	}

	head := []string{"path", "req/s", "vs direct", "vs haproxy", "vs haproxy-bare"}
	align := []string{"---", "---:", "---:", "---:", "---:"}
	for _, l := range lat {
		head, align = append(head, l.name), append(align, "---:")
	}
	if openLoop {
		head, align = append(head, "p99 vs haproxy", "p99 vs haproxy-bare"), append(align, "---:", "---:")
	}
	if rounds {
		head, align = append(head, eachName), append(align, "---:")
	}
	head = append(head, "CPU s/100k req", "peak RSS MiB", "errors", "other load")
	align = append(align, "---:", "---:", "---:", "---:")
	fmt.Fprintf(&s, "| %s |\n|%s|\n", strings.Join(head, " | "), strings.Join(align, "|"))

	direct, haproxy, bare := rps(rows, pathDirect), rps(rows, pathHAProxy), rps(rows, pathHAProxyBare)
	p99Hap, p99Bare := p99(rows, pathHAProxy), p99(rows, pathHAProxyBare)
	for _, r := range rows {
		if r.Skipped != "" {
			cells := []string{r.Path, "skipped: " + r.Skipped}
			for len(cells) < len(head) {
				cells = append(cells, "")
			}
			fmt.Fprintf(&s, "| %s |\n", strings.Join(cells, " | "))
			continue
		}
		cells := []string{r.Path, fmtInt(r.M.RPS), ratio(r.M.RPS, direct), ratio(r.M.RPS, haproxy), ratio(r.M.RPS, bare)}
		for _, l := range lat {
			cells = append(cells, fmtLatency(l.get(r.M)))
		}
		if openLoop {
			cells = append(cells, ratio(float64(r.M.P99), float64(p99Hap)), ratio(float64(r.M.P99), float64(p99Bare)))
		}
		if rounds {
			figs := make([]string, len(r.Rounds))
			for i, m := range r.Rounds {
				figs[i] = fmtEach(m)
			}
			cell := strings.Join(figs, " / ")
			if openLoop {
				cell += " ms"
			}
			cells = append(cells, cell)
		}
		cells = append(cells, fmtOpt(r.CPU, 3), fmtOpt(r.PeakMiB, 1), strconv.FormatInt(r.M.Errors, 10),
			strconv.FormatFloat(r.Others, 'f', 2, 64))
		fmt.Fprintf(&s, "| %s |\n", strings.Join(cells, " | "))
	}
	return s.String()
}

// latColumn is a latency column of a table.
type latColumn struct {
	name string
	get  func(measurement) time.Duration
}

var (
	p50Column  = latColumn{"p50", func(m measurement) time.Duration { return m.P50 }}
	p99Column  = latColumn{"p99", func(m measurement) time.Duration { return m.P99 }}
	p999Column = latColumn{"p99.9", func(m measurement) time.Duration { return m.P999 }}
)

// measured returns the measurement of path's row, or a zero one if it has
// none (not measured, or skipped).
func measured(rows []row, path string) measurement {
	for _, r := range rows {
		if r.Path == path && r.Skipped == "" {
			return r.M
		}
	}
	return measurement{}
}

// rps returns the req/s of path's row, or 0 if it has none.
func rps(rows []row, path string) float64 { return measured(rows, path).RPS }

// p99 returns the p99 of path's row, or 0 if it has none.
func p99(rows []row, path string) time.Duration { return measured(rows, path).P99 }

func ratio(v, of float64) string {
	if of <= 0 {
		return "—"
	}
	return strconv.FormatFloat(v/of, 'f', 2, 64)
}

// fmtInt formats a rate as a whole number with thousands separators.
func fmtInt(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fmtOpt(v float64, prec int) string {
	if v < 0 {
		return "—"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// fmtLatency formats a latency in milliseconds; "—" when unknown.
func fmtLatency(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d <= 0:
		return "—"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + " ms"
	default:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	}
}

// machineLine describes the machine and the tools: CPUs, CPU model,
// kernel, Go, and the versions of the external programs found.
func machineLine(ctx context.Context, t tools) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	nproc := strconv.Itoa(runtime.NumCPU())
	if out, err := runTool(ctx, 5*time.Second, -1, "nproc"); err == nil {
		nproc = strings.TrimSpace(string(out))
	}
	var about []string
	for _, name := range []string{"nginx", "haproxy", "wrk", "h2load"} {
		if a := t[name].About; a != "" {
			about = append(about, a)
		}
	}
	return fmt.Sprintf("%s CPUs (nproc), %s, %s, %s; %s", nproc, model, kernel, runtime.Version(), strings.Join(about, ", "))
}

// renderMem renders the memory mode's results as a Markdown section.
func renderMem(parts []memPart) string {
	var s strings.Builder
	s.WriteString("### Memory: idle connections held by tidegate\n\n")
	fmt.Fprintf(&s, "tidegate alone in front of the app (GOMAXPROCS unchanged, not pinned), started afresh for each row. "+
		"Each connection made one request (GET /1k, 1 KiB) and then stays open and idle. "+
		"RSS is VmRSS, the median of %d samples %s apart, %s after each step; KiB per connection = (RSS with them − baseline) / connections.\n\n",
		memSamples, memInterval, memSettle)
	s.WriteString("| connections | baseline RSS MiB | RSS with them MiB | KiB per connection | tidegate open fds |\n|---|---:|---:|---:|---:|\n")
	for _, p := range parts {
		fmt.Fprintf(&s, "| %s idle %s | %.1f | %.1f | %.1f | %d |\n", fmtInt(float64(p.Conns)), p.Proto,
			float64(p.BaselineKiB)/1024, float64(p.AfterKiB)/1024, p.perConnKiB(), p.FDs)
	}
	return s.String()
}
