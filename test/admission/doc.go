// Package admission tests tidegate-inject's webhook (deploy/webhook)
// behind a real kube-apiserver and kube-controller-manager (test/kubeenv),
// registered with the MutatingWebhookConfiguration that
// deploy/kubernetes/webhook ships: which pods are injected, opt-out,
// denials, dry runs, reinvocation, a webhook that is down, and that every
// object the injector writes is one the API server accepts.
package admission
