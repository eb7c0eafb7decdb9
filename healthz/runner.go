package healthz

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Status is a probe's state as the handlers and /status see it.
type Status struct {
	Name      string    `json:"name"`
	Container string    `json:"container"`
	Kind      Kind      `json:"kind"`
	Target    string    `json:"target"`
	Healthy   bool      `json:"healthy"`
	Probed    bool      `json:"probed"` // at least one attempt has finished
	Reason    string    `json:"reason,omitempty"`
	Output    string    `json:"output,omitempty"`
	LastAt    time.Time `json:"last_at,omitzero"`
	Successes int       `json:"consecutive_successes"`
	Failures  int       `json:"consecutive_failures"`
	// Implicit is true for the check tidegate adds itself when no
	// readiness probe is configured (a connect to the upstream).
	Implicit bool `json:"implicit,omitempty"`

	everPassed bool
}

// runner probes one Spec on its schedule and keeps its state. Handlers
// only read that state: however many clients ask /readyz, the app sees one
// probe per period.
type runner struct {
	spec   Spec
	prober prober
	log    *zap.Logger
	m      *probeMetrics
	// gate, if not nil, is closed when the container's startup probe has
	// passed; readiness and liveness probes do not run before.
	gate    <-chan struct{}
	changed func() // called after every transition
	cancel  func() // ends run; set by the Set, under its lock, when it starts the runner

	mu     sync.Mutex
	st     Status
	passed chan struct{} // startup probes: closed on the first success
}

func newRunner(s Spec, version string, log *zap.Logger, m *probeMetrics) *runner {
	r := &runner{spec: s, prober: newProber(s, version), log: log.With(zap.String("probe", s.Name)), m: m,
		passed: make(chan struct{})}
	r.st = Status{Name: s.Name, Container: s.Container, Kind: s.Kind, Target: s.Target(), Implicit: s.Implicit,
		// Kubernetes' initial states: not ready, alive, not started.
		Healthy: s.Kind == Liveness}
	m.up.WithLabelValues(s.Name, string(s.Kind)).Set(b2f(r.st.Healthy))
	return r
}

// run probes until ctx ends (a startup probe stops after its first pass).
func (r *runner) run(ctx context.Context) {
	if r.spec.Kind == Startup && isClosed(r.passed) {
		return // passed before a reload restarted it: start-up is over
	}
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return
		}
	}
	if d := r.spec.InitialDelay; d > 0 && !r.passedOnce() { // a probe restarted by a reload does not wait again
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		start := time.Now()
		if r.attempt(ctx) && r.spec.Kind == Startup {
			return // the kubelet stops a startup probe once it has passed
		}
		// One attempt per period, counted from the attempt's start.
		next.Reset(max(r.period()-time.Since(start), 0))
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
	}
}

// passedOnce reports whether the probe has passed (or inherited a pass).
func (r *runner) passedOnce() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.everPassed
}

// period is the wait between attempts: StartPeriod until the probe has
// passed once, then Period.
func (r *runner) period() time.Duration {
	if r.spec.StartPeriod <= 0 || r.passedOnce() {
		return r.spec.Period
	}
	return r.spec.StartPeriod
}

// attempt runs one probe with its timeout and applies the thresholds; it
// reports whether the probe is healthy afterwards.
func (r *runner) attempt(ctx context.Context) bool {
	actx, cancel := context.WithTimeout(ctx, r.spec.Timeout)
	start := time.Now()
	out := r.prober.probe(actx)
	cancel()
	if ctx.Err() != nil {
		return false // shutting down: not a result
	}
	r.m.duration.WithLabelValues(r.spec.Name).Observe(time.Since(start).Seconds())
	return r.apply(out, start)
}

// apply counts a result against the thresholds, Kubernetes' way.
func (r *runner) apply(out Outcome, at time.Time) bool {
	r.mu.Lock()
	st := &r.st
	was := st.Healthy
	st.Probed, st.LastAt, st.Reason, st.Output = true, at, out.Reason, out.Output
	if out.OK {
		st.Successes++
		st.Failures = 0
		if !st.Healthy && st.Successes >= r.spec.SuccessThreshold {
			st.Healthy = true
		}
	} else {
		st.Failures++
		st.Successes = 0
		if st.Healthy && st.Failures >= r.spec.FailureThreshold {
			st.Healthy = false
		}
	}
	now := st.Healthy
	// A probe that has never passed fails without a transition: say so
	// once, so that an operator can see why start-up is stuck.
	firstFailure := !out.OK && !was && st.Failures == 1 && !st.everPassed
	if now {
		st.everPassed = true
	}
	first := now && r.spec.Kind == Startup && !isClosed(r.passed)
	if first {
		close(r.passed)
	}
	reason := st.Reason
	failures := st.Failures
	r.mu.Unlock()

	if firstFailure {
		r.log.Info("probe not passing yet", zap.String("kind", string(r.spec.Kind)), zap.String("target", r.spec.Target()),
			zap.String("reason", reason))
	}
	if now != was {
		r.m.up.WithLabelValues(r.spec.Name, string(r.spec.Kind)).Set(b2f(now))
		r.m.transitions.WithLabelValues(r.spec.Name, string(r.spec.Kind)).Inc()
		if now {
			r.log.Info("probe passing", zap.String("kind", string(r.spec.Kind)), zap.String("target", r.spec.Target()))
		} else {
			r.log.Warn("probe failing", zap.String("kind", string(r.spec.Kind)), zap.String("target", r.spec.Target()),
				zap.String("reason", reason), zap.Int("failures", failures))
		}
		if r.changed != nil {
			r.changed()
		}
	}
	return now
}

func (r *runner) status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// verdict is the probe's answer now: nil when it passes. started says
// whether the container's startup probe (if any) has passed.
func (r *runner) verdict(started bool) error {
	st := r.status()
	switch {
	case !started && r.spec.Kind == Readiness:
		return fmt.Errorf("waiting for the startup probe")
	case !started && r.spec.Kind == Liveness:
		return nil // not evaluated until start-up, as the kubelet
	case st.Healthy:
		return nil
	case !st.Probed:
		return fmt.Errorf("not probed yet")
	default:
		return fmt.Errorf("%s (%d in a row)", st.Reason, st.Failures)
	}
}

// info describes the target and the last attempt, for ?verbose.
func (r *runner) info() string {
	st := r.status()
	if !st.Probed {
		return st.Target
	}
	return fmt.Sprintf("%s, last %s ago", st.Target, time.Since(st.LastAt).Round(time.Millisecond))
}

// inherit starts r from old's verdict: passing or not, and a startup
// probe passed. r has not run yet.
func (r *runner) inherit(old *runner) {
	st := old.status()
	r.mu.Lock()
	r.st.Healthy, r.st.everPassed = st.Healthy, st.everPassed
	r.mu.Unlock()
	if r.spec.Kind == Startup && isClosed(old.passed) {
		close(r.passed)
	}
	r.m.up.WithLabelValues(r.spec.Name, string(r.spec.Kind)).Set(b2f(st.Healthy))
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// probeMetrics are the probe series, shared by every runner of a Set.
type probeMetrics struct {
	up          *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
}

func newProbeMetrics(reg prometheus.Registerer) (*probeMetrics, error) {
	m := &probeMetrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tidegate_probe_up",
			Help: "1 if the probe is passing (after its thresholds), else 0.",
		}, []string{"probe", "kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tidegate_probe_duration_seconds",
			Help:    "Time one probe attempt took.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"probe"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_probe_transitions_total",
			Help: "Times a probe changed between passing and failing.",
		}, []string{"probe", "kind"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.up, m.duration, m.transitions} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register probe metrics: %w", err)
			}
		}
	}
	return m, nil
}

// forgetKind drops the series of a probe's old kind, when a reload keeps
// its name for a probe of another kind.
func (m *probeMetrics) forgetKind(s Spec) {
	m.up.DeleteLabelValues(s.Name, string(s.Kind))
	m.transitions.DeleteLabelValues(s.Name, string(s.Kind))
}

// forget drops a removed probe's series.
func (m *probeMetrics) forget(s Spec) {
	m.up.DeleteLabelValues(s.Name, string(s.Kind))
	m.duration.DeleteLabelValues(s.Name)
	m.transitions.DeleteLabelValues(s.Name, string(s.Kind))
}
