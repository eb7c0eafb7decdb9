package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// runWrk runs wrk with one thread and conns connections against url for d
// (rounded to whole seconds, at least 1) and parses its report.
func runWrk(ctx context.Context, cpu, conns int, d time.Duration, url string) (measurement, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := runTool(ctx, time.Duration(secs)*time.Second+30*time.Second, cpu, "wrk",
		"-t1", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(secs)+"s", "--timeout", "5s", "--latency", url)
	if err != nil {
		return measurement{}, err
	}
	m, err := parseWrk(string(out))
	if err != nil {
		return m, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	return m, nil
}

var (
	wrkTotal    = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),`)
	wrkRate     = regexp.MustCompile(`(?m)^Requests/sec:\s+([\d.]+)`)
	wrkP        = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkDuration = map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}
)

// parseWrk reads the report of `wrk --latency`: requests, duration,
// req/s, p50 and p99, socket errors and non-2xx/3xx responses. Requests
// and RPS count only the responses that were 2xx or 3xx.
func parseWrk(out string) (measurement, error) {
	var m measurement
	t := wrkTotal.FindStringSubmatch(out)
	r := wrkRate.FindStringSubmatch(out)
	if t == nil || r == nil {
		return m, fmt.Errorf("no request count or Requests/sec in the output")
	}
	m.Requests, _ = strconv.ParseInt(t[1], 10, 64)
	m.Seconds = wrkValue(t[2], t[3]).Seconds()
	m.RPS, _ = strconv.ParseFloat(r[1], 64)
	for _, p := range wrkP.FindAllStringSubmatch(out, -1) {
		switch p[1] {
		case "50":
			m.P50 = wrkValue(p[2], p[3])
		case "99":
			m.P99 = wrkValue(p[2], p[3])
		}
	}
	if m.P99 == 0 {
		return m, fmt.Errorf("no 99%% latency in the output (was --latency given?)")
	}
	if s := wrkSocket.FindStringSubmatch(out); s != nil {
		for _, n := range s[1:] {
			v, _ := strconv.ParseInt(n, 10, 64)
			m.Errors += v
		}
	}
	if s := wrkNon2xx.FindStringSubmatch(out); s != nil && m.Requests > 0 {
		v, _ := strconv.ParseInt(s[1], 10, 64)
		m.Errors += v
		m.RPS *= float64(m.Requests-v) / float64(m.Requests)
		m.Requests -= v
	}
	return m, nil
}

// wrkValue converts one of wrk's numbers with its unit ("312.45", "us").
func wrkValue(num, unit string) time.Duration {
	v, _ := strconv.ParseFloat(num, 64)
	return time.Duration(v * float64(wrkDuration[unit]))
}
