package kubeenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The annotation the test webhook adds, and the warning it returns.
const (
	mutatedKey  = "kubeenv.tidegate.io/mutated"
	testWarning = "kubeenv test webhook was here"
	// maxReviews bounds what a test webhook records: far more than any
	// test here sends.
	maxReviews = 1000
)

// call is what a test webhook saw of one admission request.
type call struct {
	Namespace, Name, GenerateName string
	DryRun                        bool
}

// testWebhook admits every pod, adding mutatedKey through a JSONPatch, or
// denies it with deny when that is set; it records each call.
type testWebhook struct {
	deny string

	mu    sync.Mutex
	calls []call
}

func (w *testWebhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&review); err != nil || review.Request == nil {
		http.Error(rw, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	req := review.Request
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		http.Error(rw, "not a pod: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	if len(w.calls) < maxReviews {
		w.calls = append(w.calls, call{Namespace: req.Namespace, Name: pod.Name, GenerateName: pod.GenerateName,
			DryRun: req.DryRun != nil && *req.DryRun})
	}
	w.mu.Unlock()

	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true, Warnings: []string{testWarning}}
	if w.deny != "" {
		resp = &admissionv1.AdmissionResponse{UID: req.UID, Result: &metav1.Status{Message: w.deny}}
	} else {
		op := map[string]any{"op": "add", "path": "/metadata/annotations", "value": map[string]string{mutatedKey: "true"}}
		if pod.Annotations != nil {
			op = map[string]any{"op": "add", "path": "/metadata/annotations/" + strings.ReplaceAll(mutatedKey, "/", "~1"), "value": "true"}
		}
		resp.Patch, _ = json.Marshal([]any{op})
		pt := admissionv1.PatchTypeJSONPatch
		resp.PatchType = &pt
	}
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(out)
}

// callsIn is the calls for pods in namespace ns.
func (w *testWebhook) callsIn(ns string) []call {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []call
	for _, c := range w.calls {
		if c.Namespace == ns {
			out = append(out, c)
		}
	}
	return out
}

// webhookFor registers a webhook that the API server calls for pods in
// namespaces labelled kubeenv-test/webhook=<a value of this test>, and
// returns that label.
func webhookFor(t *testing.T, c *Cluster, url string, caBundle []byte, edit func(*admissionregistrationv1.MutatingWebhook)) map[string]string {
	t.Helper()
	id := randomID()
	label := map[string]string{"kubeenv-test/webhook": id}
	cfg := PodWebhook("t-"+id+".kubeenv.tidegate.io", url, caBundle)
	cfg.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: label}
	if edit != nil {
		edit(&cfg.Webhooks[0])
	}
	c.RegisterMutatingWebhook(t, cfg)
	return label
}

func newPod(name string, annotations map[string]string) corev1.Pod {
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}, Spec: podSpec()}
}

