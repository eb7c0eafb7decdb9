package main

import (
	"math"
	"slices"
	"time"
)

// measurement is the result of one measured run of a load generator. The
// Go generators print it as JSON.
type measurement struct {
	Requests int64   `json:"requests"` // answered with a 2xx (gRPC: OK)
	Errors   int64   `json:"errors"`   // failed, non-2xx, or (open loop) not sent in time
	Seconds  float64 `json:"seconds"`  // length of the run
	RPS      float64 `json:"rps"`      // Requests per second
	// Latency percentiles; zero when the generator does not report them.
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	// Rate is the open-loop generator's target rate, and Unsent the part
	// of Errors it never sent because the run's deadline came first; zero
	// for the other generators.
	Rate   float64 `json:"rate,omitempty"`
	Unsent int64   `json:"unsent,omitempty"`
}

// setLatencies fills in the percentiles from every request's latency; it
// sorts lat.
func (m *measurement) setLatencies(lat []time.Duration) {
	slices.Sort(lat)
	m.P50 = percentile(lat, 0.50)
	m.P99 = percentile(lat, 0.99)
	m.P999 = percentile(lat, 0.999)
}

// percentile returns the nearest-rank p-quantile of sorted: the smallest
// value that at least p of the values are at or below. Zero if empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
