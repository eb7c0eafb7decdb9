package drain

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Phase is a step of the sidecar's life. Phases only move forward.
type Phase int32

// The phases, in order.
const (
	Starting    Phase = iota // listeners bound, not ready yet
	Serving                  // proxying; readiness follows the app
	Draining                 // readiness failed for good; still accepting while load balancers notice
	Closing                  // listeners closed; finishing what is in flight until the deadline
	StoppingApp              // in-flight work is done or cut; the app is being stopped
	Stopped                  // everything stopped; the process is about to exit
	numPhases
)

var phaseNames = [numPhases]string{"starting", "serving", "draining", "closing", "stopping_app", "stopped"}

func (p Phase) String() string {
	if p >= 0 && p < numPhases {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int32(p))
}

// MarshalText encodes the phase by name, for /status.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Phases lists every phase in order.
func Phases() []Phase {
	ps := make([]Phase, numPhases)
	for i := range ps {
		ps[i] = Phase(i)
	}
	return ps
}

// LifecycleOptions configures a Lifecycle.
type LifecycleOptions struct {
	// Registerer receives tidegate_phase{phase}. Nil means no metric.
	Registerer prometheus.Registerer
	// Logger receives one line per phase change. Nil means no logs.
	Logger *zap.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// OnChange, if set, is called after every phase change, synchronously
	// and outside the lock, before Advance or Reopen returns: for state
	// that must follow the phase at once (the gRPC health latch).
	OnChange func(from, to Phase)
}

// Lifecycle holds the current phase and when it was entered. It is safe for
// concurrent use. Readers that need to react to a change wait on Changed.
type Lifecycle struct {
	mu          sync.Mutex
	phase       Phase
	since       time.Time
	changed     chan struct{} // closed and replaced on every change
	beforeDrain Phase         // where an undrain returns to: starting or serving

	now      func() time.Time
	log      *zap.Logger
	onChange func(from, to Phase)
}

// NewLifecycle returns a Lifecycle in phase Starting and registers
// tidegate_phase (1 for the current phase, 0 for the others).
func NewLifecycle(o LifecycleOptions) (*Lifecycle, error) {
	l := &Lifecycle{now: o.Now, log: o.Logger, onChange: o.OnChange, changed: make(chan struct{})}
	if l.now == nil {
		l.now = time.Now
	}
	if l.log == nil {
		l.log = zap.NewNop()
	}
	l.since = l.now()
	if o.Registerer != nil {
		if err := o.Registerer.Register(phaseCollector{l}); err != nil {
			return nil, fmt.Errorf("register tidegate_phase: %w", err)
		}
	}
	return l, nil
}

// Phase returns the current phase.
func (l *Lifecycle) Phase() Phase {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.phase
}

// State returns the current phase and when it was entered.
func (l *Lifecycle) State() (Phase, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.phase, l.since
}

// Changed returns a channel closed at the next phase change.
func (l *Lifecycle) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Advance moves to phase to if it is later than the current one, logs the
// change with the given fields, and reports whether it moved.
func (l *Lifecycle) Advance(to Phase, fields ...zap.Field) bool {
	if to < 0 || to >= numPhases {
		return false
	}
	return l.move(func(from Phase) bool { return to > from }, to, fields)
}

// Reopen moves Draining back to the phase it came from, Starting or Serving
// (an explicit undrain), and reports whether it did. It is the only way
// back: from any other phase it refuses.
func (l *Lifecycle) Reopen() bool {
	l.mu.Lock()
	back := l.beforeDrain
	l.mu.Unlock()
	return l.move(func(from Phase) bool { return from == Draining }, back, []zap.Field{zap.String("reason", "undrain")})
}

// move sets the phase to to if allowed(current) holds, wakes Changed
// waiters and logs the change.
func (l *Lifecycle) move(allowed func(from Phase) bool, to Phase, fields []zap.Field) bool {
	l.mu.Lock()
	from := l.phase
	if !allowed(from) {
		l.mu.Unlock()
		return false
	}
	if to == Draining {
		l.beforeDrain = from
	}
	l.phase, l.since = to, l.now()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	l.log.Info("phase changed", append([]zap.Field{zap.Stringer("phase", to), zap.Stringer("from", from)}, fields...)...)
	if l.onChange != nil {
		l.onChange(from, to)
	}
	return true
}

var phaseDesc = prometheus.NewDesc("tidegate_phase",
	"Lifecycle phase of the sidecar: 1 for the current phase, 0 for the others.",
	[]string{"phase"}, nil)

type phaseCollector struct{ l *Lifecycle }

func (c phaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- phaseDesc }

func (c phaseCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.l.Phase()
	for _, p := range Phases() {
		v := 0.0
		if p == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(phaseDesc, prometheus.GaugeValue, v, p.String())
	}
}
