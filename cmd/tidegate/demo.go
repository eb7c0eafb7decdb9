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

	"github.com/tidegate/tidegate/proxy"
)

// demoCmd runs a built-in app behind an in-process sidecar, puts it under
// load, sends the sidecar a SIGTERM while slow requests are in flight, and
// prints what the clients saw. It exits 0 only if no request failed.
func demoCmd(args []string, e env) int {
	fs := flag.NewFlagSet("tidegate demo", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	load := fs.Duration("load", 2*time.Second, "how long to send load before the SIGTERM")
	workers := fs.Int("concurrency", 8, "concurrent clients")
	slow := fs.Duration("slow", 800*time.Millisecond, "how long the app's slow requests take (every 4th request)")
	verbose := fs.Bool("v", false, "also print the sidecar's JSON logs")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *workers < 1 || *load <= 0 || *slow < 0 {
		fmt.Fprintln(e.stderr, "tidegate demo: --concurrency must be ≥ 1, --load > 0 and --slow ≥ 0")
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
		"--upstream", app.addr, "--drain-timeout", "10s",
	}, func(string) string { return "" })
	if err != nil {
		fmt.Fprintf(e.stderr, "tidegate demo: %v\n", err)
		return 1
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
	sig := make(chan os.Signal, 2)
	type result struct {
		code int
		rep  shutdownReport
	}
	done := make(chan result, 1)
	go func() {
		code, rep := sc.run(sig)
		done <- result{code, rep}
	}()
	public := "http://" + sc.public.Addr().String()
	health := "http://" + sc.aux[0].ln.Addr().String()

	fmt.Fprintf(out, "tidegate demo\n  app      %s (every 4th request takes %s)\n  sidecar  %s → app\n  health   %s/readyz\n\n",
		app.addr, *slow, public, health)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *workers, DisableCompression: true}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	if !waitReady(client, health+"/readyz", 5*time.Second) {
		fmt.Fprintln(e.stderr, "tidegate demo: the sidecar never became ready")
		return 1
	}
	fmt.Fprintf(out, "%-7s readiness 200; %d clients send requests for %s\n", "0.000s", *workers, *load)

	var (
		stop    atomic.Bool
		sent    atomic.Int64
		mu      sync.Mutex
		lat     []time.Duration
		fails   []string
		wg      sync.WaitGroup
		started = time.Now()
	)
	for w := range *workers {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				path := "/"
				if (i+w)%4 == 0 {
					path = "/slow"
				}
				sent.Add(1)
				t0 := time.Now()
				err := demoRequest(client, public+path)
				mu.Lock()
				if err != nil {
					fails = append(fails, err.Error())
				} else {
					lat = append(lat, time.Since(t0))
				}
				mu.Unlock()
			}
		})
	}

	timer := time.NewTimer(*load)
	<-timer.C
	stop.Store(true) // the clients send no new request once the SIGTERM is sent
	at := time.Since(started)
	inflight := sc.tracker.InFlight()
	sig <- syscall.SIGTERM
	fmt.Fprintf(out, "%-7s SIGTERM → sidecar; %d requests in flight\n", fmtSec(at), inflight)
	if code, err := probe(client, health+"/readyz"); err == nil {
		fmt.Fprintf(out, "%-7s readiness %d (load balancers stop sending new traffic)\n", fmtSec(time.Since(started)), code)
	}
	wg.Wait()
	fmt.Fprintf(out, "%-7s last in-flight request answered\n", fmtSec(time.Since(started)))
	res := <-done
	fmt.Fprintf(out, "%-7s sidecar stopped (%s)\n\n", fmtSec(time.Since(started)), res.rep.Result)

	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Fprintf(out, "requests sent      %d\n", sent.Load())
	fmt.Fprintf(out, "requests ok        %d\n", len(lat))
	fmt.Fprintf(out, "requests failed    %d\n", len(fails))
	fmt.Fprintf(out, "latency p50 / p99  %s / %s\n", quantile(lat, 0.50), quantile(lat, 0.99))
	fmt.Fprintf(out, "drain              %d in flight at SIGTERM, %d completed, %d cut, took %s\n",
		res.rep.InFlightAtTrigger, res.rep.Completed, res.rep.Cut, res.rep.Duration.Round(time.Millisecond))
	for i, f := range fails {
		if i == 5 {
			fmt.Fprintf(out, "  … and %d more failures\n", len(fails)-5)
			break
		}
		fmt.Fprintf(out, "  failure: %s\n", f)
	}
	if len(fails) > 0 || res.code != 0 {
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
type demoApp struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

func startDemoApp(slow time.Duration) (*demoApp, error) {
	ln, err := proxy.Listen("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo app: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "hello from the app") })
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

func (a *demoApp) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if a.srv.Shutdown(ctx) != nil {
		_ = a.srv.Close()
	}
	<-a.done
}
