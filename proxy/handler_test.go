package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tidegate/tidegate/test/wait"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rigOptions is the Handler options of the test rigs: short dial and
// header timeouts, metrics on reg, and an access log the test can read.
func rigOptions(t *testing.T, up Upstream, tr *Tracker, reg *prometheus.Registry) (Options, *observer.ObservedLogs) {
	t.Helper()
	m, err := NewMetrics(reg, tr)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	return Options{
		Upstream:         up,
		TransportOptions: TransportOptions{DialTimeout: time.Second, ResponseHeaderTimeout: 5 * time.Second, IdleConnTimeout: time.Minute},
		Tracker:          tr,
		Metrics:          m,
		AccessLog:        zap.New(core),
	}, logs
}

// rig is a proxy in front of a real upstream, both on loopback.
type rig struct {
	tracker *Tracker
	reg     *prometheus.Registry
	handler *Handler
	front   *httptest.Server
	access  *observer.ObservedLogs
}

func newRig(t *testing.T, upstream string, mutate func(*Options)) *rig {
	t.Helper()
	up, err := ParseUpstream(upstream)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{tracker: NewTracker(TrackerOptions{}), reg: prometheus.NewRegistry()}
	var o Options
	o, r.access = rigOptions(t, up, r.tracker, r.reg)
	if mutate != nil {
		mutate(&o)
	}
	r.handler, err = NewHandler(o)
	if err != nil {
		t.Fatal(err)
	}
	r.front = httptest.NewServer(r.handler)
	t.Cleanup(func() {
		r.front.Close()
		r.handler.CloseIdleConnections()
	})
	return r
}

func upstreamServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestRequestIDGeneratedForwardedAndLogged(t *testing.T) {
	seen := make(chan http.Header, 2)
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() })
	r := newRig(t, up.Listener.Addr().String(), nil)
	c := r.front.Client()

	resp, _ := get(t, c, r.front.URL+"/a", nil)
	id := (<-seen).Get(RequestIDHeader)
	if !uuidRE.MatchString(id) {
		t.Fatalf("generated request id %q is not a v4 UUID", id)
	}
	if got := resp.Header.Get(RequestIDHeader); got != id {
		t.Fatalf("response request id %q, app saw %q", got, id)
	}

	resp, _ = get(t, c, r.front.URL+"/b", map[string]string{RequestIDHeader: "abc-123"})
	if got := (<-seen).Get(RequestIDHeader); got != "abc-123" {
		t.Fatalf("client's request id replaced: app saw %q", got)
	}
	if got := resp.Header.Get(RequestIDHeader); got != "abc-123" {
		t.Fatalf("response carries %q, want the client's id", got)
	}

	waitFor(t, func() bool { return r.access.Len() == 2 }) // logged after the response is sent
	entries := r.access.All()
	f := entries[1].ContextMap()
	if f["request_id"] != "abc-123" || f["status"] != int64(200) || f["path"] != "/b" || f["method"] != "GET" {
		t.Fatalf("access log line: %v", f)
	}
	for _, k := range []string{"bytes", "duration", "upstream_duration", "remote_addr", "proto"} {
		if _, ok := f[k]; !ok {
			t.Errorf("access log line lacks %q: %v", k, f)
		}
	}
}

func TestInvalidRequestIDIsReplaced(t *testing.T) {
	seen := make(chan string, 1)
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Get(RequestIDHeader) })
	r := newRig(t, up.Listener.Addr().String(), nil)
	get(t, r.front.Client(), r.front.URL, map[string]string{RequestIDHeader: strings.Repeat("x", 200)})
	if got := <-seen; !uuidRE.MatchString(got) {
		t.Fatalf("oversized request id passed through as %q", got)
	}
}

func TestForwardedHeaders(t *testing.T) {
	seen := make(chan *http.Request, 1)
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { seen <- r })
	for _, tc := range []struct {
		mode                ForwardedMode
		in                  map[string]string
		xff, proto, fwdHost string
	}{
		{ForwardedAppend, nil, "127.0.0.1", "http", "app.example"},
		{ForwardedAppend, map[string]string{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"},
			"203.0.113.9, 127.0.0.1", "https", "shop.example"},
		{ForwardedReplace, map[string]string{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"},
			"127.0.0.1", "http", "app.example"},
	} {
		r := newRig(t, up.Listener.Addr().String(), func(o *Options) { o.Forwarded = tc.mode })
		req, _ := http.NewRequest(http.MethodGet, r.front.URL+"/p?q=%zz&x=1", nil)
		req.Host = "app.example"
		for k, v := range tc.in {
			req.Header.Set(k, v)
		}
		resp, err := r.front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := <-seen
		if v := got.Header.Get("X-Forwarded-For"); v != tc.xff {
			t.Errorf("%s: X-Forwarded-For %q, want %q", tc.mode, v, tc.xff)
		}
		if v := got.Header.Get("X-Forwarded-Proto"); v != tc.proto {
			t.Errorf("%s: X-Forwarded-Proto %q, want %q", tc.mode, v, tc.proto)
		}
		if v := got.Header.Get("X-Forwarded-Host"); v != tc.fwdHost {
			t.Errorf("%s: X-Forwarded-Host %q, want %q", tc.mode, v, tc.fwdHost)
		}
		if got.Host != "app.example" {
			t.Errorf("%s: Host %q, want the client's app.example", tc.mode, got.Host)
		}
		if got.URL.RawQuery != "q=%zz&x=1" {
			t.Errorf("%s: query %q, want it untouched", tc.mode, got.URL.RawQuery)
		}
	}
}

func TestHopByHopHeadersRemoved(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Connection", "X-App-Hop")
		w.Header().Set("X-App-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	resp, _ := get(t, r.front.Client(), r.front.URL, map[string]string{
		"Connection": "X-Client-Hop", "X-Client-Hop": "1", "Keep-Alive": "timeout=5", "Te": "gzip", "X-End-To-End": "kept",
	})
	h := <-seen
	for _, k := range []string{"X-Client-Hop", "Keep-Alive", "Te"} {
		if v := h.Get(k); v != "" {
			t.Errorf("app saw hop-by-hop %s: %q", k, v)
		}
	}
	if h.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end header lost")
	}
	for _, k := range []string{"X-App-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("client saw hop-by-hop %s: %q", k, v)
		}
	}
}

