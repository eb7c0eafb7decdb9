package kubernetes_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tidegate/tidegate/deploy/inject"
)

// What the injector's manifests are built around.
const (
	injectorNamespace = "tidegate-system"
	injectorName      = "tidegate-inject" // Deployment, Service, ServiceAccount, MutatingWebhookConfiguration
	tlsSecret         = "tidegate-inject-tls"
	webhookPort       = 8443
	namespaceWebhook  = "namespace.inject.tidegate.io"
	optInWebhook      = "opt-in.inject.tidegate.io"
	// serviceHost is the name the API server calls, which the serving
	// certificate must hold.
	serviceHost = injectorName + "." + injectorNamespace + ".svc"
)

// webhookWant is what each webhook must say.
var webhookWant = map[string]struct {
	path       string
	selector   metav1.LabelSelector
	conditions []admissionv1.MatchCondition
}{
	namespaceWebhook: {
		path: "/mutate",
		selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: inject.LabelNamespace, Operator: metav1.LabelSelectorOpIn, Values: []string{"enabled"}},
		}},
		conditions: []admissionv1.MatchCondition{{
			Name: "not-refused",
			Expression: "!has(object.metadata.annotations) || " +
				"!('" + inject.AnnotationInject + "' in object.metadata.annotations) || " +
				"object.metadata.annotations['" + inject.AnnotationInject + "'] != 'false'",
		}},
	},
	optInWebhook: {
		path: "/mutate/opt-in",
		selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: inject.LabelNamespace, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"enabled", "disabled"}},
			{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", "kube-public", "kube-node-lease", injectorNamespace}},
		}},
		conditions: []admissionv1.MatchCondition{{
			Name: "asked",
			Expression: "has(object.metadata.annotations) && " +
				"'" + inject.AnnotationInject + "' in object.metadata.annotations && " +
				"object.metadata.annotations['" + inject.AnnotationInject + "'] == 'true'",
		}},
	},
}

// injector is the base's objects, found and checked by checkInjector.
type injector struct {
	deploy *appsv1.Deployment
	svc    *corev1.Service
	mwc    *admissionv1.MutatingWebhookConfiguration
}

func checkBase(t *testing.T, objs []object) {
	in := checkInjector(t, objs)
	for _, w := range in.mwc.Webhooks {
		if len(w.ClientConfig.CABundle) != 0 {
			t.Errorf("webhook %s: the base has a caBundle; it comes from an overlay", w.Name)
		}
	}
	if got := all[*corev1.Secret](objs); len(got) != 0 {
		t.Errorf("the base has %d Secrets; the certificate comes from an overlay", len(got))
	}
}

