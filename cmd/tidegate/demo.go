package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tidegate/tidegate/drain"
	"github.com/tidegate/tidegate/proxy"
)

// demoCmd runs a built-in app behind an in-process sidecar, puts it under
// load through a small load balancer that health-checks /readyz, sends the
// sidecar a SIGTERM in the middle, and prints what happened. It exits 0
// only if no request failed.
func demoCmd(args []string, e env) int {
	fs := flag.NewFlagSet("tidegate demo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	load := fs.Duration("load", 2*time.Second, "how long to send load before the SIGTERM")
	workers := fs.Int("concurrency", 8, "concurrent clients")
	slow := fs.Duration("slow", 800*time.Millisecond, "how long the app's slow requests take (a quarter of the clients send them)")
	check := fs.Duration("check-interval", 100*time.Millisecond, "how often the demo's load balancer checks /readyz")
	delay := fs.Duration("drain-delay", time.Second, "the sidecar's --drain-delay")
	quiet := fs.Duration("drain-quiet", 300*time.Millisecond, "the sidecar's --drain-quiet")
	verbose := fs.Bool("v", false, "also print the sidecar's JSON logs (to stderr)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *workers < 1 || *load <= 0 || *slow < 0 || *check <= 0 || *delay < 0 || *quiet < 0 {
		fmt.Fprintln(e.stderr, "tidegate demo: --concurrency must be ≥ 1, --load and --check-interval > 0, the rest ≥ 0")
		return 2
	}
	out := e.stdout

	app, err := startDemoApp(*slow)
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate demo: %v\n", err)
		return 1
	}
	defer app.close()

	logOut := io.Discard
	if *verbose {
		logOut = e.stderr
	}
	l, err := loadConfig([]string{
		"--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--upstream", app.addr, "--drain-delay", delay.String(), "--drain-quiet", quiet.String(), "--drain-timeout", "20s",
	}, func(string) string { return "" })
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate demo: %v\n", err)
		return 2
	}
	logs, err := newLoggers(&l.cfg, logOut, logOut)
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate demo: %v\n", err)
		return 1
	}
	defer logs.sync()
	sc, err := newSidecar(l, logs, readBuildInfo())
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate demo: %v\n", err)
		return 1
	}
	sc.app = app // the drain tells the built-in app to stop, as it would signal a child
	sig := make(chan os.Signal, 2)
	type result struct {
		code int
		rep  drain.Report
	}
	done := make(chan result, 1)
	go func() {
		code, rep := sc.run(sig)
		done <- result{code, rep}
	}()
	public := "http://" + sc.publicAddr()
	readyz := "http://" + sc.aux[0].ln.Addr().String() + "/readyz"

	fmt.Fprintf(out, "tidegate demo\n  app      %s (\"/\" takes 2ms, \"/slow\" %s)\n  sidecar  %s → app (drain delay %s, quiet %s)\n  balancer checks %s every %s\n\n",
		app.addr, *slow, public, *delay, *quiet, readyz, *check)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *workers + 2, DisableCompression: true}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	if !waitReady(client, readyz, 5*time.Second) {
		fmt.Fprintln(e.stderr, "tidegate demo: the sidecar never became ready")
		return 1
	}
	started := time.Now()
	at := func(t time.Time) string { return fmt.Sprintf("%6.3fs", t.Sub(started).Seconds()) }
	fmt.Fprintf(out, "%s  readiness 200; %d clients send requests through the balancer (%d of them to /slow)\n",
		at(started), *workers, (*workers+3)/4)

	// The load balancer: in rotation until a health check fails.
	var inRotation atomic.Bool
	inRotation.Store(true)
	outOfRotation := make(chan time.Time, 1)
	stopChecks := make(chan struct{})
	checksDone := make(chan struct{})
	go func() {
		defer close(checksDone)
		tick := time.NewTicker(*check)
		defer tick.Stop()
		for {
			select {
			case <-stopChecks:
				return
			case <-tick.C:
			}
			if code, err := probe(client, readyz); err != nil || code != http.StatusOK {
				inRotation.Store(false)
				outOfRotation <- time.Now()
				return
			}
		}
	}()

	var (
		signalled      atomic.Int64 // unix nanos of the SIGTERM; 0 before
		sent, afterSig atomic.Int64
		mu             sync.Mutex
		lat            []time.Duration
		fails          []string
		lastDone       time.Time
		wg             sync.WaitGroup
	)
	for w := range *workers {
		wg.Go(func() {
			path := "/"
			if w%4 == 0 {
				path = "/slow"
			}
			for inRotation.Load() {
				sent.Add(1)
				if signalled.Load() != 0 {
					afterSig.Add(1)
				}
				t0 := time.Now()
				err := demoRequest(client, public+path)
				t1 := time.Now()
				mu.Lock()
				if err != nil {
					fails = append(fails, err.Error())
				} else {
					lat = append(lat, t1.Sub(t0))
				}
				if t1.After(lastDone) {
					lastDone = t1
				}
				mu.Unlock()
			}
		})
	}

	// The SIGTERM lands between two balancer checks, as it does in life.
	timer := time.NewTimer(*load + *check/2)
	<-timer.C
	sigAt := time.Now()
	signalled.Store(sigAt.UnixNano())
	inflight := sc.tracker.InFlight()
	changed := sc.life.Changed()
	sig <- syscall.SIGTERM
	fmt.Fprintf(out, "%s  SIGTERM → sidecar; %d requests in flight\n", at(sigAt), inflight)
	select { // the signal reaches the event loop: readiness fails from then on
	case <-changed:
	case <-time.After(time.Second):
	}
	if code, err := probe(client, readyz); err == nil {
		fmt.Fprintf(out, "%s  readiness %d\n", at(time.Now()), code)
	}
	var lbAt time.Time
	select {
	case lbAt = <-outOfRotation:
	case <-time.After(10 * time.Second):
		close(stopChecks)
		inRotation.Store(false)
	}
	<-checksDone
	fmt.Fprintf(out, "%s  balancer takes the sidecar out of rotation; no new requests\n", at(lbAt))
	wg.Wait()
	fmt.Fprintf(out, "%s  last in-flight request answered\n", at(lastDone))
	res := <-done
	rep := res.rep
	fmt.Fprintf(out, "%s  listeners closed (%s)\n", at(rep.ClosingAt), rep.Result)
	fmt.Fprintf(out, "%s  app told to stop, %s after the last request ended\n", at(app.stoppedAt()), app.stoppedAt().Sub(lastDone).Round(time.Millisecond))
	fmt.Fprintf(out, "%s  sidecar stopped\n\n", at(rep.StoppedAt))

	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Fprintf(out, "requests sent         %d\n", sent.Load())
	fmt.Fprintf(out, "requests ok           %d\n", len(lat))
	fmt.Fprintf(out, "requests failed       %d\n", len(fails))
	fmt.Fprintf(out, "sent after SIGTERM    %d (served: the listener keeps accepting until the balancer has moved on)\n", afterSig.Load())
	fmt.Fprintf(out, "latency p50 / p99     %s / %s\n", quantile(lat, 0.50), quantile(lat, 0.99))
	fmt.Fprintf(out, "drain                 %d in flight at SIGTERM, %d completed during the drain, %d cut, %s\n",
		rep.InFlightAtTrigger, rep.Completed, rep.Cut, rep.Duration().Round(time.Millisecond))
	for i, f := range fails {
		if i == 5 {
			fmt.Fprintf(out, "  … and %d more failures\n", len(fails)-5)
			break
		}
		fmt.Fprintf(out, "  failure: %s\n", f)
	}
	if len(fails) > 0 || res.code != 0 || app.stoppedAt().Before(lastDone) {
		return 1
	}
	return 0
}