func TestUpstreamFailures(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := dead.Listener.Addr().String()
	dead.Close()

	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	})
	reset := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	})

	for _, tc := range []struct {
		name   string
		addr   string
		opts   func(*Options)
		status int
		reason Reason
	}{
		{"refused", deadAddr, nil, http.StatusBadGateway, ReasonConnectRefused},
		{"unix socket missing", "unix://" + t.TempDir() + "/none.sock", nil, http.StatusBadGateway, ReasonConnectRefused},
		{"response timeout", slow.Listener.Addr().String(),
			func(o *Options) { o.TransportOptions.ResponseHeaderTimeout = 50 * time.Millisecond },
			http.StatusGatewayTimeout, ReasonResponseTimeout},
		{"reset", reset.Listener.Addr().String(), nil, http.StatusBadGateway, ReasonUpstreamReset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.addr, tc.opts)
			resp, body := get(t, r.front.Client(), r.front.URL+"/x", nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if got := resp.Header.Get("X-Tidegate-Reason"); got != string(tc.reason) {
				t.Fatalf("reason %q, want %q", got, tc.reason)
			}
			if !strings.HasPrefix(body, "tidegate: ") {
				t.Fatalf("body %q is not tidegate's short message", body)
			}
			for _, leak := range []string{"dial ", "127.0.0.1", "EOF", "net/http", "read tcp", "no such file"} {
				if strings.Contains(body, leak) {
					t.Fatalf("body leaks Go error text %q: %q", leak, body)
				}
			}
			if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[tc.reason]); got != 1 {
				t.Fatalf("tidegate_upstream_errors_total{reason=%q} = %v, want 1", tc.reason, got)
			}
			waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
		})
	}
}

func TestBodyLimit(t *testing.T) {
	reached := make(chan struct{}, 4)
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		reached <- struct{}{}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
	})
	r := newRig(t, up.Listener.Addr().String(), func(o *Options) { o.MaxBodyBytes = 1024 })
	c := r.front.Client()

	resp, err := c.Post(r.front.URL, "text/plain", strings.NewReader(strings.Repeat("a", 2048)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("announced oversized body: status %d, want 413", resp.StatusCode)
	}
	select {
	case <-reached:
		t.Fatal("the app saw a request whose Content-Length exceeded the limit")
	default:
	}

	// A chunked body crossing the limit mid-stream.
	resp, err = c.Post(r.front.URL, "text/plain", io.MultiReader(strings.NewReader(strings.Repeat("a", 4096))))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked oversized body: status %d, want 413", resp.StatusCode)
	}

	resp, err = c.Post(r.front.URL, "text/plain", strings.NewReader("small"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("small body: status %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("413", "POST")) == 2 })
}

func TestClientCancelReachesAppAndCounts499(t *testing.T) {
	canceled := make(chan struct{})
	started := make(chan struct{})
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(canceled)
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.front.URL+"/hang", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := r.front.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-started
	if n := r.tracker.InFlight(); n != 1 {
		t.Fatalf("in flight while the app holds the request: %d, want 1", n)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v, want context.Canceled", err)
	}
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the app's request was not canceled after the client left")
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 })
	waitFor(t, func() bool { return testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("499", "GET")) == 1 })
	if got := testutil.ToFloat64(r.handler.metrics.upstreamErrors[ReasonUpstreamError]); got != 0 {
		t.Fatalf("a client cancel was counted as an upstream error")
	}
}

func TestAbortMidBodyIsCountedAndReleased(t *testing.T) {
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("partial"))
		http.NewResponseController(w).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	// A response of known length is flushed when its buffer fills or it
	// ends: the client sees the abort before the header, or in the body.
	resp, err := r.front.Client().Get(r.front.URL)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("the client read a complete body although the app died half way")
	}
	waitFor(t, func() bool { return r.tracker.InFlight() == 0 && len(r.access.All()) == 1 })
	if f := r.access.All()[0].ContextMap(); f["reason"] != "aborted" || f["status"] != int64(200) {
		t.Fatalf("access log for an aborted body: %v", f)
	}
}