// checkInjector checks what every way of installing the injector shares.
func checkInjector(t *testing.T, objs []object) injector {
	t.Helper()
	for _, o := range objs {
		if o.gvk.Kind == "Namespace" || o.gvk.Kind == "MutatingWebhookConfiguration" || strings.HasPrefix(o.gvk.Kind, "Cluster") {
			continue
		}
		if o.obj.GetNamespace() != injectorNamespace {
			t.Errorf("%s is not in namespace %s", o, injectorNamespace)
		}
	}

	ns := one[*corev1.Namespace](t, objs)
	if ns.Name != injectorNamespace || ns.Labels[inject.LabelNamespace] != "disabled" {
		t.Errorf("Namespace %s labels %v: want %s labelled %s=disabled, so the injector never injects itself",
			ns.Name, ns.Labels, injectorNamespace, inject.LabelNamespace)
	}

	// No API access: no token, and no role bound to anyone.
	sa := one[*corev1.ServiceAccount](t, objs)
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount %s mounts its token; the injector reads nothing from the API server", sa.Name)
	}
	if n := len(all[*rbacv1.Role](objs)) + len(all[*rbacv1.ClusterRole](objs)) +
		len(all[*rbacv1.RoleBinding](objs)) + len(all[*rbacv1.ClusterRoleBinding](objs)); n != 0 {
		t.Errorf("%d RBAC objects: the injector needs no API access (if it now must read something, grant only that and change this test)", n)
	}

	d := one[*appsv1.Deployment](t, objs)
	checkInjectorDeployment(t, d, sa.Name)
	podLabels := labels.Set(d.Spec.Template.Labels)

	svc := one[*corev1.Service](t, objs)
	if svc.Name != injectorName {
		t.Errorf("Service %s: want %s", svc.Name, injectorName)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selector %v does not select the injector's pods %v", svc.Name, svc.Spec.Selector, podLabels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 ||
		containerPort(t, d.Spec.Template.Spec.Containers[0], svc.Spec.Ports[0].TargetPort) != webhookPort {
		t.Errorf("Service %s ports %+v: want 443 to the container's %d", svc.Name, svc.Spec.Ports, webhookPort)
	}

	pdb := one[*policyv1.PodDisruptionBudget](t, objs)
	if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != intstr.FromInt32(1) || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PodDisruptionBudget %s: minAvailable %v maxUnavailable %v, want minAvailable 1", pdb.Name, pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
	}
	if !selects(t, pdb.Spec.Selector, podLabels) {
		t.Errorf("PodDisruptionBudget %s selector %v does not select the injector's pods %v", pdb.Name, pdb.Spec.Selector, podLabels)
	}

	mwc := one[*admissionv1.MutatingWebhookConfiguration](t, objs)
	checkWebhooks(t, mwc, svc)
	checkNamespaceRouting(t, mwc, ns)
	return injector{deploy: d, svc: svc, mwc: mwc}
}

func checkInjectorDeployment(t *testing.T, d *appsv1.Deployment, serviceAccount string) {
	t.Helper()
	if d.Name != injectorName {
		t.Errorf("Deployment %s: want %s", d.Name, injectorName)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("Deployment %s replicas %s: want 2", d.Name, fmtPtr(d.Spec.Replicas))
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("Deployment %s: want rollingUpdate maxUnavailable 0, so a rollout keeps both replicas", d.Name)
	}
	// The injector refuses injection itself, whatever its namespace's label.
	meta, spec := d.Spec.Template.ObjectMeta.DeepCopy(), d.Spec.Template.Spec.DeepCopy()
	if res, err := inject.InjectPod(meta, spec, inject.InjectUnlessRefused, inject.Params{}); err != nil || res.Skipped != inject.SkipRefused {
		t.Errorf("Deployment %s: its pods would be injected in a namespace labelled enabled (%+v, %v): annotate them %s: \"false\"",
			d.Name, res, err, inject.AnnotationInject)
	}
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)
	if !selects(t, d.Spec.Selector, podLabels) {
		t.Errorf("Deployment %s selector does not select its own pods", d.Name)
	}
	if pod.ServiceAccountName != serviceAccount {
		t.Errorf("pod serviceAccountName %q: want %q", pod.ServiceAccountName, serviceAccount)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("pod automountServiceAccountToken: want false")
	}

	// Two replicas on two nodes.
	spread := false
	for _, c := range pod.TopologySpreadConstraints {
		if c.TopologyKey == corev1.LabelHostname && c.MaxSkew == 1 &&
			c.WhenUnsatisfiable == corev1.DoNotSchedule && selects(t, c.LabelSelector, podLabels) {
			spread = true
		}
	}
	if !spread {
		t.Errorf("no topologySpreadConstraint keeps the replicas on different nodes (%s, maxSkew 1, DoNotSchedule, selecting the pods): %+v",
			corev1.LabelHostname, pod.TopologySpreadConstraints)
	}

	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("pod has %d containers and %d init containers: want the injector alone", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.Privileged != nil && *sc.Privileged {
		t.Errorf("container %s securityContext %+v: want no privilege escalation, a read-only root, all capabilities dropped", c.Name, sc)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("container %s has no %s request", c.Name, r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Errorf("container %s has no memory limit", c.Name)
	}

	// The args: webhook, its port, and a certificate from the TLS Secret.
	if len(c.Args) == 0 || c.Args[0] != "webhook" || !slices.Contains(c.Args, "--listen=:8443") {
		t.Errorf("container %s args %q: want webhook --listen=:8443 …", c.Name, c.Args)
	}
	for _, flag := range []string{"--tls-cert=", "--tls-key="} {
		file := ""
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, flag); ok {
				file = v
			}
		}
		if vol := volumeOf(pod, c, file); vol == nil || vol.Secret == nil || vol.Secret.SecretName != tlsSecret {
			t.Errorf("container %s %s%q is not a file of Secret %s", c.Name, flag, file, tlsSecret)
		} else if vol.Secret.DefaultMode == nil || *vol.Secret.DefaultMode&0o007 != 0 {
			t.Errorf("Secret volume %s defaultMode %s: want no access for others", vol.Name, fmtPtr(vol.Secret.DefaultMode))
		}
	}
	for name, p := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Scheme != corev1.URISchemeHTTPS ||
			containerPort(t, c, p.HTTPGet.Port) != webhookPort {
			t.Errorf("container %s %s %+v: want GET https://:%d/healthz", c.Name, name, p, webhookPort)
		}
	}
}

