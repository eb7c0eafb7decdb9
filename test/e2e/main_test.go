package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tidegate/tidegate/test/gobuild"
)

// binary is the path of the binary under test, built once by TestMain.
var binary string

// fakeappBinary is the path of test/fakeapp/cmd/fakeapp, the controllable
// app as a real process, built once by TestMain next to binary.
var fakeappBinary string

// The version and commit stamped into the binary, the way the Makefile does.
const (
	stampVersion = "v0.0.0-e2e"
	stampCommit  = "e2ec0ffee"
)

func TestMain(m *testing.M) { gobuild.Main(m, "e2e", 8192, build) }

// raceBinaryEnv, set to 1 while the suite itself runs with -race, builds the
// binary under test with the race detector too. Off by default: a
// race-built proxy is several times slower and schedules differently from
// the binary that ships, and the timing and pool assertions are about that
// one.
const raceBinaryEnv = "TIDEGATE_E2E_RACE"

// build compiles ./cmd/tidegate and ./test/fakeapp/cmd/fakeapp from the
// repository root into dir. The fakeapp is never built with -race: it is a
// peer, not the code under test.
func build(root, dir string) error {
	binary = filepath.Join(dir, "tidegate")
	flags := []string{"-ldflags", "-X main.version=" + stampVersion + " -X main.commit=" + stampCommit}
	if raceEnabled && os.Getenv(raceBinaryEnv) == "1" {
		flags = append(flags, "-race")
	}
	if err := gobuild.Build(root, binary, "./cmd/tidegate", flags...); err != nil {
		return err
	}
	fakeappBinary = filepath.Join(dir, "fakeapp")
	return gobuild.Build(root, fakeappBinary, "./test/fakeapp/cmd/fakeapp")
}
