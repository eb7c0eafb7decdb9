package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// schedule is an open-loop schedule: n requests at a fixed rate from start,
// request i due at start + i/rate. Each due time is computed from i, never
// accumulated, so the schedule does not drift.
type schedule struct {
	start time.Time
	rate  float64 // requests per second, > 0
	n     int64   // the requests due before start + the run's duration
}

func newSchedule(start time.Time, rate float64, d time.Duration) schedule {
	return schedule{start: start, rate: rate, n: int64(math.Ceil(rate * d.Seconds()))}
}

// due returns the intended send time of request i.
func (s schedule) due(i int64) time.Time {
	return s.start.Add(time.Duration(float64(i) * float64(time.Second) / s.rate))
}

// sender sends one request and waits for its whole response. Each worker
// has its own, so a sender need not be safe for concurrent use.
type sender func(ctx context.Context) error

// openLoopResult is what openLoop saw.
type openLoopResult struct {
	Latencies []time.Duration // of the successful requests, from their due times
	Failed    int64           // requests sent that failed
	Unsent    int64           // requests not sent before ctx ended
	Elapsed   time.Duration   // from the schedule's start to the last response
}

// openLoop sends the requests of s from workers concurrent workers, each
// with its own sender from newSender. A free worker takes the next request
// in the schedule, waits for its due time if it is still ahead, and sends
// it. A request's latency runs from its due time, not from when a worker
// got to it: when every worker is busy, the wait for one counts, so the
// result is free of coordinated omission. When ctx ends, the requests not
// yet sent count as Unsent.
func openLoop(ctx context.Context, s schedule, workers int, newSender func() sender) openLoopResult {
	var (
		next   atomic.Int64
		failed atomic.Int64
		mu     sync.Mutex
		res    openLoopResult
		wg     sync.WaitGroup
	)
	for range workers {
		send := newSender()
		wg.Go(func() {
			var lat []time.Duration
			defer func() {
				mu.Lock()
				res.Latencies = append(res.Latencies, lat...)
				mu.Unlock()
			}()
			for {
				i := next.Add(1) - 1
				if i >= s.n || sleepUntil(ctx, s.due(i)) != nil {
					return
				}
				due := s.due(i)
				if err := send(ctx); err != nil {
					failed.Add(1)
					continue
				}
				lat = append(lat, time.Since(due))
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(s.start)
	res.Failed = failed.Load()
	res.Unsent = s.n - res.Failed - int64(len(res.Latencies))
	return res
}

// sleepUntil waits until t or until ctx ends, whichever is first, and
// returns ctx's error if it ended.
func sleepUntil(ctx context.Context, t time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// measurement turns the result into the harness's measurement: Errors are
// the failed and the unsent requests.
func (r openLoopResult) measurement(rate float64) measurement {
	m := measurement{
		Requests: int64(len(r.Latencies)),
		Errors:   r.Failed + r.Unsent,
		Seconds:  r.Elapsed.Seconds(),
		Rate:     rate,
		Unsent:   r.Unsent,
	}
	if m.Seconds > 0 {
		m.RPS = float64(m.Requests) / m.Seconds
	}
	m.setLatencies(r.Latencies)
	return m
}
