package main

import "testing"

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
