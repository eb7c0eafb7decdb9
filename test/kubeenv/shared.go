package kubeenv

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// Shared is one cluster for a package's tests, started by the first test
// that asks and stopped by TestMain (see Main):
//
//	var cluster kubeenv.Shared
//
//	func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }
//
//	func TestX(t *testing.T) { c := cluster.Get(t); ... }
type Shared struct {
	Options Options // read once, by the first Get

	once sync.Once
	c    *Cluster
	err  error
}

// Get returns the shared cluster, starting it on the first call. Without
// the binaries every test that asks is skipped (or fails when
// TIDEGATE_REQUIRE_TOOLS=1); a start that failed fails every test that
// asks. If t fails, the end of each process's log is logged.
func (s *Shared) Get(t testing.TB) *Cluster {
	t.Helper()
	s.once.Do(func() {
		o := s.Options
		if o.Logf == nil {
			o.Logf = t.Logf
		}
		s.c, s.err = Launch(o)
	})
	if s.err != nil {
		if _, ok := errors.AsType[*MissingError](s.err); ok {
			skipOrFail(t, s.err)
		}
		t.Fatal(s.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.c.LogTails(t)
		}
	})
	return s.c
}

// Stop stops the cluster if one was started.
func (s *Shared) Stop() {
	if s.c != nil {
		s.c.Stop()
	}
}

// Main runs a package's tests (m.Run), stops the shared cluster, and then
// checks that no goroutine was left behind (goleak). It returns the exit
// code for os.Exit:
//
//	var cluster kubeenv.Shared
//	func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }
func (s *Shared) Main(m *testing.M) int {
	code := m.Run()
	s.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	return code
}
