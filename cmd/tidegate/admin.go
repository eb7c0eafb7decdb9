package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/tidegate/tidegate/healthz"
	"github.com/tidegate/tidegate/proxy"
)

// auxServer is the health or the admin listener: small, hardened, and shut
// down after the public listener so that scrapes and probes see the drain.
type auxServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
	log  *zap.Logger
}

func newAuxServer(name, addr string, h http.Handler, log *zap.Logger, h2c bool) (*auxServer, error) {
	ln, err := proxy.Listen(addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", name, err)
	}
	log = log.Named(name)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(log),
	}
	if h2c {
		// HTTP/2 with prior knowledge beside HTTP/1.1, for gRPC health
		// clients. No ReadTimeout: a gRPC Watch stream is long-lived.
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
	} else {
		srv.ReadTimeout = 10 * time.Second
	}
	return &auxServer{name: name, ln: ln, log: log, srv: srv}, nil
}

func (a *auxServer) serve() error {
	if err := a.srv.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s listener %s: %w", a.name, a.ln.Addr(), err)
	}
	return nil
}

func (a *auxServer) shutdown(bound time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		_ = a.srv.Close()
	}
}

// adminHandler serves /metrics, /status, /config and /debug/pprof/.
func (s *sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		Registry: s.reg,
		ErrorLog: zap.NewStdLog(s.log.Named("metrics")),
	}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.status()) })
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.conf.Load().effective()) })
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		if err := s.requestReload(ctx); err != nil {
			writeJSONStatus(w, http.StatusUnprocessableEntity, map[string]any{"result": "failure", "error": err.Error(), "config_version": s.version.Load()})
			return
		}
		writeJSON(w, map[string]any{"result": "success", "config_version": s.version.Load(), "config_hash": configHash(s.conf.Load())})
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		wait, err := waitParam(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.drainer.Trigger("admin")
		s.answerDrain(w, r, wait)
	})
	mux.HandleFunc("POST /undrain", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.drainer.Undrain(); err != nil {
			writeJSONStatus(w, http.StatusConflict, map[string]string{"phase": s.life.Phase().String(), "error": err.Error()})
			return
		}
		writeJSONStatus(w, http.StatusOK, map[string]string{"phase": s.life.Phase().String()})
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "tidegate admin: GET /metrics /status /config /debug/pprof/; POST /drain[?wait=DUR] /undrain /reload\n")
	})
	return mux
}

// status is the JSON of /status.
type status struct {
	Phase      string            `json:"phase"`
	PhaseSince time.Time         `json:"phase_since"`
	Uptime     float64           `json:"uptime_seconds"`
	Upstream   string            `json:"upstream"`
	Traffic    proxy.Snapshot    `json:"traffic"`
	App        appStatus         `json:"app"`
	Probes     []healthz.Status  `json:"probes"`
	Build      buildInfo         `json:"build"`
	Limits     limitsStatus      `json:"limits"`
	Config     map[string]string `json:"config"`

	ConfigVersion int64          `json:"config_version"` // 1 at start, +1 per applied reload
	ConfigHash    string         `json:"config_hash"`
	LastReload    *reloadOutcome `json:"last_reload,omitempty"`
}

func (s *sidecar) status() status {
	phase, since := s.life.State()
	l := s.conf.Load()
	return status{
		Phase:      phase.String(),
		PhaseSince: since,
		Uptime:     time.Since(s.started).Seconds(),
		Upstream:   l.cfg.Upstream.Address,
		Traffic:    s.tracker.Snapshot(),
		App:        s.appStatus(),
		Probes:     s.probes.Statuses(),
		Build:      s.build,
		Limits:     s.limitsStatus(),
		Config:     l.effective(),

		ConfigVersion: s.version.Load(),
		ConfigHash:    configHash(l),
		LastReload:    s.lastReload.Load(),
	}
}

// appStatus is the app's part of /status.
type appStatus struct {
	Stop     string `json:"stop"`
	PID      int    `json:"pid,omitempty"`
	Running  *bool  `json:"running,omitempty"`
	Restarts int    `json:"restarts,omitempty"`
}

func (s *sidecar) appStatus() appStatus {
	st := appStatus{Stop: s.cfg.App.Stop}
	if s.child != nil {
		alive := s.child.Alive()
		st.PID, st.Running, st.Restarts = s.child.Pid(), &alive, s.child.Restarts()
	}
	return st
}

func writeJSON(w http.ResponseWriter, v any) { writeJSONStatus(w, http.StatusOK, v) }

func writeJSONStatus(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
