package inject

import (
	"slices"
	"strings"
	"testing"

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
