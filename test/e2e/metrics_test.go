package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/fakeapp"
)

// TestMetrics: the admin listener's /metrics moves with the traffic.
func TestMetrics(t *testing.T) {
	t.Parallel()
	app := fakeapp.Start(t)
	tg := start(t, "--upstream", app.Addr)
	admin := newClient(t)

	before := scrape(t, admin, tg)
	if v, ok := before.get("tidegate_build_info", "version", stampVersion, "commit", stampCommit); !ok || v != 1 {
		t.Errorf("tidegate_build_info{version=%q,commit=%q} = %v (present %v), want 1", stampVersion, stampCommit, v, ok)
	}
	for _, phase := range []string{"starting", "serving", "draining", "closing", "stopping_app", "stopped"} {
		want := 0.0
		if phase == "serving" {
			want = 1
		}
		if v, ok := before.get("tidegate_phase", "phase", phase); !ok || v != want {
			t.Errorf("tidegate_phase{phase=%q} = %v (present %v), want %v", phase, v, ok, want)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if v, ok := before.get(name); !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want > 0", name, v, ok)
		}
	}
	for _, reason := range []string{"connect_refused", "connect_timeout", "response_timeout", "upstream_reset"} {
		if v, ok := before.get("tidegate_upstream_errors_total", "reason", reason); !ok || v != 0 {
			t.Errorf("tidegate_upstream_errors_total{reason=%q} = %v (present %v), want 0 from the start", reason, v, ok)
		}
	}
	if v, ok := before.get("tidegate_inflight_requests"); !ok || v != 0 {
		t.Errorf("tidegate_inflight_requests = %v (present %v), want 0", v, ok)
	}
	if v, ok := before.get("tidegate_connections_active", "protocol", "http1"); !ok || v != 0 {
		t.Errorf("tidegate_connections_active{protocol=http1} = %v (present %v), want 0", v, ok)
	}

	c := newClient(t)
	var cOpen atomic.Int64
	countOpen(c.Transport.(*http.Transport), &cOpen)
	const n = 7
	for range n {
		if resp, body := get(t, c, tg.URL("/status?code=200")); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d %s", resp.StatusCode, body)
		}
	}
	// A request is counted as its handler returns, a moment after the
	// client has the whole response.
	var after metrics
	eventually(t, waitTimeout, "the requests counted", func() (bool, string) {
		after = scrape(t, admin, tg)
		dReq := after.value("tidegate_requests_total", "code", "200", "method", "GET") -
			before.value("tidegate_requests_total", "code", "200", "method", "GET")
		dDur := after.value("tidegate_request_duration_seconds_count") - before.value("tidegate_request_duration_seconds_count")
		return dReq == n && dDur == n, fmt.Sprintf(
			"tidegate_requests_total{code=200,method=GET} grew by %v and tidegate_request_duration_seconds_count by %v, want %d",
			dReq, dDur, n)
	})
	if v := after.value("tidegate_request_duration_seconds_bucket", "le", "+Inf"); v != after.value("tidegate_request_duration_seconds_count") {
		t.Errorf("duration histogram +Inf bucket %v != count %v", v, after.value("tidegate_request_duration_seconds_count"))
	}
	// c keeps its keep-alive connection open, and tidegate with it.
	if n := cOpen.Load(); n != 1 {
		t.Logf("the client holds %d connections open", n) // it dropped its last one itself (countOpen)
	}
	connsEventually(t, admin, tg, &cOpen)

	// A request in flight shows in the gauge until it ends.
	hc := newClient(t)
	var hOpen atomic.Int64
	countOpen(hc.Transport.(*http.Transport), &hOpen)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.URL("/hang"), nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	recv(t, app.HangStarted(), waitTimeout, "the app receiving /hang")
	during := scrape(t, admin, tg)
	if v := during.value("tidegate_inflight_requests"); v != 1 {
		t.Errorf("tidegate_inflight_requests = %v while /hang is open, want 1", v)
	}
	if n := hOpen.Load(); n != 1 {
		t.Errorf("the /hang client holds %d connections open during its request, want 1", n)
	}
	connsEventually(t, admin, tg, &cOpen, &hOpen) // both clients' connections
	cancel()
	recv(t, errc, waitTimeout, "the cancelled /hang to end")
	metricEventually(t, admin, tg, 0, "tidegate_inflight_requests")
	c.CloseIdleConnections()
	hc.CloseIdleConnections()
	metricEventually(t, admin, tg, 0, "tidegate_connections_active", "protocol", "http1")
}

