package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// runH2load runs h2load (h2c with prior knowledge) with conns connections
// of streams concurrent streams each against url for d (whole seconds, at
// least 1). Latencies come from its per-request log, written to logFile.
func runH2load(ctx context.Context, cpu, conns, streams int, d time.Duration, url, logFile string) (measurement, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := runTool(ctx, time.Duration(secs)*time.Second+30*time.Second, cpu, "h2load",
		"-t1", "-c", strconv.Itoa(conns), "-m", strconv.Itoa(streams), "-D", strconv.Itoa(secs),
		"-T", "5", "--log-file", logFile, url)
	if err != nil {
		return measurement{}, err
	}
	m, err := parseH2load(string(out))
	if err != nil {
		return m, fmt.Errorf("h2load: %w\n%s", err, out)
	}
	f, err := os.Open(logFile)
	if err != nil {
		return m, err
	}
	defer os.Remove(logFile) // tens of MB per run
	defer f.Close()
	lat, err := parseH2loadLog(f)
	if err != nil {
		return m, fmt.Errorf("h2load log %s: %w", logFile, err)
	}
	m.setLatencies(lat)
	return m, nil
}

var (
	h2Finished = regexp.MustCompile(`(?m)^finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s`)
	h2Requests = regexp.MustCompile(`(?m)^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
)

// parseH2load reads h2load's summary: duration and req/s from "finished
// in", successful (2xx and 3xx) and failed requests from "requests:" (h2load
// counts 4xx and 5xx responses as failed, and errored and timed-out
// requests too). RPS counts the successful requests only.
func parseH2load(out string) (measurement, error) {
	var m measurement
	f := h2Finished.FindStringSubmatch(out)
	r := h2Requests.FindStringSubmatch(out)
	if f == nil || r == nil {
		return m, fmt.Errorf("no \"finished in\" or \"requests:\" line in the output")
	}
	m.Seconds = wrkValue(f[1], f[2]).Seconds()
	m.RPS, _ = strconv.ParseFloat(f[3], 64)
	m.Requests = atoi64(r[4])
	m.Errors = atoi64(r[5])
	if done := atoi64(r[3]); done > 0 {
		m.RPS *= float64(m.Requests) / float64(done)
	}
	if m.Requests == 0 {
		return m, fmt.Errorf("no request succeeded")
	}
	return m, nil
}

// parseH2loadLog reads h2load's --log-file: one line per request, tab-
// separated: start time (µs since the epoch), status (-1 on error),
// duration (µs). It returns the durations of the 2xx responses.
func parseH2loadLog(r io.Reader) ([]time.Duration, error) {
	var lat []time.Duration
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) < 3 {
			return nil, fmt.Errorf("line %q: want 3 tab-separated columns", sc.Text())
		}
		status, err1 := strconv.Atoi(f[1])
		us, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %q: not numbers", sc.Text())
		}
		if status >= 200 && status < 300 {
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
	}
	return lat, sc.Err()
}

func atoi64(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
