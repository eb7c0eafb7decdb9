package kubernetes_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/tidegate/tidegate/test/need"
	"go.uber.org/goleak"
)

// kubeToolsMod pins the Kubernetes release whose kubectl renders the
// manifests (require k8s.io/kubernetes vX), as test/kubeenv/tools/build.sh
// reads it.
const kubeToolsMod = "../../test/kubeenv/tools/kube/go.mod"

// kubeVersion is the version kubeToolsMod requires of k8s.io/kubernetes.
func kubeVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(kubeToolsMod)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "require" && f[1] == "k8s.io/kubernetes" {
			return f[2]
		}
	}
	t.Fatalf("%s has no line \"require k8s.io/kubernetes VERSION\"", kubeToolsMod)
	return ""
}

// renderTimeout bounds one `kubectl kustomize` run, and renderMaxBytes
// what it may print (the manifests render to a few tens of KiB).
const (
	renderTimeout  = 2 * time.Minute
	renderMaxBytes = 1 << 20
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cappedBuffer keeps at most max bytes; a write past them fails.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, fmt.Errorf("more than %d bytes", b.max)
	}
	return b.Buffer.Write(p)
}

// kubectl is the kubectl binary in tidegate's Kubernetes tool cache:
// $TIDEGATE_KUBE_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube,
// then kube-<version>/kubectl. Without it t is skipped, unless
// TIDEGATE_REQUIRE_TOOLS=1 makes that a failure.
func kubectl(t *testing.T) string {
	t.Helper()
	root := os.Getenv("TIDEGATE_KUBE_CACHE")
	if root == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				t.Fatalf("no TIDEGATE_KUBE_CACHE, XDG_CACHE_HOME or home directory to find kubectl in: %v", err)
			}
			base = filepath.Join(home, ".cache")
		}
		root = filepath.Join(base, "tidegate-kube")
	}
	p := filepath.Join(root, "kube-"+kubeVersion(t), "kubectl")
	if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return p
	}
	msg := fmt.Sprintf("%s is missing: build it with `bash test/kubeenv/tools/build.sh`", p)
	if os.Getenv(need.RequireEnv) == "1" {
		t.Fatalf("%s (%s=1)", msg, need.RequireEnv)
	}
	t.Skipf("%s (set %s=1 to make this a failure)", msg, need.RequireEnv)
	return ""
}

// render runs `kubectl kustomize dir` and decodes every document strictly
// (unknown or duplicate fields are errors) into its k8s.io/api type.
func render(t *testing.T, kubectlPath, dir string) []object {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), renderTimeout)
	defer cancel()
	stdout := &cappedBuffer{max: renderMaxBytes}
	stderr := &cappedBuffer{max: renderMaxBytes}
	cmd := exec.CommandContext(ctx, kubectlPath, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	var objs []object
	r := utilyaml.NewYAMLReader(bufio.NewReader(stdout))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", dir, i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		objs = append(objs, decode(t, dir, i, doc))
	}
	if len(objs) == 0 {
		t.Fatalf("%s renders no objects", dir)
	}
	return objs
}

// object is one rendered document, decoded.
type object struct {
	gvk schema.GroupVersionKind
	obj metav1.Object
}

func (o object) String() string {
	name := o.obj.GetName()
	if ns := o.obj.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	return o.gvk.Kind + " " + name
}

// kinds are the types a manifest here may have. A new kind must be added
// (and so looked at) before it can ship.
var kinds = map[schema.GroupVersionKind]func() metav1.Object{
	{Version: "v1", Kind: "Namespace"}:                            func() metav1.Object { return &corev1.Namespace{} },
	{Version: "v1", Kind: "ServiceAccount"}:                       func() metav1.Object { return &corev1.ServiceAccount{} },
	{Version: "v1", Kind: "Service"}:                              func() metav1.Object { return &corev1.Service{} },
	{Version: "v1", Kind: "Secret"}:                               func() metav1.Object { return &corev1.Secret{} },
	{Version: "v1", Kind: "ConfigMap"}:                            func() metav1.Object { return &corev1.ConfigMap{} },
	{Group: "apps", Version: "v1", Kind: "Deployment"}:            func() metav1.Object { return &appsv1.Deployment{} },
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"}: func() metav1.Object { return &policyv1.PodDisruptionBudget{} },
	{Group: "admissionregistration.k8s.io", Version: "v1", Kind: "MutatingWebhookConfiguration"}: func() metav1.Object {
		return &admissionv1.MutatingWebhookConfiguration{}
	},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "Role"}:               func() metav1.Object { return &rbacv1.Role{} },
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}:        func() metav1.Object { return &rbacv1.ClusterRole{} },
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "RoleBinding"}:        func() metav1.Object { return &rbacv1.RoleBinding{} },
	{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}: func() metav1.Object { return &rbacv1.ClusterRoleBinding{} },
	{Group: "cert-manager.io", Version: "v1", Kind: "Issuer"}:                       func() metav1.Object { return &cmIssuer{} },
	{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}:                  func() metav1.Object { return &cmCertificate{} },
}

