package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestScheduleDoesNotDrift(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSchedule(start, 3, time.Hour) // a period of 333.33…ms
	if s.n != 10800 {
		t.Errorf("n = %d, want 10800", s.n)
	}
	if got, want := s.due(10799), start.Add(3599*time.Second+666666666*time.Nanosecond); got != want {
		t.Errorf("due(10799) = %v, want %v", got, want)
	}
	if got := newSchedule(start, 1000, 2500*time.Microsecond).n; got != 3 {
		t.Errorf("n at 1000/s for 2.5ms = %d, want 3 (due at 0, 1 and 2ms)", got)
	}
}

// sleeper is a sender whose request takes d.
func sleeper(d time.Duration) func() sender {
	return func() sender {
		return func(ctx context.Context) error {
			return sleepUntil(ctx, time.Now().Add(d))
		}
	}
}

func ms(n ...int) []time.Duration {
	var out []time.Duration
	for _, v := range n {
		out = append(out, time.Duration(v)*time.Millisecond)
	}
	return out
}

func TestOpenLoopOnSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1 request per ms, each taking 1.5ms, two workers: never a wait.
		s := newSchedule(time.Now(), 1000, 6*time.Millisecond)
		res := openLoop(t.Context(), s, 2, sleeper(1500*time.Microsecond))
		want := slices.Repeat([]time.Duration{1500 * time.Microsecond}, 6)
		if !slices.Equal(res.Latencies, want) || res.Failed != 0 || res.Unsent != 0 {
			t.Errorf("openLoop = %+v, want 6 latencies of 1.5ms", res)
		}
		if res.Elapsed != 6500*time.Microsecond {
			t.Errorf("elapsed %v, want 6.5ms", res.Elapsed)
		}
	})
}

func TestOpenLoopCountsTheWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1 request per ms, each taking 2ms, one worker: request i starts
		// at 2i ms, i ms late, and its latency counts from its due time.
		s := newSchedule(time.Now(), 1000, 5*time.Millisecond)
		res := openLoop(t.Context(), s, 1, sleeper(2*time.Millisecond))
		if want := ms(2, 3, 4, 5, 6); !slices.Equal(res.Latencies, want) {
			t.Errorf("latencies %v, want %v", res.Latencies, want)
		}
		m := res.measurement(1000)
		if m.Requests != 5 || m.Errors != 0 || m.P99 != 6*time.Millisecond || m.Rate != 1000 {
			t.Errorf("measurement %+v, want 5 requests, p99 6ms", m)
		}
	})
}

func TestOpenLoopFailuresAndUnsent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Every other request fails; the run is cut at 4.5ms of a 10ms
		// schedule, so the requests due at 5..9ms are never sent.
		ctx, cancel := context.WithTimeout(t.Context(), 4500*time.Microsecond)
		defer cancel()
		n := 0
		failing := func() sender {
			return func(context.Context) error {
				n++
				if n%2 == 0 {
					return errors.New("refused")
				}
				return nil
			}
		}
		res := openLoop(ctx, newSchedule(time.Now(), 1000, 10*time.Millisecond), 1, failing)
		if len(res.Latencies) != 3 || res.Failed != 2 || res.Unsent != 5 {
			t.Errorf("openLoop = %d ok, %d failed, %d unsent; want 3, 2, 5", len(res.Latencies), res.Failed, res.Unsent)
		}
		if m := res.measurement(1000); m.Errors != 7 || m.Unsent != 5 {
			t.Errorf("errors %d, unsent %d; want 7, 5", m.Errors, m.Unsent)
		}
	})
}

// TestOpenLoopCmdConnectsFirst runs the generator against a real server:
// every connection is open, with one request that is not counted, before
// the schedule's first request.
func TestOpenLoopCmdConnectsFirst(t *testing.T) {
	var (
		mu    sync.Mutex
		seq   int
		first = map[string]int{} // connection → sequence number of its first request
		later []int              // sequence numbers of every later request
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seq++
		if _, ok := first[r.RemoteAddr]; ok {
			later = append(later, seq)
		} else {
			first[r.RemoteAddr] = seq
		}
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	args := []string{"-addr", srv.Listener.Addr().String(), "-path", "/", "-rate", "1000", "-duration", "50ms", "-conns", "4"}
	if err := runOpenLoopCmd(t.Context(), args, &out, &errOut); err != nil {
		t.Fatalf("openloop: %v (%s)", err, errOut.String())
	}
	var m measurement
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m.Requests != 50 || m.Errors != 0 {
		t.Errorf("measured %d requests and %d errors, want the schedule's 50 and none", m.Requests, m.Errors)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(first) != 4 || len(later) != 50 {
		t.Fatalf("server saw %d connections and %d later requests, want 4 and 50", len(first), len(later))
	}
	for conn, n := range first {
		if n > 4 {
			t.Errorf("connection %s sent its first request as number %d, after the schedule began", conn, n)
		}
	}
}
