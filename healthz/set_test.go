package healthz

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tidegate/tidegate/test/wait"
)

// runSet runs s until the test ends.
func runSet(t *testing.T, s *Set) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func tcpSpec(name, container string, kind Kind, port int) Spec {
	return Spec{Name: name, Container: container, Kind: kind, TCPSocket: &TCPSocketAction{Port: port},
		Period: 20 * time.Millisecond, Timeout: time.Second}
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

func statusOf(s *Set, name string) (Status, bool) {
	for _, st := range s.Statuses() {
		if st.Name == name {
			return st, true
		}
	}
	return Status{}, false
}

// TestUpdateKeepsUnchangedContainers: a reload that changes one
// container's probes restarts those and keeps the others, state and all;
// a removed probe leaves /readyz and the metrics.
func TestUpdateKeepsUnchangedContainers(t *testing.T) {
	up := listen(t, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	s, err := NewSet([]Spec{
		tcpSpec("a", "web", Readiness, portOf(up)),
		tcpSpec("b", "side", Readiness, portOf(up)),
		tcpSpec("gone", "side", Liveness, portOf(up)),
	}, SetOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "every probe passes", func() bool { return s.Healthy(Readiness, "") })
	before, _ := statusOf(s, "a")

	changed := tcpSpec("b", "side", Readiness, portOf(up))
	changed.Period = 30 * time.Millisecond
	updated := time.Now()
	if err := s.Update([]Spec{tcpSpec("a", "web", Readiness, portOf(up)), changed}); err != nil {
		t.Fatal(err)
	}
	if !s.Healthy(Readiness, "web") {
		t.Fatal("container web's readiness reset by a reload that did not change it")
	}
	if st, _ := statusOf(s, "a"); st.Successes < before.Successes {
		t.Fatalf("probe a's state was reset: %d successes before, %d after", before.Successes, st.Successes)
	}
	// b's new runner may have probed already: whatever it knows, it learnt
	// after the update, and it starts from the old verdict (passing).
	if st, _ := statusOf(s, "b"); !st.Healthy || !st.LastAt.IsZero() && st.LastAt.Before(updated) {
		t.Fatalf("probe b changed: want a new probe that starts from the old verdict (passing), got %+v", st)
	}
	wait.For(t, "the changed probe passes again", func() bool { return s.Healthy(Readiness, "side") })
	if _, ok := statusOf(s, "gone"); ok {
		t.Fatal("a removed probe is still in /status")
	}
	if n := testutil.CollectAndCount(reg, "tidegate_probe_up"); n != 2 {
		t.Fatalf("tidegate_probe_up has %d series after removing one of 3 probes, want 2", n)
	}
}

// TestUpdateRefusesBadSpecs: an invalid reload changes nothing.
func TestUpdateRefusesBadSpecs(t *testing.T) {
	up := listen(t, "127.0.0.1:0")
	s, err := NewSet([]Spec{tcpSpec("a", "app", Readiness, portOf(up))}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "the probe passes", func() bool { return s.Healthy(Readiness, "") })
	err = s.Update([]Spec{tcpSpec("a", "app", Readiness, 0)})
	if err == nil || !strings.Contains(err.Error(), "port 0") {
		t.Fatalf("Update with port 0: %v, want an error naming the port", err)
	}
	if !s.Healthy(Readiness, "") || len(s.Statuses()) != 1 {
		t.Fatalf("a refused update changed the set: %+v", s.Statuses())
	}
}

// TestResetRerunsTheStartupProbe: after a restart of the app, readiness
// fails at once and comes back only once the startup probe passes again.
func TestResetRerunsTheStartupProbe(t *testing.T) {
	up := listen(t, "127.0.0.1:0")
	port := portOf(up)
	s, err := NewSet([]Spec{
		tcpSpec("start", "app", Startup, port),
		tcpSpec("ready", "app", Readiness, port),
	}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "ready", func() bool { return s.Healthy(Readiness, "") })

	_ = up.Close() // the app restarts: its port is closed for a while
	s.Reset()
	if s.Healthy(Startup, "") || s.Healthy(Readiness, "") {
		t.Fatal("after Reset the startup or readiness probe still passes")
	}
	check := s.Checks(Readiness, "")[0]
	if err := check.Func(context.Background()); err == nil || !strings.Contains(err.Error(), "startup") {
		t.Fatalf("readiness after Reset: %v, want waiting for the startup probe", err)
	}
	listen(t, "127.0.0.1:"+strconv.Itoa(port)) // the app listens again
	wait.For(t, "ready again once the app listens", func() bool { return s.Healthy(Readiness, "") })
	if err := check.Func(context.Background()); err != nil {
		t.Fatalf("a check taken before Reset answers for the old probe: %v", err)
	}
}

// TestStartPeriodFollowsAnAppThatStartsLate: with a one-hour period the
// probe would never run again; its start period finds the app at once.
func TestStartPeriodFollowsAnAppThatStartsLate(t *testing.T) {
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(probe)
	_ = probe.Close()
	spec := tcpSpec("upstream", "app", Readiness, port)
	spec.Period, spec.StartPeriod, spec.Implicit = time.Hour, 10*time.Millisecond, true
	s, err := NewSet([]Spec{spec}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "a failed attempt", func() bool { st, _ := statusOf(s, "upstream"); return st.Failures > 0 })
	listen(t, "127.0.0.1:"+strconv.Itoa(port))
	wait.For(t, "ready once the app listens", func() bool { return s.Healthy(Readiness, "") })
	if st, _ := statusOf(s, "upstream"); !st.Implicit {
		t.Fatalf("status does not say the check is implicit: %+v", st)
	}
}

// TestUnixSocketProbe: a connect to a unix socket.
func TestUnixSocketProbe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	spec := Spec{Kind: Readiness, TCPSocket: &TCPSocketAction{Unix: path}}.WithDefaults()
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := spec.Target(); got != "unix://"+path {
		t.Fatalf("target %q", got)
	}
	r := testRunner(t, spec)
	if out := once(t, r); out.OK {
		t.Fatal("probe passed with nothing listening on the socket")
	}
	listen := func() net.Listener {
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	ln := listen()
	defer ln.Close()
	if out := once(t, r); !out.OK {
		t.Fatalf("probe failed with the socket listening: %s", out.Reason)
	}
}

// TestUpdateCarriesTheVerdict: a reload that edits a probe keeps its
// verdict until the new one has results: readiness does not fail because
// of a config edit, and a passed startup probe is not run again.
func TestUpdateCarriesTheVerdict(t *testing.T) {
	up := listen(t, "127.0.0.1:0")
	start := tcpSpec("app/startup", "app", Startup, portOf(up))
	ready := tcpSpec("app/readiness", "app", Readiness, portOf(up))
	s, err := NewSet([]Spec{start, ready}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "ready", func() bool { return s.Healthy(Readiness, "") })

	// The edited probes point at a port where nothing listens: the startup
	// probe would never pass again, and readiness fails only after
	// failureThreshold attempts.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := portOf(dead)
	_ = dead.Close()
	start2, ready2 := tcpSpec("app/startup", "app", Startup, deadPort), tcpSpec("app/readiness", "app", Readiness, deadPort)
	ready2.Period, ready2.FailureThreshold = time.Hour, 2
	if err := s.Update([]Spec{start2, ready2}); err != nil {
		t.Fatal(err)
	}
	if !s.Healthy(Startup, "") || !s.Healthy(Readiness, "") {
		t.Fatal("editing the probes failed start-up or readiness before the new probes ran")
	}
	wait.For(t, "the edited readiness probe's first attempt", func() bool { st, _ := statusOf(s, "app/readiness"); return st.Failures == 1 })
	if !s.Healthy(Readiness, "") {
		t.Fatal("one failure failed readiness; the threshold is 2")
	}
	if st, _ := statusOf(s, "app/startup"); st.Probed {
		t.Fatalf("the passed startup probe ran again after the edit: %+v", st)
	}
	// A probe of a new name starts from Kubernetes' initial state: not
	// ready (and, pointed at the dead port, never).
	fresh := tcpSpec("other", "app", Readiness, deadPort)
	if err := s.Update([]Spec{start2, fresh}); err != nil {
		t.Fatal(err)
	}
	if s.Healthy(Readiness, "") {
		t.Fatal("a new readiness probe passed before it ran")
	}
	wait.For(t, "the new probe's first failure", func() bool { st, _ := statusOf(s, "other"); return st.Failures >= 1 })
	if s.Healthy(Readiness, "") {
		t.Fatal("a new readiness probe against a dead port passes")
	}
}