func TestStreamsEachFlushAtOnce(t *testing.T) {
	next := make(chan struct{})
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			_, _ = io.WriteString(w, "data: "+string(rune('a'+i))+"\n\n")
			http.NewResponseController(w).Flush()
			<-next
		}
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	resp, err := r.front.Client().Get(r.front.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		// The app is blocked on next: each event must arrive before it goes on.
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := "data: " + string(rune('a'+i)) + "\n"; line != want {
			t.Fatalf("event %d: %q, want %q", i, line, want)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		next <- struct{}{}
	}
}

func TestTrailersPassThrough(t *testing.T) {
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "42")
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	resp, err := r.front.Client().Get(r.front.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := resp.Trailer.Get("X-Checksum"); got != "42" {
		t.Fatalf("trailer X-Checksum %q, want 42", got)
	}
}

func TestProbeRequestsDoNotMoveLastActivity(t *testing.T) {
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {})
	r := newRig(t, up.Listener.Addr().String(), nil)
	c := r.front.Client()
	get(t, c, r.front.URL, map[string]string{"User-Agent": "kube-probe/1.31"})
	if la := r.tracker.LastActivity(); !la.IsZero() {
		t.Fatalf("a kube-probe request moved LastActivity to %v", la)
	}
	if r.tracker.Requests() != 1 {
		t.Fatalf("the probe request was not counted")
	}
	get(t, c, r.front.URL, map[string]string{"User-Agent": "curl/8"})
	if r.tracker.LastActivity().IsZero() {
		t.Fatal("a client request did not move LastActivity")
	}
}

func TestUnixSocketUpstream(t *testing.T) {
	path := t.TempDir() + "/app.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "via unix "+r.Host)
	}))
	up.Listener = ln
	up.Start()
	t.Cleanup(up.Close)
	r := newRig(t, "unix://"+path, nil)
	resp, body := get(t, r.front.Client(), r.front.URL, nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "via unix 127.0.0.1:") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestMetricsCountRequests(t *testing.T) {
	up := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/teapot" {
			w.WriteHeader(http.StatusTeapot)
		}
	})
	r := newRig(t, up.Listener.Addr().String(), nil)
	c := r.front.Client()
	for range 3 {
		get(t, c, r.front.URL, nil)
	}
	get(t, c, r.front.URL+"/teapot", nil)
	waitFor(t, func() bool { return r.tracker.Requests() == 4 && r.tracker.InFlight() == 0 })
	req, _ := http.NewRequest("PURGE", r.front.URL, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// The client can read a response before the handler has counted it.
	waitFor(t, func() bool {
		return testutil.CollectAndCount(r.handler.metrics.requests) == 3 &&
			testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("200", "OTHER")) == 1 &&
			testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues("200", "GET")) == 3
	})
	for _, tc := range []struct {
		code, method string
		want         float64
	}{{"200", "GET", 3}, {"418", "GET", 1}, {"200", "OTHER", 1}} {
		if got := testutil.ToFloat64(r.handler.metrics.requests.WithLabelValues(tc.code, tc.method)); got != tc.want {
			t.Errorf("tidegate_requests_total{code=%s,method=%s} = %v, want %v", tc.code, tc.method, got, tc.want)
		}
	}
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tidegate_request_duration_seconds" {
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 5 {
				t.Errorf("duration histogram count %d, want 5", c)
			}
		}
	}
}

func TestNewHandlerRejectsBadOptions(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	up := Upstream{Network: "tcp", Address: "127.0.0.1:1"}
	for _, o := range []Options{
		{Upstream: up},
		{Tracker: tr},
		{Upstream: up, Tracker: tr, Forwarded: "trust-everyone"},
		{Upstream: up, Tracker: tr, RequestID: "uuid7"},
		{Upstream: up, Tracker: tr, MaxBodyBytes: -1},
	} {
		if _, err := NewHandler(o); err == nil {
			t.Errorf("NewHandler(%+v) accepted bad options", o)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	wait.For(t, "condition", cond)
}

// TestLaterStamps: a stamp after the start is the start plus the time
// since (one monotonic read) with the real clock, and the injected
// clock's reading with another.
func TestLaterStamps(t *testing.T) {
	h := &Handler{now: time.Now, realClock: true}
	start := time.Now()
	before := time.Now()
	got := h.later(start)
	after := time.Now()
	if got.Before(before) || got.After(after) {
		t.Fatalf("later = %v, want between %v and %v", got, before, after)
	}
	if d := got.Sub(start); d < 0 || d > after.Sub(start) {
		t.Fatalf("later - start = %v, want within [0, %v]", d, after.Sub(start))
	}
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h = &Handler{now: func() time.Time { return fixed }}
	if got := h.later(start); !got.Equal(fixed) {
		t.Fatalf("with an injected clock later = %v, want its %v", got, fixed)
	}
}
