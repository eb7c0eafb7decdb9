package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tidegate/tidegate/deploy/inject"
	"github.com/tidegate/tidegate/deploy/webhook"
	"github.com/tidegate/tidegate/test/kubeenv"
)

// injector is tidegate's webhook (deploy/webhook) served over TLS on
// 127.0.0.1, registered with the MutatingWebhookConfiguration that
// deploy/kubernetes/webhook/base ships (rendered by kubectl kustomize), its
// service reference replaced by a URL.
type injector struct {
	stop   context.CancelFunc
	served chan error
}

// startInjector serves the webhook until stop; it returns the URL base.
func startInjector(t *testing.T) (*injector, string, []byte) {
	t.Helper()
	sc := kubeenv.NewServingCert(t, "127.0.0.1")
	srv, err := webhook.New(webhook.Options{CertFile: sc.CertFile, KeyFile: sc.KeyFile,
		Log: zap.NewNop(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln := kubeenv.Listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	inj := &injector{stop: cancel, served: make(chan error, 1)}
	go func() { inj.served <- srv.Serve(ctx, ln) }()
	t.Cleanup(inj.Stop)
	return inj, "https://" + ln.Addr().String(), sc.CABundle
}

// Stop takes the webhook down and waits for Serve to return. Idempotent.
func (i *injector) Stop() {
	i.stop()
	if err, ok := <-i.served; ok {
		close(i.served)
		if err != nil {
			panic(fmt.Sprintf("webhook Serve: %v", err))
		}
	}
}

// shippedWebhookConfig is the MutatingWebhookConfiguration of the
// kustomize base, each webhook pointed at base+its service path.
func shippedWebhookConfig(t *testing.T, c *kubeenv.Cluster, base string, ca []byte) admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	var found *admissionregistrationv1.MutatingWebhookConfiguration
	for _, doc := range renderKustomize(t, "../../deploy/kubernetes/webhook/base") {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		if tm.Kind != "MutatingWebhookConfiguration" {
			continue
		}
		var cfg admissionregistrationv1.MutatingWebhookConfiguration
		if err := yaml.UnmarshalStrict(doc, &cfg); err != nil {
			t.Fatal(err)
		}
		found = &cfg
	}
	if found == nil {
		t.Fatal("deploy/kubernetes/webhook/base renders no MutatingWebhookConfiguration")
	}
	cfg := *found
	cfg.ObjectMeta = metav1.ObjectMeta{Name: cfg.Name}
	for i := range cfg.Webhooks {
		wh := &cfg.Webhooks[i]
		if wh.ClientConfig.Service == nil || wh.ClientConfig.Service.Path == nil {
			t.Fatalf("webhook %s: want a service reference with a path, got %+v", wh.Name, wh.ClientConfig)
		}
		url := base + *wh.ClientConfig.Service.Path
		wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: ca}
	}
	return cfg
}

func deployment(name string, annotations map[string]string) appsv1.Deployment {
	replicas := int32(2)
	labels := map[string]string{"app": name}
	return appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "app",
					Image: "example.com/app:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
						HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intOrName("http")}}},
				}}},
			},
		},
	}
}