// checkWebhooks checks both webhooks: where they send, what they match,
// and how they fail.
func checkWebhooks(t *testing.T, mwc *admissionv1.MutatingWebhookConfiguration, svc *corev1.Service) {
	t.Helper()
	if mwc.Name != injectorName {
		t.Errorf("MutatingWebhookConfiguration %s: want %s", mwc.Name, injectorName)
	}
	var names []string
	for _, w := range mwc.Webhooks {
		names = append(names, w.Name)
		want, ok := webhookWant[w.Name]
		if !ok {
			t.Errorf("webhook %s: unknown; want %s and %s", w.Name, namespaceWebhook, optInWebhook)
			continue
		}
		cc := w.ClientConfig
		if cc.URL != nil || cc.Service == nil || cc.Service.Name != svc.Name || cc.Service.Namespace != svc.Namespace ||
			cc.Service.Path == nil || *cc.Service.Path != want.path || cc.Service.Port != nil && *cc.Service.Port != svc.Spec.Ports[0].Port {
			t.Errorf("webhook %s clientConfig %+v: want Service %s/%s port %d path %s", w.Name, cc, svc.Namespace, svc.Name, svc.Spec.Ports[0].Port, want.path)
		}
		wantRules := []admissionv1.RuleWithOperations{{
			Operations: []admissionv1.OperationType{admissionv1.Create},
			Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: ptr(admissionv1.NamespacedScope)},
		}}
		if !reflect.DeepEqual(w.Rules, wantRules) {
			t.Errorf("webhook %s rules %+v: want pods CREATE v1 only", w.Name, w.Rules)
		}
		if w.NamespaceSelector == nil || !reflect.DeepEqual(*w.NamespaceSelector, want.selector) {
			t.Errorf("webhook %s namespaceSelector %+v: want %+v", w.Name, w.NamespaceSelector, want.selector)
		}
		if !reflect.DeepEqual(w.MatchConditions, want.conditions) {
			t.Errorf("webhook %s matchConditions %+v: want %+v", w.Name, w.MatchConditions, want.conditions)
		}
		if w.FailurePolicy == nil {
			t.Errorf("webhook %s: failurePolicy not set (docs/kubernetes.md explains the choice)", w.Name)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionv1.SideEffectClassNone {
			t.Errorf("webhook %s sideEffects %s: want None (dry-run requests must be safe)", w.Name, fmtPtr(w.SideEffects))
		}
		if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
			t.Errorf("webhook %s admissionReviewVersions %v: want [v1]", w.Name, w.AdmissionReviewVersions)
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds != 5 {
			t.Errorf("webhook %s timeoutSeconds %s: want 5", w.Name, fmtPtr(w.TimeoutSeconds))
		}
		if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionv1.IfNeededReinvocationPolicy {
			t.Errorf("webhook %s reinvocationPolicy %s: want IfNeeded", w.Name, fmtPtr(w.ReinvocationPolicy))
		}
		if w.ObjectSelector != nil && !reflect.DeepEqual(*w.ObjectSelector, metav1.LabelSelector{}) {
			t.Errorf("webhook %s has an objectSelector %+v: pods are chosen by annotation (matchConditions), not label", w.Name, w.ObjectSelector)
		}
	}
	slices.Sort(names)
	if want := []string{namespaceWebhook, optInWebhook}; !slices.Equal(names, want) {
		t.Errorf("webhooks %v: want %v", names, want)
	}
}

