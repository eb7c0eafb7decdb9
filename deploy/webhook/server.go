package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tidegate/tidegate/deploy/inject"
)

// Bounds of the server. The API server calls a webhook with at most 30 s
// timeoutSeconds (10 s by default) and its own request bodies are at most
// 3 MiB, so these never cut a real admission.
const (
	// MaxBodyBytes bounds an AdmissionReview body; larger is 413.
	MaxBodyBytes = 3 << 20
	// ReadHeaderTimeout, ReadTimeout and WriteTimeout bound one request;
	// IdleTimeout a kept-alive connection between requests.
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 15 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 90 * time.Second
	// BodyBudgetBytes bounds the AdmissionReview bytes held at once, over
	// all requests (see bodyBudget): with the work a pod takes, it keeps
	// the injector well under its 128Mi limit. MaxAdmissionWait bounds how
	// long a request waits for its share, then it is answered 503 (the API
	// server applies the webhook's failurePolicy).
	BodyBudgetBytes  = 4 << 20
	MaxAdmissionWait = 2 * time.Second
	// MaxHeaderBytes bounds the request head.
	MaxHeaderBytes = 64 << 10
	// ShutdownTimeout bounds the graceful shutdown once Serve's context
	// ends: admissions in flight get this long, then their connections are
	// closed.
	ShutdownTimeout = 10 * time.Second
	// DefaultCertCheckInterval is Options.CertCheckInterval's default.
	DefaultCertCheckInterval = 10 * time.Second
)

// Options configure a Server.
type Options struct {
	// CertFile and KeyFile are the PEM serving certificate (chain) and its
	// private key, read by New and checked again every CertCheckInterval
	// (e.g. a mounted Secret that cert-manager rotates). Both empty: no
	// TLS, Serve fails and only Handler is usable (tests). Default empty.
	CertFile, KeyFile string
	// Params are the injection parameters; pod annotations override them.
	// The zero value takes inject's defaults (Params.WithDefaults).
	Params inject.Params
	// Log receives one line per admission (namespace, pod, uid, result,
	// reason) and every certificate reload. Default nil: no logs.
	Log *zap.Logger
	// Registerer gets the tidegate_inject_* metrics. Default nil: the
	// metrics are kept but not registered anywhere.
	Registerer prometheus.Registerer
	// CertCheckInterval is how often the certificate files are read to
	// notice a new pair. Default (zero) DefaultCertCheckInterval, 10s;
	// negative is an error.
	CertCheckInterval time.Duration
}

// Server answers AdmissionReviews. Build it with New.
type Server struct {
	params            inject.Params
	log               *zap.Logger
	certFile, keyFile string
	interval          time.Duration
	cert              atomic.Pointer[servingCert] // nil without TLS
	m                 *metrics
	mux               *http.ServeMux
	budget            *bodyBudget
}

// New checks o, loads the certificate and builds the Server.
func New(o Options) (*Server, error) {
	p := o.Params.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("webhook: injection parameters: %w", err)
	}
	if o.CertCheckInterval < 0 {
		return nil, fmt.Errorf("webhook: certificate check interval %s: want a positive duration, or zero for %s", o.CertCheckInterval, DefaultCertCheckInterval)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, fmt.Errorf("webhook: certificate %q and key %q: give both files, or neither", o.CertFile, o.KeyFile)
	}
	s := &Server{params: p, log: o.Log, certFile: o.CertFile, keyFile: o.KeyFile, interval: o.CertCheckInterval,
		budget: newBodyBudget(BodyBudgetBytes)}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.interval == 0 {
		s.interval = DefaultCertCheckInterval
	}
	if o.CertFile != "" {
		sc, err := loadCert(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
		s.cert.Store(sc)
	}
	var err error
	if s.m, err = newMetrics(o.Registerer); err != nil {
		return nil, fmt.Errorf("webhook: metrics: %w", err)
	}
	s.mux = http.NewServeMux()
	s.mux.Handle("POST "+PathMutate, s.mutateHandler(PathMutate, inject.InjectUnlessRefused))
	s.mux.Handle("POST "+PathMutateOptIn, s.mutateHandler(PathMutateOptIn, inject.InjectIfAsked))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	return s, nil
}

// The admission endpoints.
const (
	// PathMutate is for namespaces labelled tidegate.io/inject=enabled.
	PathMutate = "/mutate"
	// PathMutateOptIn is for the other namespaces: only pods that ask.
	PathMutateOptIn = "/mutate/opt-in"
)

// Handler is the server's mux, without TLS (tests, or behind a TLS
// terminator).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve serves HTTPS (TLS 1.2 or later) on ln until ctx ends, then shuts
// down gracefully within ShutdownTimeout and returns nil; it returns an
// error if serving fails first. ln is closed when Serve returns. While it
// runs, the certificate files are checked every CertCheckInterval.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.cert.Load() == nil {
		ln.Close()
		return errors.New("webhook: no certificate: set Options.CertFile and KeyFile to serve TLS")
	}
	srv := &http.Server{
		Handler: s.mux,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return s.cert.Load().cert, nil
			},
		},
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")), // TLS handshake errors, at info,
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.watchCerts(watchCtx)
	}()
	defer func() { stopWatch(); <-watched }()

	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-served:
		return fmt.Errorf("webhook: serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down", zap.String("phase", "draining"), zap.Duration("timeout", ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("graceful shutdown cut short; closing connections", zap.String("phase", "closing"), zap.String("reason", err.Error()))
		srv.Close()
	}
	<-served // ErrServerClosed
	s.log.Info("stopped", zap.String("phase", "stopped"))
	return nil
}

// Admission results, the values of the result label.
const (
	resultInjected = "injected" // answered with a patch
	resultSkipped  = "skipped"  // allowed unchanged: not a pod create, not asked, refused, already injected, or not injectable and not asked
	resultDenied   = "denied"   // the pod asked for tidegate and cannot have it
	resultError    = "error"    // the request was not a usable AdmissionReview (4xx), or the handler failed (5xx)
)

type metrics struct {
	admissions  *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	certReloads *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_inject_admissions_total",
			Help: "AdmissionReviews answered, by endpoint and result (injected, skipped, denied, error). Dry runs count too.",
		}, []string{"path", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tidegate_inject_admission_duration_seconds",
			Help:    "Time to answer an AdmissionReview, from the request head to the answer written, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms to 4 s
		}, []string{"path"}),
		certReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_inject_cert_reloads_total",
			Help: "Serving certificate reloads after its files changed, by result (ok, error: the old certificate is kept).",
		}, []string{"result"}),
	}
	for _, p := range []string{PathMutate, PathMutateOptIn} {
		for _, r := range []string{resultInjected, resultSkipped, resultDenied, resultError} {
			m.admissions.WithLabelValues(p, r)
		}
		m.duration.WithLabelValues(p)
	}
	m.certReloads.WithLabelValues("ok")
	m.certReloads.WithLabelValues("error")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.admissions, m.duration, m.certReloads} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
