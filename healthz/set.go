package healthz

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// SetOptions configures a Set.
type SetOptions struct {
	// Registerer receives tidegate_probe_up, tidegate_probe_duration_seconds
	// and tidegate_probe_transitions_total. Nil means no metrics.
	Registerer prometheus.Registerer
	// Logger receives one line per probe transition (never one per attempt).
	// Nil means no logs.
	Logger *zap.Logger
	// Version goes into the probes' User-Agent: tidegate-probe/<version>.
	Version string
}

// Set runs the app's probes and answers for them, per container and as a
// whole. Safe for concurrent use.
type Set struct {
	runners    []*runner
	startup    map[string]*runner // container → its startup probe
	containers []string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every transition
}

// NewSet validates specs (naming the offending probe and field), fills in
// Kubernetes' defaults and returns a Set that probes once Run is called.
// Each container may have one startup probe.
func NewSet(specs []Spec, o SetOptions) (*Set, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	m, err := newProbeMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Set{startup: map[string]*runner{}, changed: make(chan struct{})}
	names := map[string]bool{}
	counts := map[string]int{}
	for i, spec := range specs {
		spec = spec.WithDefaults()
		if spec.Name == "" {
			base := spec.Container + "/" + string(spec.Kind)
			counts[base]++
			spec.Name = base
			if n := counts[base]; n > 1 {
				spec.Name = base + "-" + strconv.Itoa(n)
			}
		}
		label := fmt.Sprintf("probe %d (%s)", i+1, spec.Name)
		if err := spec.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		if strings.ContainsAny(spec.Container, "/ ") || strings.Contains(spec.Name, " ") {
			return nil, fmt.Errorf("%s: container and probe names may not contain '/' or spaces", label)
		}
		if names[spec.Name] {
			return nil, fmt.Errorf("%s: the name is used twice", label)
		}
		names[spec.Name] = true
		r := newRunner(spec, o.Version, o.Logger.Named("probe"), m)
		r.changed = s.notify
		if spec.Kind == Startup {
			if s.startup[spec.Container] != nil {
				return nil, fmt.Errorf("%s: container %q already has a startup probe", label, spec.Container)
			}
			s.startup[spec.Container] = r
		}
		if !slices.Contains(s.containers, spec.Container) {
			s.containers = append(s.containers, spec.Container)
		}
		s.runners = append(s.runners, r)
	}
	for _, r := range s.runners {
		if st := s.startup[r.spec.Container]; st != nil && r.spec.Kind != Startup {
			r.gate = st.passed
		}
	}
	return s, nil
}

func (s *Set) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Changed returns a channel closed at the next probe transition.
func (s *Set) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Run probes until ctx ends, then returns once every probe has stopped.
func (s *Set) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range s.runners {
		wg.Go(func() { r.run(ctx) })
	}
	wg.Wait()
}

// Empty reports whether the Set has no probes.
func (s *Set) Empty() bool { return len(s.runners) == 0 }

// Containers lists the containers that have probes, in configuration order.
func (s *Set) Containers() []string { return slices.Clone(s.containers) }

// started reports whether container's startup probe (if any) has passed.
func (s *Set) started(container string) bool {
	r := s.startup[container]
	return r == nil || isClosed(r.passed)
}

// Checks returns the checks of one kind, for one container or, with
// container "", for all.
func (s *Set) Checks(kind Kind, container string) []Check {
	var cs []Check
	for _, r := range s.runners {
		if r.spec.Kind != kind || (container != "" && r.spec.Container != container) {
			continue
		}
		c := r.spec.Container
		cs = append(cs, r.check(func() bool { return s.started(c) }))
	}
	return cs
}

// Healthy reports whether every check of a kind passes, for one container
// or, with container "", for all.
func (s *Set) Healthy(kind Kind, container string) bool {
	for _, c := range s.Checks(kind, container) {
		if c.Func(context.Background()) != nil {
			return false
		}
	}
	return true
}

// Statuses returns every probe's state, for /status.
func (s *Set) Statuses() []Status {
	out := make([]Status, 0, len(s.runners))
	for _, r := range s.runners {
		out = append(out, r.status())
	}
	return out
}
