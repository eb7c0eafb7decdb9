package main

import (
	"strings"
	"testing"
	"time"
)

// Real outputs of wrk 4.1.0 and h2load 1.52.0 against the bench app.
const (
	wrkOK = `Running 1s test @ http://127.0.0.1:19001/1k
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   104.17us  246.67us   4.14ms   94.27%
    Req/Sec    56.31k     1.49k   58.16k    81.82%
  Latency Distribution
     50%   52.00us
     75%   63.00us
     90%  100.00us
     99%    1.22ms
  61491 requests in 1.10s, 66.97MB read
Requests/sec:  55917.74
Transfer/sec:     60.90MB
`
	wrkErrors = `Running 10s test @ http://127.0.0.1:19001/1k
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    3.00ms   1.20s    90.00%
    Req/Sec    10.00k     1.00k   12.00k    70.00%
  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%    3.00ms
     99%    1.10s
  100000 requests in 10.00s, 100.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 1000
Requests/sec:  10000.00
Transfer/sec:     10.00MB
`
	h2loadOK = `starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Application protocol: h2c

finished in 1.00s, 32723.00 req/s, 32.64MB/s
requests: 32723 total, 32731 started, 32723 done, 32723 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 32727 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 32.64MB (34228566) total, 127.97KB (131042) headers (space savings 95.87%), 31.96MB (33508352) data
                     min         max         mean         sd        +/- sd
time for request:       86us      4.63ms       232us       153us    90.43%
`
	h2load404 = `finished in 1.00s, 22759.00 req/s, 2.64MB/s
requests: 22759 total, 22760 started, 22759 done, 0 succeeded, 22759 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 22759 4xx, 0 5xx
`
)

func TestParseWrk(t *testing.T) {
	m, err := parseWrk(wrkOK)
	if err != nil {
		t.Fatal(err)
	}
	want := measurement{Requests: 61491, Seconds: 1.1, RPS: 55917.74, P50: 52 * time.Microsecond, P99: 1220 * time.Microsecond}
	if m != want {
		t.Errorf("parseWrk = %+v, want %+v", m, want)
	}
}

func TestParseWrkErrors(t *testing.T) {
	m, err := parseWrk(wrkErrors)
	if err != nil {
		t.Fatal(err)
	}
	if m.Requests != 99000 || m.Errors != 1010 || m.RPS != 9900 || m.P99 != 1100*time.Millisecond {
		t.Errorf("parseWrk = %+v, want 99000 requests, 1010 errors, 9900 req/s, p99 1.1s", m)
	}
}

func TestParseWrkWithoutLatency(t *testing.T) {
	out := strings.Replace(wrkOK, "     99%    1.22ms\n", "", 1)
	if _, err := parseWrk(out); err == nil {
		t.Error("parseWrk accepted a report without a 99% line")
	}
	if _, err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n"); err == nil {
		t.Error("parseWrk accepted an error message")
	}
}

func TestParseH2load(t *testing.T) {
	m, err := parseH2load(h2loadOK)
	if err != nil {
		t.Fatal(err)
	}
	want := measurement{Requests: 32723, Seconds: 1, RPS: 32723}
	if m != want {
		t.Errorf("parseH2load = %+v, want %+v", m, want)
	}
	if m, err := parseH2load(h2load404); err == nil {
		t.Errorf("parseH2load accepted a run where every request failed: %+v", m)
	} else if m.Errors != 22759 || m.RPS != 0 {
		t.Errorf("parseH2load(404s) = %+v, want 22759 errors and 0 req/s", m)
	}
}

func TestParseH2loadLog(t *testing.T) {
	log := "1795541152221193\t200\t771\n1795541152221173\t-1\t5000000\n1795541152221174\t200\t949\n"
	lat, err := parseH2loadLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 2 || lat[0] != 771*time.Microsecond || lat[1] != 949*time.Microsecond {
		t.Errorf("parseH2loadLog = %v, want [771µs 949µs] (the failed request left out)", lat)
	}
	if _, err := parseH2loadLog(strings.NewReader("garbage\n")); err == nil {
		t.Error("parseH2loadLog accepted garbage")
	}
}

func TestParseStat(t *testing.T) {
	// The command name holds a space and a ')'.
	stat := "4242 (we) ird) S 17 4242 4242 0 -1 4194560 1000 0 0 0 250 31 5 6 20 0 1 0 100 1000000 200 18446744073709551615\n"
	st, err := parseStat(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := (procStat{PPID: 17, Ticks: 281, ChildTicks: 11}); st != want {
		t.Errorf("parseStat = %+v, want %+v", st, want)
	}
	busy, err := parseHostBusy("cpu  166390 7 85398 1318648 2061 0 16125 51 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
	if err != nil || busy != 166390+7+85398+51 {
		t.Errorf("parseHostBusy = %d, %v; want %d", busy, err, 166390+7+85398+51)
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1000; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	var m measurement
	m.setLatencies(lat)
	if m.P50 != 500*time.Millisecond || m.P99 != 990*time.Millisecond || m.P999 != 999*time.Millisecond {
		t.Errorf("percentiles of 1..1000ms = %v %v %v, want 500ms 990ms 999ms", m.P50, m.P99, m.P999)
	}
	if percentile(nil, 0.99) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestCheckSeen(t *testing.T) {
	const all = "X-Forwarded-For=127.0.0.1,X-Forwarded-Proto=http,X-Forwarded-Host=h,X-Request-Id=id-1"
	for _, tc := range []struct {
		seen, answerID string
		headers        bool
		err            string // "" means no error
	}{
		{all, "id-1", true, ""},
		{all, "other", true, "the answer's X-Request-Id"},
		{"X-Forwarded-For=127.0.0.1,X-Request-Id=id-1", "id-1", true, "did not see X-Forwarded-Proto"},
		{"", "", false, ""},
		{"X-Forwarded-For=127.0.0.1", "", false, "should add none of"},
		{"", "id-1", false, "the answer carries X-Request-Id"},
	} {
		err := checkSeen(tc.seen, tc.answerID, tc.headers)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("checkSeen(%q, %q, %v) = %v, want an error with %q", tc.seen, tc.answerID, tc.headers, err, tc.err)
		}
	}
}
