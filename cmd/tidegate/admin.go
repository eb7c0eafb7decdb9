package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"

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

// newAuxServer binds addr. maxConns > 0 bounds the connections served at
// once (more wait in the kernel's backlog); 0 means no bound.
func newAuxServer(name, addr string, h http.Handler, log *zap.Logger, h2c bool, maxConns int) (*auxServer, error) {
	ln, err := proxy.Listen(addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", name, err)
	}
	if maxConns > 0 {
		ln = netutil.LimitListener(ln, maxConns)
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

// metricsMaxConns bounds the connections the metrics listener serves at
// once: a few Prometheus servers scrape it, each on one kept-alive
// connection, and it is reachable from the whole pod network.
const metricsMaxConns = 32

// metricsWriteTimeout bounds one metrics response, from the end of the
// request's headers.
const metricsWriteTimeout = 30 * time.Second

// metricsHandler is the --metrics-listen listener's: GET (and HEAD)
// /metrics from the sidecar's registry, the same series as the admin
// listener's /metrics; any other method on /metrics is 405, any other path
// 404. It exposes nothing else, so it may listen on any address.
func (s *sidecar) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.promHandler()) // the mux answers 404 elsewhere, 405 to other methods here
	return mux
}

func (s *sidecar) promHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		Registry: s.reg,
		ErrorLog: zap.NewStdLog(s.log.Named("metrics")),
	})
}

// adminHandler serves /metrics, /status, /config and /debug/pprof/.
func (s *sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.promHandler())
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
	mux.HandleFunc("GET /debug/pprof/cmdline", s.cmdline) // not pprof.Cmdline: it shows secrets
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "tidegate admin: GET /metrics /status /config /debug/pprof/; POST /drain[?wait=DUR] /undrain /reload\n")
	})
	return &adminGuard{next: mux, addr: s.cfg.AdminListen, log: s.log.Named("admin")}
}

// cmdline is /debug/pprof/cmdline: tidegate's command line, NUL-separated
// as pprof.Cmdline writes it, with secrets redacted (see redactArgs). The
// environment (TIDEGATE_DRAIN_TOKEN) is not shown here; /proc/<pid>/environ
// is the kernel's to guard (readable by the same user and root only).
func (s *sidecar) cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(s.argv(), "\x00"))
}

// argv is tidegate's command line with secrets redacted: the program, then
// "run" and the arguments it was started with (the same after a reload).
func (s *sidecar) argv() []string {
	return redactArgs(append([]string{os.Args[0], "run"}, s.conf.Load().args...), settings())
}

// checkAdminListen refuses an admin address that is not loopback (a
// wildcard like 0.0.0.0:9901 or :9901, a pod IP, a host name other than
// localhost) unless public is set: the admin API has no authentication.
func checkAdminListen(addr string, public bool) error {
	if addr == off || public || isLoopbackHost(adminHost(addr)) {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address, and the admin listener has no authentication: whoever reaches it can drain tidegate (POST /drain), reload its config and profile it (/debug/pprof/). "+
		"Give a loopback address like 127.0.0.1:9901 (reach it with kubectl port-forward or from inside the pod), or add --admin-listen-public (TIDEGATE_ADMIN_LISTEN_PUBLIC=true, admin_listen_public: true) to expose it on purpose behind a firewall or NetworkPolicy", addr)
}

// adminHost is the host part of an admin address ("" for :9901).
func adminHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// isLoopbackHost reports whether host is localhost or a loopback IP.
func isLoopbackHost(host string) bool {
	host = strings.TrimSuffix(host, ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// adminGuard refuses the admin API's state-changing requests (POST /drain,
// /undrain, /reload; every method but GET, HEAD and OPTIONS) when a web
// page could have sent them: a browser on the operator's machine can POST
// to 127.0.0.1:9901 from any site, and a site whose name resolves to
// 127.0.0.1 (DNS rebinding) can even read the answers. Clients that are not
// browsers (curl, tidegate drain, a kubelet hook) send no Origin and no
// Sec-Fetch-Site, and a Host that is an address: they pass.
//
//   - Sec-Fetch-Site other than same-origin or none: refused.
//   - Origin other than this listener (scheme://Host of the request): refused.
//   - Host other than localhost, a loopback IP, the admin address's own host,
//     or (listening on a wildcard address) any IP address: refused.
//
// Reads (metrics, /status, /config, pprof) pass: they carry no secret
// (see redactArgs, redactURLs) and change nothing.
type adminGuard struct {
	next http.Handler
	addr string // --admin-listen: its host may be "" or 0.0.0.0 (every interface)
	log  *zap.Logger
}

func (g *adminGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		g.next.ServeHTTP(w, r)
		return
	}
	reason, msg := browserRefusal(r)
	if reason == "" && !g.hostAllowed(r.Host) {
		reason, msg = "foreign_host", fmt.Sprintf("Host %q is not this admin listener's address, localhost or a loopback IP (a web page using DNS rebinding sends this): call it by address, as in http://%s%s", r.Host, g.example(), r.URL.Path)
	}
	if reason != "" {
		g.log.Warn("admin request refused", zap.String("reason", reason), zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.String("host", r.Host), zap.String("origin", r.Header.Get("Origin")), zap.String("remote_addr", r.RemoteAddr))
		http.Error(w, "refused: "+msg, http.StatusForbidden)
		return
	}
	g.next.ServeHTTP(w, r)
}

// hostAllowed reports whether a request's Host names this admin listener.
func (g *adminGuard) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ".")
	own := adminHost(g.addr)
	if host == "" || isLoopbackHost(host) || (own != "" && strings.EqualFold(host, own)) {
		return true // no Host at all: HTTP/1.0, never a browser
	}
	wildcard := own == "" || net.ParseIP(own).IsUnspecified()
	return wildcard && net.ParseIP(host) != nil
}

// example is the admin address to suggest: the configured one, with
// 127.0.0.1 for a wildcard host.
func (g *adminGuard) example() string {
	host, port, err := net.SplitHostPort(g.addr)
	if err != nil {
		return g.addr
	}
	if host == "" || net.ParseIP(host).IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// browserRefusal says why a state-changing request looks like a web page's
// (reason "" if it does not): a Sec-Fetch-Site other than same-origin or
// none, or an Origin other than the request's own scheme://Host. Used by
// the admin API and the health listener's GET /drain.
func browserRefusal(r *http.Request) (reason, msg string) {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return "cross_site", fmt.Sprintf("Sec-Fetch-Site is %q: tidegate takes no state-changing requests from web pages; use curl or tidegate drain", site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return "", ""
	}
	if u, err := url.Parse(origin); err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return "foreign_origin", fmt.Sprintf("Origin %q is not this listener (Host %q): tidegate takes no state-changing requests from other web pages; use curl or tidegate drain", origin, r.Host)
	}
	return "", ""
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
