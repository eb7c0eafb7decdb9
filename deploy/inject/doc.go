// Package inject adds the tidegate sidecar to a Kubernetes pod, and takes it
// away again. It is a pure function over k8s.io/api types: no cluster
// access, no clock, no global state; the token source is a parameter.
//
// Inject works on any pod-carrying object (Pod, Deployment, StatefulSet,
// DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) and does, each
// step visible in the diff (docs/kubernetes.md explains every one):
//
//   - adds the sidecar: a native sidecar (an init container with
//     restartPolicy Always and a startupProbe on its own /livez/app, so the app
//     starts only after tidegate is up) or, with mode classic, a second
//     container;
//   - swaps the app's named port: the app's port (e.g. "http") is renamed
//     "tidegate-app" and the sidecar's public port takes the name, so
//     Services and Ingresses that target the name reach tidegate;
//   - rewrites every httpGet, tcpSocket and grpc probe of every app
//     container to the sidecar's /app-health/<container>/{readyz,livez,
//     startupz}; the originals, named ports resolved, go to the sidecar in
//     TIDEGATE_APP_PROBES (JSON); exec probes stay;
//   - pairs the app container's preStop hook with the drain: GET
//     /drain?wait=… on the sidecar's health port with a per-injection random
//     token, or, when the app already has a preStop hook, an exec hook
//     through the tidegate binary the sidecar copies to a shared emptyDir,
//     which drains first and then runs the original hook;
//   - raises terminationGracePeriodSeconds to at least drain timeout + app
//     stop timeout + margin, with a warning;
//   - adds the Prometheus scrape annotations for the sidecar's metrics
//     listener (only when the pod has none of its own), and records what it
//     changed in the tidegate.io/status annotation.
//
// Entry points: InjectPod and UninjectPod change a pod's (or pod
// template's) typed metadata and spec in place, for the webhook; Inject and
// Uninject take one JSON document of any kind, for the CLI. The document
// functions decode strictly (unknown or miscased fields are errors, as in
// the API server) and write back only what changed: the rest of the input
// keeps its own form, and no defaults the API types would write
// (creationTimestamp: null, status: {}) appear. Kinds that carry no pod
// (Service, ConfigMap, …) pass through byte for byte. Policy says which
// pods to inject: every pod but one annotated tidegate.io/inject: "false"
// (InjectUnlessRefused), or only those annotated "true" (InjectIfAsked).
// Every error is an *Error naming the object ("Deployment shop/web"), the
// field ("spec.template.spec.containers[app].ports") and what to write
// instead; Error.Explicit tells the webhook whether the pod asked for
// tidegate, so that it denies only those.
//
// Invariants:
//   - Injecting an injected object changes nothing.
//   - Uninject(Inject(x)) == x for every x Inject accepts.
//   - Every output decodes strictly into k8s.io/api types.
//   - Errors name the object, the container and the field, and say what to
//     do; a pod that asked for injection and cannot have it is an error, a
//     pod that did not ask is left alone.
package inject
