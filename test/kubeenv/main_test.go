package kubeenv

import (
	"os"
	"testing"
)

// cluster is the package's one cluster: started by the first test that
// needs it, stopped once all tests are done.
var cluster Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }
