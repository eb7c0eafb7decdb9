//go:build linux

package attack

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lifeRule says which timeout bounds the lifetime of a row's connections.
type lifeRule int

const (
	lifeHeld   lifeRule = iota // they hold a request: no timeout, the memory bound holds
	lifeHeader                 // no request: --read-header-timeout + lifetimeSlack
	lifeIdle                   // idle keep-alive: --idle-timeout × 9/8 + lifetimeSlack
	lifeAnswer                 // half-closed after a request: the answer (slowD) + lifetimeSlack
	lifeAny                    // a flood: tidegate may close it at any time, or stop reading
)

func (l lifeRule) limit() time.Duration {
	switch l {
	case lifeHeader:
		return headerLimit
	case lifeIdle:
		return idleTimeout + idleTimeout/8 + lifetimeSlack // proxy's idleSlack: idle/8
	case lifeAnswer:
		return slowD + lifetimeSlack
	}
	return 0
}

// row is one hostile client of the table.
type row struct {
	name           string
	conns, long    int  // connections in the short and the long form
	streams        int  // HTTP/2 streams per connection (window abuse)
	h2             bool // HTTP/2 connections: windows and send buffer count in the bound
	life           lifeRule
	run            func(*rc) (outcome, error)
	tidegateCloses bool // every connection must be closed by tidegate (within life's limit)
	frames, longF  int  // cap of a flood's frames per connection; 0: 2,000,000 and 20,000,000
}

func rows() []row {
	return []row{
		{name: "h1-no-read-1GiB", conns: 8, long: 64, life: lifeHeld, run: h1NoRead},
		{name: "h2-window-abuse-no-read", conns: 2, long: 8, streams: 8, h2: true, life: lifeHeld, run: h2WindowAbuse},
		{name: "h2-settings-flood", conns: 1, long: 4, h2: true, life: lifeAny, run: h2Flood(false)},
		{name: "h2-ping-flood", conns: 1, long: 4, h2: true, life: lifeAny, run: h2Flood(true)},
		{name: "h2c-rapid-reset", conns: 1, long: 4, h2: true, life: lifeAny, run: h2RapidReset,
			frames: 100_000, longF: 500_000},
		{name: "h2c-continuation-flood-1KiB", conns: 4, long: 16, h2: true, life: lifeHeader, tidegateCloses: true,
			run: h2ContinuationFlood(1 << 10)},
		{name: "h2c-continuation-flood-empty", conns: 4, long: 16, h2: true, life: lifeHeader, tidegateCloses: true,
			run: h2ContinuationFlood(0), frames: 1 << 40, longF: 1 << 40}, // bounded by time
		{name: "h1-silent", conns: 16, long: 256, life: lifeHeader, tidegateCloses: true,
			run: stalled(nil, nil, "")},
		{name: "h1-slow-head", conns: 16, long: 256, life: lifeHeader, tidegateCloses: true,
			run: stalled([]byte(slowHead), nil, "abcdefgh")},
		{name: "h1-slow-head-over-4KiB", conns: 16, long: 256, life: lifeHeader, tidegateCloses: true,
			run: stalled([]byte(slowHead), []byte("\r\nX-Pad: "+strings.Repeat("p", 5000)+"\r\nX-Slow-2: "), "abcdefgh")},
		{name: "h1-slow-head-bare-lf", conns: 16, long: 256, life: lifeHeader, tidegateCloses: true,
			run: stalled([]byte(slowHead), []byte("\nX-Bare-Lf: 1\nX-Slow-2: "), "abcdefgh")},
		{name: "h2c-preface-only", conns: 16, long: 256, h2: true, life: lifeHeader, tidegateCloses: true,
			run: stalled(h2Frames(false), nil, "")},
		{name: "h2c-headers-no-end-headers", conns: 16, long: 256, h2: true, life: lifeHeader, tidegateCloses: true,
			run: stalled(h2Frames(true), nil, "")},
		{name: "h1-half-close-after-request", conns: 16, long: 256, life: lifeAnswer, tidegateCloses: true, run: halfOpen},
		{name: "h1-vanish-while-app-works", conns: 16, long: 256, life: lifeHeld, run: vanish},
		{name: "h1-idle-keep-alive", conns: 256, long: 4000, life: lifeIdle, tidegateCloses: true, run: idleKeepAlive},
	}
}

