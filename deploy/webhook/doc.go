// Package webhook is tidegate's mutating admission webhook: an HTTPS server
// that answers the Kubernetes API server's AdmissionReview (admission.k8s.io/v1)
// for Pod CREATE with a JSONPatch that adds the tidegate sidecar, computed by
// package deploy/inject.
//
// Endpoints:
//
//	POST /mutate         for namespaces labelled tidegate.io/inject=enabled:
//	                     every pod but those annotated tidegate.io/inject: "false"
//	POST /mutate/opt-in  for every other namespace: only pods annotated "true"
//	GET  /healthz        200 while the server runs
//
// Invariants:
//   - The handler never panics (a recovered panic is a 500 and a log line) and
//     always answers with a well-formed AdmissionReview that echoes
//     request.uid when the request carried one.
//   - The patch is the difference between the pod as sent and the pod
//     deploy/inject returns, and nothing else: applied to the request's
//     object it gives exactly InjectPod's result. A pod that inject leaves
//     alone (not asked, refused, already injected) gets no patch, so
//     reinvocationPolicy: IfNeeded is safe.
//   - A pod is denied only when it asked for tidegate (it carries a
//     tidegate.io/ annotation) and cannot be injected; any other pod that
//     cannot be injected is admitted unchanged with a warning.
//   - A dry-run request gets the same answer as a real one; answering has no
//     side effect on the cluster (sideEffects: None).
//   - Every read is bounded: the body by MaxBodyBytes, a request by the
//     server's read timeouts, the shutdown by ShutdownTimeout.
//   - The serving certificate is reloaded when its files change; a new pair
//     that does not load is logged and counted, and the old one kept.
package webhook
