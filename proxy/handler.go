package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// ForwardedMode says what to do with X-Forwarded-* headers a client sent.
type ForwardedMode string

const (
	// ForwardedAppend trusts the previous hop (a load balancer or ingress):
	// the client address is appended to its X-Forwarded-For, and its
	// X-Forwarded-Proto and X-Forwarded-Host are kept; tidegate sets them
	// only when absent. The default: a sidecar always sits behind something.
	ForwardedAppend ForwardedMode = "append"
	// ForwardedReplace trusts nobody: the three headers are replaced by what
	// tidegate itself sees. Use it when tidegate is the edge.
	ForwardedReplace ForwardedMode = "replace"
	// ForwardedOff leaves the three headers as the client sent them and
	// adds none, as haproxy and nginx do unless told otherwise. Use it when
	// the app ignores them, or when the hop before tidegate sets them and
	// nothing else reaches it.
	ForwardedOff ForwardedMode = "off"
)

// RequestIDMode says whether tidegate makes request ids.
type RequestIDMode string

const (
	// RequestIDGenerate keeps a client's X-Request-Id when it is valid
	// (printable, at most 128 bytes) and replaces it with a new UUID
	// otherwise; the id goes to the app, back to the client unless the app
	// answers with its own, and into the access log. The default.
	RequestIDGenerate RequestIDMode = "generate"
	// RequestIDOff makes no ids and adds X-Request-Id to nothing:
	// a client's passes to the app untouched, and a valid one is still
	// logged and put on tidegate's own error answers.
	RequestIDOff RequestIDMode = "off"
)

// RequestIDHeader carries the request id to the app and back to the client.
const RequestIDHeader = "X-Request-Id"

// Options configures a Handler. Upstream and Tracker are required.
type Options struct {
	// Upstream is the app. Required.
	Upstream Upstream

	// Transport carries requests to the app. Nil means
	// NewTransport(Upstream, TransportOptions).
	Transport http.RoundTripper

	// TransportOptions tunes the default transports; ignored when
	// Transport is set.
	TransportOptions TransportOptions

	// Protocol says how requests reach the app; ignored when Transport is
	// set. Empty means UpstreamHTTP1.
	Protocol UpstreamProtocol

	// MaxBodyBytes caps request bodies: larger ones get 413, before the app
	// sees the request when Content-Length announces the size, else as soon
	// as the limit is crossed. Zero means no cap.
	MaxBodyBytes int64

	// Forwarded says how X-Forwarded-* headers are set. Empty means
	// ForwardedAppend.
	Forwarded ForwardedMode

	// RequestID says whether request ids are made. Empty means
	// RequestIDGenerate.
	RequestID RequestIDMode

	// Loop configures loop detection: a Via entry on every request to the
	// app, and 508 for a request that already carries this tidegate's
	// (loop.go). The zero value: on, a random id, DefaultMaxHops.
	Loop LoopOptions

	// Tracker counts requests in flight. Required.
	Tracker *Tracker

	// Metrics records request counts and durations. Nil means none.
	Metrics *Metrics

	// Logger receives upstream errors. Nil means no logs.
	Logger *zap.Logger

	// AccessLog, when set, receives one line per request. Nil means off.
	AccessLog *zap.Logger

	// Now is the clock for durations. Nil means time.Now.
	Now func() time.Time

	// PlainSyscalls makes the fast path read and write its TCP connections
	// (from clients, when a Server takes this handler as its FastPath, and
	// to the app) through Go's ordinary system calls. The default (false),
	// on Linux, uses raw system calls that spare the Go scheduler its
	// bookkeeping (rawsyscall_linux.go); this is the escape hatch.
	PlainSyscalls bool
}

// Handler proxies HTTP requests to the app and accounts for each one. It is
// an http.Handler for the public listener; it knows nothing of signals,
// probes or the lifecycle.
type Handler struct {
	rp        *httputil.ReverseProxy
	transport http.RoundTripper
	h1        *h1Transport     // the transport of the fast path; nil: no fast path
	splice    UpstreamProtocol // which HTTP/2 streams are spliced to the app over h2c (h2splice.go); "": none
	tracker   *Tracker
	metrics   *Metrics
	log       *zap.Logger
	access    *zap.Logger
	maxBody   int64
	forwarded ForwardedMode
	genID     bool // RequestIDGenerate
	loop      loopGuard
	target    string
	now       func() time.Time
	realClock bool // now is time.Now (later)

	// WebSocket sessions are proxied by the handler itself (websocket.go).
	dial        func(ctx context.Context) (net.Conn, error)
	dialTimeout time.Duration
	rawSyscalls bool // dial, and a Server with this FastPath, use rawSyscalls
	ws          wsSessions
}

