package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/healthz"
)

// DrainTokenHeader carries the drain token of GET /drain on the health
// listener (the Kubernetes preStop hook).
const DrainTokenHeader = "X-Tidegate-Drain-Token"

// maxDrainWait bounds ?wait= so that a hook cannot hold a handler forever.
const maxDrainWait = 10 * time.Minute

// healthHandler serves /readyz, /livez, /startupz from the lifecycle, the
// app and its probes, /app-health/<container>/… per container, GET /drain
// for preStop hooks, and the gRPC health service over h2c.
//
//	ready:   serving (not draining), the child running, every readiness probe passing
//	live:    the child not gone for good, every liveness probe passing (never the drain)
//	started: every startup probe has passed
func (s *sidecar) healthHandler() http.Handler {
	phase := func(ok func(drain.Phase) bool) func(context.Context) error {
		return func(context.Context) error {
			if p := s.life.Phase(); !ok(p) {
				return fmt.Errorf("phase is %s", p)
			}
			return nil
		}
	}
	appRunning := func(context.Context) error {
		if s.child != nil && !s.child.Alive() {
			return errors.New("the app process is not running")
		}
		return nil
	}
	appNotGone := func(context.Context) error {
		if s.child == nil {
			return nil
		}
		select {
		case <-s.child.Done():
			if s.life.Phase() < drain.StoppingApp {
				return errors.New("the app exited on its own and will not be restarted")
			}
		default:
		}
		return nil
	}
	apps := map[string]healthz.Options{}
	for _, c := range s.probes.Containers() {
		apps[c] = healthz.Options{
			Readiness: s.probes.Checks(healthz.Readiness, c),
			Liveness:  s.probes.Checks(healthz.Liveness, c),
			Startup:   s.probes.Checks(healthz.Startup, c),
		}
	}
	h, err := healthz.NewHandler(healthz.Options{
		Readiness: append([]healthz.Check{
			{Name: "lifecycle", Func: phase(func(p drain.Phase) bool { return p == drain.Serving })},
			{Name: "app", Func: appRunning},
		}, s.probes.Checks(healthz.Readiness, "")...),
		// No lifecycle check: a drain never fails liveness, up to the exit.
		Liveness: append([]healthz.Check{
			{Name: "app", Func: appNotGone},
		}, s.probes.Checks(healthz.Liveness, "")...),
		Startup: s.probes.Checks(healthz.Startup, ""),
		Apps:    apps,
	})
	if err != nil {
		panic(err) // names are constants or validated probe names: a bug, not input
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("GET /drain", s.preStopDrain)
	return withGRPC(s.grpcSrv, mux)
}

// preStopDrain is GET /drain?wait=DUR on the health listener, for an
// httpGet preStop hook: it starts the drain (if the token matches) and
// answers 200 once the drain has reached stopping_app, or 504 when the wait
// runs out. Without a configured token the endpoint is off (404).
func (s *sidecar) preStopDrain(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet { // the GET pattern also matches HEAD
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if reason, msg := browserRefusal(r); reason != "" { // the token is in no page; refuse early all the same
		s.log.Named("health").Warn("drain request refused", zap.String("reason", reason), zap.String("origin", r.Header.Get("Origin")), zap.String("remote_addr", r.RemoteAddr))
		http.Error(w, "refused: "+msg, http.StatusForbidden)
		return
	}
	token := s.live().Drain.Token
	if token == "" {
		http.Error(w, "drain endpoint is off: start tidegate with --drain-token", http.StatusNotFound)
		return
	}
	got := r.Header.Get(DrainTokenHeader)
	if subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
		s.log.Named("health").Warn("drain request with a wrong or missing token", zap.String("reason", "bad_token"), zap.String("remote_addr", r.RemoteAddr))
		http.Error(w, "missing or wrong "+DrainTokenHeader, http.StatusForbidden)
		return
	}
	wait, err := waitParam(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.drainer.Trigger("prestop")
	s.answerDrain(w, r, wait)
}

// answerDrain waits up to wait for the drain to reach stopping_app, then
// writes 200 (reached), 504 (not yet) or, with wait 0, 202 (started).
func (s *sidecar) answerDrain(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	if wait == 0 {
		writeJSONStatus(w, http.StatusAccepted, map[string]string{"phase": s.life.Phase().String()})
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		changed := s.life.Changed()
		if p := s.life.Phase(); p >= drain.StoppingApp {
			writeJSONStatus(w, http.StatusOK, map[string]string{"phase": p.String()})
			return
		}
		select {
		case <-changed:
		case <-t.C:
			writeJSONStatus(w, http.StatusGatewayTimeout, map[string]string{"phase": s.life.Phase().String(),
				"error": "the drain has not reached stopping_app within " + wait.String()})
			return
		case <-r.Context().Done():
			return
		}
	}
}

func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := parseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("wait: %v", err)
	}
	return min(d, maxDrainWait), nil
}
