package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tidegate/tidegate/healthz"
	"github.com/tidegate/tidegate/proxy"
)

// containerProbes is one entry of the YAML "probes" list: a container's
// probes in the Kubernetes schema, so that a pod's probes can be pasted in.
//
//	probes:
//	  - container: app            # optional, default "app"
//	    readinessProbe:
//	      httpGet: {path: /ready, port: 3000}
//	      periodSeconds: 5
//	    livenessProbe:
//	      tcpSocket: {port: 3000}
type containerProbes struct {
	Container      string    `json:"container"`
	ReadinessProbe *k8sProbe `json:"readinessProbe"`
	LivenessProbe  *k8sProbe `json:"livenessProbe"`
	StartupProbe   *k8sProbe `json:"startupProbe"`
}

// k8sProbe is Kubernetes' core/v1 Probe, as far as tidegate runs it.
type k8sProbe struct {
	Exec *struct {
		Command []string `json:"command"`
	} `json:"exec"`
	HTTPGet *struct {
		Path        string    `json:"path"`
		Port        portValue `json:"port"`
		Host        string    `json:"host"`
		Scheme      string    `json:"scheme"`
		HTTPHeaders []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"httpHeaders"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port portValue `json:"port"`
		Host string    `json:"host"`
	} `json:"tcpSocket"`
	GRPC *struct {
		Port    int     `json:"port"`
		Service *string `json:"service"`
	} `json:"grpc"`
	InitialDelaySeconds int `json:"initialDelaySeconds"`
	TimeoutSeconds      int `json:"timeoutSeconds"`
	PeriodSeconds       int `json:"periodSeconds"`
	SuccessThreshold    int `json:"successThreshold"`
	FailureThreshold    int `json:"failureThreshold"`
	// Accepted so that a pod's probe pastes in; the kubelet's business.
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds"`
}

// portValue is Kubernetes' IntOrString port. tidegate does not see the pod
// spec, so a named port is an error unless it is a number in quotes.
type portValue int

func (p *portValue) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*p = portValue(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("port %s is neither a number nor a string", b)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("port %q is a named port: give the number (tidegate does not see the pod spec)", s)
	}
	*p = portValue(n)
	return nil
}

func secs(n int) time.Duration { return time.Duration(n) * time.Second }

func (p *k8sProbe) spec(container string, kind healthz.Kind) healthz.Spec {
	s := healthz.Spec{Container: container, Kind: kind,
		InitialDelay: secs(p.InitialDelaySeconds), Period: secs(p.PeriodSeconds), Timeout: secs(p.TimeoutSeconds),
		SuccessThreshold: p.SuccessThreshold, FailureThreshold: p.FailureThreshold}
	if p.Exec != nil {
		s.Exec = &healthz.ExecAction{Command: p.Exec.Command}
	}
	if h := p.HTTPGet; h != nil {
		hdr := http.Header{}
		for _, kv := range h.HTTPHeaders {
			hdr.Add(kv.Name, kv.Value)
		}
		s.HTTPGet = &healthz.HTTPGetAction{Scheme: h.Scheme, Host: h.Host, Port: int(h.Port), Path: h.Path, Headers: hdr}
	}
	if t := p.TCPSocket; t != nil {
		s.TCPSocket = &healthz.TCPSocketAction{Host: t.Host, Port: int(t.Port)}
	}
	if g := p.GRPC; g != nil {
		s.GRPC = &healthz.GRPCAction{Port: g.Port}
		if g.Service != nil {
			s.GRPC.Service = *g.Service
		}
	}
	return s
}

// parseProbeList decodes the YAML "probes" list (already turned into
// JSON-like values), strictly: an unknown field is an error. Errors name
// the list (what) and the index.
func parseProbeList(v any, what string) ([]healthz.Spec, error) {
	items, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a list of containers, like - {container: app, readinessProbe: {...}}", what)
	}
	var specs []healthz.Spec
	for i, it := range items {
		cp, err := decodeStrict[containerProbes](it)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", what, i, err)
		}
		if cp.ReadinessProbe == nil && cp.LivenessProbe == nil && cp.StartupProbe == nil {
			return nil, fmt.Errorf("%s[%d]: no readinessProbe, livenessProbe or startupProbe", what, i)
		}
		for _, kp := range []struct {
			p    *k8sProbe
			kind healthz.Kind
		}{{cp.ReadinessProbe, healthz.Readiness}, {cp.LivenessProbe, healthz.Liveness}, {cp.StartupProbe, healthz.Startup}} {
			if kp.p != nil {
				specs = append(specs, kp.p.spec(cp.Container, kp.kind))
			}
		}
	}
	return specs, nil
}

