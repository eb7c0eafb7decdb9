package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/healthz"
	"github.com/tidegate/tidegate/proxy"
)

// env is what a command gets from the process: injected so that tests and
// `tidegate demo` can run commands in-process.
type env struct {
	getenv  func(string) string
	stdout  io.Writer
	stderr  io.Writer
	signals <-chan os.Signal // SIGTERM and SIGINT; nil means none arrive
}

// cli runs one tidegate command and returns the process exit code:
// 0 success, 1 runtime failure, 2 bad usage or configuration.
func cli(args []string, e env) int {
	if len(args) == 0 {
		writeUsage(e.stderr)
		return 2
	}
	switch args[0] {
	case "run":
		return runCmd(args[1:], e)
	case "drain":
		return drainCmd(args[1:], e)
	case "demo":
		return demoCmd(args[1:], e)
	case "version", "--version", "-version":
		writeVersion(e.stdout)
		return 0
	case "help", "-h", "--help":
		writeUsage(e.stdout)
		return 0
	default:
		fmt.Fprintf(e.stderr, "tidegate: unknown command %q\n\n", args[0])
		writeUsage(e.stderr)
		return 2
	}
}

func writeUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: tidegate <command> [flags]

Commands:
  run       run the sidecar in front of an app (tidegate run --help for flags)
  drain     ask a running sidecar to drain, as SIGTERM would (for exec preStop hooks)
  demo      a built-in app behind the sidecar, under load, through a shutdown
  version   print version, commit and Go version