// sidecarOf returns the injected tidegate container of pod, or nil.
func sidecarOf(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == inject.SidecarName {
			return &pod.Spec.InitContainers[i]
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == inject.SidecarName {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

func tokenOf(c *corev1.Container) string {
	for _, e := range c.Env {
		if e.Name == inject.DrainTokenEnv {
			return e.Value
		}
	}
	return ""
}

func createDeployment(t *testing.T, c *kubeenv.Cluster, ns string, d appsv1.Deployment) []corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Create(ctx, kubeenv.Path("apps/v1", ns, "deployments"), d, nil); err != nil {
		t.Fatalf("create Deployment %s/%s: %v", ns, d.Name, err)
	}
	return c.WaitPods(t, ns, "app="+d.Name, int(*d.Spec.Replicas))
}

// TestInjectorAgainstAPIServer runs tidegate's webhook behind a real
// kube-apiserver and kube-controller-manager, registered with the shipped
// MutatingWebhookConfiguration: pods that Deployments make are injected
// where the namespace or the pod asks, and only there.
func TestInjectorAgainstAPIServer(t *testing.T) {
	c := cluster.Get(t)
	inj, base, ca := startInjector(t)
	cfg := shippedWebhookConfig(t, c, base, ca)
	c.RegisterMutatingWebhook(t, cfg)

	enabled := c.CreateNamespace(t, "enabled", map[string]string{inject.LabelNamespace: "enabled"})
	plain := c.CreateNamespace(t, "plain", nil)
	disabled := c.CreateNamespace(t, "disabled", map[string]string{inject.LabelNamespace: "disabled"})

	t.Run("labelled namespace: every pod injected, each with its own token", func(t *testing.T) {
		pods := createDeployment(t, c, enabled, deployment("web", nil))
		tokens := map[string]bool{}
		for _, p := range pods {
			sc := sidecarOf(&p)
			if sc == nil {
				t.Fatalf("pod %s: no tidegate sidecar; containers %v", p.Name, p.Spec.Containers)
			}
			if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("pod %s: the sidecar is not a native sidecar (restartPolicy %v)", p.Name, sc.RestartPolicy)
			}
			if p.Annotations[inject.AnnotationStatus] == "" {
				t.Errorf("pod %s: no %s annotation", p.Name, inject.AnnotationStatus)
			}
			app := p.Spec.Containers[0]
			if got := app.ReadinessProbe.HTTPGet.Path; got != "/app-health/app/readyz" {
				t.Errorf("pod %s: app readiness probe path %q, want /app-health/app/readyz", p.Name, got)
			}
			if app.Lifecycle == nil || app.Lifecycle.PreStop == nil || app.Lifecycle.PreStop.HTTPGet == nil {
				t.Errorf("pod %s: the app has no preStop drain hook: %+v", p.Name, app.Lifecycle)
			}
			tokens[tokenOf(sc)] = true
		}
		if len(tokens) != len(pods) || tokens[""] {
			t.Errorf("drain tokens of %d pods: %v; want one distinct token per pod", len(pods), tokens)
		}
	})

	t.Run("labelled namespace: a pod that refuses is not injected", func(t *testing.T) {
		pods := createDeployment(t, c, enabled, deployment("refuses", map[string]string{inject.AnnotationInject: "false"}))
		for _, p := range pods {
			if sidecarOf(&p) != nil {
				t.Errorf("pod %s annotated %s: false was injected", p.Name, inject.AnnotationInject)
			}
		}
	})

	t.Run("unlabelled namespace: only a pod that asks", func(t *testing.T) {
		for _, p := range createDeployment(t, c, plain, deployment("quiet", nil)) {
			if sidecarOf(&p) != nil {
				t.Errorf("pod %s in an unlabelled namespace was injected without asking", p.Name)
			}
		}
		for _, p := range createDeployment(t, c, plain, deployment("asks", map[string]string{inject.AnnotationInject: "true"})) {
			if sidecarOf(&p) == nil {
				t.Errorf("pod %s annotated %s: true was not injected", p.Name, inject.AnnotationInject)
			}
		}
	})

	t.Run("disabled namespace: not even a pod that asks", func(t *testing.T) {
		for _, p := range createDeployment(t, c, disabled, deployment("asks", map[string]string{inject.AnnotationInject: "true"})) {
			if sidecarOf(&p) != nil {
				t.Errorf("pod %s in a namespace labelled disabled was injected", p.Name)
			}
		}
	})

	t.Run("a pod that asks and cannot be injected is refused with the reason", func(t *testing.T) {
		d := deployment("bad", map[string]string{inject.AnnotationAppPort: "grpc"})
		pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "bad", Annotations: d.Spec.Template.Annotations}, Spec: d.Spec.Template.Spec}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := c.Create(ctx, kubeenv.Path("v1", enabled, "pods"), pod, nil)
		if err == nil || !strings.Contains(err.Error(), "grpc") || !strings.Contains(err.Error(), inject.AnnotationAppPort) {
			t.Fatalf("create a pod whose %s names no port: %v; want a denial naming the annotation and its value", inject.AnnotationAppPort, err)
		}
	})

	t.Run("a pod that cannot be injected and did not ask is admitted with a warning", func(t *testing.T) {
		pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "portless"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "worker", Image: "example.com/worker:1"}}}}
		var warnings []string
		var got corev1.Pod
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Create(ctx, kubeenv.Path("v1", enabled, "pods"), pod, &got, kubeenv.Warnings(&warnings)); err != nil {
			t.Fatalf("create a pod with no ports in a labelled namespace: %v", err)
		}
		if sidecarOf(&got) != nil {
			t.Errorf("a pod with no ports was injected")
		}
		if !strings.Contains(strings.Join(warnings, "\n"), "not injected") {
			t.Errorf("warnings %q: want one saying the pod was not injected and why", warnings)
		}
	})

	t.Run("a dry run returns the injected pod and stores nothing", func(t *testing.T) {
		d := deployment("dry", nil)
		pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "dry"}, Spec: d.Spec.Template.Spec}
		var got corev1.Pod
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Create(ctx, kubeenv.Path("v1", enabled, "pods"), pod, &got, kubeenv.DryRun()); err != nil {
			t.Fatalf("dry-run create: %v", err)
		}
		if sidecarOf(&got) == nil {
			t.Errorf("the dry run's answer is not injected")
		}
		err := c.Get(ctx, kubeenv.Path("v1", enabled, "pods", "dry"), &corev1.Pod{})
		if !kubeenv.IsNotFound(err) {
			t.Errorf("GET the dry-run pod: %v; want 404", err)
		}
	})

	t.Run("reinvoked after another webhook changed the pod, it injects once", func(t *testing.T) {
		other := kubeenv.StartWebhook(t, annotator{})
		ocfg := kubeenv.PodWebhook("annotator.test.tidegate.io", other.URL("/"), other.CABundle)
		ocfg.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{inject.LabelNamespace: "enabled"}}
		c.RegisterMutatingWebhook(t, ocfg)
		for _, p := range createDeployment(t, c, enabled, deployment("reinvoked", nil)) {
			n := 0
			for _, ct := range append(p.Spec.InitContainers, p.Spec.Containers...) {
				if ct.Name == inject.SidecarName {
					n++
				}
			}
			if n != 1 || p.Annotations[annotatorKey] != "yes" {
				t.Errorf("pod %s: %d tidegate containers, annotation %q=%q; want 1 and yes", p.Name, n, annotatorKey, p.Annotations[annotatorKey])
			}
		}
	})

	// Last: it takes the webhook down for good.
	t.Run("webhook down, failurePolicy Ignore: pods are created uninjected", func(t *testing.T) {
		for _, wh := range cfg.Webhooks {
			if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
				t.Fatalf("webhook %s: failurePolicy %v; this test assumes the shipped Ignore", wh.Name, wh.FailurePolicy)
			}
		}
		inj.Stop()
		c.SyncWebhooks(t) // the annotator's configuration, deleted above, is gone
		for _, p := range createDeployment(t, c, enabled, deployment("down", nil)) {
			if sidecarOf(&p) != nil {
				t.Errorf("pod %s injected with the webhook down", p.Name)
			}
		}
	})
}

