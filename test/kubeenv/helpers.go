package kubeenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tidegate/tidegate/test/wait"
)

// Bounds of the helpers' waits.
const (
	// WaitTimeout bounds WaitPods and CreateNamespace's wait for the
	// default ServiceAccount: controllers react in well under a second, a
	// loaded 2-core machine is given thirty times that.
	WaitTimeout = 30 * time.Second
	// webhookSyncTimeout bounds how long RegisterMutatingWebhook waits for
	// the API server to call the webhooks it was just given.
	webhookSyncTimeout = 30 * time.Second
)

// Poll calls cond every 50ms until it returns true, failing t with what and
// cond's last explanation after timeout: test/wait.Until at a pace meant
// for an API server rather than a local socket.
func Poll(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	wait.UntilEvery(t, pollEvery, timeout, what, cond)
}

// reqContext is a context for one helper request: it ends with the test,
// or after requestTimeout.
func reqContext(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), requestTimeout)
}

// CreateNamespace creates a namespace named prefix-<random suffix> with
// labels and returns its name; it waits (up to WaitTimeout) for the
// namespace's default ServiceAccount, without which no pod is admitted.
// The namespace is deleted in t.Cleanup (without a namespace controller
// it stays Terminating, with its objects: names never repeat).
func (c *Cluster) CreateNamespace(t testing.TB, prefix string, labels map[string]string) string {
	t.Helper()
	ns := corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: labels}}
	cx, cancel := reqContext(t)
	defer cancel()
	var got corev1.Namespace
	if err := c.Create(cx, "/api/v1/namespaces", ns, &got); err != nil {
		t.Fatalf("create namespace %s-*: %v", prefix, err)
	}
	name := got.Name
	t.Cleanup(func() {
		cx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		if err := c.Delete(cx, Path("v1", "", "namespaces", name)); err != nil && !IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	Poll(t, WaitTimeout, "ServiceAccount "+name+"/default", func() (bool, string) {
		cx, cancel := reqContext(t)
		defer cancel()
		err := c.Get(cx, Path("v1", name, "serviceaccounts", "default"), nil)
		return err == nil, fmt.Sprint(err)
	})
	return name
}

// WaitPods waits (up to WaitTimeout) until exactly n pods in ns match the
// label selector, and returns them.
func (c *Cluster) WaitPods(t testing.TB, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	Poll(t, WaitTimeout, fmt.Sprintf("%d pods %q in %s", n, selector, ns), func() (bool, string) {
		cx, cancel := reqContext(t)
		defer cancel()
		pods = corev1.PodList{}
		if err := c.List(cx, Path("v1", ns, "pods"), &pods, LabelSelector(selector)); err != nil {
			return false, err.Error()
		}
		return len(pods.Items) == n, fmt.Sprintf("%d pods", len(pods.Items))
	})
	return pods.Items
}

// PodWebhook is a MutatingWebhookConfiguration with one webhook (named
// name, a DNS-like name such as "inject.tidegate.io") that the API server
// calls at url for every pod CREATE, trusting caBundle: admission.k8s.io/v1,
// sideEffects None (so dry runs call it too), failurePolicy Fail, timeout
// 5s, reinvocationPolicy Never. Tests set the selectors and policies they
// exercise on the result.
func PodWebhook(name, url string, caBundle []byte) admissionregistrationv1.MutatingWebhookConfiguration {
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	timeout := int32(5)
	return admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    name,
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caBundle},
			Rules:                   []admissionregistrationv1.RuleWithOperations{podCreate("pods")},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &never,
		}},
	}
}

func podCreate(resource string) admissionregistrationv1.RuleWithOperations {
	return admissionregistrationv1.RuleWithOperations{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{
			APIGroups:   []string{""},
			APIVersions: []string{"v1"},
			Resources:   []string{resource},
		},
	}
}

// RegisterMutatingWebhook creates cfg and returns once the API server
// calls its webhooks; it deletes cfg in t.Cleanup.
//
// The API server learns of webhook configurations through a watch, a
// moment after the create returns. To know when cfg is in force, the
// harness then creates a second configuration, a sentinel matching only
// ConfigMaps with a label of its own and pointing at a closed port, and
// dry-runs such a ConfigMap until the API server refuses it for the
// sentinel's sake: the watch delivers in order, so cfg is in force too.
func (c *Cluster) RegisterMutatingWebhook(t testing.TB, cfg admissionregistrationv1.MutatingWebhookConfiguration) {
	t.Helper()
	path := Path("admissionregistration.k8s.io/v1", "", "mutatingwebhookconfigurations")
	cx, cancel := reqContext(t)
	defer cancel()
	if err := c.Create(cx, path, cfg, nil); err != nil {
		t.Fatalf("create MutatingWebhookConfiguration %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		cx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		if err := c.Delete(cx, path+"/"+cfg.Name); err != nil && !IsNotFound(err) {
			t.Errorf("delete MutatingWebhookConfiguration %s: %v", cfg.Name, err)
		}
	})
	c.SyncWebhooks(t)
}

// SyncWebhooks returns once the API server has seen every webhook
// configuration change made before the call (RegisterMutatingWebhook's
// sentinel, on its own): after an Update or Delete of a configuration.
func (c *Cluster) SyncWebhooks(t testing.TB) {
	t.Helper()
	ports, err := freePorts(1) // closed again: connection refused
	if err != nil {
		t.Fatal(err)
	}
	id := randomID()
	const label = "kubeenv.tidegate.io/sentinel"
	sentinel := PodWebhook("sentinel-"+id+".kubeenv.tidegate.io", "https://127.0.0.1:"+strconv.Itoa(ports[0])+"/", c.CA.PEM)
	wh := &sentinel.Webhooks[0]
	wh.Rules = []admissionregistrationv1.RuleWithOperations{podCreate("configmaps")}
	wh.ObjectSelector = &metav1.LabelSelector{MatchLabels: map[string]string{label: id}}
	one := int32(1)
	wh.TimeoutSeconds = &one

	path := Path("admissionregistration.k8s.io/v1", "", "mutatingwebhookconfigurations")
	cx, cancel := reqContext(t)
	defer cancel()
	if err := c.Create(cx, path, sentinel, nil); err != nil {
		t.Fatalf("create the sentinel MutatingWebhookConfiguration: %v", err)
	}
	defer func() {
		cx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		if err := c.Delete(cx, path+"/"+sentinel.Name); err != nil && !IsNotFound(err) {
			t.Errorf("delete the sentinel MutatingWebhookConfiguration: %v", err)
		}
	}()
	probe := corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "kubeenv-sentinel-", Labels: map[string]string{label: id}}}
	Poll(t, webhookSyncTimeout, "the API server calls a webhook configuration just created", func() (bool, string) {
		cx, cancel := reqContext(t)
		defer cancel()
		err := c.Create(cx, Path("v1", "default", "configmaps"), probe, nil, DryRun())
		if err == nil {
			return false, "a dry-run ConfigMap was admitted: the sentinel is not called yet"
		}
		return strings.Contains(err.Error(), sentinel.Name), err.Error()
	})
}

// randomID is 12 random hex digits: a name or label value no other test
// (or earlier -count run) has used.
func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
