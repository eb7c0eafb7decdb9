// Package kubeenv runs a small Kubernetes control plane for tests: etcd,
// kube-apiserver and kube-controller-manager as child processes on
// 127.0.0.1, and a client of it built on net/http and the k8s.io/api types
// (no client-go).
//
// # What it starts
//
// Launch (or Start, for one test, or Shared, for a package) starts, each on
// ports chosen free on 127.0.0.1 and with its files in one temporary
// directory:
//
//   - etcd, one member, --unsafe-no-fsync, a 256 MiB backend quota;
//   - kube-apiserver: a serving certificate from a CA made for the run (so
//     the client verifies it), a static admin token in group
//     system:masters, RBAC, a generated ECDSA service account key, service
//     range 10.96.0.0/24, the default admission plugins (MutatingAdmissionWebhook
//     included), priority and fairness off, no endpoint reconciler (it
//     refuses a loopback address);
//   - kube-controller-manager with the deployment, replicaset and
//     serviceaccount controllers (Options.Controllers), no leader election
//     and no serving port, through a kubeconfig with the admin token.
//
// There is no scheduler and no kubelet: pods are stored, admitted and
// mutated, and stay Pending. That is what an admission webhook's tests
// need: a Deployment makes its ReplicaSet, which creates pods through the
// real admission chain.
//
// A start waits for etcd's /health, the API server's /readyz, and the
// default ServiceAccount of namespace default (the controller manager at
// work), bounded by Options.StartTimeout. A process that dies early fails
// the start at once with the end of its log; one that lost its port to
// another program between the harness's choice and its bind makes the
// start begin again, at most three times.
//
// # Where the binaries come from
//
// From a cache built from the Go module proxy by tools/build.sh (bash
// test/kubeenv/tools/build.sh, from the repository root; .ci/run does it):
// <root>/kube-v1.37.2/{kube-apiserver,kube-controller-manager,kubectl} and
// <root>/etcd-v3.7.3/etcd, where <root> is $TIDEGATE_KUBE_CACHE, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube. Without them a test is
// skipped with a message naming the missing files and that command; with
// TIDEGATE_REQUIRE_TOOLS=1 (CI) it fails instead.
//
// # How long it takes
//
// On an idle 2-core machine: etcd under a second, kube-apiserver 4-6 s,
// the controller manager a few hundred milliseconds more; 15 s and more
// when the machine is busy compiling. Stopping takes about a second
// (SIGTERM, then SIGKILL after Options.StopGrace). Share one cluster per
// package (Shared) and give each test its own namespaces and webhook
// configurations (CreateNamespace names them prefix-<random>).
//
// # Webhooks
//
// RegisterMutatingWebhook creates a MutatingWebhookConfiguration and
// returns only once the API server calls it (it learns of configurations
// through a watch, a moment later). PodWebhook is a configuration for pod
// CREATE to start from; StartWebhook serves a handler over TLS on
// 127.0.0.1 with its own CA (Stop makes it "down"); NewServingCert and
// Listen are the pieces for a webhook that does its own TLS, such as
// deploy/webhook's Server.
//
// # Debugging
//
// A failing test logs the end of each process's log (Cluster.LogTails).
// With TIDEGATE_KUBE_KEEP=1 the directory (logs, certificates, etcd data,
// kubeconfig) is kept after the run and its path is logged at start; while
// the cluster runs (a test stopped in a debugger),
// kubectl --kubeconfig=<dir>/kubeconfig talks to it. The processes die
// with the test binary (a parent-death signal), even on a -timeout panic.
package kubeenv
