// Package healthz serves the kubelet-facing health endpoints /readyz, /livez
// and /startupz, each the conjunction of a list of named checks.
//
// Invariants:
//   - An endpoint answers 200 only if every one of its checks passes; the
//     body names each failing check and why.
//   - Checks are cheap reads of state kept elsewhere (the lifecycle, probe
//     results); a handler never waits on the app.
//   - healthz never imports proxy or drain: checks are plain functions the
//     composition root builds.
package healthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// Check is one named health condition.
type Check struct {
	// Name identifies the check in verbose output and in /readyz/<name>.
	// It must be unique within an endpoint and contain no '/'.
	Name string
	// Func returns nil when the condition holds, else an error whose text
	// is the reason shown to the operator.
	Func func(ctx context.Context) error
}

// Options lists the checks behind each endpoint. An endpoint with no checks
// always answers 200.
type Options struct {
	Readiness []Check // /readyz
	Liveness  []Check // /livez
	Startup   []Check // /startupz
}

// endpoint is one of /readyz, /livez, /startupz.
type endpoint struct {
	name   string // "readyz"
	checks []Check
}

// NewHandler returns the handler for the three endpoints and their per-check
// sub-paths (/readyz/<check>). It rejects duplicate or malformed check names.
//
// Responses: 200 "ok" or 503 listing the failed checks; with ?verbose, every
// check as "[+]name ok" or "[-]name failed: reason"; with
// "Accept: application/json", a JSON object {"status","checks":[...]}.
func NewHandler(o Options) (http.Handler, error) {
	mux := http.NewServeMux()
	for _, ep := range []endpoint{{"readyz", o.Readiness}, {"livez", o.Liveness}, {"startupz", o.Startup}} {
		seen := map[string]bool{}
		for _, c := range ep.checks {
			if c.Name == "" || strings.Contains(c.Name, "/") || c.Func == nil {
				return nil, fmt.Errorf("healthz: %s check %q: a check needs a name without '/' and a func", ep.name, c.Name)
			}
			if seen[c.Name] {
				return nil, fmt.Errorf("healthz: %s check %q is listed twice", ep.name, c.Name)
			}
			seen[c.Name] = true
		}
		mux.Handle("/"+ep.name, ep)
		mux.Handle("/"+ep.name+"/", ep)
	}
	return mux, nil
}

// Result is one check's outcome, as JSON.
type Result struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// Report is an endpoint's outcome, as JSON.
type Report struct {
	Status string   `json:"status"` // "ok" or "failed"
	Checks []Result `json:"checks"`
}

func (ep endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	checks := ep.checks
	if sub := strings.TrimPrefix(r.URL.Path, "/"+ep.name+"/"); sub != r.URL.Path && sub != "" {
		checks = nil
		for _, c := range ep.checks {
			if c.Name == sub {
				checks = []Check{c}
			}
		}
		if checks == nil {
			http.Error(w, fmt.Sprintf("no %s check named %q", ep.name, sub), http.StatusNotFound)
			return
		}
	}
	rep := Report{Status: "ok", Checks: make([]Result, 0, len(checks))}
	for _, c := range checks {
		res := Result{Name: c.Name, OK: true}
		if err := c.Func(r.Context()); err != nil {
			res.OK, res.Reason = false, err.Error()
			rep.Status = "failed"
		}
		rep.Checks = append(rep.Checks, res)
	}
	code := http.StatusOK
	if rep.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, verbose := r.URL.Query()["verbose"]
	var b strings.Builder
	for _, res := range rep.Checks {
		switch {
		case res.OK && verbose:
			fmt.Fprintf(&b, "[+]%s ok\n", res.Name)
		case !res.OK:
			fmt.Fprintf(&b, "[-]%s failed: %s\n", res.Name, res.Reason)
		}
	}
	if rep.Status == "ok" && !verbose {
		b.WriteString("ok\n")
	} else {
		fmt.Fprintf(&b, "%s check %s\n", ep.name, map[bool]string{true: "passed", false: "failed"}[rep.Status == "ok"])
	}
	_, _ = w.Write([]byte(b.String()))
}
