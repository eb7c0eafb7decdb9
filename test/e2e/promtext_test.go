package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// sample is one line of the Prometheus text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type metrics []sample

// scrape reads the admin listener's /metrics.
func scrape(t *testing.T, c *http.Client, tg *tidegate) metrics {
	t.Helper()
	resp, body := get(t, c, "http://"+tg.Admin+"/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d\n%s", resp.StatusCode, body)
	}
	ms, err := parseMetrics(string(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return ms
}

// parseMetrics parses the text exposition format, enough for the series
// tidegate exports (no escaped quotes in label values are needed).
func parseMetrics(text string) (metrics, error) {
	var ms metrics
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i < 0 {
			return nil, fmt.Errorf("line %d: %q has no value", n+1, line)
		} else {
			s.name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return nil, fmt.Errorf("line %d: %q: unclosed labels", n+1, line)
			}
			for _, kv := range splitLabels(rest[1:end]) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("line %d: bad label %q", n+1, kv)
				}
				uq, err := strconv.Unquote(v)
				if err != nil {
					return nil, fmt.Errorf("line %d: bad label value %q", n+1, v)
				}
				s.labels[k] = uq
			}
			rest = rest[end+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %d: %q has no value", n+1, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value %q: %v", n+1, fields[0], err)
		}
		s.value = v
		ms = append(ms, s)
	}
	return ms, nil
}

// splitLabels splits `a="x",b="y,z"` at the commas outside quotes.
func splitLabels(s string) []string {
	var out []string
	inQuote, startAt := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				out = append(out, s[startAt:i])
				startAt = i + 1
			}
		}
	}
	if strings.TrimSpace(s[startAt:]) != "" {
		out = append(out, s[startAt:])
	}
	return out
}

// get returns the sum of the samples named name whose labels include the
// given label pairs (k1, v1, k2, v2, …), and whether there was any.
func (ms metrics) get(name string, kv ...string) (float64, bool) {
	sum, found := 0.0, false
next:
	for _, s := range ms {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				continue next
			}
		}
		sum, found = sum+s.value, true
	}
	return sum, found
}

// value is get that treats a missing series as 0 (counters with labels
// appear on first use).
func (ms metrics) value(name string, kv ...string) float64 {
	v, _ := ms.get(name, kv...)
	return v
}

// metricEventually polls /metrics until the series equals want.
func metricEventually(t *testing.T, c *http.Client, tg *tidegate, want float64, name string, kv ...string) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("%s%v == %v", name, kv, want), func() (bool, string) {
		got := scrape(t, c, tg).value(name, kv...)
		return got == want, fmt.Sprintf("last value %v", got)
	})
}
