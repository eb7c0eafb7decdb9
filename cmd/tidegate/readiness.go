package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/healthz"
)

// appReady reports whether the app is ready now: its process runs (child
// mode) and every readiness probe passes (after the startup probes).
func (s *sidecar) appReady() bool {
	if s.child != nil && !s.child.Alive() {
		return false
	}
	return s.probes.Healthy(healthz.Startup, "") && s.probes.Healthy(healthz.Readiness, "")
}

// watchReadiness moves the lifecycle from starting to serving once the app
// is first ready, and keeps the gRPC health service in step with readiness
// and the drain. It returns when ctx ends.
func (s *sidecar) watchReadiness(ctx context.Context, servingFields []zap.Field) {
	refresh := time.NewTicker(time.Second) // child restarts are not signalled: look now and then
	defer refresh.Stop()
	for {
		probesChanged, lifeChanged := s.probes.Changed(), s.life.Changed()
		phase := s.life.Phase()
		if phase == drain.Starting && s.appReady() {
			s.life.Advance(drain.Serving, servingFields...)
			continue
		}
		if phase < drain.Draining { // after a drain the latch (phaseChanged) holds
			s.grpcHealth.Set("", phase == drain.Serving && s.appReady())
			for _, c := range s.probes.Containers() {
				s.grpcHealth.Set(c, s.probes.Healthy(healthz.Startup, c) && s.probes.Healthy(healthz.Readiness, c))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-probesChanged:
		case <-lifeChanged:
		case <-refresh.C:
		}
	}
}

// phaseChanged runs synchronously with every phase change: gRPC health
// clients hear NOT_SERVING at the moment the drain starts, and for good.
func (s *sidecar) phaseChanged(from, to drain.Phase) {
	status := fmt.Sprintf("%s: %d in flight, config v%d", to, s.tracker.InFlight(), s.version.Load())
	switch to {
	case drain.Serving:
		s.notify.Ready(status) // READY=1 once; later calls send nothing
	case drain.Closing:
		s.notify.Stopping(status) // no undrain after closing: the stop is certain
	}
	s.notify.Status(status)
	switch {
	case to == drain.Draining:
		s.grpcHealth.Drain()
	case from == drain.Draining: // an undrain: the watcher sets the real statuses
		s.grpcHealth.Undrain()
	}
}

// gate answers for the app while it cannot: before it is first ready
// (holding the request up to --hold-until-ready, else 503), after a
// supervised app restarted until it is ready again (the same way), and with
// --gate-unready while readiness fails after start-up. It never gates during
// a drain: tidegate keeps serving while load balancers move away.
type gate struct {
	s     *sidecar
	gated *prometheus.CounterVec
}

func newGate(s *sidecar) (*gate, error) {
	g := &gate{s: s, gated: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tidegate_gated_requests_total",
		Help: "Requests answered 503 by tidegate instead of the app: reason starting (before the app was first ready), restarting (a restarted app child not ready yet) or unready (--gate-unready).",
	}, []string{"reason"})}
	for _, r := range []string{"starting", "restarting", "unready"} {
		g.gated.WithLabelValues(r)
	}
	return g, s.reg.Register(g.gated)
}

// closed returns why the gate answers for the app now, or "" when requests
// go through. Cheap in the common case (two atomic loads): the fast path
// asks it per request.
func (g *gate) closed() string {
	s := g.s
	switch phase := s.life.Phase(); {
	case phase == drain.Starting:
		return "starting"
	case phase != drain.Serving:
		return ""
	case s.restarting.Load():
		if !s.appReady() {
			return "restarting"
		}
		s.restarting.Store(false)
	}
	if s.live().GateUnready && !s.appReady() {
		return "unready"
	}
	return ""
}

// wrap puts the gate in front of next.
func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch reason := g.closed(); reason {
		case "":
		case "starting", "restarting":
			if !g.hold(r.Context()) {
				msg := "the app is not ready yet"
				if reason == "restarting" {
					msg = "the app restarted and is not ready yet"
				}
				g.refuse(w, reason, msg)
				return
			}
		default:
			g.refuse(w, reason, "the app is not ready")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// open reports whether the gate lets requests through untouched now: the
// fast path asks it, and leaves requests to wrap's handler when it is not.
func (g *gate) open() bool { return g.closed() == "" }

// hold waits up to --hold-until-ready for the app to be ready: for the
// lifecycle to leave starting, or a restarted app's readiness to pass.
func (g *gate) hold(ctx context.Context) bool {
	d := g.s.live().HoldUntilReady
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		lifeChanged, probesChanged := g.s.life.Changed(), g.s.probes.Changed()
		if r := g.closed(); r != "starting" && r != "restarting" {
			return true
		}
		select {
		case <-lifeChanged:
		case <-probesChanged:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

func (g *gate) refuse(w http.ResponseWriter, reason, msg string) {
	g.gated.WithLabelValues(reason).Inc()
	h := w.Header()
	h.Set("Retry-After", "1")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Tidegate-Reason", "not_ready")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte("tidegate: " + msg + "\n"))
}

// withGRPC serves gRPC requests (HTTP/2 with content-type application/grpc)
// with srv, and everything else with h: the health listener speaks both.
func withGRPC(srv *grpc.Server, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			srv.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
