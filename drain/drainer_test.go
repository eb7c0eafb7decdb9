package drain

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeTraffic is a settable Traffic.
type fakeTraffic struct {
	inflight atomic.Int64
	requests atomic.Uint64
	conns    atomic.Int64
	last     atomic.Int64 // unix nanos
}

func (f *fakeTraffic) InFlight() int64         { return f.inflight.Load() }
func (f *fakeTraffic) Requests() uint64        { return f.requests.Load() }
func (f *fakeTraffic) ConnectionsTotal() int64 { return f.conns.Load() }
func (f *fakeTraffic) LastActivity() time.Time { return time.Unix(0, f.last.Load()) }

// request simulates a non-probe request arriving now and lasting d.
func (f *fakeTraffic) request(d time.Duration) {
	f.requests.Add(1)
	f.inflight.Add(1)
	f.last.Store(time.Now().UnixNano())
	time.AfterFunc(d, func() { f.inflight.Add(-1) })
}

// fakeFrontend records what the drainer did to the listeners; Shutdown
// waits for in-flight to reach zero like http.Server.Shutdown.
type fakeFrontend struct {
	t        *fakeTraffic
	mu       sync.Mutex
	calls    []string
	closedAt time.Time
}

func (f *fakeFrontend) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeFrontend) BeginDrain() { f.record("begin") }
func (f *fakeFrontend) EndDrain()   { f.record("end") }
func (f *fakeFrontend) Close() error {
	f.record("close")
	f.t.inflight.Store(0) // cutting the connections ends their requests
	return nil
}

func (f *fakeFrontend) Shutdown(ctx context.Context) error {
	f.record("shutdown")
	f.mu.Lock()
	f.closedAt = time.Now()
	f.mu.Unlock()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for f.t.InFlight() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func (f *fakeFrontend) history() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ",")
}

// fakeApp records when it was asked to stop and how much was in flight.
type fakeApp struct {
	t            *fakeTraffic
	stoppedAt    time.Time
	inflightSeen int64
}

func (a *fakeApp) Strategy() string { return "fake" }
func (a *fakeApp) Stop(context.Context) AppExit {
	a.stoppedAt, a.inflightSeen = time.Now(), a.t.InFlight()
	return AppExit{Strategy: "fake", Status: "exited"}
}

type rig struct {
	traffic *fakeTraffic
	front   *fakeFrontend
	app     *fakeApp
	life    *Lifecycle
	reg     *prometheus.Registry
	d       *Drainer
}

func newRig(t *testing.T, delay, quiet, timeout time.Duration) *rig {
	t.Helper()
	r := &rig{traffic: &fakeTraffic{}, reg: prometheus.NewRegistry()}
	r.front = &fakeFrontend{t: r.traffic}
	r.app = &fakeApp{t: r.traffic}
	var err error
	r.life, err = NewLifecycle(LifecycleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.life.Advance(Serving)
	r.d, err = New(Options{Delay: delay, Quiet: quiet, Timeout: timeout, Traffic: r.traffic, Frontend: r.front,
		App: r.app, Lifecycle: r.life, Registerer: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run starts the drainer and returns a channel with its report.
func (r *rig) run() <-chan Report {
	ch := make(chan Report, 1)
	go func() { ch <- r.d.Run(context.Background()) }()
	return ch
}

func TestReadinessFailsAtTriggerAndDelayKeepsAccepting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 5*time.Second, time.Second, 30*time.Second)
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		if p := r.life.Phase(); p != Draining {
			t.Fatalf("phase right after the trigger: %s, want draining", p)
		}
		synctest.Wait()
		if h := r.front.history(); h != "begin" {
			t.Fatalf("frontend before the delay: %q, want only begin (still accepting)", h)
		}
		rep := <-reports
		if got := rep.ClosingAt.Sub(start); got != 5*time.Second {
			t.Fatalf("closed after %s, want exactly the 5s delay (nothing in flight, no activity)", got)
		}
		if rep.Result != "complete" || rep.Cut != 0 || r.life.Phase() != Stopped {
			t.Fatalf("report %+v, phase %s", rep, r.life.Phase())
		}
		if h := r.front.history(); h != "begin,shutdown" {
			t.Fatalf("frontend calls %q", h)
		}
	})
}

func TestQuietPeriodWaitsForTrafficToStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, time.Second, 2*time.Second, 30*time.Second)
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		// A load balancer keeps sending for 4s after the trigger.
		for range 40 {
			r.traffic.request(50 * time.Millisecond)
			time.Sleep(100 * time.Millisecond)
		}
		lastArrival := time.Unix(0, r.traffic.last.Load())
		rep := <-reports
		if rep.ClosingAt.Sub(lastArrival) < 2*time.Second || rep.ClosingAt.Sub(lastArrival) > 2*time.Second+10*time.Millisecond {
			t.Fatalf("closed %s after the last arrival, want the 2s quiet period", rep.ClosingAt.Sub(lastArrival))
		}
		if rep.Result != "complete" || rep.Completed != 40 || rep.Cut != 0 {
			t.Fatalf("report %+v", rep)
		}
		if rep.ClosingAt.Sub(start) != 5900*time.Millisecond { // last arrival at 3.9s, plus 2s quiet
			t.Fatalf("closed %s after the trigger", rep.ClosingAt.Sub(start))
		}
	})
}

func TestProbeTrafficDoesNotHoldTheDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, time.Second, 30*time.Second)
		r.traffic.last.Store(time.Now().Add(-time.Hour).UnixNano())
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		// Probes are counted in flight while they run but never move LastActivity.
		probesDone := make(chan struct{})
		defer func() { <-probesDone }()
		go func() {
			defer close(probesDone)
			for range 20 {
				r.traffic.inflight.Add(1)
				time.Sleep(time.Millisecond)
				r.traffic.inflight.Add(-1)
				time.Sleep(99 * time.Millisecond)
			}
		}()
		rep := <-reports
		if d := rep.ClosingAt.Sub(start); d > 20*time.Millisecond {
			t.Fatalf("probe traffic held the drain for %s", d)
		}
	})
}

func TestWaitsForInFlightThenStopsApp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 0, 30*time.Second)
		r.traffic.request(3 * time.Second) // started just before SIGTERM
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		rep := <-reports
		if d := rep.ClosingAt.Sub(start); d < 3*time.Second || d > 3*time.Second+10*time.Millisecond {
			t.Fatalf("closed after %s, want when the 3s request ended", d)
		}
		if r.app.inflightSeen != 0 || r.app.stoppedAt.Before(start.Add(3*time.Second)) {
			t.Fatalf("app stopped at %s with %d in flight", r.app.stoppedAt.Sub(start), r.app.inflightSeen)
		}
		if rep.Result != "complete" || rep.InFlightAtTrigger != 1 || rep.Completed != 1 {
			t.Fatalf("report %+v", rep)
		}
	})
}

func TestTimeoutCutsAndCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, time.Second, 0, 5*time.Second)
		r.traffic.request(time.Hour)
		r.traffic.request(time.Hour)
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		rep := <-reports
		if rep.Result != "timeout" || rep.Cut != 2 {
			t.Fatalf("report %+v, want timeout with 2 cut", rep)
		}
		if d := rep.LastRequestAt.Sub(start); d != 5*time.Second {
			t.Fatalf("cut after %s, want the 5s timeout", d)
		}
		if h := r.front.history(); h != "begin,shutdown,close" {
			t.Fatalf("frontend calls %q", h)
		}
		if got := testutil.ToFloat64(r.d.cut); got != 2 {
			t.Fatalf("tidegate_drain_cut_requests_total = %v", got)
		}
		if got := testutil.ToFloat64(r.d.drains.WithLabelValues("SIGTERM", "timeout")); got != 1 {
			t.Fatalf("tidegate_drains_total{SIGTERM,timeout} = %v", got)
		}
		if r.app.inflightSeen != 0 {
			t.Fatal("the app was stopped while requests were still in flight")
		}
	})
}

func TestSecondSignalStopsNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 5*time.Second, time.Second, 30*time.Second)
		r.traffic.request(time.Hour)
		reports := r.run()
		start := time.Now()
		r.d.Trigger("SIGTERM")
		time.Sleep(time.Second)
		r.d.Force("SIGTERM")
		rep := <-reports
		if rep.Result != "forced" || rep.Cut != 1 {
			t.Fatalf("report %+v", rep)
		}
		if d := rep.StoppedAt.Sub(start); d > time.Second+10*time.Millisecond {
			t.Fatalf("stopped %s after the trigger, want right after the second signal", d)
		}
	})
}

func TestUndrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 5*time.Second, 0, 30*time.Second)
		reports := r.run()
		r.d.Trigger("admin")
		time.Sleep(time.Second)
		if err := r.d.Undrain(); err != nil {
			t.Fatal(err)
		}
		if p := r.life.Phase(); p != Serving {
			t.Fatalf("phase after undrain: %s", p)
		}
		synctest.Wait()
		if h := r.front.history(); h != "begin,end" {
			t.Fatalf("frontend calls after undrain: %q", h)
		}
		time.Sleep(10 * time.Second) // well past the old delay: nothing may close
		if h := r.front.history(); h != "begin,end" {
			t.Fatalf("the canceled drain still closed: %q", h)
		}
		start := time.Now()
		r.d.Trigger("SIGTERM")
		rep := <-reports
		if rep.Trigger != "SIGTERM" || rep.ClosingAt.Sub(start) != 5*time.Second {
			t.Fatalf("second drain: %+v", rep)
		}
		if err := r.d.Undrain(); !errors.Is(err, ErrTooLate) {
			t.Fatalf("undrain after stopped: %v, want ErrTooLate", err)
		}
	})
}

// upgradeFrontend's Shutdown returns at once while a request it cannot see
// (an upgraded connection) is still running, as http.Server does.
type upgradeFrontend struct {
	fakeFrontend
	lasts time.Duration
}

func (f *upgradeFrontend) Shutdown(ctx context.Context) error {
	f.t.request(f.lasts)
	return nil
}

func TestWaitsForUpgradedConnectionsShutdownIgnores(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 0, 30*time.Second)
		front := &upgradeFrontend{fakeFrontend: fakeFrontend{t: r.traffic}, lasts: 2 * time.Second}
		d, err := New(Options{Timeout: 30 * time.Second, Traffic: r.traffic, Frontend: front, App: r.app, Lifecycle: r.life})
		if err != nil {
			t.Fatal(err)
		}
		reports := make(chan Report, 1)
		go func() { reports <- d.Run(context.Background()) }()
		start := time.Now()
		d.Trigger("SIGTERM")
		rep := <-reports
		if d := rep.LastRequestAt.Sub(start); rep.Result != "complete" || d < 2*time.Second || d > 2*time.Second+10*time.Millisecond || r.app.inflightSeen != 0 {
			t.Fatalf("report %+v; app saw %d in flight", rep, r.app.inflightSeen)
		}
	})
}

// An app that died: skip the delay and quiet period, but cut nothing.
func TestExpediteSkipsDelayButNotInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 5*time.Second, 2*time.Second, 30*time.Second)
		r.traffic.request(time.Second)
		reports := r.run()
		start := time.Now()
		r.d.Expedite("app_exit")
		rep := <-reports
		if d := rep.ClosingAt.Sub(start); d < time.Second || d > time.Second+10*time.Millisecond {
			t.Fatalf("closed after %s, want when the 1s request ended (no delay, no quiet)", d)
		}
		if rep.Trigger != "app_exit" || rep.Result != "complete" || rep.Cut != 0 {
			t.Fatalf("report %+v", rep)
		}
		if err := r.d.Undrain(); !errors.Is(err, ErrTooLate) {
			t.Fatalf("undrain of an expedited drain: %v", err)
		}
	})
}

func TestTriggerIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 0, 0, time.Second)
		reports := r.run()
		if !r.d.Trigger("admin") || r.d.Trigger("SIGTERM") {
			t.Fatal("only the first trigger starts the drain")
		}
		if rep := <-reports; rep.Trigger != "admin" {
			t.Fatalf("trigger %q, want the first one", rep.Trigger)
		}
	})
}

func TestNewValidates(t *testing.T) {
	life, _ := NewLifecycle(LifecycleOptions{})
	tr := &fakeTraffic{}
	base := Options{Traffic: tr, Frontend: &fakeFrontend{t: tr}, App: NoApp{}, Lifecycle: life}
	for _, mut := range []func(*Options){
		func(o *Options) { o.Delay, o.Timeout = 10*time.Second, 5*time.Second },
		func(o *Options) { o.Quiet = -time.Second },
		func(o *Options) { o.App = nil },
	} {
		o := base
		mut(&o)
		if _, err := New(o); err == nil {
			t.Errorf("New accepted %+v", o)
		}
	}
}
