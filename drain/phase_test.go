package drain

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestLifecycleMovesOnlyForward(t *testing.T) {
	now := time.Unix(100, 0)
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	l, err := NewLifecycle(LifecycleOptions{Registerer: reg, Logger: zap.New(core), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if l.Phase() != Starting {
		t.Fatalf("new lifecycle in %s", l.Phase())
	}
	changed := l.Changed()
	now = now.Add(time.Second)
	if !l.Advance(Serving) {
		t.Fatal("starting → serving refused")
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed on a phase change")
	}
	if l.Advance(Starting) || l.Advance(Serving) || l.Phase() != Serving {
		t.Fatal("a phase went backwards or repeated")
	}
	if p, since := l.State(); p != Serving || !since.Equal(now) {
		t.Fatalf("state %s since %v", p, since)
	}
	if !l.Advance(Closing) || l.Phase() != Closing {
		t.Fatal("skipping forward refused")
	}
	if l.Advance(Phase(42)) {
		t.Fatal("an unknown phase accepted")
	}
	if n := logs.FilterMessage("phase changed").Len(); n != 2 {
		t.Fatalf("%d phase-change log lines, want 2", n)
	}
	if f := logs.All()[1].ContextMap(); f["phase"] != "closing" || f["from"] != "serving" {
		t.Fatalf("log fields %v", f)
	}
	want := `
# HELP tidegate_phase Lifecycle phase of the sidecar: 1 for the current phase, 0 for the others.
# TYPE tidegate_phase gauge
tidegate_phase{phase="closing"} 1
tidegate_phase{phase="draining"} 0
tidegate_phase{phase="serving"} 0
tidegate_phase{phase="starting"} 0
tidegate_phase{phase="stopped"} 0
tidegate_phase{phase="stopping_app"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tidegate_phase"); err != nil {
		t.Fatal(err)
	}
}

func TestPhaseNames(t *testing.T) {
	want := []string{"starting", "serving", "draining", "closing", "stopping_app", "stopped"}
	for i, p := range Phases() {
		if p.String() != want[i] {
			t.Errorf("phase %d is %q, want %q", i, p, want[i])
		}
		if b, _ := p.MarshalText(); string(b) != want[i] {
			t.Errorf("phase %d marshals as %q", i, b)
		}
	}
	if s := Phase(9).String(); s != "phase(9)" {
		t.Errorf("unknown phase prints %q", s)
	}
}

func TestRegisterTwiceFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewLifecycle(LifecycleOptions{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLifecycle(LifecycleOptions{Registerer: reg}); err == nil {
		t.Fatal("a second lifecycle registered tidegate_phase twice without error")
	}
}

func TestReopenReturnsWhereTheDrainStarted(t *testing.T) {
	l, err := NewLifecycle(LifecycleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Advance(Draining) // a drain before the app was ever ready
	if !l.Reopen() || l.Phase() != Starting {
		t.Fatalf("undrain from a drain begun while starting: %s, want starting", l.Phase())
	}
	l.Advance(Serving)
	l.Advance(Draining)
	if !l.Reopen() || l.Phase() != Serving {
		t.Fatalf("undrain: %s, want serving", l.Phase())
	}
	l.Advance(Closing)
	if l.Reopen() {
		t.Fatal("reopened after closing")
	}
}
