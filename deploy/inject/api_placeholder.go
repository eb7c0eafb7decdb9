package inject

// PLACEHOLDER (drop on merge): a minimal stand-in for the deploy/inject API
// of the contract, so that deploy/webhook and cmd/tidegate-inject compile
// and their plumbing can be tested before the real package lands. It adds
// a sidecar init container and renames the app port, nothing more.

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Policy says which pods are injected.
type Policy int

const (
	InjectUnlessRefused Policy = iota
	InjectIfAsked
)

// Result is what InjectPod did.
type Result struct {
	Injected bool
	Skipped  string
	Warnings []string
}

// Error is every error Inject returns.
type Error struct {
	Object, Field, Msg string
	Explicit           bool
}

func (e *Error) Error() string { return e.Object + ": " + e.Field + ": " + e.Msg }

type placeholderStatus struct {
	Port  string `json:"port"`
	Grace *int64 `json:"grace"`
}

// InjectPod injects in place.
func InjectPod(meta *metav1.ObjectMeta, spec *corev1.PodSpec, policy Policy, p Params) (Result, error) {
	explicit := false
	for k := range meta.Annotations {
		if strings.HasPrefix(k, "tidegate.io/") {
			explicit = true
		}
	}
	obj := "Pod " + meta.Namespace + "/" + meta.Name
	switch {
	case meta.Annotations[AnnotationStatus] != "":
		return Result{Skipped: "already-injected"}, nil
	case meta.Annotations[AnnotationInject] == "false":
		return Result{Skipped: "refused"}, nil
	case policy == InjectIfAsked && meta.Annotations[AnnotationInject] != "true":
		return Result{Skipped: "not-asked"}, nil
	}
	if len(spec.Containers) == 0 {
		return Result{}, &Error{Object: obj, Field: "spec.containers", Msg: "no containers: add one", Explicit: explicit}
	}
	for _, c := range spec.Containers {
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.Type != 1 {
				continue
			}
			found := false
			for _, cp := range c.Ports {
				found = found || cp.Name == pr.HTTPGet.Port.StrVal
			}
			if !found {
				return Result{}, &Error{Object: obj, Field: "spec.containers[" + c.Name + "].probe.httpGet.port", Msg: fmt.Sprintf("port %q is not a port of the container: name one", pr.HTTPGet.Port.StrVal), Explicit: explicit}
			}
		}
	}
	p = p.WithDefaults()
	app := &spec.Containers[0]
	want := meta.Annotations[AnnotationAppPort]
	if want == "" {
		want = "http"
	}
	idx := -1
	for i, cp := range app.Ports {
		if cp.Name == want || strconv.Itoa(int(cp.ContainerPort)) == want {
			idx = i
		}
	}
	if idx < 0 {
		return Result{}, &Error{Object: obj, Field: "spec.containers[" + app.Name + "].ports", Msg: fmt.Sprintf("no port %q: name the port tidegate fronts", want), Explicit: explicit}
	}
	tok, err := p.Token()
	if err != nil {
		return Result{}, err
	}
	st := placeholderStatus{Port: app.Ports[idx].Name, Grace: spec.TerminationGracePeriodSeconds}
	pub := UnnamedPortName
	if st.Port != "" {
		pub = st.Port
		app.Ports[idx].Name = AppPortName
	}
	always := corev1.ContainerRestartPolicyAlways
	spec.InitContainers = append(spec.InitContainers, corev1.Container{
		Name: SidecarName, Image: p.Image, RestartPolicy: &always,
		Args:  []string{"run", fmt.Sprintf("--upstream=127.0.0.1:%d", app.Ports[idx].ContainerPort)},
		Env:   []corev1.EnvVar{{Name: DrainTokenEnv, Value: tok}},
		Ports: []corev1.ContainerPort{{Name: pub, ContainerPort: p.ListenPort}},
	})
	var res Result
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 45 {
		g := int64(45)
		spec.TerminationGracePeriodSeconds = &g
		res.Warnings = append(res.Warnings, "terminationGracePeriodSeconds raised to 45")
	}
	b, _ := json.Marshal(st)
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	meta.Annotations[AnnotationStatus] = string(b)
	res.Injected = true
	return res, nil
}

