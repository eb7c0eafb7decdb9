package kubernetes_test

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tidegate/tidegate/deploy/inject"
)

// checkExample: a plain app, written as if tidegate did not exist, in a
// namespace labelled for injection, reached through a named target port.
func checkExample(t *testing.T, objs []object) {
	ns := one[*corev1.Namespace](t, objs)
	if ns.Labels[inject.LabelNamespace] != "enabled" {
		t.Errorf("Namespace %s labels %v: want %s=enabled", ns.Name, ns.Labels, inject.LabelNamespace)
	}
	for _, o := range objs {
		if o.gvk.Kind != "Namespace" && o.obj.GetNamespace() != ns.Name {
			t.Errorf("%s is not in the labelled namespace %s", o, ns.Name)
		}
	}
	if n := len(all[*corev1.Secret](objs)); n != 0 {
		t.Errorf("%d Secrets: the injector makes the drain token; the example needs none", n)
	}

	d := one[*appsv1.Deployment](t, objs)
	pod := d.Spec.Template
	if _, ok := pod.Annotations[inject.AnnotationStatus]; ok {
		t.Errorf("Deployment %s is already injected (%s): the example is the input", d.Name, inject.AnnotationStatus)
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == inject.SidecarName {
			t.Errorf("Deployment %s has a hand-written %s container: the injector adds it", d.Name, c.Name)
		}
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("Deployment %s has %d containers: want the app alone", d.Name, len(pod.Spec.Containers))
	}
	app := pod.Spec.Containers[0]

	// The Service targets the app's port by name: the name the injector
	// moves to tidegate.
	svc := one[*corev1.Service](t, objs)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selector %v does not select the app's pods %v", svc.Name, svc.Spec.Selector, pod.Labels)
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort.Type != intstr.String {
			t.Errorf("Service %s port %s targets %s: want a port name, which the injector moves to tidegate", svc.Name, p.Name, p.TargetPort.String())
			continue
		}
		if containerPort(t, app, p.TargetPort) == 0 {
			t.Errorf("Service %s port %s targets %q, which container %s does not have", svc.Name, p.Name, p.TargetPort.StrVal, app.Name)
		}
	}

	// The app's own probes, which the injector hands to tidegate.
	for name, p := range map[string]*corev1.Probe{"startupProbe": app.StartupProbe, "readinessProbe": app.ReadinessProbe, "livenessProbe": app.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("container %s has no httpGet %s", app.Name, name)
			continue
		}
		if containerPort(t, app, p.HTTPGet.Port) == 0 {
			t.Errorf("container %s %s port %s is not one of its ports", app.Name, name, p.HTTPGet.Port.String())
		}
	}

	// Long enough for the default drain: drain timeout + app stop time +
	// the injector's 5s margin, so the injector need not raise it.
	def := inject.Params{}.WithDefaults()
	want := int64((def.DrainTimeout + def.AppStopTimeout + 5*time.Second) / time.Second)
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g < want {
		t.Errorf("Deployment %s terminationGracePeriodSeconds %s: want at least %d", d.Name, fmtPtr(g), want)
	}
}
