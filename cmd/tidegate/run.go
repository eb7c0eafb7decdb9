package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
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
	case "prestop":
		return prestopCmd(args[1:], e)
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
  prestop   a preStop hook: drain the sidecar through its health listener, then run the
            container's original hook (tidegate prestop --help)
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
	// From here on, every exit is summed up in --drain-report-file.
	finish := func(code int, rep *drain.Report, err error) int {
		if err != nil {
			fmt.Fprintf(e.stderr, "tidegate: %v\n", err)
		}
		if path := l.cfg.Drain.ReportFile; path != "" {
			if werr := writeReportFile(path, exitSummary(code, rep, err, l.cfg.Drain.Token)); werr != nil {
				fmt.Fprintf(e.stderr, "tidegate: --drain-report-file %s: %v\n", path, werr)
			}
		}
		return code
	}
	if path := l.cfg.Drain.ReportFile; path != "" {
		if err := checkReportFile(path); err != nil {
			fmt.Fprintf(e.stderr, "tidegate: %s %s: %v: give a writable path, or unset it\n", l.describeKey(settings(), "drain.report_file"), path, err)
			return 1
		}
	}
	logs, err := newLoggers(&l.cfg, e.stdout, e.stderr)
	if err != nil {
		return finish(exitCode(err), nil, err)
	}
	defer logs.sync()
	if dir := l.cfg.CopyBinaryTo; dir != "" {
		if err := copySelf(dir, logs.log); err != nil {
			return finish(1, nil, err)
		}
		if err := writeTokenFile(dir, l.cfg.Drain.Token); err != nil {
			return finish(1, nil, err)
		}
	}
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		return finish(exitCode(err), nil, err)
	}
	code, rep := sc.run(e.signals)
	return finish(code, &rep, sc.startErr)
}

