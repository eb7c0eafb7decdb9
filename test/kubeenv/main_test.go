package kubeenv

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// cluster is the package's one cluster: started by the first test that
// needs it, stopped once all tests are done.
var cluster Shared

func TestMain(m *testing.M) {
	code := m.Run()
	cluster.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
