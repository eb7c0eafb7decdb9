package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tidegate/tidegate/deploy/webhook"
)

// webhookCmd serves the admission webhook until SIGTERM or SIGINT: then it
// waits --shutdown-delay (a second signal skips it), and shuts down
// gracefully within webhook.ShutdownTimeout.
func webhookCmd(args []string, e env) error {
	fs := flag.NewFlagSet("tidegate-inject webhook", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	listen := fs.String("listen", ":8443", "HTTPS address of /mutate, /mutate/opt-in and /healthz")
	certFile := fs.String("tls-cert", "", "PEM serving certificate, reloaded when it changes (required)")
	keyFile := fs.String("tls-key", "", "PEM private key of --tls-cert (required)")
	interval := fs.Duration("cert-check-interval", webhook.DefaultCertCheckInterval, "how often the certificate files are checked for a new pair")
	metricsListen := fs.String("metrics-listen", "", "plain-HTTP address serving GET /metrics (default: off)")
	shutdownDelay := fs.Duration("shutdown-delay", 0, "after SIGTERM, keep serving this long before closing the listener, while the API server stops sending here")
	level := zapcore.InfoLevel
	fs.Var(logLevelValue{&level}, "log-level", "debug, info, warn or error (default info)")
	pf := addParamFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *certFile == "" || *keyFile == "" {
		return usagef("--tls-cert and --tls-key are required (tidegate-inject certs writes a pair; or mount cert-manager's Secret)")
	}
	if *shutdownDelay < 0 {
		return usagef("--shutdown-delay %s: want ≥ 0", *shutdownDelay)
	}
	p, err := pf.params()
	if err != nil {
		return err
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(e.stderr), level))
	defer func() { _ = log.Sync() }()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := webhook.New(webhook.Options{CertFile: *certFile, KeyFile: *keyFile, Params: p, Log: log.Named("webhook"),
		Registerer: reg, CertCheckInterval: *interval})
	if err != nil {
		return usageError{err}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usagef("--listen %s: %w", *listen, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if *metricsListen != "" {
		mln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			ln.Close()
			return usagef("--metrics-listen %s: %w", *metricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: webhook.ReadHeaderTimeout, ReadTimeout: webhook.ReadTimeout,
			WriteTimeout: webhook.WriteTimeout, IdleTimeout: webhook.IdleTimeout, MaxHeaderBytes: webhook.MaxHeaderBytes}
		go func() { _ = msrv.Serve(mln) }()
		defer msrv.Close()
	}
	go func() {
		if e.signals == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case sig := <-e.signals:
			log.Info("signal: stopping", zap.String("signal", sig.String()), zap.String("phase", "draining"), zap.Duration("shutdown_delay", *shutdownDelay))
		}
		if *shutdownDelay > 0 {
			t := time.NewTimer(*shutdownDelay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-e.signals:
			case <-ctx.Done():
			}
		}
		stop()
	}()
	log.Info("serving", zap.String("listen", ln.Addr().String()), zap.String("image", p.WithDefaults().Image), zap.String("mode", string(p.WithDefaults().Mode)))
	if err := s.Serve(ctx, ln); err != nil {
		return err
	}
	return nil
}

// logLevelValue lets --log-level live in the command's own flag set.
type logLevelValue struct{ l *zapcore.Level }

func (v logLevelValue) String() string {
	if v.l == nil {
		return ""
	}
	return v.l.String()
}
func (v logLevelValue) Set(s string) error {
	if err := v.l.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return nil
}
