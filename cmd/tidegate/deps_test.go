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

// TestImportRules enforces docs/architecture.md: proxy, healthz and drain never import
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

// TestInjectIsPure keeps deploy/inject a pure function of its input: no
// HTTP, files or processes, and none of the sidecar's packages. (It may use
// package net for net.JoinHostPort, and time for durations.)
func TestInjectIsPure(t *testing.T) {
	for _, dep := range goList(t, "-f", "{{join .Imports \"\\n\"}}", "./deploy/inject") {
		switch {
		case strings.HasPrefix(dep, "net/") || dep == "os" || strings.HasPrefix(dep, "os/") ||
			dep == "syscall" || dep == "io/ioutil" || dep == "io/fs":
			t.Errorf("deploy/inject imports %s: it must not touch the network, files or processes", dep)
		case strings.HasPrefix(dep, module+"/") || strings.HasPrefix(dep, "k8s.io/client-go"):
			t.Errorf("deploy/inject imports %s: it depends on k8s.io/api types only", dep)
		}
	}
}
