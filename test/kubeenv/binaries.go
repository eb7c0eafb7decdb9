package kubeenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidegate/tidegate/test/need"
)

// The versions the harness runs; test/kubeenv/tools builds exactly these.
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.7.3"
)

// CacheEnv names the directory the binaries are built into; without it the
// cache root is ${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube.
const CacheEnv = "TIDEGATE_KUBE_CACHE"

// BuildCommand is what builds the binaries into the cache root, run from
// the repository root.
const BuildCommand = "bash test/kubeenv/tools/build.sh"

// Binaries are the programs a Cluster runs.
type Binaries struct {
	Etcd              string // <root>/etcd-v3.7.3/etcd
	APIServer         string // <root>/kube-v1.37.2/kube-apiserver
	ControllerManager string // <root>/kube-v1.37.2/kube-controller-manager
	Kubectl           string // <root>/kube-v1.37.2/kubectl; optional, the harness never runs it
}

// CacheRoot is where the binaries are: $TIDEGATE_KUBE_CACHE, else
// $XDG_CACHE_HOME/tidegate-kube, else $HOME/.cache/tidegate-kube (the same
// rule as tools/build.sh).
func CacheRoot() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "tidegate-kube")
	}
	return filepath.Join(os.Getenv("HOME"), ".cache", "tidegate-kube")
}

// BinariesIn lays the binaries out under a cache root.
func BinariesIn(root string) Binaries {
	kube := filepath.Join(root, "kube-"+KubeVersion)
	return Binaries{
		Etcd:              filepath.Join(root, "etcd-"+EtcdVersion, "etcd"),
		APIServer:         filepath.Join(kube, "kube-apiserver"),
		ControllerManager: filepath.Join(kube, "kube-controller-manager"),
		Kubectl:           filepath.Join(kube, "kubectl"),
	}
}

// MissingError is the error of a Binaries without one of the programs the
// harness needs.
type MissingError struct {
	Missing []string // the paths that are not executable files
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("kubeenv: missing %s: build them with `%s` from the repository root (cache root: $%s, else ${XDG_CACHE_HOME:-$HOME/.cache}/tidegate-kube)",
		strings.Join(e.Missing, ", "), BuildCommand, CacheEnv)
}

// Check returns a *MissingError naming every needed program (all but
// Kubectl) that is not an executable file.
func (b Binaries) Check() error {
	var missing []string
	for _, p := range []string{b.Etcd, b.APIServer, b.ControllerManager} {
		if p == "" {
			missing = append(missing, "(empty path)")
			continue
		}
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing}
	}
	return nil
}

// skipOrFail skips t for missing binaries, or fails it when need.RequireEnv
// is 1 (CI, where .ci/run builds them).
func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(need.RequireEnv) == "1" {
		t.Fatalf("%v; and %s=1", err, need.RequireEnv)
	}
	t.Skipf("%v (set %s=1 to make this a failure)", err, need.RequireEnv)
}
