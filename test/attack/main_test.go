//go:build linux

package attack

import (
	"path/filepath"
	"testing"

	"github.com/tidegate/tidegate/test/gobuild"
)

// binary is the path of the tidegate binary under test, built once by
// TestMain.
var binary string

// longEnv, set to 1, runs the long form of every row (more connections,
// longer holds, bigger floods): `make test-attack`.
const longEnv = "TIDEGATE_ATTACK_LONG"

func TestMain(m *testing.M) { gobuild.Main(m, "attack", 16384, build) }

// build compiles ./cmd/tidegate from the repository root into dir, without
// the race detector: the memory and timing measured are the shipped
// binary's.
func build(root, dir string) error {
	binary = filepath.Join(dir, "tidegate")
	return gobuild.Build(root, binary, "./cmd/tidegate")
}