// slowHead is the start of a head that a slow client trickles on, one
// byte of a header value at a time.
const slowHead = "GET /fast HTTP/1.1\r\nHost: attack\r\nX-Slow: "

// TestAttackInvariantPerConnection runs each hostile client of rows() against a
// fresh tidegate and checks the memory bound, the lifetime bound and the
// release of every connection once the client goes. Each row logs one line
// starting "attack row=" with what it measured.
func TestAttackInvariantPerConnection(t *testing.T) {
	long := os.Getenv(longEnv) == "1"
	for _, r := range rows() {
		t.Run(r.name, func(t *testing.T) { runRow(t, r, long) })
	}
}

func runRow(t *testing.T, r row, long bool) {
	n, hold, frames, flood := r.conns, 2*time.Second, 2_000_000, 8*time.Second
	if r.frames > 0 {
		frames = r.frames
	}
	if long {
		n, hold, frames, flood = r.long, 10*time.Second, 20_000_000, 30*time.Second
		if r.longF > 0 {
			frames = r.longF
		}
	}
	a := startApp(t)
	tg := startTidegate(t, a.Addr,
		"--read-header-timeout", readHeaderTimeout.String(),
		"--idle-timeout", idleTimeout.String(),
		"--max-header-bytes", maxHeaderBytes,
		"--max-connections", fmt.Sprint(max(1024, 2*n)),
		"--drain-delay", "0s")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	if err := tg.warm(ctx); err != nil {
		t.Fatal(err)
	}
	if d, ok := waitConns(tg, 0, 5*time.Second); !ok {
		t.Fatalf("tidegate still counts connections %s after the warm-up", d)
	}

	// The baseline, after two collections.
	if err := tg.gc(); err != nil {
		t.Fatal(err)
	}
	m, err := tg.metrics(heapInuse)
	if err != nil {
		t.Fatal(err)
	}
	heapBase := int64(m[heapInuse])
	rssBase := tg.rssKiB()
	hwmBase, err := statusKiB(tg.pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	bound := memBound(n, n*r.streams, r.h2)

	// Watch the resident set and the heap while the clients run; past the
	// bound, stop the row at once (an unbounded server would otherwise take
	// the machine's memory with it).
	var (
		mu       sync.Mutex
		rssPeak  = rssBase
		heapPeak = heapBase
	)
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
			rss, err := statusKiB(tg.pid, "VmRSS")
			if err != nil {
				cancel(fmt.Errorf("tidegate gone: %w", err))
				return
			}
			var heap int64
			if i%10 == 0 {
				if m, err := tg.metrics(heapInuse); err == nil {
					heap = int64(m[heapInuse])
				}
			}
			mu.Lock()
			rssPeak = max(rssPeak, rss)
			heapPeak = max(heapPeak, heap)
			mu.Unlock()
			if (rss-rssBase)<<10 > bound {
				cancel(fmt.Errorf("RSS grew %d KiB, past the bound of %d KiB", rss-rssBase, bound>>10))
				return
			}
		}
	}()

	rowCtx, rowCancel := context.WithTimeout(ctx, 15*time.Second)
	if long {
		rowCtx, rowCancel = context.WithTimeout(ctx, 60*time.Second)
	}
	defer rowCancel()
	c := &rc{ctx: rowCtx, tg: tg, app: a, n: n, streams: r.streams, hold: hold, frames: frames, flood: flood}
	out, runErr := r.run(c)
	close(stopWatch)
	<-watched
	if out.gone.IsZero() {
		out.gone = time.Now()
	}
	hwm, err := statusKiB(tg.pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	peak := rssPeak
	if hwm > hwmBase {
		peak = max(peak, hwm)
	}
	growth := (peak - rssBase) << 10
	heapGrowth := heapPeak - heapBase
	mu.Unlock()

	// The clients are gone: tidegate must let go of everything.
	left, released := waitConns(tg, 0, releaseBound+4*time.Second)
	release := time.Since(out.gone)
	if err := tg.gc(); err != nil {
		t.Fatal(err)
	}
	m, err = tg.metrics(heapInuse)
	if err != nil {
		t.Fatal(err)
	}
	heapAfter := int64(m[heapInuse])
	rssAfter := pollRSS(tg, rssBase+2<<10, 3*time.Second)

	slices.Sort(out.lifetimes)
	lifeMax := time.Duration(-1)
	if len(out.lifetimes) > 0 {
		lifeMax = out.lifetimes[len(out.lifetimes)-1]
	}
	perConnKiB := (growth >> 10) / int64(n+n*r.streams)
	t.Logf("attack row=%s conns=%d streams=%d rss_base_kib=%d rss_growth_kib=%d bound_kib=%d per_conn_kib=%d "+
		"heap_base_kib=%d heap_peak_growth_kib=%d heap_after_kib=%+d rss_after_kib=%+d "+
		"closed_by_tidegate=%d/%d lifetime_max_ms=%d lifetime_bound_ms=%d open_at_end=%d release_ms=%d %s",
		r.name, n, n*r.streams, rssBase, growth>>10, bound>>10, perConnKiB,
		heapBase>>10, heapGrowth>>10, (heapAfter-heapBase)>>10, rssAfter-rssBase,
		len(out.lifetimes), n, lifeMax.Milliseconds(), r.life.limit().Milliseconds(), out.openAtEnd, release.Milliseconds(), out.note)

	if !tg.alive() {
		t.Fatalf("tidegate exited during the row")
	}
	if cause := context.Cause(ctx); cause != nil {
		t.Errorf("memory bound: %v", cause)
	} else if growth > bound {
		t.Errorf("memory bound: RSS grew %d KiB, past the bound of %d KiB (%d connections, %d streams)", growth>>10, bound>>10, n, n*r.streams)
	}
	if runErr != nil && context.Cause(ctx) == nil {
		t.Errorf("client: %v", runErr)
	}
	if lim := r.life.limit(); lim > 0 {
		if r.tidegateCloses && len(out.lifetimes) < n {
			t.Errorf("lifetime: tidegate closed %d of %d connections within %s", len(out.lifetimes), n, lim+time.Second)
		}
		if lifeMax > lim {
			t.Errorf("lifetime: a connection lived %s, past the bound of %s", lifeMax.Round(time.Millisecond), lim)
		}
	}
	if !released {
		t.Errorf("release: tidegate still counted %s connections %s after the clients went", left, release.Round(time.Millisecond))
	} else if release > releaseBound+lifetimeSlack {
		t.Errorf("release: tidegate let go of the connections %s after the clients went, past %s", release.Round(time.Millisecond), releaseBound+lifetimeSlack)
	}
	if heapAfter-heapBase > heapAfterSlack {
		t.Errorf("after: heap in use %d KiB above the baseline once the clients went, past %d KiB", (heapAfter-heapBase)>>10, heapAfterSlack>>10)
	}
}

// waitConns polls tidegate_connections_active until it is want or timeout
// passes; it returns the last value seen and whether it got there.
func waitConns(tg *tidegate, want int, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last := "?"
	for {
		if m, err := tg.metrics(connsActive); err == nil {
			if int(m[connsActive]) == want {
				return fmt.Sprint(want), true
			}
			last = fmt.Sprint(m[connsActive])
		}
		if time.Now().After(deadline) {
			return last, false
		}
		<-tick.C
	}
}

// pollRSS polls VmRSS until it is at most target KiB or timeout passes, and
// returns the last value: the Go runtime returns freed pages to the kernel
// in the background, at its own pace.
func pollRSS(tg *tidegate, target int64, timeout time.Duration) int64 {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		rss := tg.rssKiB()
		if rss <= target || time.Now().After(deadline) {
			return rss
		}
		<-tick.C
	}
}
