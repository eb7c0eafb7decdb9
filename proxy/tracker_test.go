package proxy

import (
	"sync"
	"testing"
	"time"
)

func TestTrackerCounts(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := NewTracker(TrackerOptions{Now: func() time.Time { return now }, ProbeUserAgents: []string{"kube-probe/", "ELB-HealthChecker/"}})
	if !tr.LastActivity().IsZero() {
		t.Fatal("LastActivity before any request")
	}
	tr.RequestStarted(tr.IsProbe("ELB-HealthChecker/2.0"))
	if !tr.LastActivity().IsZero() {
		t.Fatal("a probe moved LastActivity")
	}
	tr.RequestStarted(tr.IsProbe("Mozilla/5.0"))
	if got := tr.LastActivity(); !got.Equal(now) {
		t.Fatalf("LastActivity %v, want %v", got, now)
	}
	if tr.InFlight() != 2 || tr.Requests() != 2 {
		t.Fatalf("in flight %d, total %d; want 2, 2", tr.InFlight(), tr.Requests())
	}
	tr.RequestDone()
	tr.RequestDone()
	if tr.InFlight() != 0 || tr.Requests() != 2 {
		t.Fatalf("after done: in flight %d, total %d", tr.InFlight(), tr.Requests())
	}
	tr.ConnOpened(ProtocolHTTP1)
	if tr.Connections(ProtocolHTTP1) != 1 || tr.ConnectionsTotal() != 1 {
		t.Fatal("connection not counted")
	}
	s := tr.Snapshot()
	if s.Connections["http1"] != 1 || s.LastActivity == nil || s.Requests != 2 {
		t.Fatalf("snapshot %+v", s)
	}
	tr.ConnClosed(ProtocolHTTP1)
	if tr.ConnectionsTotal() != 0 {
		t.Fatal("connection close not counted")
	}
}

func TestTrackerDefaultAndNoProbes(t *testing.T) {
	if !NewTracker(TrackerOptions{}).IsProbe("kube-probe/1.31") {
		t.Fatal("kube-probe/ is not a probe by default")
	}
	if NewTracker(TrackerOptions{ProbeUserAgents: []string{}}).IsProbe("kube-probe/1.31") {
		t.Fatal("an empty probe list still treats kube-probe as a probe")
	}
}

func TestTrackerConcurrent(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				tr.RequestStarted(false)
				tr.ConnOpened(ProtocolHTTP1)
				tr.ConnClosed(ProtocolHTTP1)
				tr.RequestDone()
			}
		})
	}
	wg.Wait()
	if tr.InFlight() != 0 || tr.Requests() != 8000 || tr.ConnectionsTotal() != 0 {
		t.Fatalf("in flight %d, total %d, conns %d", tr.InFlight(), tr.Requests(), tr.ConnectionsTotal())
	}
}
