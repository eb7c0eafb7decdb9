package healthz

import (
	"context"
	"fmt"
	"reflect"
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
// whole. Its probes can be replaced while it runs (Update, Reset). Safe for
// concurrent use.
type Set struct {
	o SetOptions
	m *probeMetrics

	// replacing serializes Update and Reset, each from reading the
	// runners to installing the new ones: an app restart (Reset) racing a
	// reload (Update) must not have its fresh runners swapped back for the
	// old ones.
	replacing sync.Mutex

	mu         sync.Mutex
	runners    []*runner
	startup    map[string]*runner // container → its startup probe
	containers []string
	changed    chan struct{}   // closed and replaced on every transition and update
	ctx        context.Context // Run's; nil before Run
	wg         sync.WaitGroup  // running probes
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
	s := &Set{o: o, m: m, changed: make(chan struct{})}
	runners, startup, containers, err := s.build(specs, nil, false)
	if err != nil {
		return nil, err
	}
	s.runners, s.startup, s.containers = runners, startup, containers
	return s, nil
}

// build validates specs and makes their runners. A runner of keep is
// reused, state and all, when every probe of its container is unchanged;
// a new runner for a probe of keep's with the same name and kind starts
// from that probe's verdict (carry), so that editing a probe does not fail
// readiness until the new one has run.
func (s *Set) build(specs []Spec, keep []*runner, carry bool) ([]*runner, map[string]*runner, []string, error) {
	var runners []*runner
	startup := map[string]*runner{}
	var containers []string
	names := map[string]bool{}
	counts := map[string]int{}
	byContainer := map[string][]Spec{}
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
			return nil, nil, nil, fmt.Errorf("%s: %w", label, err)
		}
		if strings.ContainsAny(spec.Container, "/ ") || strings.Contains(spec.Name, " ") {
			return nil, nil, nil, fmt.Errorf("%s: container and probe names may not contain '/' or spaces", label)
		}
		if names[spec.Name] {
			return nil, nil, nil, fmt.Errorf("%s: the name is used twice", label)
		}
		names[spec.Name] = true
		if spec.Kind == Startup {
			if startup[spec.Container] != nil {
				return nil, nil, nil, fmt.Errorf("%s: container %q already has a startup probe", label, spec.Container)
			}
			startup[spec.Container] = &runner{} // placeholder until the runners are made
		}
		if !slices.Contains(containers, spec.Container) {
			containers = append(containers, spec.Container)
		}
		byContainer[spec.Container] = append(byContainer[spec.Container], spec)
	}
	oldByContainer := map[string][]*runner{}
	for _, r := range keep {
		oldByContainer[r.spec.Container] = append(oldByContainer[r.spec.Container], r)
	}
	for _, c := range containers {
		specs, old := byContainer[c], oldByContainer[c]
		same := len(specs) == len(old)
		for i := 0; same && i < len(specs); i++ {
			same = reflect.DeepEqual(specs[i], old[i].spec)
		}
		if same {
			runners = append(runners, old...)
			continue
		}
		for _, spec := range specs {
			r := newRunner(spec, s.o.Version, s.o.Logger.Named("probe"), s.m)
			r.changed = s.notify
			if i := slices.IndexFunc(keep, func(o *runner) bool { return o.spec.Name == spec.Name && o.spec.Kind == spec.Kind }); carry && i >= 0 {
				r.inherit(keep[i])
			}
			runners = append(runners, r)
		}
	}
	for _, r := range runners {
		if r.spec.Kind == Startup {
			startup[r.spec.Container] = r
		}
	}
	for _, r := range runners {
		if st := startup[r.spec.Container]; st != nil && r.spec.Kind != Startup {
			r.gate = st.passed
		}
	}
	return runners, startup, containers, nil
}

// Update replaces the probes with specs, validated as NewSet does; on an
// error nothing changes. The probes of a container whose specs are all
// unchanged keep running with their state; the others restart at once and
// the old ones stop. A restarted probe that has the name and kind of an
// old one starts from its verdict (passing or not, startup passed or not)
// and moves by its own results and thresholds from there: editing a probe
// never fails readiness by itself, and never re-runs a startup probe. A new
// probe starts from Kubernetes' initial state.
func (s *Set) Update(specs []Spec) error {
	s.replacing.Lock()
	defer s.replacing.Unlock()
	s.mu.Lock()
	old := s.runners
	s.mu.Unlock()
	runners, startup, containers, err := s.build(specs, old, true)
	if err != nil {
		return err
	}
	s.swap(runners, startup, containers)
	return nil
}

