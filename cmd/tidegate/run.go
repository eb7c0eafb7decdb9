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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

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
// plane, the lifecycle, health and admin together.
type sidecar struct {
	cfg     *Config
	loaded  *loaded
	log     *zap.Logger
	build   buildInfo
	started time.Time

	reg     *prometheus.Registry
	life    *drain.Lifecycle
	tracker *proxy.Tracker
	handler *proxy.Handler
	public  *proxy.Server
	aux     []*auxServer // health and admin listeners, stopped last
}

// newSidecar builds every part and binds every listener, so that a port in
// use is reported before anything is served. It serves nothing yet.
func newSidecar(l *loaded, logs *loggers, build buildInfo) (sc *sidecar, err error) {
	cfg := &l.cfg
	up, err := proxy.ParseUpstream(cfg.Upstream.Address)
	if err != nil {
		return nil, usageError{err}
	}
	s := &sidecar{cfg: cfg, loaded: l, log: logs.log, build: build, started: time.Now(), reg: prometheus.NewRegistry()}

	if err := s.registerProcessMetrics(); err != nil {
		return nil, err
	}
	s.life, err = drain.NewLifecycle(drain.LifecycleOptions{Registerer: s.reg, Logger: s.log.Named("lifecycle")})
	if err != nil {
		return nil, err
	}
	s.tracker = proxy.NewTracker(proxy.TrackerOptions{ProbeUserAgents: cfg.ProbeUserAgents})
	metrics, err := proxy.NewMetrics(s.reg, s.tracker)
	if err != nil {
		return nil, fmt.Errorf("register proxy metrics: %w", err)
	}
	s.handler, err = proxy.NewHandler(proxy.Options{
		Upstream: up,
		TransportOptions: proxy.TransportOptions{
			DialTimeout:           cfg.Upstream.DialTimeout,
			ResponseHeaderTimeout: cfg.Upstream.ResponseHeaderTimeout,
			IdleConnTimeout:       cfg.Upstream.IdleTimeout,
			MaxIdleConns:          cfg.Upstream.MaxIdleConns,
			ExpectContinueTimeout: cfg.Upstream.ExpectContinueTimeout,
		},
		MaxBodyBytes: cfg.Server.MaxBodyBytes,
		Forwarded:    proxy.ForwardedMode(cfg.Server.Forwarded),
		Tracker:      s.tracker,
		Metrics:      metrics,
		Logger:       s.log.Named("proxy"),
		AccessLog:    logs.access,
	})
	if err != nil {
		return nil, usageError{err}
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
	ln, err := proxy.Listen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	bound = append(bound, ln)
	s.public = proxy.NewServer(ln, s.handler, s.tracker, proxy.ServerOptions{
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    int(cfg.Server.MaxHeaderBytes),
		Logger:            s.log.Named("public"),
	})

	if cfg.HealthListen != off {
		h, err := s.healthHandler()
		if err != nil {
			return nil, err
		}
		a, err := newAuxServer("health", cfg.HealthListen, h, s.log)
		if err != nil {
			return nil, err
		}
		bound = append(bound, a.ln)
		s.aux = append(s.aux, a)
	}
	if cfg.AdminListen != off {
		a, err := newAuxServer("admin", cfg.AdminListen, s.adminHandler(), s.log)
		if err != nil {
			return nil, err
		}
		bound = append(bound, a.ln)
		s.aux = append(s.aux, a)
	}
	return s, nil
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

// healthHandler serves the sidecar's own health until probe aggregation
// adds the app's checks: ready while serving, started once serving, live
// while the process answers.
func (s *sidecar) healthHandler() (http.Handler, error) {
	phase := func(ok func(drain.Phase) bool) func(context.Context) error {
		return func(context.Context) error {
			if p := s.life.Phase(); !ok(p) {
				return fmt.Errorf("phase is %s", p)
			}
			return nil
		}
	}
	return healthz.NewHandler(healthz.Options{
		Readiness: []healthz.Check{{Name: "lifecycle", Func: phase(func(p drain.Phase) bool { return p == drain.Serving })}},
		Liveness:  []healthz.Check{{Name: "lifecycle", Func: phase(func(p drain.Phase) bool { return p != drain.Stopped })}},
		Startup:   []healthz.Check{{Name: "lifecycle", Func: phase(func(p drain.Phase) bool { return p >= drain.Serving })}},
	})
}

// run serves until a signal arrives or a listener fails, then shuts down.
// It returns the exit code and the shutdown report.
func (s *sidecar) run(signals <-chan os.Signal) (int, shutdownReport) {
	errc := make(chan error, 1+len(s.aux))
	go func() { errc <- s.public.Serve() }()
	for _, a := range s.aux {
		go func() { errc <- a.serve() }()
	}
	running := 1 + len(s.aux)
	fields := []zap.Field{zap.String("listen", s.public.Addr().String()), zap.String("upstream", s.cfg.Upstream.Address),
		zap.String("version", s.build.Version)}
	for _, a := range s.aux {
		fields = append(fields, zap.String(a.name+"_listen", a.ln.Addr().String()))
	}
	s.life.Advance(drain.Serving, fields...)

	code, trigger := 0, ""
	select {
	case sig := <-signals:
		trigger = signalName(sig)
	case err := <-errc:
		running--
		s.log.Error("listener failed; shutting down", zap.Error(err))
		code, trigger = 1, "listener_error"
	}
	rep := s.shutdown(trigger, signals)
	for ; running > 0; running-- {
		if err := <-errc; err != nil && code == 0 {
			s.log.Error("listener failed during shutdown", zap.Error(err))
		}
	}
	return code, rep
}

// shutdownReport is the one line that says how a shutdown went.
type shutdownReport struct {
	Trigger           string        `json:"trigger"`
	Result            string        `json:"result"` // complete, timeout, forced
	Duration          time.Duration `json:"duration"`
	InFlightAtTrigger int64         `json:"inflight_at_trigger"`
	Completed         int64         `json:"completed"` // requests that finished after the trigger
	Cut               int64         `json:"cut"`       // requests still running at the deadline
	ConnsAtTrigger    int64         `json:"connections_at_trigger"`
}

// shutdown fails readiness at once, stops accepting, lets in-flight requests
// finish until drain.timeout, then cuts what is left. A second signal cuts at
// once. The full drain (delay, quiet period, stopping the app) builds on this.
func (s *sidecar) shutdown(trigger string, signals <-chan os.Signal) shutdownReport {
	start := time.Now()
	rep := shutdownReport{Trigger: trigger, Result: "complete",
		InFlightAtTrigger: s.tracker.InFlight(), ConnsAtTrigger: s.tracker.ConnectionsTotal()}
	reqsAtTrigger := s.tracker.Requests()
	s.life.Advance(drain.Draining, zap.String("trigger", trigger), zap.Int64("inflight", rep.InFlightAtTrigger))

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Drain.Timeout)
	defer cancel()
	s.public.SetKeepAlives(false)
	s.life.Advance(drain.Closing, zap.Int64("inflight", s.tracker.InFlight()))
	done := make(chan error, 1)
	go func() { done <- s.public.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			rep.Result, rep.Cut = "timeout", s.tracker.InFlight()
			s.log.Warn("shutdown deadline reached; cutting what is left",
				zap.String("reason", "timeout"), zap.Int64("inflight", rep.Cut), zap.Duration("timeout", s.cfg.Drain.Timeout))
			_ = s.public.Close()
		}
	case sig := <-signals:
		rep.Result, rep.Cut = "forced", s.tracker.InFlight()
		s.log.Warn("second signal; stopping now",
			zap.String("reason", signalName(sig)), zap.Int64("inflight", rep.Cut))
		_ = s.public.Close()
		<-done
	}
	s.handler.CloseIdleConnections()
	for _, a := range s.aux {
		a.shutdown(2 * time.Second)
	}
	rep.Duration = time.Since(start)
	rep.Completed = int64(s.tracker.Requests()-reqsAtTrigger) + rep.InFlightAtTrigger - rep.Cut
	s.life.Advance(drain.Stopped)
	s.log.Info("drain report",
		zap.String("trigger", rep.Trigger), zap.String("result", rep.Result), zap.Duration("duration", rep.Duration),
		zap.Int64("inflight_at_trigger", rep.InFlightAtTrigger), zap.Int64("completed", rep.Completed),
		zap.Int64("cut", rep.Cut), zap.Int64("connections_at_trigger", rep.ConnsAtTrigger))
	return rep
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}
