package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRestartedChildGetsNoTrafficBeforeItListens: a child that crashes is
// restarted, and takes 400ms to listen again. Requests that arrive while it
// is down or not listening yet are held (--hold-until-ready) and answered
// once it listens: no client sees an error. Readiness fails meanwhile, and
// the startup probe runs again, as the kubelet does after a restart.
func TestRestartedChildGetsNoTrafficBeforeItListens(t *testing.T) {
	t.Parallel()
	app := hostPort(freePort(t))
	tg := start(t, "--upstream", app, "--hold-until-ready", "10s",
		"--app-restart", "always", "--app-restart-backoff", "200ms", "--app-restart-limit", "10",
		"--startup", "tcp://"+app, "--probe-period", "1s",
		"--", fakeappBinary, "--listen", app, "--listen-delay", "400ms", "--crash-after", "1500ms")

	c := newClient(t)
	type answer struct {
		at   time.Time
		code int
		body string
	}
	var answers []answer
	deadline := time.Now().Add(5 * time.Second) // past the first crash (1.5s) and restart (+0.2s +0.4s)
	polled := make(chan []int, 1)
	go func() { // /readyz as a load balancer sees it, every 5ms
		hc := newClient(t)
		var codes []int
		for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
			if code, _, err := statusCode(hc, "http://"+tg.Health+"/readyz"); err == nil {
				codes = append(codes, code)
			}
			<-time.After(5 * time.Millisecond) // the poll interval, not a wait for a condition
		}
		polled <- codes
	}()
	for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
		code, body, err := statusCode(c, tg.URL("/"))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		answers = append(answers, answer{time.Now(), code, body})
	}
	readyz := recv(t, polled, 10*time.Second, "the /readyz poller")
	var exits []time.Time
	restarts := 0
	for _, m := range tg.stdout.jsonLines() {
		switch m["msg"] {
		case "app restarted; gating requests until it is ready again":
			restarts++
		case "app exited on its own":
			if ts, err := time.Parse(time.RFC3339Nano, m["ts"].(string)); err == nil {
				exits = append(exits, ts)
			}
		}
	}
	if restarts == 0 {
		t.Fatalf("the app never restarted in 5s (crash after 1.5s):\n%s", tail(tg.stdout.String(), 30))
	}
	// A request in flight when the app dies fails (the app died mid-answer,
	// or tidegate dialed it the moment before it heard of the exit): those
	// answers come within 100ms of an exit. Any other failure is a request
	// sent to an app that was down or not listening yet.
	nearExit := func(at time.Time) bool {
		for _, ex := range exits {
			if at.After(ex.Add(-300*time.Millisecond)) && at.Before(ex.Add(100*time.Millisecond)) {
				return true
			}
		}
		return false
	}
	atCrash, failed := 0, 0
	for _, a := range answers {
		switch {
		case a.code == 200:
		case nearExit(a.at):
			atCrash++
		default:
			failed++
			if failed <= 3 {
				t.Errorf("%s: %d %s", a.at.Format("15:04:05.000"), a.code, strings.TrimSpace(a.body))
			}
		}
	}
	t.Logf("%d requests across %d restarts: %d failed at a crash, %d otherwise; /readyz answers: %v",
		len(answers), restarts, atCrash, failed, compress(readyz))
	if failed > 0 {
		t.Fatalf("%d of %d requests failed while the app restarted (away from the crash itself)", failed, len(answers))
	}
	if atCrash > 5*len(exits) {
		t.Errorf("%d requests failed at %d crashes: more than the few in flight at each", atCrash, len(exits))
	}
	saw503 := false
	for _, rc := range readyz {
		saw503 = saw503 || rc == 503
	}
	if !saw503 {
		t.Errorf("/readyz never failed while the app was down and restarting: %v", compress(readyz))
	}
	// The startup probe passed once per run: its "probe passing" line comes
	// again after each restart.
	passes := 0
	for _, m := range tg.stdout.jsonLines() {
		if m["msg"] == "probe passing" && m["kind"] == "startup" {
			passes++
		}
	}
	if passes < 1+restarts {
		t.Errorf("the startup probe passed %d times over %d runs: it is not run again after a restart", passes, 1+restarts)
	}
}

// compress shows a run of status codes as code×count.
func compress(codes []int) string {
	var parts []string
	for i := 0; i < len(codes); {
		j := i
		for j < len(codes) && codes[j] == codes[i] {
			j++
		}
		parts = append(parts, fmt.Sprintf("%d×%d", codes[i], j-i))
		i = j
	}
	return strings.Join(parts, " ")
}

// TestChildUpstreamPortTaken: a port already held by another process when
// tidegate starts its app is a clear error at once, not a restart loop of
// an app that cannot bind.
func TestChildUpstreamPortTaken(t *testing.T) {
	t.Parallel()
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	app := squatter.Addr().String()
	start := time.Now()
	res := runOnce(t, nil, "run", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app, "--app-restart", "always",
		"--", fakeappBinary, "--listen", app)
	if res.code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "upstream "+app+" already accepts connections before the app is started") {
		t.Fatalf("stderr does not say the port is taken:\n%s", res.stderr)
	}
	if strings.Contains(res.stdout, "restarting app") || strings.Contains(res.stdout, `"app started"`) {
		t.Fatalf("tidegate started the app anyway:\n%s", tail(res.stdout, 20))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s to refuse", d)
	}
}
