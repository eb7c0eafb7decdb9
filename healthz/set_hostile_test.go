package healthz

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidegate/tidegate/test/wait"
)

// A hostile second look at Set: Reset (an app restart, from the child's
// goroutine) racing Update (a config reload, from the event loop), Update
// racing Run's start, and the metrics a changed probe leaves behind.

// flagApp answers its probe 200 while ok is set, else 500.
func flagApp(t *testing.T) (*atomic.Bool, *HTTPGetAction) {
	t.Helper()
	var ok atomic.Bool
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ok.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(app.Close)
	u, err := url.Parse(app.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return &ok, &HTTPGetAction{Host: u.Hostname(), Port: port, Path: "/ready"}
}

// TestHostileResetRacingUpdateIsNotLost: the app restarts (Reset) while a
// reload that leaves the probes alone runs (Update). In either order the
// result is a reset probe: not ready until it passes again. A lost Reset
// keeps the old run's "ready", and the gate lets requests through to an app
// that is not listening yet.
func TestHostileResetRacingUpdateIsNotLost(t *testing.T) {
	ok, get := flagApp(t)
	// One attempt right away, then not for an hour; three failures to fail.
	spec := Spec{Name: "ready", Container: "app", Kind: Readiness, HTTPGet: get,
		Period: time.Hour, Timeout: time.Second, FailureThreshold: 3}
	s, err := NewSet([]Spec{spec}, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	const rounds = 100
	for i := range rounds {
		ok.Store(true)
		s.Reset()
		wait.For(t, "the probe passes", func() bool { return s.Healthy(Readiness, "") })

		ok.Store(false) // the app died; it restarts
		var wg sync.WaitGroup
		wg.Go(s.Reset)
		wg.Go(func() {
			if err := s.Update([]Spec{spec}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		wait.Until(t, 5*time.Second, "the probe's first attempt after the restart", func() (bool, string) {
			st, _ := statusOf(s, "ready")
			return st.Probed, fmt.Sprintf("%+v", st)
		})
		if s.Healthy(Readiness, "") {
			st, _ := statusOf(s, "ready")
			t.Fatalf("round %d: ready after a restart whose app fails its probe: the Reset was lost to the concurrent Update (%+v)", i, st)
		}
	}
}

// TestHostileUpdateRacingRunStarts: a reload's Update as Run starts: the
// probes in force afterwards run.
func TestHostileUpdateRacingRunStarts(t *testing.T) {
	ok, get := flagApp(t)
	ok.Store(true)
	for i := range 20 {
		old := Spec{Name: "old", Container: "app", Kind: Readiness, HTTPGet: get, Period: time.Hour, Timeout: time.Second}
		s, err := NewSet([]Spec{old}, SetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		neu := old
		neu.Name = "new-" + strconv.Itoa(i)
		if err := s.Update([]Spec{neu}); err != nil {
			t.Fatal(err)
		}
		wait.For(t, "the updated probe ran", func() bool { st, _ := statusOf(s, neu.Name); return st.Probed })
		cancel()
		<-done
	}
}

// TestHostileProbeKindChangeLeavesNoSeries: a reload that keeps a probe's
// name but changes its kind leaves no tidegate_probe_up series for the old
// kind, which would stay at its last value for good.
func TestHostileProbeKindChangeLeavesNoSeries(t *testing.T) {
	ok, get := flagApp(t)
	ok.Store(true)
	reg := prometheus.NewRegistry()
	spec := Spec{Name: "check", Container: "app", Kind: Liveness, HTTPGet: get, Period: time.Hour, Timeout: time.Second}
	s, err := NewSet([]Spec{spec}, SetOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runSet(t, s)
	wait.For(t, "the liveness probe ran", func() bool { st, _ := statusOf(s, "check"); return st.Probed })
	spec.Kind = Readiness
	if err := s.Update([]Spec{spec}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the readiness probe ran", func() bool { st, _ := statusOf(s, "check"); return st.Probed && st.Kind == Readiness })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tidegate_probe_up" && mf.GetName() != "tidegate_probe_transitions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == string(Liveness) {
					t.Errorf("%s{probe=check,kind=liveness} is still exported after the probe became a readiness probe", mf.GetName())
				}
			}
		}
	}
}
