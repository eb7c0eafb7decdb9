package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tidegate/tidegate/deploy/inject"
	"github.com/tidegate/tidegate/test/wait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixedParams makes injection reproducible: the same token every time.
func fixedParams() inject.Params {
	return inject.Params{Token: func() (string, error) { return "0123456789abcdef0123456789abcdef", nil }}
}

// podJSON is a pod as a ReplicaSet creates it, with a field the k8s.io
// types do not know (a newer API server's) that the patch must keep.
const podJSON = `{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "web-6d4cf56db6-x7k2p", "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6", "uid": "d9e1c2a0-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]},
  "spec": {
    "futureField": {"enabled": true},
    "containers": [{
      "name": "app", "image": "registry.example/web:1.4.2",
      "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
      "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
      "resources": {"requests": {"cpu": "0.25", "memory": "128Mi"}}
    }],
    "serviceAccountName": "web"
  }
}`

func decodePod(t *testing.T, raw []byte) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("decode pod: %v\n%s", err, raw)
	}
	return &p
}

// reviewBody is an AdmissionReview v1 for obj.
func reviewBody(t testing.TB, uid string, op admissionv1.Operation, kind string, obj []byte, dryRun bool) []byte {
	t.Helper()
	ar := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionV1, Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID(uid), Operation: op, Namespace: "shop", DryRun: &dryRun,
			Kind:     metav1.GroupVersionKind{Version: "v1", Kind: kind},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: strings.ToLower(kind) + "s"},
		},
	}
	ar.Request.Object.Raw = obj
	b, err := json.Marshal(ar)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testServer is a Server serving TLS on 127.0.0.1 with certificates from
// GenerateCerts in a temporary directory.
type testServer struct {
	s        *Server
	url      string
	client   *http.Client
	reg      *prometheus.Registry
	logs     *observer.ObservedLogs
	dir      string
	caPool   *x509.CertPool
	served   chan error
	cancel   context.CancelFunc
	addr     string
	certFile string
	keyFile  string
}

