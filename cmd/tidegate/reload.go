package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tidegate/tidegate/drain"
)

// A reload (SIGHUP, or POST /reload on the admin listener) reads the
// configuration again from where it came at start — the same flags, the
// same environment, the config file as it is now — and applies it all or
// nothing:
//
//   - probes: a container whose probes are unchanged keeps their state; the
//     others start afresh;
//   - drain settings: for the next drain (a drain under way refuses reloads);
//   - log level, and the access log's destination (a file is reopened even
//     under the same name, for logrotate);
//   - public listeners: one whose settings (upstream, timeouts, headers, TLS
//     files, access log on or off, ...) are unchanged keeps its server and
//     connections; a changed one gets a new server on the same socket, so no
//     connection waiting to be accepted is lost, and the old server drains
//     (it stops accepting, answers with Connection: close or GOAWAY for
//     drain.delay, then shuts down) until drain.timeout; a new address is bound
//     before anything changes, and the old address drains like a drain
//     (accepting for drain.delay, then closing);
//   - the settings in frozenKeys cannot change while tidegate runs: a file
//     that changes one is refused, naming it.
//
// A refused reload changes nothing: the log line names the key and the
// value, tidegate_config_reloads_total{result="failure"} counts it, and
// /status shows the error.

// frozenKeys are the settings a reload cannot change, with why.
var frozenKeys = map[string]string{
	"health_listen":           "the kubelet and load balancers probe it",
	"admin_listen":            "",
	"admin_listen_public":     "it is checked when the admin listener opens",
	"grpc_health_listen":      "",
	"metrics_listen":          "",
	"copy_binary_to":          "the binary is copied once, at start",
	"drain.report_file":       "it is checked at start",
	"log.format":              "",
	"server.max_connections":  "each listening socket keeps the limit it was opened with",
	"probe_user_agents":       "",
	"app.command":             "the app runs already",
	"app.stop":                "",
	"app.stop_signal":         "",
	"app.pid":                 "",
	"app.pidfile":             "",
	"app.stop_url":            "",
	"app.stop_command":        "",
	"app.restart":             "",
	"app.restart_backoff":     "",
	"app.restart_max_backoff": "",
	"app.restart_limit":       "",
	"app.reap_orphans":        "",
	"app.forward_signals":     "",
}

// reloadMetrics are the reload series.
type reloadMetrics struct {
	total      *prometheus.CounterVec
	successful prometheus.Gauge
	last       prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) (*reloadMetrics, error) {
	m := &reloadMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_config_reloads_total",
			Help: "Config reloads (SIGHUP, POST /reload) by result: success or failure (the old config kept serving).",
		}, []string{"result"}),
		successful: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tidegate_config_last_reload_successful",
			Help: "1 if the last config reload was applied (or none was tried), 0 if it was refused.",
		}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tidegate_config_last_reload_success_timestamp_seconds",
			Help: "When the config in force was loaded (at start or by the last successful reload).",
		}),
	}
	m.total.WithLabelValues("success")
	m.total.WithLabelValues("failure")
	m.successful.Set(1)
	m.last.SetToCurrentTime()
	for _, c := range []prometheus.Collector{m.total, m.successful, m.last} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register reload metrics: %w", err)
		}
	}
	return m, nil
}

// reloadOutcome is the last reload, for /status.
type reloadOutcome struct {
	At      time.Time `json:"at"`
	Trigger string    `json:"trigger"`
	Result  string    `json:"result"` // success or failure
	Error   string    `json:"error,omitempty"`
	Changed []string  `json:"changed,omitempty"` // the settings that changed
}

// reload applies the configuration as it is now, or refuses it whole; it
// runs on the sidecar's event loop, one at a time.
func (s *sidecar) reload(trigger string) error {
	log := s.log.Named("config")
	s.notify.Reloading()
	defer func() { s.notify.Reloaded(s.statusLine()) }()
	changed, err := s.applyReload()
	out := &reloadOutcome{At: time.Now(), Trigger: trigger, Result: "success", Changed: changed}
	if err != nil {
		out.Result, out.Error = "failure", err.Error()
	}
	s.lastReload.Store(out) // before the counters: whoever sees the count sees the outcome
	if err != nil {
		s.reloads.total.WithLabelValues("failure").Inc()
		s.reloads.successful.Set(0)
		log.Error("config reload refused; the running config stays", zap.String("reason", "reload_refused"),
			zap.String("trigger", trigger), zap.Int64("config_version", s.version.Load()), zap.Error(err))
	} else {
		s.reloads.total.WithLabelValues("success").Inc()
		s.reloads.successful.Set(1)
		s.reloads.last.SetToCurrentTime()
		log.Info("config reloaded", zap.String("trigger", trigger), zap.Int64("config_version", s.version.Load()),
			zap.String("config_hash", configHash(s.conf.Load())), zap.Strings("changed", changed))
	}
	return err
}