// copySelf is --copy-binary-to: the running binary to dir/tidegate (and,
// in run, the drain token to dir/drain-token).
func copySelf(dir string, log *zap.Logger) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--copy-binary-to %s: cannot find the running binary: %w", dir, err)
	}
	copied, err := copyBinary(exe, dir)
	if err != nil {
		return err
	}
	to := zap.String("to", filepath.Join(dir, copiedBinaryName))
	if copied {
		log.Info("binary copied for preStop hooks", to)
	} else {
		log.Info("binary for preStop hooks already in place and identical; not copied", to)
	}
	return nil
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
	cfg     *Config // as started: for the settings a reload cannot change (see reload.go)
	conf    atomic.Pointer[loaded]
	logs    *loggers
	log     *zap.Logger
	build   buildInfo
	started time.Time

	reg     *prometheus.Registry
	life    *drain.Lifecycle
	tracker *proxy.Tracker
	metrics *proxy.Metrics
	gate    *gate
	front   *frontends
	aux     []*auxServer // health and admin listeners, stopped last
	health  swapHandler  // the health listener's handler, rebuilt when a reload changes the probes
	reloads *reloadMetrics
	version atomic.Int64 // config version: 1 at start, +1 per applied reload

	// restarting is set when a supervised app restarts, until its
	// readiness passes again: the gate answers for it meanwhile.
	restarting atomic.Bool

	notify *notifier // systemd's sd_notify; a no-op outside systemd
	// ping is the watchdog's round trip through the event loop. stall
	// stops the loop between two sends: only tests send, to show what a
	// stuck loop does to the watchdog.
	ping       chan chan struct{}
	stall      chan struct{}
	selfClient *http.Client // the watchdog's: no keep-alive, no proxy, bounded by its context

	reloadReq  chan chan error // POST /reload → the event loop, which answers on the channel
	lastReload atomic.Pointer[reloadOutcome]
	forward    []syscall.Signal // --forward-signals: passed to the child instead of acted on
	limits     startLimits

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
	s := &sidecar{cfg: cfg, logs: logs, log: logs.log, build: build, started: time.Now(),
		reg: prometheus.NewRegistry(), appGone: make(chan drain.AppExit, 1), reloadReq: make(chan chan error), ping: make(chan chan struct{}), stall: make(chan struct{})}
	s.notify = newNotifier(s.log.Named("systemd"), l.getenv)
	s.selfClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	s.conf.Store(l)
	s.version.Store(1)
	s.front = newFrontends(s.log.Named("public"))

	if err := s.registerProcessMetrics(); err != nil {
		return nil, err
	}
	s.life, err = drain.NewLifecycle(drain.LifecycleOptions{Registerer: s.reg, Logger: s.log.Named("lifecycle"),
		OnChange: s.phaseChanged})
	if err != nil {
		return nil, err
	}
	s.tracker = proxy.NewTracker(proxy.TrackerOptions{ProbeUserAgents: cfg.ProbeUserAgents})
	s.metrics, err = proxy.NewMetrics(s.reg, s.tracker)
	if err != nil {
		return nil, fmt.Errorf("register proxy metrics: %w", err)
	}
	if s.reloads, err = newReloadMetrics(s.reg); err != nil {
		return nil, err
	}
	s.limits = setLimits(cfg, len(l.listeners), s.log.Named("limits"))
	if err := s.buildApp(); err != nil {
		return nil, err
	}
	if s.forward, err = parseForwardSignals(cfg.App.ForwardSignals); err != nil {
		return nil, usageError{err}
	}
	s.probes, err = healthz.NewSet(l.probes, healthz.SetOptions{Registerer: s.reg, Logger: s.log, Version: build.Version})
	if err != nil {
		return nil, usageError{err}
	}
	s.grpcHealth = healthz.NewGRPCHealth(s.probes.Containers()...)
	s.grpcSrv = grpc.NewServer()
	s.grpcHealth.Register(s.grpcSrv)
	if s.gate, err = newGate(s); err != nil {
		return nil, fmt.Errorf("register gate metrics: %w", err)
	}

	// Bind everything before serving anything; on failure release what was bound.
	var bound []net.Listener
	defer func() {
		if err != nil {
			for _, ln := range bound {
				_ = ln.Close()
			}
			for _, p := range s.front.list() {
				_ = p.sock.Close()
			}
		}
	}()
	next, err := s.buildListeners(l, nil)
	if err != nil {
		return nil, err
	}
	s.front.live = next // served by run

	s.drainer, err = drain.New(drain.Options{
		Delay: cfg.Drain.Delay, Quiet: cfg.Drain.Quiet, Timeout: cfg.Drain.Timeout,
		AppStopTimeout: cfg.App.StopTimeout,
		Traffic:        s.tracker,
		Frontend:       s.front,
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
		maxConns   int
	}{{"health", cfg.HealthListen, s.healthListenerHandler, true, 0}, {"admin", cfg.AdminListen, s.adminHandler, false, 0},
		{"metrics", cfg.MetricsListen, s.metricsHandler, false, metricsMaxConns}} {
		if aux.addr == off {
			continue
		}
		a, err := newAuxServer(aux.name, aux.addr, aux.handler(), s.log, aux.h2c, aux.maxConns)
		if err != nil {
			return nil, err
		}
		if aux.name == "metrics" {
			a.srv.WriteTimeout = metricsWriteTimeout // a scraper that stops reading lets go of its slot
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

// newProxyHandler builds the data plane for one upstream under cfg.
func (s *sidecar) newProxyHandler(cfg *Config, up proxy.Upstream) (*proxy.Handler, error) {
	var access *zap.Logger
	if cfg.AccessLog != off {
		access = s.logs.access
	}
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
		Loop:         proxy.LoopOptions{Off: cfg.Server.MaxHops == 0, MaxHops: cfg.Server.MaxHops},
		Tracker:      s.tracker,
		Metrics:      s.metrics,
		Logger:       s.log.Named("proxy"),
		AccessLog:    access,

		PlainSyscalls: cfg.Server.PlainSyscalls,
	})
}

// publicAddr is the first public listener's address.
func (s *sidecar) publicAddr() string { return s.front.list()[0].srv.Addr().String() }

// live returns the config in force: the one started with, or the last
// reload's.
func (s *sidecar) live() *Config { return &s.conf.Load().cfg }

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

// upstreamsFree makes sure that, before tidegate starts the app, nothing
// accepts connections where the app will listen: a process left over from
// an earlier run (or another app) holding the port would take the traffic
// while the new child crash-loops on "address in use". The check dials each
// upstream once, for at most 250ms.
func (s *sidecar) upstreamsFree() error {
	seen := map[string]bool{}
	for _, p := range s.front.list() {
		if seen[p.spec.Upstream] {
			continue
		}
		seen[p.spec.Upstream] = true
		up, err := proxy.ParseUpstream(p.spec.Upstream)
		if err != nil {
			return err
		}
		c, err := net.DialTimeout(up.Network, up.Address, 250*time.Millisecond)
		if err != nil {
			continue // refused (or unreachable): free for the app
		}
		_ = c.Close()
		return fmt.Errorf("upstream %s already accepts connections before the app is started: another process holds it "+
			"(an app left over from an earlier run?). Stop that process, or point --upstream at the address your app listens on", p.spec.Upstream)
	}
	return nil
}

// appStarted runs on every start of the app child. After a restart the
// app is not listening yet: its probes start afresh (the startup probe runs
// again, as the kubelet does) and the gate answers for it until its
// readiness passes again, so no request reaches an app that cannot take it.
func (s *sidecar) appStarted(pid int, restart bool) {
	if !restart {
		return
	}
	s.probes.Reset()
	s.restarting.Store(true)
	s.log.Named("app").Info("app restarted; gating requests until it is ready again", zap.Int("pid", pid),
		zap.String("reason", "app_restart"))
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
	if err := s.upstreamsFree(); err != nil {
		return err
	}
	sig, _ := drain.ParseSignal(a.StopSignal)
	child, err := drain.StartChild(drain.ChildOptions{
		Command: a.Command, StopSignal: sig,
		Restart: a.Restart, BackoffInitial: a.RestartBackoff, BackoffMax: a.RestartMax, MaxRestarts: a.RestartLimit,
		Env:        withoutNotifyEnv(os.Environ()),
		Logger:     s.log.Named("app"),
		Registerer: s.reg,
		OnStart:    s.appStarted,
		OnRestarting: func(drain.AppExit) {
			s.restarting.Store(true) // the gate holds or refuses until the next run is ready
			// The last run's verdicts go now, not at the next start: the
			// next run counts as alive a moment before OnStart, and a
			// request then would find it "ready" and open the gate.
			s.probes.Reset()
			// Pooled connections to the dead run are dead too: the first
			// requests through the reopened gate would take them and fail.
			s.front.closeIdle()
		},
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
	live := s.front.list()
	listeners := make([]string, 0, len(live))
	for _, p := range live {
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
	for _, p := range live {
		s.front.serve(p)
	}
	errc := make(chan error, 1+len(s.aux))
	for _, a := range s.aux {
		go func() { errc <- a.serve() }()
	}
	running := len(s.aux)
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

	// The watchdog and the drain's progress for systemd live until run
	// returns, through a drain started by POST /drain too.
	sdDone := make(chan struct{}, 2)
	go func() { s.notify.Watchdog(ctx, s.healthy); sdDone <- struct{}{} }()
	go func() { s.reportDrain(ctx); sdDone <- struct{}{} }()
	defer func() { cancel(); <-sdDone; <-sdDone }()

	reports := make(chan drain.Report, 1)
	go func() { reports <- s.drainer.Run(ctx) }()
	var rep drain.Report
	log := s.log.Named("lifecycle")
	signalled := false // a second signal stops now; a preStop drain racing the first one must not count
	for done := false; !done; {
		select {
		case sig := <-signals:
			name := signalName(sig)
			switch s.signalAction(sig) {
			case actForward:
				s.forwardSignal(sig)
				continue
			case actReload:
				s.reload(name)
				continue
			case actReopen:
				s.reopenLogs(name)
				continue
			case actIgnore:
				log.Debug("signal ignored", zap.String("signal", name))
				continue
			}
			if signalled {
				log.Warn("second signal: stopping now", zap.String("reason", name), zap.Int64("inflight", s.tracker.InFlight()))
				s.drainer.Force(name)
				continue
			}
			signalled = true
			if !s.drainer.Trigger(name) {
				log.Info("signal during a drain already under way", zap.String("reason", name))
			}
			s.notify.Stopping(s.statusLine()) // a signal: systemd is stopping us, there is no undrain
		case reply := <-s.ping:
			close(reply)
		case <-s.stall:
			<-s.stall
		case reply := <-s.reloadReq:
			reply <- s.reload("admin")
		case ex := <-s.appGone:
			log.Error("app exited on its own; draining without delay", zap.String("reason", "app_exit"), zap.String("app", ex.String()))
			s.drainer.Expedite("app_exit")
		case err := <-s.front.errs:
			log.Error("public listener failed; draining", zap.String("reason", "listener_error"), zap.Error(err))
			code = 1
			s.drainer.Trigger("listener_error")
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
	s.front.closeIdle()
	s.front.wait()
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