func writeCertPair(t *testing.T, dir string) (caPEM []byte) {
	t.Helper()
	ca, cert, key, err := GenerateCerts([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(dir, "tls.crt"), cert)
	writeAtomic(t, filepath.Join(dir, "tls.key"), key)
	return ca
}

// writeAtomic replaces path's contents in one rename, as a kubelet
// updating a mounted Secret does.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func startServer(t *testing.T, p inject.Params) *testServer {
	t.Helper()
	ts := &testServer{dir: t.TempDir(), reg: prometheus.NewRegistry(), caPool: x509.NewCertPool(), served: make(chan error, 1)}
	ts.certFile, ts.keyFile = filepath.Join(ts.dir, "tls.crt"), filepath.Join(ts.dir, "tls.key")
	ts.caPool.AppendCertsFromPEM(writeCertPair(t, ts.dir))
	core, logs := observer.New(zap.DebugLevel)
	ts.logs = logs
	s, err := New(Options{CertFile: ts.certFile, KeyFile: ts.keyFile, Params: p, Log: zap.New(core),
		Registerer: ts.reg, CertCheckInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts.s = s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ts.url = "https://" + ts.addr
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.served <- s.Serve(ctx, ln) }()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ts.caPool}, ForceAttemptHTTP2: true}
	ts.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		cancel()
		select {
		case err := <-ts.served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(ShutdownTimeout + 5*time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return ts
}

func (ts *testServer) post(t *testing.T, path, contentType string, body []byte) (int, *admissionv1.AdmissionReview) {
	t.Helper()
	resp, err := ts.client.Post(ts.url+path, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var ar admissionv1.AdmissionReview
	if err := json.Unmarshal(raw, &ar); err != nil {
		t.Fatalf("POST %s: %d answer is not an AdmissionReview: %v\n%s", path, resp.StatusCode, err, raw)
	}
	if ar.APIVersion != admissionV1 || ar.Kind != "AdmissionReview" || ar.Response == nil {
		t.Fatalf("POST %s: %d malformed AdmissionReview: %s", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, &ar
}

func (ts *testServer) count(path, result string) float64 {
	return testutil.ToFloat64(ts.s.m.admissions.WithLabelValues(path, result))
}

// TestMutatePatchGivesInjectPod is the webhook's core promise: the patch,
// applied to the pod as the API server sent it, gives exactly the pod
// InjectPod makes, keeps what the types do not know, and a second round
// (reinvocation) changes nothing.
func TestMutatePatchGivesInjectPod(t *testing.T) {
	ts := startServer(t, fixedParams())
	code, ar := ts.post(t, PathMutate, "application/json", reviewBody(t, "uid-1", admissionv1.Create, "Pod", []byte(podJSON), false))
	r := ar.Response
	if code != http.StatusOK || !r.Allowed || r.UID != "uid-1" || r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch || len(r.Patch) == 0 {
		t.Fatalf("answer %d %+v: want 200, allowed, uid-1, a JSONPatch", code, r)
	}
	patched, err := applyPatch([]byte(podJSON), r.Patch)
	if err != nil {
		t.Fatalf("apply %s: %v", r.Patch, err)
	}

	want := decodePod(t, []byte(podJSON))
	res, err := inject.InjectPod(&want.ObjectMeta, &want.Spec, inject.InjectUnlessRefused, fixedParams())
	if err != nil || !res.Injected {
		t.Fatalf("InjectPod: %+v, %v", res, err)
	}
	if got := decodePod(t, patched); !equality.Semantic.DeepEqual(got, want) {
		gj, _ := json.MarshalIndent(got, "", " ")
		wj, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("patched pod is not InjectPod's:\n got %s\nwant %s", gj, wj)
	}
	var generic map[string]any
	if err := json.Unmarshal(patched, &generic); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(generic["spec"].(map[string]any)["futureField"], map[string]any{"enabled": true}) {
		t.Errorf("a field the types do not know was lost: %s", patched)
	}
	var wantWarnings []string
	for _, w := range res.Warnings {
		wantWarnings = append(wantWarnings, warningPrefix+w)
	}
	if !reflect.DeepEqual(r.Warnings, wantWarnings) {
		t.Errorf("warnings %q, want InjectPod's %q", r.Warnings, wantWarnings)
	}

	code, ar = ts.post(t, PathMutate, "application/json", reviewBody(t, "uid-2", admissionv1.Create, "Pod", patched, false))
	if code != http.StatusOK || !ar.Response.Allowed || ar.Response.Patch != nil || ar.Response.PatchType != nil || ar.Response.UID != "uid-2" {
		t.Errorf("reinvocation on the patched pod: %d %+v, want allowed without a patch", code, ar.Response)
	}
	if got := ts.count(PathMutate, resultInjected); got != 1 {
		t.Errorf("injected count %v, want 1", got)
	}
	if got := ts.count(PathMutate, resultSkipped); got != 1 {
		t.Errorf("skipped count %v, want 1", got)
	}
	entries := ts.logs.FilterMessage("admission").FilterField(zap.String("uid", "uid-1")).All()
	if len(entries) != 1 {
		t.Fatalf("log lines for uid-1: %d, want 1", len(entries))
	}
	f := entries[0].ContextMap()
	if f["namespace"] != "shop" || f["pod"] != "web-6d4cf56db6-x7k2p" || f["result"] != resultInjected {
		t.Errorf("log fields %v", f)
	}
}

// TestMutateGenerateNamePod: a pod made by a controller has no name and no
// namespace in its object yet; the patch must not add them.
func TestMutateGenerateNamePod(t *testing.T) {
	ts := startServer(t, fixedParams())
	pod := decodePod(t, []byte(podJSON))
	pod.Name, pod.Namespace, pod.GenerateName = "", "", "web-6d4cf56db6-"
	raw, _ := json.Marshal(pod)
	code, ar := ts.post(t, PathMutate, "application/json", reviewBody(t, "uid-g", admissionv1.Create, "Pod", raw, false))
	if code != http.StatusOK || !ar.Response.Allowed || len(ar.Response.Patch) == 0 {
		t.Fatalf("answer %d %+v", code, ar.Response)
	}
	patched, err := applyPatch(raw, ar.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	got := decodePod(t, patched)
	if got.Name != "" || got.Namespace != "" || got.GenerateName != "web-6d4cf56db6-" {
		t.Errorf("patch changed the pod's identity: name %q namespace %q generateName %q", got.Name, got.Namespace, got.GenerateName)
	}
	f := ts.logs.FilterField(zap.String("uid", "uid-g")).All()[0].ContextMap()
	if f["pod"] != "web-6d4cf56db6-" || f["namespace"] != "shop" {
		t.Errorf("log names the pod %v in %v, want its generateName in the request's namespace", f["pod"], f["namespace"])
	}
}

func TestMutateOptInOnlyPodsThatAsk(t *testing.T) {
	ts := startServer(t, fixedParams())
	code, ar := ts.post(t, PathMutateOptIn, "application/json", reviewBody(t, "u1", admissionv1.Create, "Pod", []byte(podJSON), false))
	if code != http.StatusOK || !ar.Response.Allowed || ar.Response.Patch != nil {
		t.Errorf("opt-in, pod did not ask: %d %+v, want allowed without patch", code, ar.Response)
	}
	pod := decodePod(t, []byte(podJSON))
	pod.Annotations = map[string]string{inject.AnnotationInject: "true"}
	raw, _ := json.Marshal(pod)
	code, ar = ts.post(t, PathMutateOptIn, "application/json", reviewBody(t, "u2", admissionv1.Create, "Pod", raw, false))
	if code != http.StatusOK || !ar.Response.Allowed || len(ar.Response.Patch) == 0 {
		t.Errorf("opt-in, pod asked: %d %+v, want a patch", code, ar.Response)
	}
	pod.Annotations[inject.AnnotationInject] = "false"
	raw, _ = json.Marshal(pod)
	code, ar = ts.post(t, PathMutate, "application/json", reviewBody(t, "u3", admissionv1.Create, "Pod", raw, false))
	if code != http.StatusOK || !ar.Response.Allowed || ar.Response.Patch != nil {
		t.Errorf("enabled namespace, pod refused: %d %+v, want allowed without patch", code, ar.Response)
	}
}

func TestOnlyPodCreateIsMutated(t *testing.T) {
	ts := startServer(t, fixedParams())
	for _, c := range []struct {
		op   admissionv1.Operation
		kind string
	}{{admissionv1.Update, "Pod"}, {admissionv1.Delete, "Pod"}, {admissionv1.Create, "Deployment"}} {
		code, ar := ts.post(t, PathMutate, "application/json", reviewBody(t, "u", c.op, c.kind, []byte(podJSON), false))
		if code != http.StatusOK || !ar.Response.Allowed || ar.Response.Patch != nil || ar.Response.UID != "u" {
			t.Errorf("%s %s: %d %+v, want allowed without patch", c.op, c.kind, code, ar.Response)
		}
	}
}

// TestDryRunSameAnswer: a dry run gets the answer a real request gets.
func TestDryRunSameAnswer(t *testing.T) {
	ts := startServer(t, fixedParams())
	_, real := ts.post(t, PathMutate, "application/json", reviewBody(t, "u", admissionv1.Create, "Pod", []byte(podJSON), false))
	_, dry := ts.post(t, PathMutate, "application/json", reviewBody(t, "u", admissionv1.Create, "Pod", []byte(podJSON), true))
	if !reflect.DeepEqual(real.Response, dry.Response) {
		t.Errorf("dry run answered\n%+v\nreal\n%+v", dry.Response, real.Response)
	}
	if len(ts.logs.FilterField(zap.Bool("dry_run", true)).All()) != 1 {
		t.Error("the dry run is not logged as one")
	}
}

// TestInjectErrors: a pod that asked for tidegate and cannot have it is
// denied with the reason; one that did not ask is admitted with a warning.
func TestInjectErrors(t *testing.T) {
	ts := startServer(t, fixedParams())
	pod := decodePod(t, []byte(podJSON))
	pod.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.StrVal = "no-such-port"
	raw, _ := json.Marshal(pod)
	code, ar := ts.post(t, PathMutate, "application/json", reviewBody(t, "u1", admissionv1.Create, "Pod", raw, false))
	r := ar.Response
	if code != http.StatusOK || !r.Allowed || r.Patch != nil || len(r.Warnings) == 0 ||
		!strings.HasPrefix(r.Warnings[len(r.Warnings)-1], "tidegate: not injected: ") || !strings.Contains(r.Warnings[len(r.Warnings)-1], "no-such-port") {
		t.Errorf("not asked, not injectable: %d %+v, want allowed with a warning naming the port", code, r)
	}

	pod.Annotations = map[string]string{inject.AnnotationInject: "true"}
	raw, _ = json.Marshal(pod)
	code, ar = ts.post(t, PathMutate, "application/json", reviewBody(t, "u2", admissionv1.Create, "Pod", raw, false))
	r = ar.Response
	if code != http.StatusOK || r.Allowed || r.Patch != nil || r.Result == nil || r.Result.Code != http.StatusBadRequest ||
		!strings.Contains(r.Result.Message, "no-such-port") || !strings.Contains(r.Result.Message, "web-6d4cf56db6-x7k2p") || r.UID != "u2" {
		t.Errorf("asked, not injectable: %d %+v, want denied 400 naming the pod and the port", code, r)
	}
	if ts.count(PathMutate, resultDenied) != 1 || ts.count(PathMutate, resultSkipped) != 1 {
		t.Errorf("denied %v skipped %v, want 1 and 1", ts.count(PathMutate, resultDenied), ts.count(PathMutate, resultSkipped))
	}
}

// TestPanicIs500: a panic under the handler (here a token source given in
// Params) is an error answer and a log line, and the server goes on.
func TestPanicIs500(t *testing.T) {
	ts := startServer(t, inject.Params{Token: func() (string, error) { panic("token source broke") }})
	code, ar := ts.post(t, PathMutate, "application/json", reviewBody(t, "u", admissionv1.Create, "Pod", []byte(podJSON), false))
	if code != http.StatusInternalServerError || ar.Response.Allowed || ar.Response.Result == nil || ar.Response.Result.Code != 500 {
		t.Errorf("panic answered %d %+v, want 500", code, ar.Response)
	}
	if n := len(ts.logs.FilterMessage("admission handler panicked").All()); n != 1 {
		t.Errorf("panic log lines: %d", n)
	}
	resp, err := ts.client.Get(ts.url + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz after panic: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestBadRequests(t *testing.T) {
	ts := startServer(t, fixedParams())
	v1beta1 := bytes.Replace(reviewBody(t, "u", admissionv1.Create, "Pod", []byte(podJSON), false), []byte(admissionV1+`"`), []byte(admissionV1beta1+`"`), 1)
	for _, c := range []struct {
		name, contentType string
		body              []byte
		code              int
		msg               string
	}{
		{"v1beta1", "application/json", v1beta1, 400, "admission.k8s.io/v1beta1 is not supported"},
		{"garbage", "application/json", []byte("\x00{not json"), 400, "not an AdmissionReview"},
		{"no request", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, "no request"},
		{"not a pod", "application/json", reviewBody(t, "u", admissionv1.Create, "Pod", []byte(`{"spec":{"containers":"nope"}}`), false), 400, "not a Pod"},
		{"content type", "text/plain", []byte(`{}`), 415, "want application/json"},
		{"huge", "application/json", bytes.Repeat([]byte(" "), MaxBodyBytes+1), 413, "larger than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, ar := ts.post(t, PathMutate, c.contentType, c.body)
			if code != c.code || ar.Response.Allowed || ar.Response.Result == nil || !strings.Contains(ar.Response.Result.Message, c.msg) {
				t.Errorf("answer %d %+v, want %d naming %q", code, ar.Response, c.code, c.msg)
			}
		})
	}
	// Streamed with no length, the bound holds while reading.
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for range MaxBodyBytes/len(chunk) + 2 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	resp, err := ts.client.Post(ts.url+PathMutate, "application/json", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pr.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed huge body: %d, want 413", resp.StatusCode)
	}
	resp, err = ts.client.Get(ts.url + PathMutate)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /mutate: %d, want 405", resp.StatusCode)
	}
	if got := ts.count(PathMutate, resultError); got != 7 {
		t.Errorf("error count %v, want 7", got)
	}
}

func TestTLSVersionAndHealthz(t *testing.T) {
	ts := startServer(t, fixedParams())
	resp, err := ts.client.Get(ts.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("healthz: %d %q %+v", resp.StatusCode, body, resp.TLS)
	}
	c, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.caPool, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
}

// servedSerial is the serial of the certificate a new handshake sees.
func (ts *testServer) servedSerial(pool *x509.CertPool) (string, error) {
	c, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: pool})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

func serialOf(t *testing.T, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

func TestCertificateReload(t *testing.T) {
	ts := startServer(t, fixedParams())
	first := serialOf(t, ts.certFile)
	if got, err := ts.servedSerial(ts.caPool); err != nil || got != first {
		t.Fatalf("served %q (%v), want %q", got, err, first)
	}
	ts.caPool.AppendCertsFromPEM(writeCertPair(t, ts.dir))
	second := serialOf(t, ts.certFile)
	wait.Until(t, 10*time.Second, "new certificate served", func() (bool, string) {
		got, err := ts.servedSerial(ts.caPool)
		return err == nil && got == second, "serial " + got
	})
	if n := testutil.ToFloat64(ts.s.m.certReloads.WithLabelValues("ok")); n < 1 {
		t.Errorf("ok reloads %v", n)
	}

	errorsBefore := testutil.ToFloat64(ts.s.m.certReloads.WithLabelValues("error"))
	writeAtomic(t, ts.certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	wait.Until(t, 10*time.Second, "broken certificate noticed", func() (bool, string) {
		return testutil.ToFloat64(ts.s.m.certReloads.WithLabelValues("error")) > errorsBefore, ""
	})
	if got, err := ts.servedSerial(ts.caPool); err != nil || got != second {
		t.Errorf("after a broken certificate: served %q (%v), want the old %q", got, err, second)
	}
	if len(ts.logs.FilterMessage("certificate reload failed; keeping the old certificate").All()) == 0 {
		t.Error("broken certificate not logged")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	writeCertPair(t, dir)
	for _, c := range []struct {
		name string
		o    Options
		msg  string
	}{
		{"cert without key", Options{CertFile: filepath.Join(dir, "tls.crt")}, "give both files"},
		{"missing files", Options{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: filepath.Join(dir, "nope.key")}, "nope.crt"},
		{"key for cert", Options{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.crt")}, "tls.crt"},
		{"negative interval", Options{CertCheckInterval: -time.Second}, "-1s"},
		{"bad params", Options{Params: inject.Params{Mode: "sidecar"}}, `"sidecar"`},
	} {
		if _, err := New(c.o); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want one naming %q", c.name, err, c.msg)
		}
	}
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background(), ln); err == nil || !strings.Contains(err.Error(), "CertFile") {
		t.Errorf("Serve without a certificate: %v", err)
	}
}

func TestGenerateCerts(t *testing.T) {
	caPEM, certPEM, keyPEM, err := GenerateCerts([]string{"tidegate-inject.tidegate-system.svc", "127.0.0.1", "::1"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA does not parse")
	}
	for _, host := range []string{"tidegate-inject.tidegate-system.svc", "127.0.0.1", "::1"} {
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.svc"}); err == nil {
		t.Error("verifies for a host it was not made for")
	}
	if d := time.Until(pair.Leaf.NotAfter); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("expires in %s, want 24h", d)
	}
	for _, bad := range []struct {
		hosts []string
		v     time.Duration
	}{{nil, time.Hour}, {[]string{"a"}, 0}, {[]string{"a", " "}, time.Hour}} {
		if _, _, _, err := GenerateCerts(bad.hosts, bad.v); err == nil {
			t.Errorf("GenerateCerts(%q, %s): no error", bad.hosts, bad.v)
		}
	}
}