// applyReload loads the configuration and applies it; on error nothing has
// changed. It returns the keys whose values changed.
func (s *sidecar) applyReload() ([]string, error) {
	if p := s.life.Phase(); p >= drain.Draining {
		return nil, fmt.Errorf("a drain is under way (phase %s): the config is not reloaded", p)
	}
	old := s.conf.Load()
	l, err := loadConfig(old.args, old.getenv)
	if err != nil {
		return nil, err
	}
	// Compare the values themselves, so that a changed secret counts;
	// messages show them redacted.
	was, now := old.values(false), l.values(false)
	wasShown, nowShown := old.effective(), l.effective()
	var changed []string
	for k, v := range now {
		if was[k] != v {
			changed = append(changed, k)
		}
	}
	for k := range was {
		if _, ok := now[k]; !ok {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	for _, k := range changed {
		if why, frozen := frozenKeys[k]; frozen {
			if why != "" {
				why = " (" + why + ")"
			}
			if wasShown[k] == nowShown[k] {
				why += " (what changed is a redacted secret)"
			}
			return nil, fmt.Errorf("%s changed from %q to %q: it cannot change while tidegate runs%s; restart tidegate to apply it (nothing of this reload was applied)",
				k, wasShown[k], nowShown[k], why)
		}
	}
	// Everything that can fail comes first: the access log file, the
	// listeners (binding new addresses, reading TLS files).
	access := s.logs.sink
	reopen := l.cfg.AccessLog
	if reopen != off && reopen != "stdout" && reopen != "stderr" {
		if err := checkWritable(reopen); err != nil {
			return nil, fmt.Errorf("access_log %q: %w", reopen, err)
		}
	}
	level, err := parseLevel(l.cfg.Log.Level)
	if err != nil {
		return nil, err
	}
	keep := s.front.list()
	next, err := s.buildListeners(l, keep)
	if err != nil {
		return nil, err
	}
	c := &l.cfg
	// A new drain token goes to --copy-binary-to's drain-token file before
	// the health listener checks it: a chained preStop hook reading a stale
	// file would be refused (403) and skip the drain. A reload refused
	// below puts the old token back.
	restoreToken := func() {}
	if c.CopyBinaryTo != "" && c.Drain.Token != old.cfg.Drain.Token {
		if err := writeTokenFile(c.CopyBinaryTo, c.Drain.Token); err != nil {
			closeNew(next, keep)
			return nil, err
		}
		restoreToken = func() {
			if err := writeTokenFile(c.CopyBinaryTo, old.cfg.Drain.Token); err != nil {
				s.log.Error("drain token file not restored after a refused reload: chained preStop hooks will be refused", zap.String("reason", "token_file"), zap.Error(err))
			}
		}
	}
	if err := s.probes.Update(l.probes); err != nil {
		restoreToken()
		closeNew(next, keep)
		return nil, err
	}
	// The phase check above may be stale by now: a drain that began since
	// has shut the listeners down, and replace refuses (the probes were
	// updated, which the drain does not mind).
	if err := s.front.replace(next, c.Drain.Delay, c.Drain.Timeout); err != nil {
		restoreToken()
		return nil, err
	}

	// Nothing below fails.
	_ = s.drainer.SetTiming(drain.Timing{Delay: c.Drain.Delay, Quiet: c.Drain.Quiet, Timeout: c.Drain.Timeout, AppStopTimeout: c.App.StopTimeout}) // validated by loadConfig
	s.logs.level.SetLevel(level)
	if err := access.open(reopen); err != nil {
		s.log.Warn("access log not reopened; it keeps its old destination", zap.String("reason", "access_log"), zap.Error(err))
	}
	for _, p := range next {
		if p.keys != nil && slices.Contains(keep, p) {
			if err := p.keys.Reload(); err != nil { // checked above; changed again since
				s.log.Warn("certificate not reloaded; the listener keeps the previous one", zap.String("listener", p.spec.Name),
					zap.String("reason", "tls_reload"), zap.Error(err))
			}
		}
	}
	s.conf.Store(l)
	s.health.set(s.healthHandler())
	s.version.Add(1)
	return changed, nil
}

// closeNew closes the servers of next that keep does not hold: the
// listeners a refused reload had opened.
func closeNew(next, keep []*publicListener) {
	for _, p := range next {
		if !slices.Contains(keep, p) {
			_ = p.srv.Close()
		}
	}
}

// checkWritable reports whether path can be opened for appending.
func checkWritable(path string) error {
	f, err := openAppend(path)
	if err != nil {
		return errors.Unwrap(err)
	}
	return f.Close()
}

// configHash identifies a config: the first 12 hex digits of a SHA-256 over
// the effective settings (secrets redacted, so equal hashes may hide a
// changed secret).
func configHash(l *loaded) string {
	eff := l.effective()
	keys := make([]string, 0, len(eff))
	for k := range eff {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		b, _ := json.Marshal([2]string{k, eff[k]})
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// swapHandler serves with the handler set last, so that a reload can
// rebuild the health endpoints under a listener that keeps running.
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.h.Store(&h) }
func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// healthListenerHandler is the health listener's handler: the health
// endpoints, rebuilt on reload.
func (s *sidecar) healthListenerHandler() http.Handler {
	s.health.set(s.healthHandler())
	return &s.health
}

// requestReload asks the event loop for a reload and waits for its result
// until ctx ends.
func (s *sidecar) requestReload(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.reloadReq <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// statusLine is the one-line state for systemd's STATUS=.
func (s *sidecar) statusLine() string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s, %d in flight, config v%d", s.life.Phase(), s.tracker.InFlight(), s.version.Load())
	return b.String()
}