`)
}

func runCmd(args []string, e env) int {
	l, err := loadConfig(args, e.getenv)
	if errors.Is(err, flag.ErrHelp) {
		writeRunUsage(e.stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate: %v\n", err)
		return 2
	}
	logs, err := newLoggers(&l.cfg, e.stdout, e.stderr)
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate: %v\n", err)
		return exitCode(err)
	}
	defer logs.sync()
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate: %v\n", err)
		return exitCode(err)
	}
	code, _ := sc.run(e.signals)
	if sc.startErr != nil {
		fmt.Fprintf(e.stderr, "tidegate: %v\n", sc.startErr)
	}
	return code
}

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// sidecar is one running tidegate: the composition root that wires the data
// plane, the lifecycle and drain, health and admin together.
type sidecar struct {
	cfg     *Config
	loaded  *loaded
	log     *zap.Logger
	build   buildInfo
	started time.Time

	reg      *prometheus.Registry
	life     *drain.Lifecycle
	tracker  *proxy.Tracker
	handlers []*proxy.Handler
	public   publicListeners
	aux      []*auxServer // health and admin listeners, stopped last
	limits   startLimits

	app     drain.App    // how the app is stopped
	child   *drain.Child // the supervised app, in child mode (set by run)
	drainer *drain.Drainer
	appGone chan drain.AppExit // a child that exited on its own for good

	probes     *healthz.Set
	grpcHealth *healthz.GRPCHealth
	grpcSrv    *grpc.Server // grpc.health.v1, on the health listener (h2c)
	grpcLn     net.Listener // --grpc-health-listen, or nil
	startErr   error        // why the app could not be started, for stderr
}

// newSidecar builds every part and binds every listener, so that a port in
// use is reported before anything is served. It serves nothing and starts
// no app yet.
func newSidecar(l *loaded, logs *loggers, build buildInfo) (sc *sidecar, err error) {
	cfg := &l.cfg
	s := &sidecar{cfg: cfg, loaded: l, log: logs.log, build: build, started: time.Now(),
		reg: prometheus.NewRegistry(), appGone: make(chan drain.AppExit, 1)}

	if err := s.registerProcessMetrics(); err != nil {
		return nil, err
	}
	s.life, err = drain.NewLifecycle(drain.LifecycleOptions{Registerer: s.reg, Logger: s.log.Named("lifecycle"),
		OnChange: s.phaseChanged})
	if err != nil {
		return nil, err
	}
	s.tracker = proxy.NewTracker(proxy.TrackerOptions{ProbeUserAgents: cfg.ProbeUserAgents})
	metrics, err := proxy.NewMetrics(s.reg, s.tracker)
	if err != nil {
		return nil, fmt.Errorf("register proxy metrics: %w", err)
	}
	s.limits = setLimits(cfg, len(l.listeners), s.log.Named("limits"))
	if err := s.buildApp(); err != nil {
		return nil, err
	}
	s.probes, err = healthz.NewSet(l.probes, healthz.SetOptions{Registerer: s.reg, Logger: s.log, Version: build.Version})
	if err != nil {
		return nil, usageError{err}
	}
	s.grpcHealth = healthz.NewGRPCHealth(s.probes.Containers()...)
	s.grpcSrv = grpc.NewServer()
	s.grpcHealth.Register(s.grpcSrv)
	g, err := newGate(s)
	if err != nil {
		return nil, fmt.Errorf("register gate metrics: %w", err)
	}

	// Bind everything before serving anything; on failure release what was bound.
	var bound []net.Listener
	defer func() {
		if err != nil {
			for _, ln := range bound {
				_ = ln.Close()
			}
		}
	}()
	type upstreamHandler struct {
		proxy *proxy.Handler
		gated http.Handler
	}
	byUpstream := map[string]upstreamHandler{} // one per upstream, shared by its HTTP listeners
	for _, pl := range l.listeners {
		up, err := proxy.ParseUpstream(pl.Upstream)
		if err != nil {
			return nil, usageError{err}
		}
		ln, err := proxy.Listen(pl.Address)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", pl.Name, err)
		}
		bound = append(bound, ln)
		connLimit := proxy.NewConnLimit(s.limits.maxConnections) // the socket's, whichever server serves it
		metrics.WatchConnLimit(pl.Name, connLimit)
		var srv publicServer
		var ws interface{ CloseUpgraded() }
		if pl.Protocol == "tcp" {
			srv = proxy.NewTCPServer(ln, up, s.tracker, proxy.TCPOptions{DialTimeout: cfg.Upstream.DialTimeout,
				Logger: s.log.Named("tcp"), Metrics: metrics, ConnLimit: connLimit})
		} else {
			uh, ok := byUpstream[pl.Upstream]
			if !ok {
				ph, err := s.newProxyHandler(up, metrics, logs.access)
				if err != nil {
					return nil, usageError{err}
				}
				s.handlers = append(s.handlers, ph)
				uh = upstreamHandler{proxy: ph, gated: g.wrap(ph)}
				byUpstream[pl.Upstream] = uh
			}
			ws = uh.proxy
			var tlsCfg *tls.Config
			if pl.TLS != nil {
				tlsCfg, err = proxy.LoadTLS(proxy.TLSOptions{CertFile: pl.TLS.Cert, KeyFile: pl.TLS.Key, Logger: s.log.Named("tls")})
				if err != nil {
					return nil, usageError{fmt.Errorf("listener %s: %w", pl.Name, err)}
				}
			}
			var fastPath *proxy.Handler
			if !cfg.Server.NetHTTPOnly {
				fastPath = uh.proxy
			}
			srv = proxy.NewServer(ln, uh.gated, s.tracker, proxy.ServerOptions{
				TLS:               tlsCfg,
				ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
				IdleTimeout:       cfg.Server.IdleTimeout,
				MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
				Logger:            s.log.Named("public"),
				FastPath:          fastPath,
				FastPathOpen:      g.open,
				ConnLimit:         connLimit,
			})
		}
		s.public = append(s.public, publicListener{spec: pl, srv: srv, ws: ws})
	}

	s.drainer, err = drain.New(drain.Options{
		Delay: cfg.Drain.Delay, Quiet: cfg.Drain.Quiet, Timeout: cfg.Drain.Timeout,
		AppStopTimeout: cfg.App.StopTimeout,
		Traffic:        s.tracker,
		Frontend:       s.public,
		App:            appRef{s},
		Lifecycle:      s.life,
		Registerer:     s.reg,
		Logger:         s.log.Named("drain"),
	})
	if err != nil {
		return nil, usageError{err}
	}

	for _, aux := range []struct {
		name, addr string
		handler    func() http.Handler
		h2c        bool
	}{{"health", cfg.HealthListen, s.healthHandler, true}, {"admin", cfg.AdminListen, s.adminHandler, false}} {
		if aux.addr == off {
			continue
		}
		a, err := newAuxServer(aux.name, aux.addr, aux.handler(), s.log, aux.h2c)
		if err != nil {
			return nil, err
		}
		bound = append(bound, a.ln)
		s.aux = append(s.aux, a)
	}
	if cfg.GRPCHealthListen != off {
		s.grpcLn, err = proxy.Listen(cfg.GRPCHealthListen)
		if err != nil {
			return nil, fmt.Errorf("gRPC health listener: %w", err)
		}
		bound = append(bound, s.grpcLn)
	}
	return s, nil
}

// newProxyHandler builds the data plane for one upstream.
func (s *sidecar) newProxyHandler(up proxy.Upstream, metrics *proxy.Metrics, access *zap.Logger) (*proxy.Handler, error) {
	cfg := s.cfg
	return proxy.NewHandler(proxy.Options{
		Upstream: up,
		Protocol: proxy.UpstreamProtocol(cfg.Upstream.Protocol),
		TransportOptions: proxy.TransportOptions{
			DialTimeout:           cfg.Upstream.DialTimeout,
			ResponseHeaderTimeout: cfg.Upstream.ResponseHeaderTimeout,
			IdleConnTimeout:       cfg.Upstream.IdleTimeout,
			MaxIdleConns:          cfg.Upstream.MaxIdleConns,
			ExpectContinueTimeout: cfg.Upstream.ExpectContinueTimeout,
		},
		MaxBodyBytes: cfg.Server.MaxBodyBytes,
		Forwarded:    proxy.ForwardedMode(cfg.Server.Forwarded),
		RequestID:    proxy.RequestIDMode(cfg.Server.RequestID),
		Tracker:      s.tracker,
		Metrics:      metrics,
		Logger:       s.log.Named("proxy"),
		AccessLog:    access,

		PlainSyscalls: cfg.Server.PlainSyscalls,
	})
}

// publicServer is an HTTP or a TCP public listener: what the drain steers,
// plus serving.
type publicServer interface {
	drain.Frontend
	Serve() error
	Addr() net.Addr
}

type publicListener struct {
	spec listenerSpec
	srv  publicServer
	ws   interface{ CloseUpgraded() } // the HTTP handler, for its WebSocket sessions; nil for tcp
}

// publicListeners drains every public listener as one.
type publicListeners []publicListener

func (ps publicListeners) BeginDrain() {
	for _, p := range ps {
		p.srv.BeginDrain()
	}
}

func (ps publicListeners) EndDrain() {
	for _, p := range ps {
		p.srv.EndDrain()
	}
}

// Shutdown shuts every listener down at once and returns the first error.
func (ps publicListeners) Shutdown(ctx context.Context) error {
	errs := make(chan error, len(ps))
	for _, p := range ps {
		go func() { errs <- p.srv.Shutdown(ctx) }()
	}
	var first error
	for range ps {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Close cuts what is left: WebSocket sessions get close frames 1001 (going
// away) at both ends while every other connection is closed at once.
func (ps publicListeners) Close() error {
	var wg sync.WaitGroup
	for _, p := range ps {
		if p.ws != nil {
			wg.Go(p.ws.CloseUpgraded)
		}
	}
	var first error
	for _, p := range ps {
		if err := p.srv.Close(); err != nil && first == nil {
			first = err
		}
	}
	wg.Wait()
	return first
}

// publicAddr is the first public listener's address.
func (s *sidecar) publicAddr() string { return s.public[0].srv.Addr().String() }

// buildApp picks how the app will be stopped. The child itself is started
// by run, once the listeners are bound.
func (s *sidecar) buildApp() error {
	a := &s.cfg.App
	sig, err := drain.ParseSignal(a.StopSignal)
	if err != nil {
		return usageError{err}
	}
	switch a.Stop {
	case "pid":
		s.app = drain.PIDApp{PID: a.PID, PIDFile: a.PIDFile, Signal: sig}
	case "http":
		s.app = drain.HTTPApp{URL: a.StopURL, Logger: s.log.Named("app")}
	case "command":
		s.app = drain.CommandApp{Command: a.StopCommand, Stdout: os.Stdout, Stderr: os.Stderr}
	case "child", "none":
		s.app = drain.NoApp{} // replaced by the child once it runs
	default:
		return usagef("app stop strategy %q is unknown", a.Stop)
	}
	return nil
}

// appRef lets the drainer stop whatever app the sidecar has by the time the
// drain is done (the child is started after the drainer is built).
type appRef struct{ s *sidecar }

func (r appRef) Strategy() string                       { return r.s.app.Strategy() }
func (r appRef) Stop(ctx context.Context) drain.AppExit { return r.s.app.Stop(ctx) }

// failedApp stands for an app that could not be started: the drain report
// says so instead of naming a strategy that never ran.
type failedApp struct {
	strategy string
	err      error
}

func (f failedApp) Strategy() string { return f.strategy }
func (f failedApp) Stop(context.Context) drain.AppExit {
	return drain.AppExit{Strategy: f.strategy, Status: "failed", Code: 1, Detail: f.err.Error()}
}

// startApp starts the child in child mode, and the orphan reaper when
// tidegate is PID 1 or asked to be a subreaper.
func (s *sidecar) startApp(ctx context.Context) error {
	a := &s.cfg.App
	if a.ReapOrphans || os.Getpid() == 1 {
		if os.Getpid() != 1 {
			if err := drain.BecomeSubreaper(); err != nil {
				return err
			}
		}
		go drain.RunReaper(ctx, s.log.Named("reaper"), 500*time.Millisecond, time.Second)
	}
	if a.Stop != "child" {
		return nil
	}
	sig, _ := drain.ParseSignal(a.StopSignal)
	child, err := drain.StartChild(drain.ChildOptions{
		Command: a.Command, StopSignal: sig,
		Restart: a.Restart, BackoffInitial: a.RestartBackoff, BackoffMax: a.RestartMax, MaxRestarts: a.RestartLimit,
		Logger: s.log.Named("app"),
		OnExit: func(ex drain.AppExit) { s.appGone <- ex },
	})
	if err != nil {
		return err
	}
	s.child, s.app = child, child
	return nil
}

func (s *sidecar) registerProcessMetrics() error {
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tidegate_build_info",
		Help: "Always 1; the labels say which tidegate is running.",
		ConstLabels: prometheus.Labels{
			"version": s.build.Version, "commit": s.build.Commit, "goversion": s.build.GoVersion,
		},
	})
	buildInfo.Set(1)
	for _, c := range []prometheus.Collector{
		buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := s.reg.Register(c); err != nil {
			return fmt.Errorf("register process metrics: %w", err)
		}
	}
	return nil
}

// run serves, starts the app, and waits for a drain trigger; it returns when
// the drain is done with the exit code and the drain report.
func (s *sidecar) run(signals <-chan os.Signal) (int, drain.Report) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Start the app before serving, so that everything the handlers read is
	// set; the listeners are bound, so early clients wait in the backlog.
	code := 0
	if err := s.startApp(ctx); err != nil {
		s.log.Error("app did not start", zap.String("reason", "app_start"), zap.Error(err))
		code, s.startErr = 1, err
		s.app = failedApp{strategy: s.cfg.App.Stop, err: err}
		s.drainer.Force("app_start_failed")
	}
	listeners := make([]string, 0, len(s.public))
	for _, p := range s.public {
		proto := p.spec.Protocol
		if p.spec.TLS != nil {
			proto = "https"
		}
		listeners = append(listeners, p.spec.Name+"="+proto+"://"+p.srv.Addr().String())
	}
	fields := []zap.Field{zap.String("listen", s.publicAddr()), zap.Strings("listeners", listeners), zap.String("upstream", s.cfg.Upstream.Address),
		zap.String("app_stop", s.cfg.App.Stop), zap.String("version", s.build.Version)}
	for _, a := range s.aux {
		fields = append(fields, zap.String(a.name+"_listen", a.ln.Addr().String()))
	}
	if s.child != nil {
		fields = append(fields, zap.Int("app_pid", s.child.Pid()))
	}
	if !s.probes.Empty() {
		fields = append(fields, zap.Int("probes", len(s.probes.Statuses())))
	}
	// Decide readiness once before serving, so that without probes the very
	// first request is already proxied; the watcher takes over from here.
	if s.appReady() {
		s.life.Advance(drain.Serving, fields...)
	} else {
		s.log.Named("lifecycle").Info("waiting for the app's startup and readiness probes before serving",
			zap.String("phase", drain.Starting.String()))
	}
	errc := make(chan error, 1+len(s.public)+len(s.aux))
	for _, p := range s.public {
		go func() { errc <- p.srv.Serve() }()
	}
	for _, a := range s.aux {
		go func() { errc <- a.serve() }()
	}
	running := len(s.public) + len(s.aux)
	if s.grpcLn != nil {
		running++
		go func() { errc <- s.grpcSrv.Serve(s.grpcLn) }()
	}
	probesDone := make(chan struct{})
	go func() { s.probes.Run(ctx); close(probesDone) }()
	defer func() {
		cancel() // stop the probes and the readiness watcher
		<-probesDone
		s.grpcSrv.Stop() // ends Watch streams, on its own listener and on the health listener
		for _, a := range s.aux {
			a.shutdown(2 * time.Second)
		}
		for ; running > 0; running-- {
			if err := <-errc; err != nil {
				s.log.Error("listener failed during shutdown", zap.Error(err))
			}
		}
	}()

	watchDone := make(chan struct{})
	go func() { s.watchReadiness(ctx, fields); close(watchDone) }()
	defer func() { cancel(); <-watchDone }()

	reports := make(chan drain.Report, 1)
	go func() { reports <- s.drainer.Run(ctx) }()
	var rep drain.Report
	log := s.log.Named("lifecycle")
	signalled := false // a second signal stops now; a preStop drain racing the first one must not count
	for done := false; !done; {
		select {
		case sig := <-signals:
			name := signalName(sig)
			if signalled {
				log.Warn("second signal: stopping now", zap.String("reason", name), zap.Int64("inflight", s.tracker.InFlight()))
				s.drainer.Force(name)
				continue
			}
			signalled = true
			if !s.drainer.Trigger(name) {
				log.Info("signal during a drain already under way", zap.String("reason", name))
			}
		case ex := <-s.appGone:
			log.Error("app exited on its own; draining without delay", zap.String("reason", "app_exit"), zap.String("app", ex.String()))
			s.drainer.Expedite("app_exit")
		case err := <-errc:
			running--
			if err != nil {
				log.Error("listener failed; draining", zap.String("reason", "listener_error"), zap.Error(err))
				code = 1
				s.drainer.Trigger("listener_error")
			}
		case rep = <-reports:
			done = true
		}
	}
	for _, h := range s.handlers {
		h.CloseIdleConnections()
	}
	if s.child != nil && code == 0 {
		code = rep.App.ExitCode()
	}
	s.logReport(rep)
	return code, rep
}

func (s *sidecar) logReport(rep drain.Report) {
	since := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return t.Sub(rep.TriggeredAt).Seconds()
	}
	s.log.Named("drain").Info("drain report",
		zap.String("trigger", rep.Trigger),
		zap.String("result", rep.Result),
		zap.Duration("duration", rep.Duration()),
		zap.Float64("closing_after", since(rep.ClosingAt)),
		zap.Float64("last_request_done_after", since(rep.LastRequestAt)),
		zap.Float64("app_signalled_after", since(rep.AppStoppingAt)),
		zap.Int64("inflight_at_trigger", rep.InFlightAtTrigger),
		zap.Int64("completed", rep.Completed),
		zap.Int64("cut", rep.Cut),
		zap.Int64("connections_closed", rep.ConnsClosed),
		zap.String("app_stop", rep.App.Strategy),
		zap.String("app_status", rep.App.Status),
		zap.Int("app_code", rep.App.Code),
		zap.String("app_signal", rep.App.Signal),
		zap.String("app_detail", rep.App.Detail),
	)
}

func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		return drain.SignalName(s)
	}
	return sig.String()
}
