// Package need is how tidegate's tests find the external programs they run
// (haproxy, nginx, h2load, h2spec): skip without one on a developer's
// machine, fail without one in CI, where .ci/run installs them.
package need

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the environment variable that turns a missing tool from a
// skip into a failure; .ci/run sets it to 1.
const RequireEnv = "TIDEGATE_REQUIRE_TOOLS"

// Tool finds an external program on PATH or at one of paths (for programs
// in /usr/sbin, which a user's PATH may lack). Without it t is skipped,
// unless RequireEnv=1 makes that a failure.
func Tool(t testing.TB, name string, paths ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s is not installed, and %s=1", name, RequireEnv)
	}
	t.Skipf("%s is not installed (set %s=1 to make this a failure)", name, RequireEnv)
	return ""
}