// NewHandler returns a Handler for o.
func NewHandler(o Options) (*Handler, error) {
	if o.Tracker == nil {
		return nil, errors.New("proxy: Options.Tracker is required")
	}
	if o.Upstream.Network == "" {
		return nil, errors.New("proxy: Options.Upstream is required")
	}
	switch o.Forwarded {
	case "":
		o.Forwarded = ForwardedAppend
	case ForwardedAppend, ForwardedReplace, ForwardedOff:
	default:
		return nil, fmt.Errorf("proxy: forwarded mode %q: want %q, %q or %q", o.Forwarded, ForwardedAppend, ForwardedReplace, ForwardedOff)
	}
	switch o.RequestID {
	case "":
		o.RequestID = RequestIDGenerate
	case RequestIDGenerate, RequestIDOff:
	default:
		return nil, fmt.Errorf("proxy: request id mode %q: want %q or %q", o.RequestID, RequestIDGenerate, RequestIDOff)
	}
	if o.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("proxy: max body bytes %d is negative", o.MaxBodyBytes)
	}
	loop, err := newLoopGuard(o.Loop)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		loop:      loop,
		transport: o.Transport,
		tracker:   o.Tracker,
		metrics:   o.Metrics,
		log:       o.Logger,
		access:    o.AccessLog,
		maxBody:   o.MaxBodyBytes,
		forwarded: o.Forwarded,
		genID:     o.RequestID == RequestIDGenerate,
		target:    o.Upstream.targetHost(),
		now:       o.Now,
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	h.dialTimeout = o.TransportOptions.DialTimeout
	if h.dialTimeout <= 0 {
		h.dialTimeout = 5 * time.Second
	}
	network := "tcp"
	if o.Upstream.Network == "unix" {
		network = "unix"
	}
	addr := o.Upstream.Address
	d := net.Dialer{KeepAlive: 30 * time.Second}
	h.rawSyscalls = !o.PlainSyscalls
	h.dial = func(ctx context.Context) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || !h.rawSyscalls {
			return c, err
		}
		return rawSyscalls(c), nil
	}
	if h.transport == nil {
		dial := func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, h.dialTimeout)
			defer cancel()
			return h.dial(ctx)
		}
		h1 := newH1Transport(dial, NewTransport(o.Upstream, o.TransportOptions), o.TransportOptions, o.Metrics)
		switch o.Protocol {
		case "", UpstreamHTTP1:
			h.transport = h1
			h.h1 = h1
		case UpstreamAuto:
			// Only gRPC over HTTP/2 goes to h2c: HTTP/1.1 may take the fast path.
			h.h1 = h1
			h.splice = UpstreamAuto
			h.transport = router{mode: o.Protocol, h1: h1, h2c: NewH2CTransport(o.Upstream, o.TransportOptions)}
		case UpstreamH2C:
			h.splice = UpstreamH2C
			h.transport = router{mode: o.Protocol, h1: h1, h2c: NewH2CTransport(o.Upstream, o.TransportOptions)}
		default:
			return nil, fmt.Errorf("proxy: upstream protocol %q: want %q, %q or %q", o.Protocol, UpstreamHTTP1, UpstreamH2C, UpstreamAuto)
		}
	}
	if h.now == nil {
		h.now, h.realClock = time.Now, true
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:   h.rewrite,
		Transport: h.transport,
		// 0: a response of known length goes out in as few writes as the
		// buffers allow (one for a small answer). ReverseProxy itself
		// flushes every write of a response of unknown length (streams,
		// gRPC) and of text/event-stream. -1 here would flush the header
		// alone from a timer goroutine, then every write: twice the
		// syscalls and a goroutine per request.
		FlushInterval:  0,
		BufferPool:     newBufferPool(),
		ErrorLog:       debugLog(h.log),
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
	}
	return h, nil
}

// debugLog routes ReverseProxy's own messages (mostly clients that left
// during a body copy) to debug level: they are normal under load.
func debugLog(l *zap.Logger) *log.Logger {
	std, err := zap.NewStdLogAt(l, zap.DebugLevel)
	if err != nil {
		return zap.NewStdLog(l)
	}
	return std
}

