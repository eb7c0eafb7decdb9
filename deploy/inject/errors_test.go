package inject

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// pod is a Pod named shop/web with the given annotations (YAML map lines,
// indented 4) and containers (YAML list, indented 2).
func pod(annotations, containers string) string {
	if annotations != "" {
		annotations = "  annotations:\n" + annotations
	}
	return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n" + annotations + "spec:\n  containers:\n" + containers
}

const appContainer = `  - name: app
    image: example.com/app:1
    ports:
    - name: http
      containerPort: 8080
`

func TestErrors(t *testing.T) {
	bad := func() (string, error) { return "", errors.New("entropy ran out") }
	cases := []struct {
		name     string
		doc      string // YAML, or raw JSON when it starts with "!"
		params   Params
		object   string
		field    string
		msg      string // a part of Msg
		explicit bool
	}{
		{name: "not JSON", doc: "!{not json", object: "document", msg: "not a JSON object"},
		{name: "JSON array", doc: "![1,2]", object: "document", msg: "give one Kubernetes object"},
		{name: "no kind", doc: "apiVersion: v1\nmetadata: {name: x}\n", object: "object x", msg: "no apiVersion or kind"},
		{name: "unknown kind", doc: "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r, namespace: ns}\n",
			object: "Rollout ns/r", field: "kind", msg: "apps/v1 Deployment"},
		{name: "old apiVersion", doc: "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: r}\n",
			object: "Deployment r", field: "kind", msg: "is not a kind the injector knows"},
		{name: "unknown field", doc: strings.Replace(pod("", appContainer), "    ports:", "    prots: []\n    ports:", 1),
			object: "Pod shop/web", field: "spec.containers[app].prots", msg: `unknown field "prots"`},
		{name: "miscased field", doc: strings.Replace(pod("", appContainer), "    image:", "    Image:", 1),
			object: "Pod shop/web", field: "spec.containers[app].Image", msg: "case-sensitive"},
		{name: "wrong type", doc: strings.Replace(pod("", appContainer), "containerPort: 8080", "containerPort: eighty", 1),
			object: "Pod shop/web", msg: "cannot unmarshal string"},
		{name: "trailing data", doc: `!{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"}} {}`, object: "document", msg: "after top-level value"},
		{name: "no containers", doc: strings.Replace(pod("", ""), "containers:", "containers: []", 1), object: "Pod shop/web", field: "spec.containers", msg: "no containers"},
		{name: "no template", doc: "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec: {}\n",
			object: "ReplicationController rc", field: "spec.template", msg: "no pod template"},
		{name: "unknown item in a List", doc: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: x.io/v1\n  kind: Thing\n  metadata: {name: t}\n",
			object: "Thing t", field: "kind", msg: "not a kind"},
		{name: "app port that does not exist", doc: pod("    tidegate.io/app-port: \"9999\"\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/app-port]", msg: `container app has no port "9999" (its ports: http 8080/TCP)`, explicit: true},
		{name: "app port by a name that does not exist", doc: pod("    tidegate.io/app-port: web\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/app-port]", msg: `no port "web"`, explicit: true},
		{name: "UDP app port", doc: pod("    tidegate.io/app-port: dns\n", "  - name: app\n    image: a\n    ports:\n    - {name: dns, containerPort: 53, protocol: UDP}\n"),
			object: "Pod shop/web", field: "metadata.annotations[tidegate.io/app-port]", msg: "tidegate fronts TCP", explicit: true},
		{name: "app container that does not exist", doc: pod("    tidegate.io/app-container: api\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/app-container]", msg: `no container "api" (the pod's containers: app)`, explicit: true},
		{name: "no port", doc: pod("", "  - name: app\n    image: a\n"), object: "Pod shop/web", field: "spec.containers[app].ports", msg: "declares no TCP port"},
		{name: "ambiguous ports", doc: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    spec:\n      containers:\n      - name: app\n        image: a\n        ports:\n        - {name: web, containerPort: 8080}\n        - {name: admin, containerPort: 9090}\n",
			object: "Deployment shop/web", field: "spec.template.spec.containers[app].ports", msg: "several TCP ports (web 8080/TCP, admin 9090/TCP) and none is named http: set the annotation tidegate.io/app-port"},
		{name: "named probe port that does not exist", doc: pod("", appContainer+"    readinessProbe:\n      httpGet: {path: /r, port: metrics}\n"),
			object: "Pod shop/web", field: "spec.containers[app].readinessProbe.httpGet.port", msg: `port "metrics" is not a port of container app (its ports: http 8080/TCP)`},
		{name: "probe port of another container", doc: pod("", appContainer+"  - name: side\n    image: b\n    livenessProbe:\n      tcpSocket: {port: http}\n"),
			object: "Pod shop/web", field: "spec.containers[side].livenessProbe.tcpSocket.port", msg: "not a port of container side"},
		{name: "tcpSocket preStop", doc: pod("", appContainer+"    lifecycle:\n      preStop:\n        tcpSocket: {port: 8080}\n"),
			object: "Pod shop/web", field: "spec.containers[app].lifecycle.preStop.tcpSocket", msg: "does not run a tcpSocket preStop hook"},
		{name: "preStop httpGet on a missing port", doc: pod("", appContainer+"    lifecycle:\n      preStop:\n        httpGet: {path: /q, port: admin}\n"),
			object: "Pod shop/web", field: "spec.containers[app].lifecycle.preStop.httpGet.port", msg: `port "admin"`},
		{name: "bad inject value", doc: pod("    tidegate.io/inject: \"yes\"\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/inject]", msg: `"yes": write "true"`, explicit: true},
		{name: "bad mode", doc: pod("    tidegate.io/mode: sidecar\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/mode]", msg: `"sidecar" is not a mode: write "native"`, explicit: true},
		{name: "bad protocol", doc: pod("    tidegate.io/protocol: udp\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/protocol]", msg: `"udp" is not a protocol`, explicit: true},
		{name: "duration without unit", doc: pod("    tidegate.io/drain-delay: \"5\"\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/drain-delay]", msg: `"5" is not a duration ≥ 0: write a Go duration like "5s"`, explicit: true},
		{name: "zero drain timeout", doc: pod("    tidegate.io/drain-timeout: 0s\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/drain-timeout]", msg: "is not a duration > 0", explicit: true},
		{name: "negative app stop timeout", doc: pod("    tidegate.io/app-stop-timeout: -1s\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/app-stop-timeout]", msg: "is not a duration ≥ 0", explicit: true},
		{name: "drain delay above timeout", doc: pod("    tidegate.io/drain-timeout: 3s\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/drain-timeout]", msg: "drain delay 5s is not below the drain timeout 3s", explicit: true},
		{name: "bad quantity", doc: pod("    tidegate.io/cpu-limit: lots\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/cpu-limit]", msg: `"lots" is not a quantity`, explicit: true},
		{name: "request above limit", doc: pod("    tidegate.io/memory-request: 1Gi\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/memory-request]", msg: "memory request 1Gi is above its limit 128Mi", explicit: true},
		{name: "empty image", doc: pod("    tidegate.io/image: \"\"\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/image]", msg: "not an image reference", explicit: true},
		{name: "misspelt annotation", doc: pod("    tidegate.io/drain-dealy: 5s\n", appContainer), object: "Pod shop/web",
			field: "metadata.annotations[tidegate.io/drain-dealy]", msg: "the ones it reads are tidegate.io/inject", explicit: true},
		{name: "hand-added sidecar", doc: pod("", appContainer+"  - name: tidegate\n    image: t\n"), object: "Pod shop/web",
			field: "spec.containers[tidegate]", msg: "without the tidegate.io/status annotation"},
		{name: "port number collision", doc: pod("", appContainer+"  - name: metrics\n    image: m\n    ports:\n    - {containerPort: 15092}\n"), object: "Pod shop/web",
			field: "spec.containers[metrics].ports", msg: "port 15092 is tidegate's metrics port"},
		{name: "app port is a sidecar port", doc: pod("", "  - name: app\n    image: a\n    ports:\n    - {name: http, containerPort: 15081}\n"), object: "Pod shop/web",
			field: "spec.containers[app].ports", msg: "port 15081 is tidegate's health port"},
		{name: "port name collision", doc: pod("", appContainer+"  - name: other\n    image: o\n    ports:\n    - {name: http, containerPort: 9000}\n"), object: "Pod shop/web",
			field: "spec.containers[other].ports", msg: `port name "http" is one injection gives to tidegate`},
		{name: "reserved port name", doc: pod("", "  - name: app\n    image: a\n    ports:\n    - {name: http, containerPort: 8080}\n    - {name: tidegate-prom, containerPort: 9000}\n"), object: "Pod shop/web",
			field: "spec.containers[app].ports", msg: `"tidegate-prom"`},
		{name: "bin volume taken", doc: strings.Replace(pod("", appContainer+"    lifecycle:\n      preStop:\n        sleep: {seconds: 3}\n"), "spec:\n", "spec:\n  volumes:\n  - {name: tidegate-bin, emptyDir: {}}\n", 1),
			object: "Pod shop/web", field: "spec.volumes[tidegate-bin]", msg: "rename yours"},
		{name: "hostNetwork pod", doc: strings.Replace(pod("", appContainer), "spec:\n", "spec:\n  hostNetwork: true\n", 1), object: "Pod shop/web",
			field: "spec.hostNetwork", msg: "would be bound on the node"},
		{name: "hostNetwork pod that asked", doc: strings.Replace(pod("    tidegate.io/inject: \"true\"\n", appContainer), "spec:\n", "spec:\n  hostNetwork: true\n", 1), object: "Pod shop/web",
			field: "spec.hostNetwork", msg: "would be bound on the node", explicit: true},
		{name: "Windows pod", doc: strings.Replace(pod("", appContainer), "spec:\n", "spec:\n  os: {name: windows}\n", 1), object: "Pod shop/web",
			field: "spec.os.name", msg: "windows: the tidegate sidecar is a Linux container"},
		{name: "probe on the health port", doc: pod("", appContainer+"    readinessProbe:\n      httpGet: {path: /r, port: 15081}\n"), object: "Pod shop/web",
			field: "spec.containers[app].readinessProbe.httpGet.port", msg: "port 15081 is tidegate's health port"},
		{name: "grpc probe on the listen port", doc: pod("", appContainer+"  - name: side\n    image: b\n    livenessProbe:\n      grpc: {port: 15080}\n"), object: "Pod shop/web",
			field: "spec.containers[side].livenessProbe.grpc.port", msg: "port 15080 is tidegate's listen port"},
		{name: "annotations over the API server's bound", doc: pod("    note: "+strings.Repeat("n", 120<<10)+"\n",
			appContainer+"    readinessProbe:\n      httpGet:\n        path: /r\n        port: 8080\n        httpHeaders: [{name: X-Big, value: "+strings.Repeat("h", 140<<10)+"}]\n"),
			object: "Pod shop/web", field: "metadata.annotations[tidegate.io/status]", msg: "over the 262144 bytes the API server accepts"},
		{name: "bad params mode", doc: pod("", appContainer), params: Params{Mode: "sidecar"}, object: "Pod shop/web", msg: `the injector's parameters: mode "sidecar"`},
		{name: "bad params ports", doc: pod("", appContainer), params: Params{HealthPort: 15080}, object: "Pod shop/web", msg: "health port 15080 is also the listen port"},
		{name: "bad params drain", doc: pod("", appContainer), params: Params{DrainDelay: time.Minute}, object: "Pod shop/web", msg: "drain delay 1m0s is not below the drain timeout 30s"},
		{name: "bad params token", doc: pod("", appContainer), params: Params{Token: bad}, object: "Pod shop/web", msg: "drain token: entropy ran out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := []byte(strings.TrimPrefix(tc.doc, "!"))
			if !strings.HasPrefix(tc.doc, "!") {
				j, err := yaml.YAMLToJSON(doc)
				if err != nil {
					t.Fatalf("test YAML: %v", err)
				}
				doc = j
			}
			p := tc.params
			if p.Token == nil {
				p.Token = testParams().Token
			}
			out, res, err := Inject(doc, InjectUnlessRefused, p)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want an *Error, got %v (%+v)\n%s", err, res, out)
			}
			if e.Object != tc.object || e.Field != tc.field || !strings.Contains(e.Msg, tc.msg) || e.Explicit != tc.explicit {
				t.Fatalf("got  Object %q Field %q Explicit %v Msg %q\nwant Object %q Field %q Explicit %v Msg containing %q",
					e.Object, e.Field, e.Explicit, e.Msg, tc.object, tc.field, tc.explicit, tc.msg)
			}
			if out != nil || res.Injected {
				t.Fatalf("an error with output %s and %+v", out, res)
			}
			want := tc.object + ": "
			if tc.field != "" {
				want += tc.field + ": "
			}
			if !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("Error() = %q, want it to start with %q", err.Error(), want)
			}
		})
	}
}

// TestInjectPodErrorLeavesPod: a failed InjectPod changes nothing.
func TestInjectPodErrorLeavesPod(t *testing.T) {
	meta := metav1.ObjectMeta{Name: "web", Annotations: map[string]string{AnnotationAppPort: "9999"}}
	spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "a",
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{}}}}}}
	m0, s0 := meta.DeepCopy(), spec.DeepCopy()
	_, err := InjectPod(&meta, &spec, InjectUnlessRefused, testParams())
	var e *Error
	if !errors.As(err, &e) || e.Object != "Pod web" || !e.Explicit {
		t.Fatalf("want an explicit *Error on Pod web, got %#v", err)
	}
	if !equality.Semantic.DeepEqual(&meta, m0) || !equality.Semantic.DeepEqual(&spec, s0) {
		t.Fatal("InjectPod changed the pod and failed")
	}
	if _, err := InjectPod(nil, &spec, InjectUnlessRefused, Params{}); err == nil {
		t.Fatal("nil meta: no error")
	}
	if _, err := InjectPod(&meta, &spec, Policy(7), Params{}); err == nil || !strings.Contains(err.Error(), "policy 7") {
		t.Fatalf("bad policy: %v", err)
	}
}

func TestUninjectErrors(t *testing.T) {
	for _, tc := range []struct{ status, msg string }{
		{"not json", "not a record injection wrote"},
		{`{"version":2}`, "version 2, want 1"},
		{`{"version":1,"extra":true}`, `unknown field "extra"`},
		{`{"version":1,"appContainer":"gone","lifecycle":null}`, "the app container the tidegate.io/status record names is gone"},
		{`{"version":1,"appContainer":"app","appPort":{"index":3,"name":"http"},"lifecycle":null}`, "no port named tidegate-app, the one injection renamed from \"http\""},
	} {
		doc := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","annotations":{%q:%q}},"spec":{"containers":[{"name":"app","image":"a"}]}}`, AnnotationStatus, tc.status)
		out, changed, err := Uninject([]byte(doc))
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(e.Msg, tc.msg) || e.Object != "Pod web" || !e.Explicit {
			t.Errorf("status %s: got %v, want an *Error on Pod web containing %q", tc.status, err, tc.msg)
		}
		if out != nil || changed {
			t.Errorf("status %s: output with an error", tc.status)
		}
	}
}
