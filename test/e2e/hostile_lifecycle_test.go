package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A hostile second look at the lifecycle of the real binary: a storm of
// reloads under keep-alive POST load, and a drain racing a burst of
// reloads.

// postLoad POSTs to url on keep-alive connections from workers goroutines
// until stop is closed (or 60s pass), and counts what failed.
type postLoad struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
	ids    sync.Map // X-Instance seen → struct{}
}

func startPostLoad(url string, workers int) *postLoad {
	ld := &postLoad{stop: make(chan struct{})}
	deadline := time.Now().Add(60 * time.Second)
	for range workers {
		ld.wg.Go(func() {
			tr := &http.Transport{Proxy: nil, DisableCompression: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for time.Now().Before(deadline) {
				select {
				case <-ld.stop:
					return
				default:
				}
				resp, err := c.Post(url, "text/plain", strings.NewReader("a body that must not be lost"))
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
					if err == nil {
						ld.ids.Store(resp.Header.Get("X-Instance"), struct{}{})
					}
				}
				if err == nil {
					ld.ok.Add(1)
					continue
				}
				ld.failed.Add(1)
				ld.mu.Lock()
				if len(ld.errs) < 5 {
					ld.errs = append(ld.errs, err.Error())
				}
				ld.mu.Unlock()
			}
		})
	}
	return ld
}

// more waits until n more requests have been answered.
func (ld *postLoad) more(t *testing.T, n int64) {
	t.Helper()
	from := ld.ok.Load()
	eventually(t, waitTimeout, fmt.Sprintf("%d more answers", n), func() (bool, string) {
		return ld.ok.Load() >= from+n, fmt.Sprintf("%d answered, %d failed", ld.ok.Load()-from, ld.failed.Load())
	})
}

func (ld *postLoad) end() (ok, failed int64, errs []string) {
	close(ld.stop)
	ld.wg.Wait()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.ok.Load(), ld.failed.Load(), ld.errs
}

// TestHostileReloadStormUnderPostLoad: 30 reloads by POST /reload, each
// moving the upstream between two apps, while keep-alive clients POST
// without pause. No request fails, both apps are reached, every reload
// answers 200, and once the load stops tidegate's goroutines and open
// files come back to where they were.
func TestHostileReloadStormUnderPostLoad(t *testing.T) {
	t.Parallel()
	a := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a")
	b := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "b")
	file := filepath.Join(t.TempDir(), "tidegate.yaml")
	conf := func(i int) string {
		return "upstream: " + []string{a.Addr, b.Addr}[i%2] + "\ndrain:\n  delay: 300ms\n  quiet: 50ms\n  timeout: 3s\n"
	}
	writeConfig(t, file, conf(0))
	tg := start(t, "--config", file)
	c := newClient(t)
	get(t, c, tg.URL("/echo"))
	c.CloseIdleConnections()
	before := scrape(t, c, tg)
	goroutines, fds := before.value("go_goroutines"), before.value("process_open_fds")

	ld := startPostLoad(tg.URL("/echo"), 6)
	ld.more(t, 50)
	const reloads = 30
	for i := 1; i <= reloads; i++ {
		writeConfig(t, file, conf(i))
		resp, body := post(t, c, "http://"+tg.Admin+"/reload")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("reload %d: POST /reload answered %d %s", i, resp.StatusCode, body)
		}
		ld.more(t, 20)
	}
	ok, failed, errs := ld.end()
	if failed > 0 {
		t.Fatalf("%d of %d POSTs failed across %d reloads; first: %v", failed, ok+failed, reloads, errs)
	}
	for _, id := range []string{"a", "b"} {
		if _, seen := ld.ids.Load(id); !seen {
			t.Fatalf("the load never reached app %s", id)
		}
	}
	c.CloseIdleConnections()
	// The old servers retire within drain.delay + drain.timeout; pooled
	// app connections close after upstream.idle_timeout (1s).
	eventually(t, 15*time.Second, "goroutines and open files back to where they were", func() (bool, string) {
		ms := scrape(t, c, tg)
		c.CloseIdleConnections()
		g, f := ms.value("go_goroutines"), ms.value("process_open_fds")
		return g <= goroutines+10 && f <= fds+4,
			fmt.Sprintf("go_goroutines %v (%v before), process_open_fds %v (%v before)", g, goroutines, f, fds)
	})
	tg.stop()
}

