package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/tidegate/tidegate/deploy/inject"
	"github.com/tidegate/tidegate/test/wait"
)

func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli(args, env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb})
	return code, out.String(), errb.String()
}

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: registry.example/web:1.4.2
        ports:
        - {name: http, containerPort: 8080}
`

const service = `# the shop's front door
apiVersion: v1
kind: Service
metadata:
  name: web   # keep this comment
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - name: web
    port: 80
    targetPort: 8080
`

const configMap = `apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: "1"}
`

// input has a leading separator, a comment-only document and a "--- #"
// separator with a comment.
var input = "---\n" + deployment + "---\n# only a comment\n\n---\n" + service + "--- # settings\n" + configMap

func splitOut(t *testing.T, out string) []string {
	t.Helper()
	var docs []string
	for _, d := range splitDocuments([]byte(out)) {
		docs = append(docs, d.text)
	}
	return docs
}

func toJSON(t *testing.T, doc string) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return j
}

// sameJSON compares two JSON documents as Kubernetes does: an empty
// object, an empty list and null are the same as an absent member.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(dropEmpty(x), dropEmpty(y))
}

func dropEmpty(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			e = dropEmpty(e)
			if e == nil {
				delete(v, k)
			} else {
				v[k] = e
			}
		}
		if len(v) == 0 {
			return nil
		}
	case []any:
		for i := range v {
			v[i] = dropEmpty(v[i])
		}
		if len(v) == 0 {
			return nil
		}
	}
	return v
}

const token = "0123456789abcdef0123456789abcdef"

func TestInjectMultiDocument(t *testing.T) {
	code, out, errs := runCLI(t, input, "inject", "-f", "-", "--token", token)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.HasPrefix(out, "---") || strings.Contains(out, "only a comment") {
		t.Errorf("empty or comment-only documents kept:\n%s", out)
	}
	docs := splitOut(t, out)
	if len(docs) != 3 {
		t.Fatalf("%d documents out, want 3:\n%s", len(docs), out)
	}
	// The workload is what deploy/inject makes of it, and decodes strictly.
	want, res, err := inject.Inject(toJSON(t, deployment), inject.InjectUnlessRefused, inject.Params{Token: func() (string, error) { return token, nil }})
	if err != nil || !res.Injected {
		t.Fatalf("Inject: %+v %v", res, err)
	}
	if !sameJSON(t, toJSON(t, docs[0]), want) {
		t.Errorf("document 1 is not Inject's output:\n%s", docs[0])
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &d); err != nil {
		t.Errorf("output does not decode strictly: %v", err)
	}
	// The others come out as they went in, comments and all.
	if docs[1] != service || docs[2] != configMap {
		t.Errorf("untouched documents changed:\n%s\n---\n%s", docs[1], docs[2])
	}
	for _, w := range res.Warnings {
		if !strings.Contains(errs, "document 1 (line 2, Deployment shop/web): warning: "+w) {
			t.Errorf("stderr lacks Inject's warning %q:\n%s", w, errs)
		}
	}
	if !regexp.MustCompile(`document 2 \(line 23, Service shop/web\): port web \(80\) targets port number 8080, which tidegate fronts in document 1 .* bypasses tidegate.* targetPort: http .*numbered target ports`).MatchString(errs) {
		t.Errorf("no bypass warning for the numbered targetPort:\n%s", errs)
	}
	// Once the Service targets the name, no warning.
	named := strings.Replace(input, "targetPort: 8080", "targetPort: http", 1)
	if _, _, errs := runCLI(t, named, "inject", "-f", "-", "--token", token); strings.Contains(errs, "bypasses") {
		t.Errorf("bypass warning for a named targetPort:\n%s", errs)
	}
}

func TestInjectUninjectRoundTrip(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "in.yaml")
	if err := os.WriteFile(file, []byte(input), 0o600); err != nil {
		t.Fatal(err)
	}
	code, injected, errs := runCLI(t, "", "inject", "-f", file)
	if code != 0 {
		t.Fatalf("inject: exit %d: %s", code, errs)
	}
	code, again, errs := runCLI(t, injected, "inject", "-f", "-")
	if code != 0 || again != injected {
		t.Errorf("injecting the injected output changed it (exit %d, %s):\n%s\nvs\n%s", code, errs, again, injected)
	}
	code, back, errs := runCLI(t, injected, "uninject", "-f", "-")
	if code != 0 {
		t.Fatalf("uninject: exit %d: %s", code, errs)
	}
	got, orig := splitOut(t, back), splitOut(t, input)
	if len(got) != len(orig) {
		t.Fatalf("%d documents back, want %d", len(got), len(orig))
	}
	for i := range got {
		if !sameJSON(t, toJSON(t, got[i]), toJSON(t, orig[i])) {
			t.Errorf("document %d does not round-trip:\n%s\nwant\n%s", i+1, got[i], orig[i])
		}
	}
}

func TestManifestErrors(t *testing.T) {
	badPort := strings.Replace(deployment, "labels: {app: web}\n    spec:", "labels: {app: web}\n      annotations: {tidegate.io/app-port: \"9999\"}\n    spec:", 1)
	for _, c := range []struct {
		name, stdin string
		args        []string
		code        int
		want        []string
	}{
		{"not YAML", deployment + "---\nkind: [\n", []string{"inject", "-f", "-"}, 1, []string{"document 2 (line 19): not YAML", "line 19"}},
		{"no kind", "a: b\n", []string{"inject", "-f", "-"}, 1, []string{"document 1 (line 1): no apiVersion or kind"}},
		{"a list, not an object", "- a\n", []string{"inject", "-f", "-"}, 1, []string{"document 1 (line 1): not a Kubernetes object"}},
		{"inject error", configMap + "---\n" + badPort, []string{"inject", "-f", "-"}, 1, []string{"document 2 (line 6, Deployment shop/web): ", "9999"}},
		{"no -f", "", []string{"inject"}, 2, []string{"-f is required"}},
		{"missing file", "", []string{"uninject", "-f", "/nonexistent/x.yaml"}, 2, []string{"/nonexistent/x.yaml"}},
		{"bad mode", "", []string{"inject", "-f", "-", "--mode", "sidecar"}, 2, []string{`"sidecar"`}},
		{"bad quantity", "", []string{"inject", "-f", "-", "--cpu-request", "lots"}, 2, []string{`--cpu-request "lots"`}},
		{"bad port", "", []string{"inject", "-f", "-", "--health-port", "70000"}, 2, []string{"--health-port 70000"}},
		{"drain delay past timeout", "", []string{"inject", "-f", "-", "--drain-delay", "40s"}, 2, []string{"drain delay 40s"}},
		{"unknown flag", "", []string{"inject", "--nope"}, 2, []string{"nope"}},
		{"extra argument", "", []string{"inject", "-f", "-", "x.yaml"}, 2, []string{`unexpected arguments ["x.yaml"]`}},
		{"unknown command", "", []string{"kube-inject"}, 2, []string{`unknown command "kube-inject"`}},
		{"webhook without certs", "", []string{"webhook"}, 2, []string{"--tls-cert and --tls-key are required"}},
		{"certs without hosts", "", []string{"certs", "--out", "x"}, 2, []string{"--hosts and --out are required"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := runCLI(t, c.stdin, c.args...)
			if code != c.code || out != "" {
				t.Errorf("exit %d, stdout %q; want exit %d and nothing on stdout; stderr:\n%s", code, out, c.code, errs)
			}
			for _, w := range c.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "", "version")
	if code != 0 || !strings.HasPrefix(out, "tidegate-inject ") {
		t.Errorf("exit %d: %q", code, out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCertsAndWebhook: certs writes a pair, webhook serves with it, and
// SIGTERM stops it with exit 0.
func TestCertsAndWebhook(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := runCLI(t, "", "certs", "--hosts", "localhost,127.0.0.1", "--out", dir, "--validity", "1h")
	if code != 0 || !strings.Contains(out, "tls.key") {
		t.Fatalf("certs: exit %d: %s %s", code, out, errs)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tls.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("tls.key: %v %v, want mode 0600", fi, err)
	}
	if code, _, errs := runCLI(t, "", "certs", "--hosts", "localhost", "--out", dir); code != 2 || !strings.Contains(errs, "--force") {
		t.Errorf("certs over existing files: exit %d: %s", code, errs)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	signals := make(chan os.Signal, 1)
	stderr := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- cli([]string{"webhook", "--listen", "127.0.0.1:0", "--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key")},
			env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: stderr, signals: signals})
	}()
	listen := regexp.MustCompile(`"listen":"(127\.0\.0\.1:\d+)"`)
	var addr string
	wait.Until(t, 10*time.Second, "webhook logs its address", func() (bool, string) {
		m := listen.FindStringSubmatch(stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil, stderr.String()
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz: %d", resp.StatusCode)
	}
	tr.CloseIdleConnections()
	signals <- syscall.SIGTERM
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("webhook exit %d after SIGTERM: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("webhook did not stop after SIGTERM")
	}
	if !strings.Contains(stderr.String(), `"phase":"stopped"`) {
		t.Errorf("no stopped log line:\n%s", stderr.String())
	}
}

// TestSeparatorLineContent: YAML lets a document start on its "---" line;
// that document must come out, not be dropped.
func TestSeparatorLineContent(t *testing.T) {
	in := configMap + `--- {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"inline"}}` + "\n" +
		"--- |\n  a top-level block scalar\n"
	docs := splitDocuments([]byte(in))
	if len(docs) != 3 {
		t.Fatalf("%d documents, want 3: %+v", len(docs), docs)
	}
	if !strings.Contains(docs[1].text, `"name":"inline"`) || docs[1].line != 5 {
		t.Errorf("document 2 lost its content or line: %d %q", docs[1].line, docs[1].text)
	}
	if !strings.Contains(docs[2].text, "block scalar") {
		t.Errorf("document 3: %q", docs[2].text)
	}
	code, out, errs := runCLI(t, configMap+`--- {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"inline"}}`+"\n", "inject", "-f", "-")
	if code != 0 || !strings.Contains(out, `"name":"inline"`) {
		t.Errorf("exit %d, the inline document dropped from the output:\n%s\n%s", code, out, errs)
	}
}
