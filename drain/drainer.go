package drain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Traffic is the data plane as the drainer sees it (proxy.Tracker fits).
type Traffic interface {
	InFlight() int64
	Requests() uint64
	ConnectionsTotal() int64
	LastActivity() time.Time
}

// Frontend is the public listeners as the drainer steers them.
type Frontend interface {
	// BeginDrain makes every response carry "Connection: close" (and, for
	// HTTP/2, sends GOAWAY); the listeners keep accepting.
	BeginDrain()
	// EndDrain undoes BeginDrain (after an undrain).
	EndDrain()
	// Shutdown closes the listeners and idle connections, and waits for
	// active requests until ctx ends, then returns ctx's error.
	Shutdown(ctx context.Context) error
	// Close cuts every connection left.
	Close() error
}

// Options configures a Drainer. Traffic, Frontend, App and Lifecycle are
// required.
type Options struct {
	// Delay keeps the listeners accepting this long after the trigger, so
	// that load balancers notice the failed readiness before connections
	// are refused. Zero means no delay.
	Delay time.Duration
	// Quiet is how long no new non-probe request may arrive before the
	// listeners close (after Delay, and only with nothing in flight). Zero
	// means close as soon as nothing is in flight.
	Quiet time.Duration
	// Timeout bounds the whole drain of traffic, from the trigger: at the
	// deadline the listeners close and what is left is cut. It must be at
	// least Delay. Zero means cut at once.
	Timeout time.Duration
	// PollInterval is how often in-flight counts are checked. Zero means 5ms.
	PollInterval time.Duration
	// AppStopTimeout bounds stopping the app; past it a child is killed.
	// Zero means 10s.
	AppStopTimeout time.Duration

	Traffic   Traffic
	Frontend  Frontend
	App       App
	Lifecycle *Lifecycle

	// Registerer receives the drain metrics. Nil means none.
	Registerer prometheus.Registerer
	// Logger receives the drain's progress. Nil means no logs.
	Logger *zap.Logger
}

// Report is what a drain did: the one line printed at exit.
type Report struct {
	Trigger string `json:"trigger"`
	// Result is "complete" (nothing left at closing), "timeout" (requests
	// were cut at the deadline) or "forced" (a second signal).
	Result string `json:"result"`

	TriggeredAt   time.Time `json:"triggered_at"`
	ClosingAt     time.Time `json:"closing_at"`
	LastRequestAt time.Time `json:"last_request_done_at"` // when in-flight last reached zero (or the cut)
	AppStoppingAt time.Time `json:"app_stopping_at"`
	StoppedAt     time.Time `json:"stopped_at"`

	InFlightAtTrigger int64 `json:"inflight_at_trigger"`
	Completed         int64 `json:"completed"` // requests that finished after the trigger
	Cut               int64 `json:"cut"`
	ConnsClosed       int64 `json:"connections_closed"` // client connections open when the listeners closed

	App AppExit `json:"app"`
}

// Duration is the time from the trigger to stopped.
func (r Report) Duration() time.Duration { return r.StoppedAt.Sub(r.TriggeredAt) }

// ErrTooLate is returned by Undrain once the listeners are closing.
var ErrTooLate = errors.New("too late to undrain: the listeners are already closing")

// Drainer turns a trigger (SIGTERM, POST /drain, …) into the drain: fail
// readiness, keep serving for Delay, close when idle or at Timeout, cut what
// is left, then stop the app. Safe for concurrent use.
type Drainer struct {
	o Options

	mu        sync.Mutex
	trigger   string        // set by the first Trigger of a round
	triggered chan struct{} // closed by Trigger; replaced after an undrain
	undrain   chan struct{} // closed by Undrain; replaced after an undrain
	force     chan struct{} // closed by Force
	forced    bool
	forceWhy  string
	expedite  chan struct{} // closed by Expedite
	expedited bool

	drains   *prometheus.CounterVec
	duration prometheus.Histogram
	cut      prometheus.Counter
}

// New returns a Drainer waiting for a trigger.
func New(o Options) (*Drainer, error) {
	if o.Traffic == nil || o.Frontend == nil || o.App == nil || o.Lifecycle == nil {
		return nil, errors.New("drain: Traffic, Frontend, App and Lifecycle are required")
	}
	if o.Delay < 0 || o.Quiet < 0 || o.Timeout < 0 {
		return nil, fmt.Errorf("drain: negative duration (delay %s, quiet %s, timeout %s)", o.Delay, o.Quiet, o.Timeout)
	}
	if o.Delay > o.Timeout {
		return nil, fmt.Errorf("drain: delay %s is longer than timeout %s", o.Delay, o.Timeout)
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 5 * time.Millisecond
	}
	if o.AppStopTimeout <= 0 {
		o.AppStopTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	d := &Drainer{
		o:         o,
		triggered: make(chan struct{}),
		undrain:   make(chan struct{}),
		force:     make(chan struct{}),
		expedite:  make(chan struct{}),
		drains: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tidegate_drains_total",
			Help: "Drains, by trigger (SIGTERM, SIGINT, admin, prestop, app_exit, …) and result (complete, timeout, forced).",
		}, []string{"trigger", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tidegate_drain_duration_seconds",
			Help:    "Time from the drain trigger to the listeners closing with nothing left in flight, or the cut.",
			Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300},
		}),
		cut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tidegate_drain_cut_requests_total",
			Help: "Requests still in flight at the drain deadline (or a second signal), cut unfinished.",
		}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{d.drains, d.duration, d.cut} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register drain metrics: %w", err)
			}
		}
	}
	return d, nil
}

