package inject

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// A preStop sleep as long as the API server allows (up to
// terminationGracePeriodSeconds, an int64) becomes a --then-sleep that
// `tidegate prestop` accepts: never a wrapped, negative duration, which it
// refuses, skipping the drain with it.
func TestHugePreStopSleepSaturates(t *testing.T) {
	doc := strings.Replace(pod("", appContainer+"    lifecycle:\n      preStop:\n        sleep: {seconds: 10000000000}\n"),
		"spec:\n", "spec:\n  terminationGracePeriodSeconds: 10000000000\n", 1)
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := Inject(j, InjectUnlessRefused, testParams())
	if err != nil {
		t.Fatal(err)
	}
	var injected struct {
		Spec struct {
			Containers []struct {
				Lifecycle struct {
					PreStop struct {
						Exec struct{ Command []string }
					}
				}
			}
		}
	}
	if err := yaml.Unmarshal(out, &injected); err != nil {
		t.Fatal(err)
	}
	cmd := injected.Spec.Containers[0].Lifecycle.PreStop.Exec.Command
	if !slices.Contains(cmd, "--then-sleep=2562047h47m16s") {
		t.Errorf("preStop command %q: want --then-sleep=2562047h47m16s, the longest duration", cmd)
	}
}

// Uninject gives the app port's name back to the port injection renamed
// tidegate-app, even when the ports were reordered since: never to
// whatever port now sits at the recorded index.
func TestUninjectAfterPortsReordered(t *testing.T) {
	var meta metav1.ObjectMeta
	spec := corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "debug", ContainerPort: 6060}}}}}
	if _, err := InjectPod(&meta, &spec, InjectUnlessRefused, testParams()); err != nil {
		t.Fatal(err)
	}
	ports := spec.Containers[0].Ports
	spec.Containers[0].Ports = []corev1.ContainerPort{ports[1], ports[0]} // an operator's edit
	if ok, err := UninjectPod(&meta, &spec); !ok || err != nil {
		t.Fatalf("UninjectPod: %v %v", ok, err)
	}
	want := []corev1.ContainerPort{{Name: "debug", ContainerPort: 6060}, {Name: "http", ContainerPort: 8080}}
	if got := spec.Containers[0].Ports; !reflect.DeepEqual(got, want) {
		t.Errorf("ports after uninject: %+v, want %+v", got, want)
	}

	// The renamed port gone altogether: an error naming it, nothing changed.
	if _, err := InjectPod(&meta, &spec, InjectUnlessRefused, testParams()); err != nil {
		t.Fatal(err)
	}
	spec.Containers[0].Ports = spec.Containers[0].Ports[:1]
	before := spec.DeepCopy()
	if _, err := UninjectPod(&meta, &spec); err == nil || !strings.Contains(err.Error(), "no port named "+AppPortName) {
		t.Errorf("UninjectPod without the tidegate-app port: %v", err)
	}
	if !reflect.DeepEqual(before, &spec) {
		t.Error("a failed UninjectPod changed the spec")
	}
}
