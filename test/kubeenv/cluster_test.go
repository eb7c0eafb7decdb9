package kubeenv

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidegate/tidegate/test/need"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// deployment is a Deployment of n pods labelled app=name whose container
// never runs (there is no kubelet): the pods stay Pending.
func deployment(name string, n int32) appsv1.Deployment {
	labels := map[string]string{"app": name}
	return appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       podSpec(),
			},
		},
	}
}

func podSpec() corev1.PodSpec {
	return corev1.PodSpec{Containers: []corev1.Container{{
		Name:  "app",
		Image: "registry.invalid/app:1",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	}}}
}

func TestDeploymentMakesReplicaSetAndPods(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	ns := c.CreateNamespace(t, "deploy", nil)
	cx, cancel := reqContext(t)
	defer cancel()

	var dep appsv1.Deployment
	if err := c.Create(cx, Path("apps/v1", ns, "deployments"), deployment("web", 2), &dep, FieldManager("kubeenv-test")); err != nil {
		t.Fatal(err)
	}
	pods := c.WaitPods(t, ns, "app=web", 2)

	var rss appsv1.ReplicaSetList
	if err := c.List(cx, Path("apps/v1", ns, "replicasets"), &rss, LabelSelector("app=web")); err != nil {
		t.Fatal(err)
	}
	if len(rss.Items) != 1 {
		t.Fatalf("%d ReplicaSets for Deployment web, want 1", len(rss.Items))
	}
	rs := rss.Items[0]
	if owner := metav1.GetControllerOf(&rs); owner == nil || owner.UID != dep.UID {
		t.Errorf("ReplicaSet %s is controlled by %+v, want Deployment web (%s)", rs.Name, owner, dep.UID)
	}
	for _, p := range pods {
		if owner := metav1.GetControllerOf(&p); owner == nil || owner.UID != rs.UID {
			t.Errorf("pod %s is controlled by %+v, want ReplicaSet %s", p.Name, owner, rs.Name)
		}
		if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
			t.Errorf("pod %s: phase %q on node %q, want Pending and unscheduled (no scheduler)", p.Name, p.Status.Phase, p.Spec.NodeName)
		}
		if p.Spec.ServiceAccountName != "default" {
			t.Errorf("pod %s: serviceAccountName %q, want default (ServiceAccount admission)", p.Name, p.Spec.ServiceAccountName)
		}
	}

	// Scaling is the controllers at work again, through a merge patch.
	if err := c.Patch(cx, Path("apps/v1", ns, "deployments", "web"), types.MergePatchType,
		[]byte(`{"spec":{"replicas":3}}`), nil); err != nil {
		t.Fatal(err)
	}
	c.WaitPods(t, ns, "app=web", 3)
}

func TestClientErrorsCarryTheStatus(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	ns := c.CreateNamespace(t, "errors", nil)
	cx, cancel := reqContext(t)
	defer cancel()

	err := c.Get(cx, Path("v1", ns, "configmaps", "absent"), nil)
	if !IsNotFound(err) || !strings.Contains(err.Error(), `configmaps "absent" not found`) {
		t.Errorf("GET an absent ConfigMap: %v, want a 404 naming it", err)
	}

	cm := corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "twice"}}
	if err := c.Create(cx, Path("v1", ns, "configmaps"), cm, nil); err != nil {
		t.Fatal(err)
	}
	err = c.Create(cx, Path("v1", ns, "configmaps"), cm, nil)
	se, ok := errors.AsType[*StatusError](err)
	if !ok || se.Code != http.StatusConflict || se.Status.Reason != metav1.StatusReasonAlreadyExists ||
		!strings.Contains(se.Error(), `configmaps "twice" already exists`) {
		t.Errorf("create a ConfigMap twice: %#v, want 409 AlreadyExists naming it", err)
	}

	bad := corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "Not_A_DNS_Name"}}
	err = c.Create(cx, Path("v1", ns, "configmaps"), bad, nil)
	if Code(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "Not_A_DNS_Name") {
		t.Errorf("create a ConfigMap with an invalid name: %v, want 422 naming it", err)
	}

	if err := c.Delete(cx, Path("v1", ns, "configmaps", "twice")); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(cx, Path("v1", ns, "configmaps", "twice"), nil); !IsNotFound(err) {
		t.Errorf("GET a deleted ConfigMap: %v, want 404", err)
	}
}

