package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/tidegate/tidegate/deploy/inject"
)

// frontedPod is an injected pod template of the output: its labels, its
// namespace, the app port tidegate fronts and the sidecar's public port.
type frontedPod struct {
	doc       *document
	namespace string
	labels    map[string]string
	appPort   int    // the number from the sidecar's --upstream
	appNamed  bool   // the app's port had a name (now tidegate-app)
	public    string // the sidecar's public port name
}

// bypassWarnings names every v1 Service of the output whose port targets,
// by number, a port tidegate fronts in a pod it selects: that traffic goes
// to the app directly, around tidegate.
func bypassWarnings(docs []*document) []string {
	var pods []frontedPod
	for _, d := range docs {
		var obj map[string]any
		if json.Unmarshal(d.json, &obj) != nil {
			continue
		}
		ns := str(dig(obj, "metadata", "namespace"))
		for _, t := range podTemplates(obj) {
			if fp, ok := fronted(t); ok {
				fp.doc = d
				fp.namespace = ns
				if tns := str(dig(t, "metadata", "namespace")); tns != "" {
					fp.namespace = tns
				}
				pods = append(pods, fp)
			}
		}
	}
	var out []string
	for _, d := range docs {
		var svc struct {
			APIVersion, Kind string
			Metadata         struct{ Namespace string }
			Spec             struct {
				Selector map[string]string
				Ports    []struct {
					Name       string
					Port       int
					TargetPort json.RawMessage `json:"targetPort"`
				}
			}
		}
		if json.Unmarshal(d.json, &svc) != nil || svc.APIVersion != "v1" || svc.Kind != "Service" || len(svc.Spec.Selector) == 0 {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			target := sp.Port // an absent targetPort is the port's number
			if len(sp.TargetPort) > 0 {
				n, err := strconv.Atoi(string(sp.TargetPort))
				if err != nil {
					continue // a name (quoted): resolved per pod, fine
				}
				target = n
			}
			for _, fp := range pods {
				if fp.appPort != target || !sameNamespace(svc.Metadata.Namespace, fp.namespace) || !selects(svc.Spec.Selector, fp.labels) {
					continue
				}
				port := strconv.Itoa(sp.Port)
				if sp.Name != "" {
					port = sp.Name + " (" + port + ")"
				}
				fix := fmt.Sprintf("set targetPort: %s (the app port's name, which tidegate now holds: old pods resolve it to the app, injected ones to tidegate)", fp.public)
				if !fp.appNamed {
					fix = "name the app's port, roll that out with the Service's targetPort set to the name, then inject (a named targetPort resolves per pod, so old and new pods both work mid-rollout)"
				}
				out = append(out, fmt.Sprintf("%s: port %s targets port number %d, which tidegate fronts in %s: traffic to this Service bypasses tidegate (no drain, no health gating). Fix: %s; see docs/kubernetes.md, \"numbered target ports\"",
					d.where(), port, target, fp.doc.where(), fix))
			}
		}
	}
	return out
}

// podTemplates returns the pod templates (or the pod) of obj: metadata and
// spec, for every kind inject knows, and the items of a List.
func podTemplates(obj map[string]any) []map[string]any {
	switch str(obj["kind"]) {
	case "List":
		var out []map[string]any
		items, _ := obj["items"].([]any)
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				out = append(out, podTemplates(m)...)
			}
		}
		return out
	case "Pod":
		return []map[string]any{obj}
	case "CronJob":
		if t, ok := dig(obj, "spec", "jobTemplate", "spec", "template").(map[string]any); ok {
			return []map[string]any{t}
		}
	default:
		if t, ok := dig(obj, "spec", "template").(map[string]any); ok {
			return []map[string]any{t}
		}
	}
	return nil
}

// fronted finds the sidecar in a pod template and what it fronts.
func fronted(t map[string]any) (frontedPod, bool) {
	var fp frontedPod
	var sidecar map[string]any
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := dig(t, "spec", list).([]any)
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok && str(m["name"]) == inject.SidecarName {
				sidecar = m
			}
		}
	}
	if sidecar == nil {
		return fp, false
	}
	args, _ := sidecar["args"].([]any)
	for _, a := range args {
		if up, ok := strings.CutPrefix(str(a), "--upstream="); ok {
			if i := strings.LastIndexByte(up, ':'); i >= 0 {
				fp.appPort, _ = strconv.Atoi(up[i+1:])
			}
		}
	}
	if fp.appPort == 0 {
		return fp, false
	}
	ports, _ := sidecar["ports"].([]any)
	for _, p := range ports {
		if m, ok := p.(map[string]any); ok {
			if n := str(m["name"]); n != inject.HealthPortName && n != inject.MetricsPortName && fp.public == "" {
				fp.public = n
			}
		}
	}
	cs, _ := dig(t, "spec", "containers").([]any)
	for _, c := range cs {
		m, _ := c.(map[string]any)
		ps, _ := m["ports"].([]any)
		for _, p := range ps {
			pm, _ := p.(map[string]any)
			if str(pm["name"]) == inject.AppPortName {
				fp.appNamed = true
			}
		}
	}
	fp.labels = map[string]string{}
	if ls, ok := dig(t, "metadata", "labels").(map[string]any); ok {
		for k, v := range ls {
			fp.labels[k] = str(v)
		}
	}
	return fp, true
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// sameNamespace: an empty namespace is whichever one kubectl applies to.
func sameNamespace(a, b string) bool { return a == b || a == "" || b == "" }

func dig(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