// CloseIdleConnections closes pooled connections to the app that are idle.
func (h *Handler) CloseIdleConnections() {
	if c, ok := h.transport.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// reqState travels with a request through the ReverseProxy hooks.
type reqState struct {
	id       string
	h2       bool      // the client spoke HTTP/2
	start    time.Time // request began
	sent     time.Time // request handed to the transport
	headers  time.Time // app's response headers received
	failure  *failure
	panicked bool
}

type stateKey struct{}

func stateOf(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// ServeHTTP proxies r to the app.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	h.tracker.RequestStarted(h.tracker.IsProbe(r.UserAgent()))
	defer h.tracker.RequestDone()

	st := &reqState{h2: r.ProtoMajor == 2, start: start}
	var generated bool
	if st.id, generated = h.requestID(r.Header.Get(RequestIDHeader)); generated {
		r.Header.Set(RequestIDHeader, st.id)
	}
	rec := &recorder{ResponseWriter: w}
	defer func() {
		p := recover()
		if p != nil {
			// ReverseProxy aborts with http.ErrAbortHandler when the body
			// copy fails half way: record the request, then let the server
			// cut the connection.
			st.panicked = true
		}
		h.finish(r, rec, st, start)
		if p != nil {
			panic(p)
		}
	}()

	if h.loopHeader(r.Header, r.Method, r.URL.Path, st.id) {
		f := errLoop
		st.failure = &f
		writeFailure(rec, f, st.id)
		return
	}
	if r.Method == http.MethodConnect {
		// A tunnel, not a body: no size limit.
		h.serveConnect(rec, r, st)
		return
	}
	if h.maxBody > 0 {
		if r.ContentLength > h.maxBody {
			f := failure{http.StatusRequestEntityTooLarge, ReasonBodyTooLarge, false, "request body too large"}
			st.failure = &f
			writeFailure(rec, f, st.id)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, h.maxBody)
	}
	if isUpgrade(r) {
		h.serveUpgrade(rec, r, st)
		return
	}

	h.rp.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
}

func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	out, in := pr.Out, pr.In
	out.URL.Scheme = "http"
	out.URL.Host = h.target
	// A sidecar is transparent: keep the Host the client asked for and the
	// query string exactly as sent (ReverseProxy drops parts it cannot parse).
	out.Host = in.Host
	out.URL.RawQuery = in.URL.RawQuery
	h.setForwardedHeaders(in, out)
	h.addVia(out.Header, in)
	for k := range out.Trailer {
		// A trailer the client declared with a name that is not a field
		// name (an empty "trailer:" field over HTTP/2) is not sent on:
		// net/http's Transport would refuse the whole request, and the
		// client's mistake would read as the app's 502.
		if !httpguts.ValidHeaderFieldName(k) {
			delete(out.Trailer, k)
		}
	}
	if st := stateOf(in.Context()); st != nil {
		st.sent = h.later(st.start)
	}
}

// setForwardedHeaders sets X-Forwarded-For, -Proto and -Host on out, the
// request to the app, from in, the client's request.
func (h *Handler) setForwardedHeaders(in, out *http.Request) {
	if h.forwarded == ForwardedOff {
		// ReverseProxy took them out before rewrite: as they came.
		for _, k := range [...]string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} {
			if vs := in.Header[k]; len(vs) > 0 {
				out.Header[k] = slices.Clone(vs)
			}
		}
		return
	}
	ip, _, err := net.SplitHostPort(in.RemoteAddr)
	switch {
	case err != nil:
		out.Header.Del("X-Forwarded-For")
	case h.forwarded == ForwardedAppend && len(in.Header.Values("X-Forwarded-For")) > 0:
		out.Header.Set("X-Forwarded-For", joinComma(in.Header.Values("X-Forwarded-For"))+", "+ip)
	default:
		out.Header.Set("X-Forwarded-For", ip)
	}
	proto, host := "http", in.Host
	if in.TLS != nil {
		proto = "https"
	}
	if h.forwarded == ForwardedAppend {
		if v := in.Header.Get("X-Forwarded-Proto"); v != "" {
			proto = v
		}
		if v := in.Header.Get("X-Forwarded-Host"); v != "" {
			host = v
		}
	}
	out.Header.Set("X-Forwarded-Proto", proto)
	out.Header.Set("X-Forwarded-Host", host)
}

func joinComma(vs []string) string {
	if len(vs) == 1 {
		return vs[0]
	}
	n := 0
	for _, v := range vs {
		n += len(v) + 2
	}
	b := make([]byte, 0, n)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, v...)
	}
	return string(b)
}

func (h *Handler) modifyResponse(resp *http.Response) error {
	st := stateOf(resp.Request.Context())
	if st == nil {
		return nil
	}
	st.headers = h.later(st.start)
	if h.genID && resp.Header.Get(RequestIDHeader) == "" {
		resp.Header.Set(RequestIDHeader, st.id)
	}
	return nil
}