// UninjectPod undoes InjectPod.
func UninjectPod(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error) {
	raw, ok := meta.Annotations[AnnotationStatus]
	if !ok {
		return false, nil
	}
	var st placeholderStatus
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return false, &Error{Object: "Pod " + meta.Name, Field: "metadata.annotations", Msg: err.Error()}
	}
	delete(meta.Annotations, AnnotationStatus)
	if len(meta.Annotations) == 0 {
		meta.Annotations = nil
	}
	spec.InitContainers = spec.InitContainers[:len(spec.InitContainers)-1]
	if len(spec.InitContainers) == 0 {
		spec.InitContainers = nil
	}
	for i := range spec.Containers[0].Ports {
		if spec.Containers[0].Ports[i].Name == AppPortName {
			spec.Containers[0].Ports[i].Name = st.Port
		}
	}
	spec.TerminationGracePeriodSeconds = st.Grace
	return true, nil
}

// templatePath is where each kind keeps its pod template.
var templatePath = map[string][]string{
	"Deployment": {"spec", "template"}, "StatefulSet": {"spec", "template"}, "DaemonSet": {"spec", "template"},
	"ReplicaSet": {"spec", "template"}, "ReplicationController": {"spec", "template"}, "Job": {"spec", "template"},
	"CronJob": {"spec", "jobTemplate", "spec", "template"},
}

func walk(doc []byte, f func(kind string, meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error)) ([]byte, bool, error) {
	var obj map[string]any
	if err := json.Unmarshal(doc, &obj); err != nil {
		return nil, false, &Error{Object: "document", Msg: err.Error()}
	}
	kind, _ := obj["kind"].(string)
	var target any
	var set func([]byte) error
	if kind == "Pod" {
		target = obj
		set = func(b []byte) error { return json.Unmarshal(b, &obj) }
	} else if path, ok := templatePath[kind]; ok {
		m := obj
		for _, k := range path[:len(path)-1] {
			m, _ = m[k].(map[string]any)
		}
		if m == nil {
			return nil, false, &Error{Object: kind, Field: strings.Join(path, "."), Msg: "missing"}
		}
		last := path[len(path)-1]
		target = m[last]
		set = func(b []byte) error {
			var v any
			err := json.Unmarshal(b, &v)
			m[last] = v
			return err
		}
	} else {
		return doc, false, nil
	}
	b, _ := json.Marshal(target)
	var t corev1.PodTemplateSpec
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, false, &Error{Object: kind, Msg: err.Error()}
	}
	changed, err := f(kind, &t.ObjectMeta, &t.Spec)
	if err != nil || !changed {
		return doc, false, err
	}
	b, _ = json.Marshal(t)
	if kind == "Pod" {
		obj = map[string]any{"apiVersion": obj["apiVersion"], "kind": kind}
	}
	if err := set(b); err != nil {
		return nil, false, err
	}
	out, err := json.Marshal(obj)
	return out, true, err
}

// Inject injects one JSON document.
func Inject(doc []byte, policy Policy, p Params) ([]byte, Result, error) {
	var res Result
	out, _, err := walk(doc, func(kind string, meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error) {
		var err error
		res, err = InjectPod(meta, spec, policy, p)
		if e, ok := err.(*Error); ok {
			e.Object = kind + e.Object[len("Pod"):]
		}
		return res.Injected, err
	})
	return out, res, err
}

// Uninject undoes Inject on one JSON document.
func Uninject(doc []byte) ([]byte, bool, error) {
	return walk(doc, func(_ string, meta *metav1.ObjectMeta, spec *corev1.PodSpec) (bool, error) {
		return UninjectPod(meta, spec)
	})
}