// checkNamespaceRouting sends namespaces through both webhooks'
// namespaceSelectors: each is served by at most one, and the right one.
func checkNamespaceRouting(t *testing.T, mwc *admissionv1.MutatingWebhookConfiguration, own *corev1.Namespace) {
	t.Helper()
	named := func(name string, kv ...string) labels.Set {
		s := labels.Set{corev1.LabelMetadataName: name}
		for i := 0; i+1 < len(kv); i += 2 {
			s[kv[i]] = kv[i+1]
		}
		return s
	}
	ownLabels := labels.Set{corev1.LabelMetadataName: own.Name} // the API server adds the name label
	for k, v := range own.Labels {
		ownLabels[k] = v
	}
	cases := []struct {
		labels labels.Set
		want   string // the webhook called, "" for none
	}{
		{named("shop", inject.LabelNamespace, "enabled"), namespaceWebhook},
		{named("shop", inject.LabelNamespace, "disabled"), ""},
		{named("shop"), optInWebhook},
		{named("shop", inject.LabelNamespace, "yes"), optInWebhook},
		{named("default"), optInWebhook},
		{named("kube-system"), ""},
		{named("kube-public"), ""},
		{named("kube-node-lease"), ""},
		{named(injectorNamespace), ""},
		{ownLabels, ""},
		// An operator who labels a system namespace enabled asked for it.
		{named("kube-system", inject.LabelNamespace, "enabled"), namespaceWebhook},
	}
	for _, c := range cases {
		var called []string
		for _, w := range mwc.Webhooks {
			if w.NamespaceSelector != nil && selects(t, w.NamespaceSelector, c.labels) {
				called = append(called, w.Name)
			}
		}
		var want []string
		if c.want != "" {
			want = []string{c.want}
		}
		if !slices.Equal(called, want) {
			t.Errorf("namespace with labels %v is sent to %v: want %v", c.labels, called, want)
		}
	}
}

func checkCertManager(t *testing.T, objs []object) {
	in := checkInjector(t, objs)
	ref := in.mwc.Annotations["cert-manager.io/inject-ca-from"]
	var cert *cmCertificate
	for _, c := range all[*cmCertificate](objs) {
		if c.Namespace+"/"+c.Name == ref {
			cert = c
		}
	}
	if cert == nil {
		t.Fatalf("MutatingWebhookConfiguration annotation cert-manager.io/inject-ca-from %q names no Certificate here", ref)
	}
	if cert.Spec.SecretName != tlsSecret || cert.Spec.IsCA || !slices.Contains(cert.Spec.DNSNames, serviceHost) {
		t.Errorf("Certificate %s: secretName %q isCA %v dnsNames %v: want the serving certificate for %s in %s",
			cert.Name, cert.Spec.SecretName, cert.Spec.IsCA, cert.Spec.DNSNames, serviceHost, tlsSecret)
	}
	// The chain: serving certificate ← CA Issuer ← CA Certificate ← self-signed Issuer.
	issuers := map[string]*cmIssuer{}
	for _, is := range all[*cmIssuer](objs) {
		issuers[is.Name] = is
	}
	caIssuer := issuers[cert.Spec.IssuerRef.Name]
	if cert.Spec.IssuerRef.Kind != "Issuer" || caIssuer == nil || caIssuer.Spec.CA == nil {
		t.Fatalf("Certificate %s issuerRef %+v: want a CA Issuer here", cert.Name, cert.Spec.IssuerRef)
	}
	var ca *cmCertificate
	for _, c := range all[*cmCertificate](objs) {
		if c.Spec.SecretName == caIssuer.Spec.CA.SecretName {
			ca = c
		}
	}
	if ca == nil || !ca.Spec.IsCA {
		t.Fatalf("Issuer %s signs with Secret %s, which no CA Certificate here makes", caIssuer.Name, caIssuer.Spec.CA.SecretName)
	}
	if root := issuers[ca.Spec.IssuerRef.Name]; root == nil || root.Spec.SelfSigned == nil {
		t.Errorf("CA Certificate %s issuerRef %+v: want the self-signed Issuer here", ca.Name, ca.Spec.IssuerRef)
	}
}

