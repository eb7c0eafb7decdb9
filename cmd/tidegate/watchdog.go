package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tidegate/tidegate/drain"
)

// healthy is the watchdog's check: the event loop answers a round trip and
// the health listener answers /livez, each within ctx.
func (s *sidecar) healthy(ctx context.Context) error {
	reply := make(chan struct{})
	select {
	case s.ping <- reply:
	case <-ctx.Done():
		return fmt.Errorf("the event loop did not take the watchdog's ping: %w", ctx.Err())
	}
	select {
	case <-reply:
	case <-ctx.Done():
		return fmt.Errorf("the event loop did not answer the watchdog's ping: %w", ctx.Err())
	}
	for _, a := range s.aux {
		if a.name != "health" {
			continue
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.ln.Addr().String()+"/livez", nil)
		if err != nil {
			return err
		}
		resp, err := s.selfClient.Do(req)
		if err != nil {
			return fmt.Errorf("the health listener: %w", err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		// Any answer will do: a failing liveness is the kubelet's business,
		// a listener that does not answer is ours.
	}
	return nil
}

// reportDrain keeps systemd informed while a drain runs: STATUS= and
// EXTEND_TIMEOUT_USEC= every second, the time the drain may still take
// (its deadline, the app's stop timeout and a margin). It returns when ctx
// ends.
func (s *sidecar) reportDrain(ctx context.Context) {
	if !s.notify.Enabled() {
		return
	}
	for s.life.Phase() < drain.Draining {
		changed := s.life.Changed()
		if s.life.Phase() >= drain.Draining {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			// On a busy machine this goroutine may first run after a
			// short drain is over and ctx has ended too: a drain that
			// happened is still reported (once), whichever case select
			// picked.
			if s.life.Phase() < drain.Draining {
				return
			}
		}
	}
	_, since := s.life.State()
	c := s.live()
	end := since.Add(c.Drain.Timeout + c.App.StopTimeout + drainReportMargin)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		s.notify.ExtendTimeout(max(time.Until(end), drainReportMargin))
		s.notify.Status(s.statusLine())
		if ctx.Err() != nil {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// drainReportMargin is added to the drain's own bounds in
// EXTEND_TIMEOUT_USEC: flushing logs and exiting take a moment.
const drainReportMargin = 5 * time.Second