func TestKubeconfigNamesTheCluster(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	data, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"server: " + c.URL, "token: " + c.Token, "certificate-authority: " + filepath.Join(c.Dir, "ca.crt")} {
		if !strings.Contains(string(data), want) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, data)
		}
	}
	ca, err := os.ReadFile(filepath.Join(c.Dir, "ca.crt"))
	if err != nil || string(ca) != string(c.CA.PEM) {
		t.Errorf("ca.crt is not the cluster's CA (%v)", err)
	}
}

// A port taken between the harness's choice and the process's bind makes
// Launch start over, a bounded number of times, and then fail with the
// process's own words. The taken port is forced here: a later
// --secure-port wins over the harness's.
func TestLaunchGivesUpOnATakenPort(t *testing.T) {
	t.Parallel()
	if err := BinariesIn(CacheRoot()).Check(); err != nil {
		skipOrFail(t, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var logs []string
	began := time.Now()
	c, err := Launch(Options{
		APIServerArgs: []string{"--secure-port=" + port},
		Logf:          func(f string, a ...any) { logs = append(logs, f) },
	})
	if err == nil {
		c.Stop()
		t.Fatal("Launch with kube-apiserver on a taken port succeeded")
	}
	t.Logf("gave up after %s: %.300s", time.Since(began).Round(time.Millisecond), err)
	if !errors.Is(err, errPortTaken) || !strings.Contains(err.Error(), "kube-apiserver") ||
		!strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %v: want errPortTaken naming kube-apiserver, with its log saying address already in use", err)
	}
	if len(logs) != portAttempts-1 {
		t.Errorf("%d retries logged, want %d", len(logs), portAttempts-1)
	}
}

func TestMissingBinariesNameTheFilesAndTheBuild(t *testing.T) {
	dir := t.TempDir()
	b := BinariesIn(dir)
	if err := os.MkdirAll(filepath.Dir(b.Etcd), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.Etcd, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := b.Check()
	me, ok := errors.AsType[*MissingError](err)
	if !ok {
		t.Fatalf("Check: %v, want a *MissingError", err)
	}
	if len(me.Missing) != 2 || me.Missing[0] != b.APIServer || me.Missing[1] != b.ControllerManager {
		t.Errorf("missing %q, want %q and %q", me.Missing, b.APIServer, b.ControllerManager)
	}
	if !strings.Contains(err.Error(), BuildCommand) {
		t.Errorf("%v: does not say how to build them (%s)", err, BuildCommand)
	}
	if _, err := Launch(Options{Binaries: b}); !errors.As(err, &me) {
		t.Errorf("Launch without binaries: %v, want a *MissingError", err)
	}

	t.Setenv(need.RequireEnv, "") // a developer's machine: skip
	var skipped bool
	t.Run("Start", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		Start(t, Options{Binaries: b})
		t.Error("Start without binaries returned a cluster")
	})
	if !skipped {
		t.Errorf("Start without binaries and %s unset did not skip", need.RequireEnv)
	}
}

func TestCacheRoot(t *testing.T) {
	t.Setenv(CacheEnv, "")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if got := CacheRoot(); got != "/xdg/tidegate-kube" {
		t.Errorf("CacheRoot with XDG_CACHE_HOME=/xdg: %q", got)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := CacheRoot(); got != "/home/u/.cache/tidegate-kube" {
		t.Errorf("CacheRoot with HOME=/home/u: %q", got)
	}
	t.Setenv(CacheEnv, "/cache")
	if got, want := BinariesIn(CacheRoot()).APIServer, "/cache/kube-"+KubeVersion+"/kube-apiserver"; got != want {
		t.Errorf("APIServer with %s=/cache: %q, want %q", CacheEnv, got, want)
	}
}

func TestPath(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{Path("v1", "ns", "pods"), "/api/v1/namespaces/ns/pods"},
		{Path("v1", "", "namespaces", "x"), "/api/v1/namespaces/x"},
		{Path("apps/v1", "ns", "deployments", "web"), "/apis/apps/v1/namespaces/ns/deployments/web"},
		{Path("admissionregistration.k8s.io/v1", "", "mutatingwebhookconfigurations"), "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"},
	} {
		if tc.got != tc.want {
			t.Errorf("Path: %q, want %q", tc.got, tc.want)
		}
	}
}

func TestWarningText(t *testing.T) {
	for h, want := range map[string]string{
		`299 - "tidegate: not injected"`:   "tidegate: not injected",
		`299 - "say \"hi\"" "Mon, 01 Jan"`: `say "hi"`,
		`199 - "other"`:                    `199 - "other"`,
		`299 -`:                            `299 -`,
	} {
		if got := warningText(h); got != want {
			t.Errorf("warningText(%q) = %q, want %q", h, got, want)
		}
	}
}