// Reset starts every probe afresh, as the kubelet does when a container
// restarts: the startup probe runs again, readiness fails until it passes.
func (s *Set) Reset() {
	s.replacing.Lock()
	defer s.replacing.Unlock()
	s.mu.Lock()
	specs := make([]Spec, 0, len(s.runners))
	for _, r := range s.runners {
		specs = append(specs, r.spec)
	}
	s.mu.Unlock()
	runners, startup, containers, err := s.build(specs, nil, false)
	if err != nil {
		panic(fmt.Sprintf("healthz: specs that were valid are not: %v", err)) // a bug
	}
	s.swap(runners, startup, containers)
}

// swap installs runners, starts the new ones if Run is running, stops the
// ones left out, and signals a change.
func (s *Set) swap(runners []*runner, startup map[string]*runner, containers []string) {
	s.mu.Lock()
	old := s.runners
	s.runners, s.startup, s.containers = runners, startup, containers
	for _, r := range runners {
		if !slices.Contains(old, r) && s.ctx != nil {
			s.startLocked(r)
		}
	}
	var stops []func()
	for _, r := range old {
		if !slices.Contains(runners, r) && r.cancel != nil { // set under s.mu by startLocked
			stops = append(stops, r.cancel)
		}
	}
	s.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	for _, r := range old {
		if slices.Contains(runners, r) {
			continue
		}
		switch {
		case !slices.ContainsFunc(runners, func(n *runner) bool { return n.spec.Name == r.spec.Name }):
			s.m.forget(r.spec)
		case !slices.ContainsFunc(runners, func(n *runner) bool { return n.spec.Name == r.spec.Name && n.spec.Kind == r.spec.Kind }):
			s.m.forgetKind(r.spec) // the name lives on as another kind
		}
	}
	s.notify()
}

func (s *Set) startLocked(r *runner) {
	ctx, cancel := context.WithCancel(s.ctx)
	r.cancel = cancel
	s.wg.Go(func() { r.run(ctx) })
}

func (s *Set) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Changed returns a channel closed at the next probe transition or update.
func (s *Set) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Run probes until ctx ends, then returns once every probe has stopped.
// It may be called once.
func (s *Set) Run(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	for _, r := range s.runners {
		s.startLocked(r)
	}
	s.mu.Unlock()
	<-ctx.Done()
	s.wg.Wait()
}

// current returns the runners in configuration order.
func (s *Set) current() []*runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runners
}

// Empty reports whether the Set has no probes.
func (s *Set) Empty() bool { return len(s.current()) == 0 }

// Containers lists the containers that have probes, in configuration order.
func (s *Set) Containers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.containers)
}

// started reports whether container's startup probe (if any) has passed.
func (s *Set) started(container string) bool {
	s.mu.Lock()
	r := s.startup[container]
	s.mu.Unlock()
	return r == nil || isClosed(r.passed)
}

// byName returns the current runner of a probe, or nil.
func (s *Set) byName(name string) *runner {
	for _, r := range s.current() {
		if r.spec.Name == name {
			return r
		}
	}
	return nil
}

// Checks returns the checks of one kind, for one container or, with
// container "", for all.
func (s *Set) Checks(kind Kind, container string) []Check {
	var cs []Check
	for _, r := range s.current() {
		if r.spec.Kind != kind || (container != "" && r.spec.Container != container) {
			continue
		}
		cs = append(cs, s.check(r.spec.Name, r.spec.Container, kind))
	}
	return cs
}

// check is the Check of one probe, found by name when it runs, so that it
// answers for the probe's current runner after Reset or Update.
func (s *Set) check(name, container string, kind Kind) Check {
	return Check{
		Name:      name,
		Container: container,
		Func: func(context.Context) error {
			r := s.byName(name)
			if r == nil || r.spec.Kind != kind {
				return fmt.Errorf("probe %s was removed by a config reload", name)
			}
			return r.verdict(s.started(container))
		},
		Info: func() string {
			if r := s.byName(name); r != nil {
				return r.info()
			}
			return "removed"
		},
	}
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
	runners := s.current()
	out := make([]Status, 0, len(runners))
	for _, r := range runners {
		out = append(out, r.status())
	}
	return out
}
