package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSlowestProxy(t *testing.T) {
	m := func(rps float64) measurement { return measurement{RPS: rps} }
	rows := []row{
		{Path: pathDirect, M: m(90000)},
		{Path: pathTidegate, M: m(38000)},
		{Path: pathNginx, Skipped: "nginx is not installed"},
		{Path: pathHAProxy, M: m(36000)},
		{Path: pathHAProxyBare, M: m(40000)},
	}
	if got := slowestProxy(rows); got != 36000 {
		t.Errorf("slowestProxy = %v, want 36000 (haproxy; direct and skipped rows do not count)", got)
	}
	if got := slowestProxy(rows[:1]); got != 0 {
		t.Errorf("slowestProxy of direct alone = %v, want 0", got)
	}
}

func TestCombineRounds(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	round := func(rps, p99, cpu, peak float64, errs int64, others float64) row {
		return row{Path: pathTidegate, M: measurement{Requests: int64(rps) * 10, Errors: errs, RPS: rps, Rate: 500,
			P50: ms(p99 / 10), P99: ms(p99), P999: ms(p99 * 2)}, CPU: cpu, PeakMiB: peak, Others: others}
	}
	rs := []row{round(100, 3, 1.0, 10, 1, 0), round(300, 1, 3.0, 12, 0, 0.2), round(200, 2, 2.0, 11, 2, 0.1)}
	got := combineRounds(rs)
	want := row{Path: pathTidegate, M: measurement{Requests: 6000, Errors: 3, RPS: 200, Rate: 500,
		P50: ms(0.2), P99: ms(2), P999: ms(4)}, CPU: 2.0, PeakMiB: 12, Others: 0.2,
		Rounds: []measurement{rs[0].M, rs[1].M, rs[2].M}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("combineRounds of three rounds:\n got %+v\nwant %+v", got, want)
	}
	if got := combineRounds(rs[:2]); got.M.RPS != 200 || got.M.P99 != ms(2) || got.CPU != 2.0 {
		t.Errorf("combineRounds of two rounds = %v req/s, p99 %v, CPU %v; want the means of the two: 200, 2ms, 2", got.M.RPS, got.M.P99, got.CPU)
	}
	if got := combineRounds(rs[:1]); !reflect.DeepEqual(got, rs[0]) {
		t.Errorf("combineRounds of one round changed it: %+v", got)
	}
}

func TestRenderOpenLoopRounds(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	rows := []row{
		combineRounds([]row{
			{Path: pathTidegate, M: measurement{RPS: 1000, P99: ms(3)}},
			{Path: pathTidegate, M: measurement{RPS: 1000, P99: ms(1)}},
			{Path: pathTidegate, M: measurement{RPS: 1000, P99: ms(1.5)}},
		}),
		combineRounds([]row{
			{Path: pathHAProxy, M: measurement{RPS: 1000, P99: ms(1)}},
			{Path: pathHAProxy, M: measurement{RPS: 1000, P99: ms(1)}},
			{Path: pathHAProxy, M: measurement{RPS: 1000, P99: ms(1)}},
		}),
		{Path: pathHAProxyBare, Skipped: "haproxy is not installed"},
	}
	out := renderTable(1, workload{name: wlOpenLoopLight, title: "t", command: "c"}, rows)
	for _, want := range []string{
		"| p50 | p99 | p99.9 | p99 vs haproxy | p99 vs haproxy-bare | p99 of each round |",
		"| tidegate | 1,000 | — | 1.00 | — | — | 1.50 ms | — | 1.50 | — | 3.00 / 1.00 / 1.50 ms |",
		"| haproxy | 1,000 | — | 1.00 | — | — | 1.00 ms | — | 1.00 | — | 1.00 / 1.00 / 1.00 ms |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	plain := renderTable(1, workload{name: wlHTTP1, title: "t", command: "c"}, rows[:2])
	if strings.Contains(plain, "p99 vs haproxy") || strings.Contains(plain, "p99 of each round") {
		t.Errorf("a throughput table has the open loop's p99 columns:\n%s", plain)
	}
	if want := "| tidegate | 1,000 | — | 1.00 | — | 1.50 ms | 1,000 / 1,000 / 1,000 |"; !strings.Contains(plain, want) {
		t.Errorf("throughput table lacks %q (each round's req/s):\n%s", want, plain)
	}
}