func decode(t *testing.T, dir string, i int, doc []byte) object {
	t.Helper()
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		t.Fatalf("%s: document %d: %v\n%s", dir, i, err, doc)
	}
	gvk := tm.GroupVersionKind()
	newObj, ok := kinds[gvk]
	if !ok {
		t.Fatalf("%s: document %d is a %s, which this test does not know: add its type to kinds", dir, i, gvk)
	}
	obj := newObj()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: document %d (%s %s): %v", dir, i, gvk.Kind, obj.GetName(), err)
	}
	return object{gvk: gvk, obj: obj}
}

// The cert-manager.io/v1 fields the manifests use, as cert-manager names
// them; a field outside these is a decoding error.
type cmIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned,omitempty"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca,omitempty"`
	} `json:"spec"`
}

type cmCertificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IsCA       bool     `json:"isCA,omitempty"`
		CommonName string   `json:"commonName,omitempty"`
		SecretName string   `json:"secretName"`
		Duration   string   `json:"duration,omitempty"`
		DNSNames   []string `json:"dnsNames,omitempty"`
		Usages     []string `json:"usages,omitempty"`
		PrivateKey *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// all returns the objects of type T.
func all[T metav1.Object](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the only object of type T, failing t unless there is
// exactly one.
func one[T metav1.Object](t *testing.T, objs []object) T {
	t.Helper()
	got := all[T](objs)
	if len(got) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, have %d", zero, len(got))
	}
	return got[0]
}

// kustomizations lists every directory under here with a kustomization.yaml,
// relative and slash-separated.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.ToSlash(filepath.Dir(p)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

// TestManifests renders every kustomization and checks what it promises.
// Each one must have a case here, so none ships unchecked.
func TestManifests(t *testing.T) {
	cases := map[string]struct {
		// prepare, when set, returns the directory to render instead: a
		// copy with the files the kustomization expects from the operator.
		prepare func(t *testing.T, dir string) string
		check   func(t *testing.T, objs []object)
	}{
		"webhook/base":         {check: checkBase},
		"webhook/cert-manager": {check: checkCertManager},
		"webhook/static-cert":  {prepare: withCerts, check: checkStaticCert},
		"example":              {check: checkExample},
	}
	found := kustomizations(t)
	for _, dir := range found {
		if _, ok := cases[dir]; !ok {
			t.Errorf("%s/kustomization.yaml has no case in TestManifests: add its invariants", dir)
		}
	}
	for dir := range cases {
		if !slices.Contains(found, dir) {
			t.Errorf("TestManifests has a case for %s, which has no kustomization.yaml", dir)
		}
	}
	if t.Failed() {
		return
	}
	kc := kubectl(t)
	for _, dir := range found {
		t.Run(dir, func(t *testing.T) {
			c := cases[dir]
			src := dir
			if c.prepare != nil {
				src = c.prepare(t, dir)
			}
			objs := render(t, kc, src)
			checkCommon(t, objs)
			c.check(t, objs)
		})
	}
}

// checkCommon holds for every kustomization: no object twice, and RBAC
// without wildcards or privilege-granting verbs.
func checkCommon(t *testing.T, objs []object) {
	t.Helper()
	seen := map[string]bool{}
	for _, o := range objs {
		if seen[o.String()] {
			t.Errorf("%s is rendered twice", o)
		}
		seen[o.String()] = true
	}
	checkRules := func(who string, rules []rbacv1.PolicyRule) {
		for i, r := range rules {
			for _, list := range [][]string{r.Verbs, r.APIGroups, r.Resources, r.ResourceNames, r.NonResourceURLs} {
				if slices.Contains(list, "*") {
					t.Errorf("%s rule %d has a wildcard: %+v; name each verb, group and resource", who, i, r)
				}
			}
			for _, v := range []string{"escalate", "bind", "impersonate"} {
				if slices.Contains(r.Verbs, v) {
					t.Errorf("%s rule %d grants %q", who, i, v)
				}
			}
		}
	}
	for _, r := range all[*rbacv1.Role](objs) {
		checkRules("Role "+r.Name, r.Rules)
	}
	for _, r := range all[*rbacv1.ClusterRole](objs) {
		checkRules("ClusterRole "+r.Name, r.Rules)
		if r.AggregationRule != nil {
			t.Errorf("ClusterRole %s aggregates other roles: its rules are not the ones written here", r.Name)
		}
	}
	for _, b := range all[*rbacv1.ClusterRoleBinding](objs) {
		if slices.Contains([]string{"cluster-admin", "admin", "edit"}, b.RoleRef.Name) {
			t.Errorf("ClusterRoleBinding %s binds %s", b.Name, b.RoleRef.Name)
		}
	}
}