func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	f := classify(r.Context(), err)
	st := stateOf(r.Context())
	id := ""
	if st != nil {
		st.failure = &f
		id = st.id
	}
	if f.upstream {
		if h.metrics != nil {
			h.metrics.upstreamError(f.reason)
		}
		h.log.Warn("upstream request failed",
			zap.String("reason", string(f.reason)),
			zap.Int("status", f.status),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("request_id", id),
			zap.Error(err))
	}
	if f.status == StatusClientClosed {
		return // nobody is listening
	}
	writeFailure(w, f, id)
}

func writeFailure(w http.ResponseWriter, f failure, id string) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Tidegate-Reason", string(f.reason))
	if id != "" {
		hdr.Set(RequestIDHeader, id)
	}
	w.WriteHeader(f.status)
	_, _ = w.Write([]byte(f.body()))
}

// finish records a completed request in the metrics and the access log.
func (h *Handler) finish(r *http.Request, rec *recorder, st *reqState, start time.Time) {
	end := h.later(start)
	status := rec.status
	switch {
	case st.failure != nil && st.failure.status == StatusClientClosed:
		status = StatusClientClosed
	case r.Context().Err() != nil && st.panicked:
		status = StatusClientClosed // the client left during the body
	case status == 0:
		status = http.StatusOK // nothing written: net/http sends 200
	}
	if h.metrics != nil {
		h.metrics.observe(r.Method, status, end.Sub(start).Seconds())
	}
	if h.access == nil {
		return
	}
	var upstream time.Duration
	if !st.sent.IsZero() && !st.headers.IsZero() {
		upstream = st.headers.Sub(st.sent)
	}
	reason := ""
	if st.failure != nil {
		reason = string(st.failure.reason)
	} else if st.panicked {
		reason = "aborted"
		if c := trackedOf(connOf(r)); c != nil && c.writeStalled() {
			reason = string(ReasonClientWriteTimeout)
		}
	}
	h.logAccess(accessEntry{method: r.Method, path: r.URL.Path, proto: r.Proto, status: status, bytes: rec.bytes,
		duration: end.Sub(start), upstream: upstream, id: st.id, remote: r.RemoteAddr, reason: reason})
}

// accessEntry is one access-log line; both data paths (ServeHTTP and the
// fast path) log through logAccess, so their lines have the same fields.
type accessEntry struct {
	method, path, proto string
	status              int
	bytes               int64
	duration, upstream  time.Duration
	id, remote          string
	reason              string // "" when the request went well
}

func (h *Handler) logAccess(e accessEntry) {
	fields := make([]zap.Field, 0, 10)
	fields = append(fields,
		zap.String("method", e.method),
		zap.String("path", e.path),
		zap.String("proto", e.proto),
		zap.Int("status", e.status),
		zap.Int64("bytes", e.bytes),
		zap.Duration("duration", e.duration),
		zap.Duration("upstream_duration", e.upstream),
		zap.String("request_id", e.id),
		zap.String("remote_addr", e.remote),
	)
	if e.reason != "" {
		fields = append(fields, zap.String("reason", e.reason))
	}
	h.access.Info("request", fields...)
}

// recorder notes the status and body size a response got. It hides no
// optional interface: http.ResponseController reaches Flush and Hijack of the
// underlying writer through Unwrap.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if code == http.StatusContinue {
		// Not relayed: net/http sends its own 100 Continue when the
		// transport starts reading the body, which it does right after
		// the app's 100. Relaying the app's too would send two.
		return
	}
	if r.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// FlushError flushes, except the headers of a gRPC response before any
// message: ReverseProxy flushes headers from a timer goroutine, and for a
// gRPC error (trailers-only: grpc-status in the only HEADERS frame) that
// races the handler's end, leaving the status in non-final headers.
func (r *recorder) FlushError() error {
	if r.bytes == 0 && isGRPC(r.Header().Get("Content-Type")) {
		return nil
	}
	return http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// bufferPool lends ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (bp *bufferPool) Get() []byte  { return *(bp.p.Get().(*[]byte)) }
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }

// later is the time now, for a stamp after t (the request's start): t
// plus the time since t. With the real clock that is one read of the
// monotonic clock, where time.Now reads the wall clock too; the data
// paths take three or four stamps a request.
func (h *Handler) later(t time.Time) time.Time {
	if !h.realClock {
		return h.now()
	}
	return t.Add(time.Since(t))
}