func TestWebhookMutatesPodsOfSelectedNamespacesOnly(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	wh := &testWebhook{}
	srv := StartWebhook(t, wh)
	label := webhookFor(t, c, srv.URL("/mutate"), srv.CABundle, nil)
	in := c.CreateNamespace(t, "selected", label)
	out := c.CreateNamespace(t, "other", nil)
	cx, cancel := reqContext(t)
	defer cancel()

	for _, ns := range []string{in, out} {
		if err := c.Create(cx, Path("apps/v1", ns, "deployments"), deployment("web", 2), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.WaitPods(t, in, "app=web", 2) {
		if p.Annotations[mutatedKey] != "true" {
			t.Errorf("pod %s/%s in a selected namespace: annotations %v, want %s", in, p.Name, p.Annotations, mutatedKey)
		}
	}
	for _, p := range c.WaitPods(t, out, "app=web", 2) {
		if _, ok := p.Annotations[mutatedKey]; ok {
			t.Errorf("pod %s/%s in another namespace was mutated: %v", out, p.Name, p.Annotations)
		}
	}
	// At least one call per pod: a create the ReplicaSet controller retried
	// after a timeout on a loaded machine would be one more.
	calls := wh.callsIn(in)
	if len(calls) < 2 {
		t.Errorf("webhook calls for %s: %+v, want one per pod", in, calls)
	}
	for _, c := range calls {
		if c.GenerateName == "" || c.DryRun {
			t.Errorf("webhook call %+v: want a ReplicaSet's pod (generateName set), not a dry run", c)
		}
	}
	if calls := wh.callsIn(out); len(calls) != 0 {
		t.Errorf("webhook calls for the unselected %s: %+v, want none", out, calls)
	}

	// A pod created directly is mutated too, and the webhook's warning
	// reaches the client.
	var warnings []string
	var got corev1.Pod
	if err := c.Create(cx, Path("v1", in, "pods"), newPod("direct", map[string]string{"x": "y"}), &got, Warnings(&warnings)); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[mutatedKey] != "true" || got.Annotations["x"] != "y" {
		t.Errorf("pod created directly: annotations %v, want x and %s", got.Annotations, mutatedKey)
	}
	if !slices.Contains(warnings, testWarning) {
		t.Errorf("warnings %q, want the webhook's %q", warnings, testWarning)
	}
}

func TestWebhookDownWithFailurePolicyIgnoreAdmitsPodsUnmutated(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	wh := &testWebhook{}
	srv := StartWebhook(t, wh)
	ignore := admissionregistrationv1.Ignore
	label := webhookFor(t, c, srv.URL("/mutate"), srv.CABundle, func(w *admissionregistrationv1.MutatingWebhook) {
		w.FailurePolicy = &ignore
	})
	ns := c.CreateNamespace(t, "ignore", label)
	srv.Stop()

	cx, cancel := reqContext(t)
	defer cancel()
	if err := c.Create(cx, Path("apps/v1", ns, "deployments"), deployment("web", 2), nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.WaitPods(t, ns, "app=web", 2) {
		if _, ok := p.Annotations[mutatedKey]; ok {
			t.Errorf("pod %s was mutated by a webhook that is down: %v", p.Name, p.Annotations)
		}
	}
	if calls := wh.callsIn(ns); len(calls) != 0 {
		t.Errorf("a stopped webhook recorded calls: %+v", calls)
	}
}

func TestWebhookDownWithFailurePolicyFailRefusesPods(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	srv := StartWebhook(t, &testWebhook{})
	var name string
	label := webhookFor(t, c, srv.URL("/mutate"), srv.CABundle, func(w *admissionregistrationv1.MutatingWebhook) {
		name = w.Name // failurePolicy Fail is PodWebhook's default
	})
	ns := c.CreateNamespace(t, "fail", label)
	srv.Stop()

	cx, cancel := reqContext(t)
	defer cancel()
	err := c.Create(cx, Path("v1", ns, "pods"), newPod("refused", nil), nil)
	if Code(err) != http.StatusInternalServerError || !strings.Contains(err.Error(), `failed calling webhook "`+name+`"`) {
		t.Fatalf("create a pod with webhook %s down and failurePolicy Fail: %v, want 500 failed calling webhook", name, err)
	}
	t.Logf("refused as expected: %v", err)
	if err := c.Get(cx, Path("v1", ns, "pods", "refused"), nil); !IsNotFound(err) {
		t.Errorf("GET the refused pod: %v, want 404", err)
	}

	// Without the configuration the pod is admitted again, once the API
	// server has seen the delete.
	if err := c.Delete(cx, Path("admissionregistration.k8s.io/v1", "", "mutatingwebhookconfigurations", name)); err != nil {
		t.Fatal(err)
	}
	c.SyncWebhooks(t)
	if err := c.Create(cx, Path("v1", ns, "pods"), newPod("refused", nil), nil); err != nil {
		t.Errorf("create the pod after deleting webhook %s: %v", name, err)
	}
}

func TestWebhookDenialReachesTheClient(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	wh := &testWebhook{deny: "kubeenv: spec.containers[app]: cannot be injected, and it asked to be"}
	srv := StartWebhook(t, wh)
	label := webhookFor(t, c, srv.URL("/mutate"), srv.CABundle, nil)
	ns := c.CreateNamespace(t, "deny", label)

	cx, cancel := reqContext(t)
	defer cancel()
	err := c.Create(cx, Path("v1", ns, "pods"), newPod("denied", nil), nil)
	if _, ok := errors.AsType[*StatusError](err); !ok || !strings.Contains(err.Error(), "denied the request: "+wh.deny) {
		t.Fatalf("create a pod the webhook denies: %v, want a StatusError with the webhook's message", err)
	}
	t.Logf("denied as expected: %v", err)
}

// serveOwnTLS serves h the way deploy/webhook's Server does: TLS from
// certificate files, on a listener it is given.
func serveOwnTLS(t *testing.T, h http.Handler) (url string, caBundle []byte) {
	t.Helper()
	sc := NewServingCert(t)
	ln := Listen(t)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, sc.CertFile, sc.KeyFile) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("webhook server: %v", err)
		}
	})
	return URL(ln, "/mutate"), sc.CABundle
}

