package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/tidegate/tidegate"

// goList runs `go list` from the module root with the given arguments.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

// TestSidecarDoesNotLinkKubernetes keeps the sidecar binary small: only the
// injector may link k8s.io packages.
func TestSidecarDoesNotLinkKubernetes(t *testing.T) {
	for _, dep := range goList(t, "-deps", "./cmd/tidegate") {
		if strings.HasPrefix(dep, "k8s.io/") {
			t.Errorf("cmd/tidegate links %s", dep)
		}
	}
}

// TestImportRules enforces DESIGN.md: proxy, healthz and drain never import
// each other; nothing outside test/ imports test/.
func TestImportRules(t *testing.T) {
	siblings := []string{module + "/proxy", module + "/healthz", module + "/drain"}
	for _, pkg := range siblings {
		for _, dep := range goList(t, "-deps", pkg) {
			for _, other := range siblings {
				if other != pkg && (dep == other || strings.HasPrefix(dep, other+"/")) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
	for _, line := range goList(t, "-f", "{{.ImportPath}}|{{join .Imports \",\"}}", "./...") {
		pkg, imports, _ := strings.Cut(line, "|")
		if strings.HasPrefix(pkg, module+"/test/") {
			continue
		}
		for _, imp := range strings.Split(imports, ",") {
			if strings.HasPrefix(imp, module+"/test/") {
				t.Errorf("%s imports %s", pkg, imp)
			}
		}
	}
}