// withCerts copies the manifests to a temporary directory and writes the
// files `tidegate-inject certs` makes (ca.crt, tls.crt, tls.key) where
// webhook/static-cert expects them; it returns that copy of dir.
func withCerts(t *testing.T, dir string) string {
	t.Helper()
	tmp := t.TempDir()
	if err := os.CopyFS(tmp, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(tmp, dir, "certs")
	if err := os.MkdirAll(certs, 0o755); err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tidegate-inject-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: serviceHost}, DNSNames: []string{serviceHost},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.crt":  {Type: "CERTIFICATE", Bytes: caDER},
		"tls.crt": {Type: "CERTIFICATE", Bytes: leafDER},
		"tls.key": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(certs, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(tmp, dir)
}

func checkStaticCert(t *testing.T, objs []object) {
	in := checkInjector(t, objs)
	sec := one[*corev1.Secret](t, objs)
	if sec.Name != tlsSecret || sec.Type != corev1.SecretTypeTLS {
		t.Fatalf("Secret %s type %s: want %s of type %s", sec.Name, sec.Type, tlsSecret, corev1.SecretTypeTLS)
	}
	if _, err := tls.X509KeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]); err != nil {
		t.Errorf("Secret %s: tls.crt and tls.key are not a pair: %v", sec.Name, err)
	}
	leafBlock, _ := pem.Decode(sec.Data[corev1.TLSCertKey])
	if leafBlock == nil {
		t.Fatalf("Secret %s tls.crt is not PEM", sec.Name)
	}
	leaf, err := x509.ParseCertificate(leafBlock.Bytes)
	if err != nil {
		t.Fatalf("Secret %s tls.crt: %v", sec.Name, err)
	}
	for _, w := range in.mwc.Webhooks {
		if string(w.ClientConfig.CABundle) != string(sec.Data["ca.crt"]) {
			t.Errorf("webhook %s caBundle is not the Secret's ca.crt", w.Name)
		}
		// What the API server does: trust only caBundle, call serviceHost.
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(w.ClientConfig.CABundle) {
			t.Errorf("webhook %s caBundle holds no PEM certificate", w.Name)
			continue
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: serviceHost, Roots: pool}); err != nil {
			t.Errorf("webhook %s: the API server would refuse the injector's certificate: %v", w.Name, err)
		}
	}
}

// selects reports whether sel matches set; a bad selector fails t.
func selects(t *testing.T, sel *metav1.LabelSelector, set labels.Set) bool {
	t.Helper()
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %+v: %v", sel, err)
		return false
	}
	return s.Matches(set)
}

// containerPort resolves a port (number or name) against c's ports; 0 when
// a name is not there.
func containerPort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Errorf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

// volumeOf is the volume that holds file in container c, or nil.
func volumeOf(pod corev1.PodSpec, c corev1.Container, file string) *corev1.Volume {
	for _, m := range c.VolumeMounts {
		if file == "" || !strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == m.Name {
				return &pod.Volumes[i]
			}
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// fmtPtr prints *v, or "unset" for nil.
func fmtPtr[T any](v *T) string {
	if v == nil {
		return "unset"
	}
	return fmt.Sprint(*v)
}
