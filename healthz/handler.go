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
	// Name identifies the check in verbose output and in /readyz/<name>
	// (probe checks are named <container>/<kind>, like app/readiness). It
	// must be unique within an endpoint.
	Name string
	// Func returns nil when the condition holds, else an error whose text
	// is the reason shown to the operator.
	Func func(ctx context.Context) error
	// Container is the app container the check belongs to; empty for the
	// sidecar's own checks. Informational.
	Container string
	// Info, if set, describes the check's target and freshness for ?verbose
	// and JSON ("http://127.0.0.1:3000/ready, last 2.1s ago").
	Info func() string
}

// Options lists the checks behind each endpoint. An endpoint with no checks
// always answers 200.
type Options struct {
	Readiness []Check // /readyz
	Liveness  []Check // /livez
	Startup   []Check // /startupz

	// Apps are served at /app-health/<name>/readyz, /livez and /startupz:
	// one container's own probes, for the kubelet probes of that container.
	// Their own Apps field is ignored.
	Apps map[string]Options
}

// endpoint is one of /readyz, /livez, /startupz.
type endpoint struct {
	name   string // "readyz"
	checks []Check
	prefix string // "" or "/app-health/<container>"
}

// NewHandler returns the handler for the three endpoints and their per-check
// sub-paths (/readyz/<check>). It rejects duplicate or malformed check names.
//
// Responses: 200 "ok" or 503 listing the failed checks; with ?verbose, every
// check as "[+]name ok" or "[-]name failed: reason"; with
// "Accept: application/json", a JSON object {"status","checks":[...]}.
func NewHandler(o Options) (http.Handler, error) {
	mux := http.NewServeMux()
	if err := mount(mux, "", o); err != nil {
		return nil, err
	}
	for name, app := range o.Apps {
		if name == "" || strings.ContainsAny(name, "/ ") {
			return nil, fmt.Errorf("healthz: app name %q: give a name without '/' or spaces", name)
		}
		if err := mount(mux, "/app-health/"+name, app); err != nil {
			return nil, err
		}
	}
	return mux, nil
}

// mount serves o's three endpoints under prefix.
func mount(mux *http.ServeMux, prefix string, o Options) error {
	for _, ep := range []endpoint{{"readyz", o.Readiness, prefix}, {"livez", o.Liveness, prefix}, {"startupz", o.Startup, prefix}} {
		seen := map[string]bool{}
		for _, c := range ep.checks {
			if c.Name == "" || c.Func == nil {
				return fmt.Errorf("healthz: %s check %q: a check needs a name and a func", ep.name, c.Name)
			}
			if seen[c.Name] {
				return fmt.Errorf("healthz: %s check %q is listed twice", ep.name, c.Name)
			}
			seen[c.Name] = true
		}
		mux.Handle(prefix+"/"+ep.name, ep)
		mux.Handle(prefix+"/"+ep.name+"/", ep)
	}
	return nil
}

// Result is one check's outcome, as JSON.
type Result struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	Info   string `json:"info,omitempty"`
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
	if sub := strings.TrimPrefix(r.URL.Path, ep.prefix+"/"+ep.name+"/"); sub != r.URL.Path && sub != "" {
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
		if c.Info != nil {
			res.Info = c.Info()
		}
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
		info := ""
		if verbose && res.Info != "" {
			info = " (" + res.Info + ")"
		}
		switch {
		case res.OK && verbose:
			fmt.Fprintf(&b, "[+]%s ok%s\n", res.Name, info)
		case !res.OK:
			fmt.Fprintf(&b, "[-]%s failed: %s%s\n", res.Name, res.Reason, info)
		}
	}
	if rep.Status == "ok" && !verbose {
		b.WriteString("ok\n")
	} else {
		fmt.Fprintf(&b, "%s check %s\n", ep.name, map[bool]string{true: "passed", false: "failed"}[rep.Status == "ok"])
	}
	_, _ = w.Write([]byte(b.String()))
}