// This test's webhook does its own TLS, from NewServingCert's files on
// Listen's listener: the pieces for deploy/webhook's Server.
func TestWebhookDryRunHasNoSideEffects(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	wh := &testWebhook{}
	url, caBundle := serveOwnTLS(t, wh)
	label := webhookFor(t, c, url, caBundle, nil)
	ns := c.CreateNamespace(t, "dryrun", label)

	cx, cancel := reqContext(t)
	defer cancel()
	var got corev1.Pod
	if err := c.Create(cx, Path("v1", ns, "pods"), newPod("dry", nil), &got, DryRun()); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[mutatedKey] != "true" {
		t.Errorf("dry-run create returned annotations %v, want %s", got.Annotations, mutatedKey)
	}
	if calls := wh.callsIn(ns); len(calls) != 1 || !calls[0].DryRun || calls[0].Name != "dry" {
		t.Errorf("webhook calls %+v, want one for pod dry with dryRun true", calls)
	}
	if err := c.Get(cx, Path("v1", ns, "pods", "dry"), nil); !IsNotFound(err) {
		t.Errorf("GET the dry-run pod: %v, want 404 (nothing stored)", err)
	}
}

func TestWebhookMatchConditionsFilterCalls(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	wh := &testWebhook{}
	srv := StartWebhook(t, wh)
	const want = "kubeenv.tidegate.io/want"
	label := webhookFor(t, c, srv.URL("/mutate"), srv.CABundle, func(w *admissionregistrationv1.MutatingWebhook) {
		w.MatchConditions = []admissionregistrationv1.MatchCondition{{
			Name:       "asked",
			Expression: `has(object.metadata.annotations) && '` + want + `' in object.metadata.annotations`,
		}}
	})
	ns := c.CreateNamespace(t, "match", label)

	cx, cancel := reqContext(t)
	defer cancel()
	var asked, plain corev1.Pod
	if err := c.Create(cx, Path("v1", ns, "pods"), newPod("asked", map[string]string{want: "yes"}), &asked); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(cx, Path("v1", ns, "pods"), newPod("plain", nil), &plain); err != nil {
		t.Fatal(err)
	}
	if asked.Annotations[mutatedKey] != "true" {
		t.Errorf("pod asked: annotations %v, want %s", asked.Annotations, mutatedKey)
	}
	if _, ok := plain.Annotations[mutatedKey]; ok {
		t.Errorf("pod plain (no %s) was mutated: %v", want, plain.Annotations)
	}
	if calls := wh.callsIn(ns); len(calls) != 1 || calls[0].Name != "asked" {
		t.Errorf("webhook calls %+v, want only pod asked", calls)
	}
}
