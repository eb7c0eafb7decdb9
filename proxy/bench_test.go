package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The benchmarks measure one request through a real loopback listener, so
// ns/op includes the client and the app. BenchmarkDirect is the same request
// without tidegate: read the proxy's cost as the difference, from one run.

var benchBody = strings.Repeat("x", 1024)

func benchApp(b *testing.B) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, benchBody)
	}))
	b.Cleanup(s.Close)
	return s
}

func benchClient(b *testing.B) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func benchGet(b *testing.B, c *http.Client, url string) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

func BenchmarkDirect(b *testing.B) {
	app := benchApp(b)
	benchGet(b, benchClient(b), app.URL)
}

func benchProxy(b *testing.B, access *zap.Logger) { benchProxyWith(b, access, nil, true) }

func benchProxyWith(b *testing.B, access *zap.Logger, transport func(Upstream) http.RoundTripper, fast bool) {
	app := benchApp(b)
	addr := benchFront(b, app.Listener.Addr().String(), fast, func(o *Options) {
		o.AccessLog = access
		if transport != nil {
			o.Transport = transport(o.Upstream)
		}
	})
	benchGet(b, benchClient(b), "http://"+addr+"/")
}

// benchFront starts the real public server (hardening, connection
// accounting, drain writer) and a Handler in front of upstream, with the
// fast paths when fast is set; opts adjusts the Handler's options.
func benchFront(b *testing.B, upstream string, fast bool, opts func(*Options)) string {
	up, _ := ParseUpstream(upstream)
	tr := NewTracker(TrackerOptions{})
	m, err := NewMetrics(prometheus.NewRegistry(), tr)
	if err != nil {
		b.Fatal(err)
	}
	o := Options{Upstream: up, Tracker: tr, Metrics: m, TransportOptions: TransportOptions{IdleConnTimeout: time.Minute}}
	if opts != nil {
		opts(&o)
	}
	h, err := NewHandler(o)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	so := ServerOptions{}
	if fast {
		so.FastPath = h
	}
	srv := NewServer(ln, h, tr, so)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	b.Cleanup(func() { _ = srv.Close(); <-served; h.CloseIdleConnections() })
	return ln.Addr().String()
}

// BenchmarkProxyHTTP1 is a 1 KiB GET through tidegate with metrics on and
// the access log off: the fast path.
func BenchmarkProxyHTTP1(b *testing.B) { benchProxy(b, nil) }

// BenchmarkProxyHTTP1NetHTTP is BenchmarkProxyHTTP1 without the fast path:
// net/http's server and ReverseProxy (--net-http-only).
func BenchmarkProxyHTTP1NetHTTP(b *testing.B) { benchProxyWith(b, nil, nil, false) }

// BenchmarkProxyHTTP1StdTransport is BenchmarkProxyHTTP1NetHTTP with
// net/http's Transport to the app instead of tidegate's own HTTP/1.1
// client: a plain ReverseProxy.
func BenchmarkProxyHTTP1StdTransport(b *testing.B) {
	benchProxyWith(b, nil, func(up Upstream) http.RoundTripper {
		return NewTransport(up, TransportOptions{IdleConnTimeout: time.Minute})
	}, false)
}

// BenchmarkProxyHTTP1AccessLog is the same with a JSON access log line per
// request (written to io.Discard).
func BenchmarkProxyHTTP1AccessLog(b *testing.B) {
	enc := zap.NewProductionEncoderConfig()
	benchProxy(b, zap.New(zapNewCore(enc)))
}

// BenchmarkHandlerOnly measures the handler's own work around the forward
// (tracking, request id, metrics, recorder) with a RoundTripper that answers
// in memory, so no sockets are involved.
func BenchmarkHandlerOnly(b *testing.B) {
	tr := NewTracker(TrackerOptions{})
	m, err := NewMetrics(prometheus.NewRegistry(), tr)
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHandler(Options{Upstream: Upstream{"tcp", "app:80"}, Tracker: tr, Metrics: m, Transport: memTransport{}})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "http://app/", nil)
	req.RemoteAddr = "127.0.0.1:5000"
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w := discardWriter{h: http.Header{}}
		h.ServeHTTP(&w, req)
	}
}

type memTransport struct{}

func (memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Length": {"1024"}},
		Body: io.NopCloser(strings.NewReader(benchBody)), ContentLength: 1024, Request: r,
		ProtoMajor: 1, ProtoMinor: 1}, nil
}

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

func zapNewCore(enc zapcore.EncoderConfig) zapcore.Core {
	return zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
}