// Trigger starts the drain for the given reason, unless it has started. It
// reports whether this call started it. Readiness fails before it returns.
func (d *Drainer) Trigger(reason string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.trigger != "" {
		return false
	}
	d.trigger = reason
	// Fail readiness now, not when the Run loop wakes up.
	d.o.Lifecycle.Advance(Draining, zap.String("trigger", reason), zap.Int64("inflight", d.o.Traffic.InFlight()))
	close(d.triggered)
	return true
}

// Force means "stop now": the drain skips its delay and quiet period, cuts
// what is in flight and stops the app. It triggers the drain if needed.
func (d *Drainer) Force(reason string) {
	d.Trigger(reason)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.forced {
		d.forced, d.forceWhy = true, reason
		close(d.force)
	}
}

// Expedite triggers the drain (if needed) and skips its delay and quiet
// period: the listeners close as soon as nothing is in flight, and nothing
// is cut before the deadline. For an app that died: there is nothing to
// keep serving, and a refused connection is safer for a load balancer to
// retry than a 502.
func (d *Drainer) Expedite(reason string) {
	d.Trigger(reason)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.expedited {
		d.expedited = true
		close(d.expedite)
	}
}

// Undrain reopens readiness if the drain has not reached closing; the
// drainer then waits for a new trigger. It returns ErrTooLate after that.
func (d *Drainer) Undrain() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.forced {
		return ErrTooLate
	}
	if d.trigger == "" {
		return nil // not draining: nothing to undo
	}
	if !d.o.Lifecycle.Reopen() {
		return ErrTooLate
	}
	d.trigger = ""
	d.triggered = make(chan struct{})
	close(d.undrain)
	d.undrain = make(chan struct{})
	return nil
}

// Timing is the part of Options that may change while tidegate runs (a
// config reload). Zero values mean what they mean in Options.
type Timing struct {
	Delay, Quiet, Timeout, AppStopTimeout time.Duration
}

