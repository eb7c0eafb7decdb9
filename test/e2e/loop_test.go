//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLoopTwoTidegatesPointingAtEachOther: issue 20 pointed two tidegates
// at each other and one request drove each to ~5,955 open files and
// 5,800 goroutines in 7.8 s. Now the request comes back 508 Loop Detected
// at once, over HTTP/1.1 (the fast path and net/http) and h2c, each
// tidegate logs the loop with reason "loop", and both keep their open
// files where they were and still answer /livez.
func TestLoopTwoTidegatesPointingAtEachOther(t *testing.T) {
	t.Parallel()
	pa, pb := hostPort(freePort(t)), hostPort(freePort(t))
	node := func(listen, upstream string) *tidegate {
		return launch(t, nil, "run", "--listen", listen, "--upstream", upstream,
			"--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	}
	a, b := node(pa, pb), node(pb, pa)
	a.waitServing()
	b.waitServing()
	filesA, filesB := openFiles(t, a.cmd.Process.Pid), openFiles(t, b.cmd.Process.Pid)

	c := newClient(t)
	for _, tc := range []struct {
		name   string
		method string
		body   string
	}{
		{"fast path", http.MethodGet, ""},
		{"net/http (a body)", http.MethodPost, "x"},
	} {
		req, err := http.NewRequest(tc.method, "http://"+pa+"/loop", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, body := do(t, c, req)
		took := time.Since(start)
		if resp.StatusCode != http.StatusLoopDetected || resp.Header.Get("X-Tidegate-Reason") != "loop" ||
			!strings.Contains(string(body), "loop detected") {
			t.Fatalf("%s: %d %q %q; want 508, reason loop", tc.name, resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"), body)
		}
		if took > 2*time.Second {
			t.Errorf("%s: the 508 took %s", tc.name, took)
		}
	}

	h2 := &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}, Timeout: 10 * time.Second}
	defer h2.CloseIdleConnections()
	resp, err := h2.Get("http://" + pb + "/loop")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusLoopDetected || resp.Header.Get("X-Tidegate-Reason") != "loop" {
		t.Fatalf("h2c: %s %d %q; want HTTP/2 508, reason loop", resp.Proto, resp.StatusCode, resp.Header.Get("X-Tidegate-Reason"))
	}

	a.waitLog(waitTimeout, "A logs the loop", func(m map[string]any) bool {
		return m["msg"] == "request loop detected: answered 508" && m["reason"] == "loop" && m["own_via"] == true
	})
	b.waitLog(waitTimeout, "B logs the loop", func(m map[string]any) bool {
		return m["msg"] == "request loop detected: answered 508" && m["reason"] == "loop"
	})
	for _, tg := range []*tidegate{a, b} {
		if code, body, err := statusCode(c, "http://"+tg.Health+"/livez"); err != nil || code != http.StatusOK {
			t.Errorf("/livez of %s: %d %v %s", tg.Listen, code, err, body)
		}
	}
	c.CloseIdleConnections()
	for _, n := range []struct {
		tg    *tidegate
		files int
	}{{a, filesA}, {b, filesB}} {
		eventually(t, waitTimeout, "open files of "+n.tg.Listen+" back", func() (bool, string) {
			now := openFiles(t, n.tg.cmd.Process.Pid)
			return now <= n.files+8, fmt.Sprintf("%d open files, %d before the requests", now, n.files)
		})
	}
}

// h2cOnly is the client side of HTTP/2 with prior knowledge.
func h2cOnly() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}
