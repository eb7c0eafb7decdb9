package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxListDepth bounds how deep v1 Lists nest.
const maxListDepth = 4

// injectedKinds are the kinds Inject changes: apiVersion, kind, and a new
// empty object of the kind.
func injectedKinds() []struct {
	apiVersion, kind string
	new              func() any
} {
	return []struct {
		apiVersion, kind string
		new              func() any
	}{
		{"v1", "Pod", func() any { return &corev1.Pod{} }},
		{"apps/v1", "Deployment", func() any { return &appsv1.Deployment{} }},
		{"apps/v1", "StatefulSet", func() any { return &appsv1.StatefulSet{} }},
		{"apps/v1", "DaemonSet", func() any { return &appsv1.DaemonSet{} }},
		{"apps/v1", "ReplicaSet", func() any { return &appsv1.ReplicaSet{} }},
		{"v1", "ReplicationController", func() any { return &corev1.ReplicationController{} }},
		{"batch/v1", "Job", func() any { return &batchv1.Job{} }},
		{"batch/v1", "CronJob", func() any { return &batchv1.CronJob{} }},
	}
}

// passedKinds are kinds that carry no pod, by API group ("" is core) and
// kind: Inject and Uninject give them back unchanged, in any version.
func passedKinds() map[string][]string {
	return map[string][]string{
		"": {"Service", "ConfigMap", "Secret", "ServiceAccount", "Namespace", "Endpoints", "LimitRange",
			"ResourceQuota", "PersistentVolumeClaim", "PersistentVolume", "Event"},
		"networking.k8s.io":            {"Ingress", "IngressClass", "NetworkPolicy"},
		"gateway.networking.k8s.io":    {"Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "UDPRoute", "ReferenceGrant"},
		"discovery.k8s.io":             {"EndpointSlice"},
		"policy":                       {"PodDisruptionBudget"},
		"autoscaling":                  {"HorizontalPodAutoscaler"},
		"rbac.authorization.k8s.io":    {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"},
		"admissionregistration.k8s.io": {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"},
		"apiextensions.k8s.io":         {"CustomResourceDefinition"},
		"storage.k8s.io":               {"StorageClass"},
		"scheduling.k8s.io":            {"PriorityClass"},
		"coordination.k8s.io":          {"Lease"},
		"cert-manager.io":              {"Certificate", "Issuer", "ClusterIssuer"},
		"monitoring.coreos.com":        {"ServiceMonitor", "PodMonitor", "PrometheusRule"},
	}
}

func isPassed(apiVersion, kind string) bool {
	group := ""
	if i := strings.LastIndex(apiVersion, "/"); i >= 0 {
		group = apiVersion[:i]
	}
	for _, k := range passedKinds()[group] {
		if k == kind {
			return true
		}
	}
	return false
}

// header is what every object has: enough to pick its type and name it.
type header struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
}

// readHeader reads the apiVersion, kind and name of doc. A metadata that
// does not decode leaves the name empty: strict decoding reports it.
func readHeader(doc []byte) (header, error) {
	var h header
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(doc, &fields); err != nil || fields == nil {
		if err == nil {
			err = errors.New("null")
		}
		return h, &Error{Object: "document", Msg: fmt.Sprintf("not a JSON object (%v): give one Kubernetes object, or a v1 List", err)}
	}
	_ = json.Unmarshal(fields["metadata"], &h.Metadata)
	if json.Unmarshal(fields["apiVersion"], &h.APIVersion) != nil || json.Unmarshal(fields["kind"], &h.Kind) != nil || h.APIVersion == "" || h.Kind == "" {
		return h, &Error{Object: objectName("object", &h.Metadata), Msg: "no apiVersion or kind string: give a Kubernetes object with both, e.g. apiVersion: apps/v1, kind: Deployment"}
	}
	return h, nil
}

// podOf returns the object's own metadata, its pod's metadata and spec
// (nil when a ReplicationController has no template) and the path from the
// object to the pod ("" for a Pod).
func podOf(obj any) (own, meta *metav1.ObjectMeta, spec *corev1.PodSpec, path string) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &o.ObjectMeta, &o.ObjectMeta, &o.Spec, ""
	case *appsv1.Deployment:
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *appsv1.StatefulSet:
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *appsv1.DaemonSet:
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *appsv1.ReplicaSet:
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *corev1.ReplicationController:
		if o.Spec.Template == nil {
			return &o.ObjectMeta, nil, nil, "spec.template"
		}
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *batchv1.Job:
		return &o.ObjectMeta, &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, "spec.template."
	case *batchv1.CronJob:
		return &o.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec, "spec.jobTemplate.spec.template."
	}
	return nil, nil, nil, ""
}