// SetTiming sets the timing of the next drain; a drain under way keeps the
// timing it started with. The error names the value that is wrong.
func (d *Drainer) SetTiming(t Timing) error {
	if t.Delay < 0 || t.Quiet < 0 || t.Timeout < 0 || t.AppStopTimeout < 0 {
		return fmt.Errorf("drain: negative duration (delay %s, quiet %s, timeout %s, app stop timeout %s)", t.Delay, t.Quiet, t.Timeout, t.AppStopTimeout)
	}
	if t.Delay > t.Timeout {
		return fmt.Errorf("drain: delay %s is longer than timeout %s", t.Delay, t.Timeout)
	}
	if t.AppStopTimeout == 0 {
		t.AppStopTimeout = 10 * time.Second
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.o.Delay, d.o.Quiet, d.o.Timeout, d.o.AppStopTimeout = t.Delay, t.Quiet, t.Timeout, t.AppStopTimeout
	return nil
}

// Run waits for a trigger, then drains and stops the app; it returns when
// the lifecycle is Stopped. If ctx ends before a trigger, that is the
// trigger ("context").
func (d *Drainer) Run(ctx context.Context) Report {
	for {
		d.mu.Lock()
		triggered, undrain := d.triggered, d.undrain
		d.mu.Unlock()
		select {
		case <-triggered:
		case <-ctx.Done():
			d.Trigger("context")
			continue
		}
		if rep, ok := d.drain(undrain); ok {
			return rep
		}
		d.o.Logger.Info("drain canceled; serving again", zap.String("phase", Serving.String()))
	}
}

// drain runs one drain round; ok is false if it was undrained.
func (d *Drainer) drain(undrain <-chan struct{}) (rep Report, ok bool) {
	d.mu.Lock()
	o := d.o // a drain keeps the timing it started with (SetTiming)
	rep.Trigger = d.trigger
	expedite := d.expedite
	d.mu.Unlock()
	rep.TriggeredAt = time.Now()
	rep.InFlightAtTrigger = o.Traffic.InFlight()
	reqsAtTrigger := o.Traffic.Requests()
	log := o.Logger.With(zap.String("trigger", rep.Trigger))
	log.Info("drain started", zap.String("phase", Draining.String()), zap.Int64("inflight", rep.InFlightAtTrigger),
		zap.Duration("delay", o.Delay), zap.Duration("quiet", o.Quiet), zap.Duration("timeout", o.Timeout))
	o.Frontend.BeginDrain()

	deadline := rep.TriggeredAt.Add(o.Timeout)
	delay := time.NewTimer(o.Delay)
	defer delay.Stop()
	timeout := time.NewTimer(o.Timeout)
	defer timeout.Stop()
	poll := time.NewTicker(o.PollInterval)
	defer poll.Stop()
	delayed, quiet, result := o.Delay == 0, o.Quiet, ""
	for result == "" {
		select {
		case <-expedite:
			delayed, quiet, expedite = true, 0, nil // a nil channel: this case fires once
		case <-undrain:
			o.Frontend.EndDrain()
			return rep, false
		case <-d.force:
			result = "forced"
		case <-timeout.C:
			result = "timeout"
		case <-delay.C:
			delayed = true
			log.Info("drain delay over; closing once idle", zap.Int64("inflight", o.Traffic.InFlight()))
		case <-poll.C:
		}
		if result == "" && delayed && o.Traffic.InFlight() == 0 && time.Since(o.Traffic.LastActivity()) >= quiet {
			result = "complete"
		}
	}

	// Closing: no new connections; what is in flight may finish until the
	// deadline (none if forced).
	rep.ClosingAt = time.Now()
	rep.ConnsClosed = o.Traffic.ConnectionsTotal()
	o.Lifecycle.Advance(Closing, zap.String("reason", result), zap.Int64("inflight", o.Traffic.InFlight()))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	if result == "forced" {
		cancel()
	}
	// Shutdown closes the listeners and idle connections and returns once
	// no connection is serving a request; upgraded connections (WebSocket,
	// CONNECT), which it does not see, stay counted in flight: wait for
	// those too, until the deadline.
	done := make(chan error, 1)
	go func() { done <- o.Frontend.Shutdown(ctx) }()
	var err error
	returned := false
	select {
	case err = <-done:
		returned = true
	case <-d.force:
		result, err = "forced", errForced
	}
	if err == nil {
		err = d.waitInFlight(ctx)
	}
	if errors.Is(err, errForced) {
		result = "forced"
	}
	if err != nil {
		cancel()
		if !returned {
			<-done
		}
		rep.Cut = o.Traffic.InFlight()
		if result == "complete" {
			result = "timeout"
		}
		if rep.Cut > 0 {
			d.mu.Lock()
			why := d.forceWhy
			d.mu.Unlock()
			log.Warn("cutting requests still in flight", zap.String("reason", result), zap.String("signal", why),
				zap.Int64("inflight", rep.Cut))
		}
		_ = o.Frontend.Close()
		d.waitIdle(time.Second)
	}
	rep.Result = result
	rep.LastRequestAt = time.Now() // in-flight reached zero, or the cut
	rep.Completed = int64(o.Traffic.Requests()-reqsAtTrigger) + rep.InFlightAtTrigger - rep.Cut
	d.cut.Add(float64(rep.Cut))
	d.duration.Observe(rep.LastRequestAt.Sub(rep.TriggeredAt).Seconds())
	d.drains.WithLabelValues(rep.Trigger, rep.Result).Inc()

	rep.AppStoppingAt = time.Now()
	o.Lifecycle.Advance(StoppingApp, zap.String("reason", result), zap.String("app_stop", o.App.Strategy()))
	stopCtx, stopCancel := context.WithTimeout(context.Background(), o.AppStopTimeout)
	rep.App = o.App.Stop(stopCtx)
	stopCancel()
	cancel()
	rep.StoppedAt = time.Now()
	o.Lifecycle.Advance(Stopped, zap.String("app", rep.App.String()))
	return rep, true
}

// errForced is waitInFlight's answer to a second signal.
var errForced = errors.New("forced")

// waitInFlight waits for in-flight to reach zero until ctx ends or a
// force; it returns ctx's error or errForced if it did not.
func (d *Drainer) waitInFlight(ctx context.Context) error {
	tick := time.NewTicker(d.o.PollInterval)
	defer tick.Stop()
	for d.o.Traffic.InFlight() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.force:
			return errForced
		case <-tick.C:
		}
	}
	return nil
}

// waitIdle waits, at most bound, for cut requests to unwind so that the
// report's counts are final.
func (d *Drainer) waitIdle(bound time.Duration) {
	t := time.NewTimer(bound)
	defer t.Stop()
	tick := time.NewTicker(d.o.PollInterval)
	defer tick.Stop()
	for d.o.Traffic.InFlight() > 0 {
		select {
		case <-t.C:
			return
		case <-tick.C:
		}
	}
}