// annotatorKey is what annotator adds: a second webhook that changes the
// pod after tidegate's, so that the API server reinvokes tidegate's.
const annotatorKey = "test.tidegate.io/annotated"

type annotator struct{}

func (annotator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveAnnotator(w, r)
}

// TestInjectedObjectsAreValid creates every golden output of deploy/inject
// in the real API server (a dry run: validated and admitted, not stored):
// what the injector writes is what Kubernetes accepts, native sidecars,
// probes, hooks and all.
func TestInjectedObjectsAreValid(t *testing.T) {
	c := cluster.Get(t)
	files, err := filepath.Glob("../../deploy/inject/testdata/*.injected.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("golden outputs of deploy/inject: %v (found %d)", err, len(files))
	}
	ns := c.CreateNamespace(t, "golden", nil)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		createDryRun(t, c, ns, filepath.Base(f), obj)
	}
}

// createDryRun creates obj (a v1 List: each item) in ns with dryRun=All.
func createDryRun(t *testing.T, c *kubeenv.Cluster, ns, what string, obj map[string]any) {
	t.Helper()
	if obj["kind"] == "List" {
		items, _ := obj["items"].([]any)
		for i, it := range items {
			m, _ := it.(map[string]any)
			createDryRun(t, c, ns, fmt.Sprintf("%s items[%d]", what, i), m)
		}
		return
	}
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	if md, ok := obj["metadata"].(map[string]any); ok {
		md["namespace"] = ns
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	path := kubeenv.Path(apiVersion, ns, resourceOf(kind))
	if err := c.Do(ctx, "POST", path, raw, "application/json", nil, kubeenv.DryRun()); err != nil {
		t.Errorf("%s: the API server refuses %s: %v", what, kind, err)
	}
}

func resourceOf(kind string) string {
	return strings.ToLower(kind) + "s"
}