// TestConnectionPool: 1,000 concurrent keep-alive clients get every answer,
// and tidegate reuses its connections to the app instead of opening one per
// request. Not parallel: it wants the machine to itself.
func TestConnectionPool(t *testing.T) {
	app := fakeapp.Start(t)
	// The pool is kept past the default 1s upstream idle timeout: on a busy
	// machine the 5,000 requests take seconds, and the sweep would close
	// connections that a later burst then dials again (2,509 for 1,000
	// clients on a loaded 2-core machine). This test is about reuse; the
	// idle timeout has tests of its own.
	tg := start(t, "--upstream", app.Addr, "--upstream-idle-timeout", "60s")
	admin := newClient(t)

	// Without reuse the app would see one connection per request (5,000);
	// with it, about one per client. The bound leaves room for a loaded CI.
	const clients, perClient = 1000, 5
	url := tg.URL("/status?code=200")
	var (
		failed   atomic.Int64
		errOnce  sync.Once
		firstErr string
		wg       sync.WaitGroup
	)
	fail := func(msg string) {
		failed.Add(1)
		errOnce.Do(func() { firstErr = msg })
	}
	transports := make([]*http.Transport, clients)
	defer func() {
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
	}()
	var open atomic.Int64 // the clients' connections open now (countOpen)
	gate := make(chan struct{})
	for i := range clients {
		tr := &http.Transport{
			Proxy:               nil,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			DisableCompression:  true,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		}
		countOpen(tr, &open)
		transports[i] = tr
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		wg.Go(func() {
			<-gate
			for range perClient {
				resp, err := c.Get(url)
				if err != nil {
					fail(err.Error())
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					fail(resp.Status)
				}
			}
		})
	}
	began := time.Now()
	close(gate)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%d clients × %d requests did not finish within 60s", clients, perClient)
	}
	t.Logf("%d requests from %d concurrent clients in %s; app accepted %d connections, %d still open",
		clients*perClient, clients, time.Since(began), app.ConnsAccepted(), app.ConnsOpen())

	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed; first: %s", n, clients*perClient, firstErr)
	}
	if n := app.Requests("/status"); n != clients*perClient {
		t.Errorf("the app answered %d requests, want %d", n, clients*perClient)
	}
	if n := app.ConnsAccepted(); n > clients*3/2 {
		t.Errorf("tidegate opened %d connections to the app for %d requests from %d clients: want at most %d (reuse)",
			n, clients*perClient, clients, clients*3/2)
	}
	// tidegate keeps every connection the clients keep.
	connsEventually(t, admin, tg, &open)
	t.Logf("the %d clients hold %d connections open", clients, open.Load())
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
	metricEventually(t, admin, tg, 0, "tidegate_connections_active", "protocol", "http1")
}

// countOpen makes tr count in open the connections it holds open. A
// Transport may drop a connection itself and dial another for its next
// request: on a starved core, when its writer has not reported the
// request written within 50ms of the answer (net/http's
// maxWriteWaitBeforeConnReuse), it does not reuse the connection.
func countOpen(tr *http.Transport, open *atomic.Int64) {
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		open.Add(1)
		return &countedConn{Conn: nc, open: open}, nil
	}
}

// connsEventually waits until tidegate counts as many HTTP/1.1 client
// connections as the clients hold open: it sees a client's close a moment
// after the client made it.
func connsEventually(t *testing.T, admin *http.Client, tg *tidegate, open ...*atomic.Int64) {
	t.Helper()
	eventually(t, waitTimeout, "tidegate_connections_active{protocol=http1} to count the clients' open connections", func() (bool, string) {
		var want int64
		for _, o := range open {
			want += o.Load()
		}
		v := scrape(t, admin, tg).value("tidegate_connections_active", "protocol", "http1")
		return v == float64(want), fmt.Sprintf("%v, with %d open at the clients", v, want)
	})
}

// countedConn is a client's connection that takes itself off open when
// it closes.
type countedConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}