func demoRequest(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func probe(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func waitReady(c *http.Client, url string, bound time.Duration) bool {
	deadline := time.Now().Add(bound)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if code, err := probe(c, url); err == nil && code == http.StatusOK {
			return true
		}
		<-tick.C
	}
	return false
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))].Round(100 * time.Microsecond)
}

func fmtSec(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// demoApp is the built-in app: "/" answers at once, "/slow" after a delay.
// It is also the drain's App: Stop records when it was told to stop and
// shuts its server down, as a real app would on SIGTERM.
type demoApp struct {
	addr string
	srv  *http.Server
	done chan struct{}

	mu      sync.Mutex
	stopped time.Time
}

func startDemoApp(slow time.Duration) (*demoApp, error) {
	ln, err := proxy.Listen("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo app: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(2 * time.Millisecond) // a little work
		defer t.Stop()
		select {
		case <-t.C:
			fmt.Fprintln(w, "hello from the app")
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(slow)
		defer t.Stop()
		select {
		case <-t.C:
			fmt.Fprintln(w, "slow hello from the app")
		case <-r.Context().Done():
		}
	})
	a := &demoApp{addr: ln.Addr().String(), done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a, nil
}

func (a *demoApp) Strategy() string { return "demo" }

func (a *demoApp) Stop(ctx context.Context) drain.AppExit {
	a.mu.Lock()
	a.stopped = time.Now()
	a.mu.Unlock()
	if err := a.srv.Shutdown(ctx); err != nil {
		return drain.AppExit{Strategy: "demo", Status: "failed", Detail: err.Error()}
	}
	return drain.AppExit{Strategy: "demo", Status: "exited"}
}

func (a *demoApp) stoppedAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopped
}

func (a *demoApp) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if a.srv.Shutdown(ctx) != nil {
		_ = a.srv.Close()
	}
	<-a.done
}
