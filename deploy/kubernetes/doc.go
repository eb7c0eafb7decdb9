// Package kubernetes holds tidegate's Kubernetes manifests, not Go code:
//
//   - webhook/base: the injector (tidegate-inject webhook): its namespace,
//     a ServiceAccount with no API access, a Deployment of two replicas on
//     two nodes, a Service, a PodDisruptionBudget, and the
//     MutatingWebhookConfiguration with its two webhooks (namespaces
//     labelled tidegate.io/inject=enabled, and pods annotated
//     tidegate.io/inject: "true" elsewhere);
//   - webhook/cert-manager and webhook/static-cert: the base plus its
//     serving certificate, from cert-manager or from files;
//   - example: a plain app in a namespace labelled for injection.
//
// Its test renders every kustomization with `kubectl kustomize`, decodes
// each object strictly into its k8s.io/api type, and checks the invariants
// docs/kubernetes.md promises: two replicas and a PodDisruptionBudget, the
// security context, the webhooks' paths, selectors and policies, no
// wildcard RBAC, a caBundle that verifies the serving certificate.
package kubernetes
