package inject

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func TestPolicy(t *testing.T) {
	broken := strings.Replace(pod("", ""), "containers:", "containers: []", 1) // not injectable
	for _, tc := range []struct {
		name     string
		doc      string
		policy   Policy
		injected bool
		skipped  string
	}{
		{"unless refused, no annotation", pod("", appContainer), InjectUnlessRefused, true, ""},
		{"unless refused, refused", pod("    tidegate.io/inject: \"false\"\n", appContainer), InjectUnlessRefused, false, SkipRefused},
		{"if asked, no annotation", pod("", appContainer), InjectIfAsked, false, SkipNotAsked},
		{"if asked, asked", pod("    tidegate.io/inject: \"true\"\n", appContainer), InjectIfAsked, true, ""},
		{"if asked, refused", pod("    tidegate.io/inject: \"false\"\n", appContainer), InjectIfAsked, false, SkipRefused},
		{"a pod that did not ask is not checked", broken, InjectIfAsked, false, SkipNotAsked},
		{"a refusing pod is not checked", pod("    tidegate.io/inject: \"false\"\n    tidegate.io/mode: bogus\n", ""), InjectUnlessRefused, false, SkipRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := yaml.YAMLToJSON([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			out, res, err := Inject(doc, tc.policy, testParams())
			if err != nil {
				t.Fatal(err)
			}
			if res.Injected != tc.injected || res.Skipped != tc.skipped {
				t.Fatalf("got %+v, want injected %v skipped %q", res, tc.injected, tc.skipped)
			}
			if !tc.injected && !bytes.Equal(out, doc) {
				t.Fatalf("skipped but changed:\n%s", out)
			}
		})
	}
}

// TestInjectPodTyped uses the typed API as the webhook does: the pod
// changes in place, Params are not changed by a pod's overrides, and the
// default token is random.
func TestInjectPodTyped(t *testing.T) {
	newPod := func() (*metav1.ObjectMeta, *corev1.PodSpec) {
		return &metav1.ObjectMeta{GenerateName: "web-", Namespace: "shop", Annotations: map[string]string{AnnotationCPURequest: "0", AnnotationMemoryLimit: "256Mi"}},
			&corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "a", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}
	}
	p := Params{Mode: Classic, Resources: &corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
	}}
	res0 := p.Resources.DeepCopy()
	tokens := map[string]bool{}
	for range 2 {
		meta, spec := newPod()
		res, err := InjectPod(meta, spec, InjectUnlessRefused, p)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Injected || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "raised from 30 to 45") {
			t.Fatalf("result %+v", res)
		}
		if len(spec.Containers) != 2 || spec.Containers[1].Name != SidecarName || spec.InitContainers != nil {
			t.Fatalf("classic: containers %+v", spec.Containers)
		}
		sc := spec.Containers[1]
		if sc.RestartPolicy != nil {
			t.Fatal("classic sidecar with a restartPolicy")
		}
		if _, ok := sc.Resources.Requests[corev1.ResourceCPU]; ok {
			t.Fatalf("cpu-request 0 did not remove the request: %v", sc.Resources)
		}
		if q := sc.Resources.Limits[corev1.ResourceMemory]; q.String() != "256Mi" {
			t.Fatalf("memory limit %s", q.String())
		}
		tok := sc.Env[0].Value
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(tok) {
			t.Fatalf("token %q", tok)
		}
		h := spec.Containers[0].Lifecycle.PreStop.HTTPGet.HTTPHeaders
		if len(h) != 1 || h[0].Name != DrainTokenHeader || h[0].Value != tok {
			t.Fatalf("preStop headers %v, token %s", h, tok)
		}
		tokens[tok] = true
		ok, err := UninjectPod(meta, spec)
		if err != nil || !ok {
			t.Fatalf("uninject: %v %v", ok, err)
		}
		m0, s0 := newPod()
		if len(spec.Containers) != 1 || spec.Containers[0].Lifecycle != nil || spec.TerminationGracePeriodSeconds != nil ||
			len(meta.Annotations) != len(m0.Annotations) || spec.Containers[0].Ports[0] != s0.Containers[0].Ports[0] {
			t.Fatalf("uninjected pod differs: %+v %+v", meta, spec)
		}
	}
	if len(tokens) != 2 {
		t.Fatal("two injections with the default token source got the same token")
	}
	if p.Resources.Requests.Cpu().String() != res0.Requests.Cpu().String() || p.Resources.Limits.Memory().String() != res0.Limits.Memory().String() {
		t.Fatalf("a pod's overrides changed Params.Resources: %v", p.Resources)
	}
}

// TestPassThrough: kinds without pods come back byte for byte, even with
// fields the injector does not know.
func TestPassThrough(t *testing.T) {
	for _, doc := range []string{
		`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"b"},"whatever":1}`,
		`{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"i"}}`,
		`{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"p"}}`,
		`{"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler","metadata":{"name":"h"}}`,
		`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"r"}}`,
	} {
		out, res, err := Inject([]byte(doc), InjectUnlessRefused, Params{})
		if err != nil || res.Injected || string(out) != doc {
			t.Errorf("%s: %v %+v %s", doc, err, res, out)
		}
		back, changed, err := Uninject([]byte(doc))
		if err != nil || changed || string(back) != doc {
			t.Errorf("uninject %s: %v %v %s", doc, err, changed, back)
		}
	}
}