// parseAppProbes decodes --app-probes (TIDEGATE_APP_PROBES): a JSON list
// in the schema of the YAML "probes" list. "" is no probes.
func parseAppProbes(raw string) ([]healthz.Spec, error) {
	if raw == "" {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not valid JSON (%v): want a list like [{\"container\":\"app\",\"readinessProbe\":{\"httpGet\":{\"path\":\"/ready\",\"port\":8080}}}]", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("more than one JSON value: want one list of containers")
	}
	if _, ok := v.([]any); !ok {
		return nil, fmt.Errorf("want a JSON list of containers, like [{\"container\":\"app\",\"readinessProbe\":{...}}], not %s", jsonKind(v))
	}
	return parseProbeList(v, "app_probes")
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case string:
		return "a string"
	case nil:
		return "null"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// parseProbeURL turns a flag shorthand into a probe action:
//
//	http://host:port/path  https://host:port/path  tcp://host:port
//	grpc://host:port[/service]  exec:command args
func parseProbeURL(kind healthz.Kind, raw string) (healthz.Spec, error) {
	s := healthz.Spec{Kind: kind}
	if cmd, ok := strings.CutPrefix(raw, "exec:"); ok {
		s.Exec = &healthz.ExecAction{Command: strings.Fields(cmd)}
		return s, nil
	}
	shown := shownProbeURL(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return s, fmt.Errorf("%q is not a probe URL: %v", shown, errors.Unwrap(err))
	}
	host, port := u.Hostname(), u.Port()
	p, err := strconv.Atoi(port)
	if err != nil && u.Scheme != "exec" {
		return s, fmt.Errorf("%q: give a port, as in http://127.0.0.1:3000/healthz", shown)
	}
	if host == "localhost" || host == "" {
		host = "127.0.0.1"
	}
	switch u.Scheme {
	case "http", "https":
		path := u.EscapedPath()
		if u.RawQuery != "" {
			path += "?" + u.RawQuery
		}
		s.HTTPGet = &healthz.HTTPGetAction{Scheme: u.Scheme, Host: host, Port: p, Path: path}
	case "tcp":
		s.TCPSocket = &healthz.TCPSocketAction{Host: host, Port: p}
	case "grpc":
		s.GRPC = &healthz.GRPCAction{Host: host, Port: p, Service: strings.TrimPrefix(u.Path, "/")}
	default:
		return s, fmt.Errorf("%q: scheme %q is not one of http, https, tcp, grpc or exec:", shown, u.Scheme)
	}
	if net.ParseIP(host) == nil && strings.ContainsAny(host, " /") {
		return s, fmt.Errorf("%q: host %q is not a host", shown, host)
	}
	return s, nil
}

// shownProbeURL is a probe URL as errors and logs show it: without its
// query (it may carry a token) and without user and password.
func shownProbeURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
		return u.String()
	}
	before, _, _ := strings.Cut(raw, "?")
	return redactURLs(before)
}

// probeSpecs builds every probe from the flag shorthands and the YAML list,
// and validates them with the same rules the runner uses.
func (l *loaded) probeSpecs() ([]healthz.Spec, error) {
	c := &l.cfg
	specs := append(append([]healthz.Spec(nil), l.fileProbes...), l.appProbes...)
	for _, k := range []struct {
		kind healthz.Kind
		urls []string
		flag string
	}{{healthz.Readiness, c.Probe.Readiness, "--readiness"}, {healthz.Liveness, c.Probe.Liveness, "--liveness"}, {healthz.Startup, c.Probe.Startup, "--startup"}} {
		for _, raw := range k.urls {
			s, err := parseProbeURL(k.kind, raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k.flag, err)
			}
			s.Period, s.Timeout = c.Probe.Period, c.Probe.Timeout
			s.FailureThreshold, s.SuccessThreshold = c.Probe.FailureThreshold, c.Probe.SuccessThreshold
			if k.kind != healthz.Readiness {
				s.SuccessThreshold = 1 // as Kubernetes requires; --probe-success-threshold is for readiness
			}
			specs = append(specs, s)
		}
	}
	if c.Probe.DefaultReadiness == "upstream" && !slices.ContainsFunc(specs, func(s healthz.Spec) bool { return s.Kind == healthz.Readiness }) {
		specs = append(specs, upstreamChecks(l.listeners)...)
	}
	if _, err := healthz.NewSet(specs, healthz.SetOptions{}); err != nil {
		return nil, err
	}
	return specs, nil
}

// The timing of the implicit upstream check: look every 50ms until the app
// first accepts (readiness follows an app that takes a while to listen), then
// every second; three failures in a row fail readiness.
const (
	upstreamCheckStartPeriod = 50 * time.Millisecond
	upstreamCheckPeriod      = time.Second
)

// upstreamChecks is readiness when none is configured: a connect to each
// distinct upstream (TCP, or its unix socket), as Knative's queue-proxy does,
// so that /readyz never says ready before the app listens. Named "upstream"
// ("upstream-<listener>" when listeners have different upstreams).
func upstreamChecks(listeners []listenerSpec) []healthz.Spec {
	var seen []string
	var specs []healthz.Spec
	for _, pl := range listeners {
		if slices.Contains(seen, pl.Upstream) {
			continue
		}
		seen = append(seen, pl.Upstream)
		up, err := proxy.ParseUpstream(pl.Upstream)
		if err != nil {
			continue // validated before; a bug
		}
		action := &healthz.TCPSocketAction{Unix: up.Address}
		if up.Network != "unix" {
			host, port, err := proxy.SplitHostPort(up.Address)
			if err != nil {
				continue
			}
			if host == "" {
				host = "127.0.0.1"
			}
			action = &healthz.TCPSocketAction{Host: host, Port: port}
		}
		specs = append(specs, healthz.Spec{Name: "upstream-" + pl.Name, Container: "app", Kind: healthz.Readiness,
			TCPSocket: action, Implicit: true,
			Period: upstreamCheckPeriod, StartPeriod: upstreamCheckStartPeriod, Timeout: time.Second,
			SuccessThreshold: 1, FailureThreshold: 3})
	}
	if len(specs) == 1 {
		specs[0].Name = "upstream"
	}
	return specs
}