// TestHostileDrainRacingReloads: SIGTERM lands in the middle of a burst of
// reloads that each replace the listener's server. Every reload either
// applies or is refused; the drain completes and tidegate exits 0 in
// bounded time, with nothing left serving (a server started by a reload
// after the drain shut the listeners down would keep tidegate from ever
// exiting).
func TestHostileDrainRacingReloads(t *testing.T) {
	t.Parallel()
	a := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "a")
	b := startFakeapp(t, "--listen", "127.0.0.1:0", "--id", "b")
	for round := range 3 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "tidegate.yaml")
			conf := func(i int) string {
				return "upstream: " + []string{a.Addr, b.Addr}[i%2] + "\ndrain:\n  delay: 0s\n  quiet: 0s\n  timeout: 2s\n"
			}
			writeConfig(t, file, conf(0))
			tg := start(t, "--config", file)
			admin := "http://" + tg.Admin + "/reload"

			var applied, refused atomic.Int64
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
				for i := 1; i <= 200; i++ {
					select {
					case <-done:
						return
					default:
					}
					// Not writeConfig: t.Fatal is for the test's goroutine.
					if os.WriteFile(file+".new", []byte(conf(i)), 0o600) != nil || os.Rename(file+".new", file) != nil {
						return
					}
					resp, err := c.Post(admin, "", nil)
					if err != nil {
						return // tidegate is gone
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch resp.StatusCode {
					case http.StatusOK:
						applied.Add(1)
					default:
						refused.Add(1)
					}
				}
			})
			eventually(t, waitTimeout, "a few reloads applied", func() (bool, string) {
				return applied.Load() >= 3, fmt.Sprintf("%d applied", applied.Load())
			})
			tg.signal(syscall.SIGTERM)
			code := tg.waitExit(exitTimeout)
			close(done)
			wg.Wait()
			if code != 0 {
				t.Fatalf("tidegate exited %d after SIGTERM during reloads, want 0", code)
			}
			t.Logf("%d reloads applied, %d refused", applied.Load(), refused.Load())
		})
	}
}

// TestHostileRestartGateUnderConcurrentLoad: a crashing child restarted
// again and again, under 8 clients at once. Between the moment the new run
// counts as alive and the moment its probes are reset, the probes still
// hold the last run's "ready": a request that lands then must not open the
// gate for the whole restart (every request after it would reach an app
// that does not listen yet, and fail).
func TestHostileRestartGateUnderConcurrentLoad(t *testing.T) {
	t.Parallel()
	app := hostPort(freePort(t))
	// A readiness probe as Kubernetes' defaults have it (3 failures to
	// fail), every 500ms: when the app dies, its verdict is still "ready"
	// for a while, past the 100ms backoff.
	tg := start(t, "--upstream", app, "--hold-until-ready", "10s",
		"--readiness", "tcp://"+app, "--probe-period", "500ms",
		"--app-restart", "always", "--app-restart-backoff", "100ms", "--app-restart-limit", "50",
		"--", fakeappBinary, "--listen", app, "--listen-delay", "300ms", "--crash-after", "700ms")

	type answer struct {
		at   time.Time
		code int
		body string
	}
	var mu sync.Mutex
	var answers []answer
	deadline := time.Now().Add(6 * time.Second) // about 5 crashes and restarts
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 15 * time.Second}
			defer c.CloseIdleConnections()
			for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
				code, body, err := statusCode(c, tg.URL("/"))
				if err != nil {
					code, body = 0, err.Error()
				}
				mu.Lock()
				answers = append(answers, answer{time.Now(), code, body})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var exits []time.Time
	restarts := 0
	for _, m := range tg.stdout.jsonLines() {
		switch m["msg"] {
		case "app restarted; gating requests until it is ready again":
			restarts++
		case "app exited on its own":
			if ts, err := time.Parse(time.RFC3339Nano, m["ts"].(string)); err == nil {
				exits = append(exits, ts)
			}
		}
	}
	if restarts < 2 {
		t.Fatalf("%d restarts in 6s, want several:\n%s", restarts, tail(tg.stdout.String(), 30))
	}
	// A request in flight as the app dies may fail (see
	// TestRestartedChildGetsNoTrafficBeforeItListens); any other failure
	// reached an app that was not listening.
	nearExit := func(at time.Time) bool {
		for _, ex := range exits {
			if at.After(ex.Add(-300*time.Millisecond)) && at.Before(ex.Add(100*time.Millisecond)) {
				return true
			}
		}
		return false
	}
	failed := 0
	var first []string
	for _, a := range answers {
		if a.code == 200 || nearExit(a.at) {
			continue
		}
		failed++
		if len(first) < 3 {
			since := time.Duration(-1)
			for _, ex := range exits {
				if a.at.After(ex) {
					since = a.at.Sub(ex)
				}
			}
			first = append(first, fmt.Sprintf("%s (%s after an exit): %d %s", a.at.Format("15:04:05.000"), since.Round(time.Millisecond),
				a.code, strings.TrimSpace(a.body)))
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed across %d restarts, away from the crashes: %v", failed, len(answers), restarts, first)
	}
}
