package proxy

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the data plane's Prometheus series. Create them once per
// registry with NewMetrics and share them between listeners.
type Metrics struct {
	requests       *prometheus.CounterVec
	duration       prometheus.Histogram
	upstreamErrors map[Reason]prometheus.Counter
	retries        map[RetryReason]prometheus.Counter
	staleConns     prometheus.Counter
	limits         *limitCollector

	// counters caches requests' children for the usual codes and methods,
	// so that the hot path skips hashing its label values.
	counters [500][len(cachedMethods)]atomic.Pointer[prometheus.Counter]
}

// cachedMethods are the method labels whose counters are cached.
var cachedMethods = [...]string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions}

// DurationBuckets are the request-duration histogram buckets, in seconds:
// fine below 100 ms where proxied APIs live, coarse up to a minute for slow
// endpoints and long polls.
var DurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// NewMetrics registers the data plane's series on reg:
//
//	tidegate_requests_total{code,method}     requests answered (code 499: client went away)
//	tidegate_request_duration_seconds        time from request to end of response body
//	tidegate_inflight_requests               requests being proxied now (from t)
//	tidegate_connections_active{protocol}    client connections open now (from t)
//	tidegate_upstream_errors_total{reason}   requests the app could not answer, by Reason
//	tidegate_upstream_retries_total{reason}  requests sent once more on a new app connection, by RetryReason
//	tidegate_upstream_stale_conns_total      pooled app connections found closed by the app before reuse
//	tidegate_connections_limit{listener}     connection limit of a listener (0: none)
//	tidegate_accept_waits_total{listener}    accepts that waited for a connection to close
//	tidegate_accept_errors_total{listener,reason}  failed accepts: emfile, enfile, other
//
// The listener series exist for each ConnLimit given to WatchConnLimit.
// It returns an error if any of them is already registered on reg.
func NewMetrics(reg prometheus.Registerer, t *Tracker) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_requests_total",
			Help: "Requests answered by the proxy, by status code and method. Code 499 means the client went away before the response.",
		}, []string{"code", "method"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tidegate_request_duration_seconds",
			Help:    "Time from receiving a request to the end of its response body.",
			Buckets: DurationBuckets,
		}),
		upstreamErrors: make(map[Reason]prometheus.Counter),
	}
	upErr := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tidegate_upstream_errors_total",
		Help: "Requests the app could not answer, by reason (connect_refused, connect_timeout, connect_error, response_timeout, upstream_reset, upstream_error).",
	}, []string{"reason"})
	for _, r := range UpstreamReasons() {
		m.upstreamErrors[r] = upErr.WithLabelValues(string(r))
	}
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tidegate_upstream_retries_total",
		Help: "Requests sent once more, on a newly dialled app connection, after an attempt that the app cannot have answered, by reason (connect_failed, conn_closed).",
	}, []string{"reason"})
	m.retries = make(map[RetryReason]prometheus.Counter)
	for _, r := range RetryReasons() {
		m.retries[r] = retries.WithLabelValues(string(r))
	}
	m.staleConns = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tidegate_upstream_stale_conns_total",
		Help: "Idle pooled connections to the app that the app had closed (or that held unexpected bytes), found by the check before reuse and discarded: no request was sent on them.",
	})
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tidegate_inflight_requests",
		Help: "Requests being proxied now, health-check requests included.",
	}, func() float64 { return float64(t.InFlight()) })
	conns := &connCollector{t: t, desc: prometheus.NewDesc(
		"tidegate_connections_active",
		"Client connections open now, by protocol.",
		[]string{"protocol"}, nil)}

	m.limits = newLimitCollector()

	for _, c := range []prometheus.Collector{m.requests, m.duration, upErr, retries, m.staleConns, inflight, conns, m.limits} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observe(method string, code int, seconds float64) {
	m.requestCounter(method, code).Inc()
	m.duration.Observe(seconds)
}

// requestCounter returns the requests counter for method and code.
func (m *Metrics) requestCounter(method string, code int) prometheus.Counter {
	mi := slices.Index(cachedMethods[:], method)
	if code < 100 || code >= 600 || mi < 0 {
		return m.requests.WithLabelValues(strconv.Itoa(code), methodLabel(method))
	}
	slot := &m.counters[code-100][mi]
	if c := slot.Load(); c != nil {
		return *c
	}
	c := m.requests.WithLabelValues(strconv.Itoa(code), method)
	slot.Store(&c)
	return c
}

func (m *Metrics) upstreamError(r Reason) {
	if c, ok := m.upstreamErrors[r]; ok {
		c.Inc()
	}
}

// upstreamRetry counts a request sent once more for reason r; m may be nil.
func (m *Metrics) upstreamRetry(r RetryReason) {
	if m != nil {
		m.retries[r].Inc()
	}
}

// staleConn counts a pooled app connection discarded before reuse; m may
// be nil.
func (m *Metrics) staleConn() {
	if m != nil {
		m.staleConns.Inc()
	}
}

// methodLabel keeps the method label's cardinality bounded: a client can send
// any token as a method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// connCollector reads connection counts from the tracker at scrape time, so
// the hot path updates one atomic and nothing else.
type connCollector struct {
	t    *Tracker
	desc *prometheus.Desc
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range Protocols() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.t.Connections(p)), p.String())
	}
}

// WatchConnLimit reports l's series under the listener label from now on:
// its limit, its accept waits and its accept errors. A later call with the
// same listener name replaces l (counters restart from l's own counts).
func (m *Metrics) WatchConnLimit(listener string, l *ConnLimit) {
	if l == nil {
		return
	}
	m.limits.mu.Lock()
	defer m.limits.mu.Unlock()
	m.limits.byListener[listener] = l
}

// limitCollector reads the listeners' ConnLimits at scrape time, so the
// accept path updates its own atomics and nothing else.
type limitCollector struct {
	limit, waits, errs *prometheus.Desc

	mu         sync.Mutex
	byListener map[string]*ConnLimit
}

func newLimitCollector() *limitCollector {
	return &limitCollector{
		limit: prometheus.NewDesc("tidegate_connections_limit",
			"The most client connections open at once on a public listener (--max-connections); 0 means no limit.",
			[]string{"listener"}, nil),
		waits: prometheus.NewDesc("tidegate_accept_waits_total",
			"Accepts on a public listener that waited for a connection to close because the listener was at its connection limit; meanwhile new clients wait in the listen backlog.",
			[]string{"listener"}, nil),
		errs: prometheus.NewDesc("tidegate_accept_errors_total",
			"Failed accepts on a public listener, each followed by a backoff, by reason: emfile (tidegate is out of open files), enfile (the system is), other.",
			[]string{"listener", "reason"}, nil),
		byListener: make(map[string]*ConnLimit),
	}
}

func (c *limitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.limit
	ch <- c.waits
	ch <- c.errs
}

func (c *limitCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, l := range c.byListener {
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(l.Max()), name)
		ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(l.waits.Load()), name)
		for kind, reason := range acceptErrorReasons {
			ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(l.acceptErr[kind].Load()), name, reason)
		}
	}
}