// Inject injects the pod of one JSON document: a Pod, apps/v1 Deployment,
// StatefulSet, DaemonSet or ReplicaSet, v1 ReplicationController, batch/v1
// Job or CronJob, or a v1 List of them. Kinds that carry no pod (Service,
// ConfigMap, …) come back unchanged, byte for byte, as does an object
// Inject leaves alone (Result.Skipped says why). The input is decoded
// strictly (an unknown or miscased field is an error); the output is the
// input with only what injection changed, no defaults added. Warnings start
// with the object's name. Every error is an *Error.
func Inject(doc []byte, policy Policy, p Params) ([]byte, Result, error) {
	var res Result
	out, err := transform(doc, 0, &res, func(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (Result, error) {
		return InjectPod(meta, spec, policy, p)
	})
	return out, res, err
}

// Uninject takes the sidecar away from one JSON document Inject made,
// restoring the original (semantically: the same object, not necessarily
// the same bytes). It reports whether anything changed; kinds and objects
// without the sidecar come back unchanged, byte for byte.
func Uninject(doc []byte) ([]byte, bool, error) {
	var res Result
	out, err := transform(doc, 0, &res, func(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (Result, error) {
		ok, err := UninjectPod(meta, spec)
		return Result{Injected: ok}, err
	})
	return out, res.Injected, err
}

type podFunc func(meta *metav1.ObjectMeta, spec *corev1.PodSpec) (Result, error)

// transform applies f to the pod of doc and returns doc with what f changed,
// adding f's result to res.
func transform(doc []byte, depth int, res *Result, f podFunc) ([]byte, error) {
	h, err := readHeader(doc)
	if err != nil {
		return nil, err
	}
	name := objectName(h.Kind, &h.Metadata)
	if isPassed(h.APIVersion, h.Kind) {
		return doc, nil
	}
	if h.APIVersion == "v1" && h.Kind == "List" {
		return transformList(doc, name, depth, res, f)
	}
	var obj any
	for _, k := range injectedKinds() {
		if k.apiVersion == h.APIVersion && k.kind == h.Kind {
			obj = k.new()
		}
	}
	if obj == nil {
		return nil, &Error{Object: name, Field: "kind", Msg: unknownKind(h.APIVersion, h.Kind)}
	}
	orig, err := decodeStrict(doc, obj, name)
	if err != nil {
		return nil, err
	}
	_, meta, spec, path := podOf(obj)
	if spec == nil {
		return nil, &Error{Object: name, Field: path, Msg: "no pod template: give one"}
	}
	before, err := canonical(obj)
	if err != nil {
		return nil, &Error{Object: name, Msg: err.Error()}
	}
	r, err := f(meta, spec)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Object = name
			if e.Field != "" {
				e.Field = path + e.Field
			}
		}
		return nil, err
	}
	for _, w := range r.Warnings {
		res.Warnings = append(res.Warnings, name+": "+w)
	}
	if !r.Injected {
		if res.Skipped == "" && !res.Injected {
			res.Skipped = r.Skipped
		}
		return doc, nil
	}
	res.Injected, res.Skipped = true, ""
	after, err := canonical(obj)
	if err != nil {
		return nil, &Error{Object: name, Msg: err.Error()}
	}
	out, err := json.Marshal(merge(orig, before, after))
	if err != nil {
		return nil, &Error{Object: name, Msg: err.Error()}
	}
	return out, nil
}

func unknownKind(apiVersion, kind string) string {
	var injected []string
	for _, k := range injectedKinds() {
		injected = append(injected, k.apiVersion+" "+k.kind)
	}
	return fmt.Sprintf("%s %s is not a kind the injector knows: it injects %s and v1 List, and passes through kinds without pods (Service, ConfigMap, Secret, Ingress, …); inject this object's pod template another way, or leave it out of the input",
		apiVersion, kind, strings.Join(injected, ", "))
}

// transformList applies transform to each item of a v1 List.
func transformList(doc []byte, name string, depth int, res *Result, f podFunc) ([]byte, error) {
	if depth >= maxListDepth {
		return nil, &Error{Object: name, Field: "items", Msg: fmt.Sprintf("Lists nested deeper than %d: flatten them", maxListDepth)}
	}
	var list corev1.List
	orig, err := decodeStrict(doc, &list, name)
	if err != nil {
		return nil, err
	}
	changed := false
	items := make([]any, len(list.Items))
	for i, it := range list.Items {
		out, err := transform(it.Raw, depth+1, res, f)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(out, it.Raw) {
			changed = true
		}
		if items[i], err = decodeGeneric(out); err != nil {
			return nil, &Error{Object: name, Field: fmt.Sprintf("items[%d]", i), Msg: err.Error()}
		}
	}
	if !changed {
		return doc, nil
	}
	m, ok := orig.(map[string]any)
	if !ok {
		return nil, &Error{Object: name, Msg: "not a JSON object"}
	}
	m["items"] = items
	return json.Marshal(m)
}

// decodeStrict decodes doc into obj, failing on a field obj's type does not
// have (names are case-sensitive, as the API server has them) and on a value
// of the wrong type. It returns doc decoded generically.
func decodeStrict(doc []byte, obj any, name string) (any, error) {
	orig, err := decodeGeneric(doc)
	if err != nil {
		return nil, &Error{Object: name, Msg: fmt.Sprintf("not JSON: %v", err)}
	}
	if err := checkFields(orig, reflect.TypeOf(obj), ""); err != nil {
		err.Object = name
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, &Error{Object: name, Msg: fmt.Sprintf("not a valid %s: %v", reflect.TypeOf(obj).Elem().Name(), err)}
	}
	return orig, nil
}

// decodeGeneric decodes one JSON value, numbers kept as written, and fails
// on anything after it.
func decodeGeneric(doc []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("more after the object: give one object per document")
	}
	return v, nil
}

// canonical is obj as the API types write it, decoded generically.
func canonical(obj any) (any, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return decodeGeneric(b)
}
