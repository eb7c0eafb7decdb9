package inject

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// tidegateProbes is cmd/tidegate's YAML probes: schema (probes.go there),
// with every port a number: what TIDEGATE_APP_PROBES must decode into.
type tidegateProbes struct {
	Container      string         `json:"container"`
	ReadinessProbe *tidegateProbe `json:"readinessProbe"`
	LivenessProbe  *tidegateProbe `json:"livenessProbe"`
	StartupProbe   *tidegateProbe `json:"startupProbe"`
}

type tidegateProbe struct {
	Exec *struct {
		Command []string `json:"command"`
	} `json:"exec"`
	HTTPGet *struct {
		Path        string `json:"path"`
		Port        int    `json:"port"`
		Host        string `json:"host"`
		Scheme      string `json:"scheme"`
		HTTPHeaders []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"httpHeaders"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port int    `json:"port"`
		Host string `json:"host"`
	} `json:"tcpSocket"`
	GRPC *struct {
		Port    int     `json:"port"`
		Service *string `json:"service"`
	} `json:"grpc"`
	InitialDelaySeconds           int    `json:"initialDelaySeconds"`
	TimeoutSeconds                int    `json:"timeoutSeconds"`
	PeriodSeconds                 int    `json:"periodSeconds"`
	SuccessThreshold              int    `json:"successThreshold"`
	FailureThreshold              int    `json:"failureThreshold"`
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds"`
}

// injectedPods returns the pod specs of every golden output.
func injectedPods(t *testing.T, file string) []*corev1.PodSpec {
	t.Helper()
	out, _, err := Inject(readJSON(t, file), InjectUnlessRefused, testParams())
	if err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.PodSpec
	var walk func(doc []byte)
	walk = func(doc []byte) {
		obj, err := typedOf(doc)
		if err != nil {
			t.Fatal(err)
		}
		if l, ok := obj.(*corev1.List); ok {
			for _, it := range l.Items {
				walk(it.Raw)
			}
			return
		}
		if obj != nil {
			if _, _, spec, _ := podOf(obj); spec != nil {
				pods = append(pods, spec)
			}
		}
	}
	walk(out)
	return pods
}

// TestAppProbesEnv: TIDEGATE_APP_PROBES of every golden output is a list of
// {container, readinessProbe, livenessProbe, startupProbe} in tidegate's
// schema with numeric ports, and holds exactly the probes the kubelet now
// asks the sidecar about.
func TestAppProbesEnv(t *testing.T) {
	seen := 0
	for _, file := range goldenInputs(t) {
		for _, spec := range injectedPods(t, file) {
			var sc *corev1.Container
			for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
				for i := range list {
					if list[i].Name == SidecarName {
						sc = &list[i]
					}
				}
			}
			if sc == nil {
				continue
			}
			var entries []tidegateProbes
			for _, e := range sc.Env {
				if e.Name == AppProbesEnv {
					dec := json.NewDecoder(bytes.NewReader([]byte(e.Value)))
					dec.DisallowUnknownFields()
					if err := dec.Decode(&entries); err != nil {
						t.Fatalf("%s: %s does not decode in tidegate's schema: %v\n%s", file, AppProbesEnv, err, e.Value)
					}
					seen++
				}
			}
			byContainer := map[string]tidegateProbes{}
			for _, e := range entries {
				if e.ReadinessProbe == nil && e.LivenessProbe == nil && e.StartupProbe == nil {
					t.Errorf("%s: entry for %s has no probe", file, e.Container)
				}
				for _, p := range []*tidegateProbe{e.ReadinessProbe, e.LivenessProbe, e.StartupProbe} {
					if p == nil {
						continue
					}
					port := 0
					switch {
					case p.HTTPGet != nil:
						port = p.HTTPGet.Port
					case p.TCPSocket != nil:
						port = p.TCPSocket.Port
					case p.GRPC != nil:
						port = p.GRPC.Port
					default:
						t.Errorf("%s: %s: a probe without httpGet, tcpSocket or grpc", file, e.Container)
					}
					if port < 1 || port > 65535 {
						t.Errorf("%s: %s: port %d", file, e.Container, port)
					}
				}
				byContainer[e.Container] = e
			}
			for _, c := range spec.Containers {
				if c.Name == SidecarName {
					continue
				}
				e := byContainer[c.Name]
				for _, k := range []struct {
					kubelet *corev1.Probe
					moved   *tidegateProbe
					verdict string
				}{{c.ReadinessProbe, e.ReadinessProbe, "readyz"}, {c.LivenessProbe, e.LivenessProbe, "livez"}, {c.StartupProbe, e.StartupProbe, "startupz"}} {
					asksSidecar := k.kubelet != nil && k.kubelet.HTTPGet != nil &&
						k.kubelet.HTTPGet.Path == "/app-health/"+c.Name+"/"+k.verdict && k.kubelet.HTTPGet.Port.IntValue() == 15081
					if asksSidecar != (k.moved != nil) {
						t.Errorf("%s: container %s %s: kubelet asks the sidecar %v, but %s has it %v", file, c.Name, k.verdict, asksSidecar, AppProbesEnv, k.moved != nil)
					}
					if k.kubelet != nil && k.kubelet.HTTPGet == nil && k.kubelet.Exec == nil {
						t.Errorf("%s: container %s %s: a tcpSocket or grpc probe left for the kubelet", file, c.Name, k.verdict)
					}
				}
			}
		}
	}
	if seen < 5 {
		t.Fatalf("only %d golden outputs carry %s", seen, AppProbesEnv)
	}
}

// TestAppProbesPodHTTP pins the JSON of one pod: named ports resolved,
// headers, scheme and thresholds kept.
func TestAppProbesPodHTTP(t *testing.T) {
	pods := injectedPods(t, filepath.Join("testdata", "pod-http.yaml"))
	var got string
	for _, e := range pods[0].InitContainers[0].Env {
		if e.Name == AppProbesEnv {
			got = e.Value
		}
	}
	want := `[{"container":"app",` +
		`"readinessProbe":{"httpGet":{"path":"/ready","port":8080,"httpHeaders":[{"name":"X-Probe","value":"kubelet"}]},"periodSeconds":5,"failureThreshold":3},` +
		`"livenessProbe":{"httpGet":{"path":"/live","port":8080},"initialDelaySeconds":10,"periodSeconds":10,"failureThreshold":6},` +
		`"startupProbe":{"httpGet":{"path":"/started","port":8080,"scheme":"HTTP"},"periodSeconds":2,"failureThreshold":60}}]`
	if got != want {
		t.Fatalf("%s:\n got %s\nwant %s", AppProbesEnv, got, want)
	}
	var a, b any
	if json.Unmarshal([]byte(got), &a) != nil || json.Unmarshal([]byte(want), &b) != nil || !reflect.DeepEqual(a, b) || !strings.HasPrefix(got, "[") {
		t.Fatal("not the same JSON list")
	}
}
