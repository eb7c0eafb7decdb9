package kubeenv

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// KeepEnv, set to 1, keeps a cluster's directory (logs, etcd data,
// certificates, kubeconfig) after the run, for debugging.
const KeepEnv = "TIDEGATE_KUBE_KEEP"

// The controllers kube-controller-manager runs when Options.Controllers is
// empty: a Deployment makes its ReplicaSet, which makes its Pods, and every
// namespace gets the default ServiceAccount that pods need.
var defaultControllers = []string{"deployment-controller", "replicaset-controller", "serviceaccount-controller"}

// portAttempts bounds how often Launch starts over after a process lost
// the race for a port the harness chose (listen on :0, close, pass it on).
const portAttempts = 3

// pollEvery is how often the harness asks a process or the API server
// whether a condition holds: fast enough not to add visible latency, slow
// enough not to load a 2-core machine.
const pollEvery = 50 * time.Millisecond

// Options configure a Cluster. The zero value starts the binaries of
// CacheRoot with the default controllers.
type Options struct {
	// Binaries to run. Zero value: BinariesIn(CacheRoot()).
	Binaries Binaries
	// Controllers are kube-controller-manager's --controllers.
	// Default (nil): deployment-controller, replicaset-controller and
	// serviceaccount-controller. serviceaccount-controller is always added:
	// a pod cannot be created in a namespace without its default
	// ServiceAccount.
	Controllers []string
	// APIServerArgs are extra kube-apiserver flags (e.g. --feature-gates=...),
	// after the harness's own, so they win. Default: none.
	APIServerArgs []string
	// StartTimeout bounds the whole start, retries included: etcd healthy, kube-apiserver's
	// /readyz 200, kube-controller-manager having made the default
	// ServiceAccount. Default (0): 90s (kube-apiserver alone takes 2-6s on
	// an idle 2-core machine, 15s with a compiler running beside it).
	StartTimeout time.Duration
	// StopGrace is how long each process has after SIGTERM before SIGKILL.
	// Default (0): 5s.
	StopGrace time.Duration
	// Logf receives progress lines during Launch (timings, the kept
	// directory). Default (nil): discarded. Start and Shared use t.Logf.
	Logf func(format string, args ...any)
}

func (o Options) withDefaults() Options {
	if o.Binaries == (Binaries{}) {
		o.Binaries = BinariesIn(CacheRoot())
	}
	if len(o.Controllers) == 0 {
		o.Controllers = defaultControllers
	}
	if !slices.Contains(o.Controllers, "serviceaccount-controller") && !slices.Contains(o.Controllers, "*") {
		o.Controllers = append(slices.Clone(o.Controllers), "serviceaccount-controller")
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 90 * time.Second
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Timings are how long each part of a start took, each measured from the
// start of its process until it was ready.
type Timings struct {
	Etcd              time.Duration // until GET /health says true
	APIServer         time.Duration // until GET /readyz is 200
	ControllerManager time.Duration // until default/default ServiceAccount exists
	Total             time.Duration // the whole Launch, certificates and retries included
	Attempts          int           // starts, > 1 when a port was taken in between
}

func (t Timings) String() string {
	return fmt.Sprintf("etcd %s, kube-apiserver %s, kube-controller-manager %s, total %s (attempts %d)",
		t.Etcd.Round(time.Millisecond), t.APIServer.Round(time.Millisecond),
		t.ControllerManager.Round(time.Millisecond), t.Total.Round(time.Millisecond), t.Attempts)
}

// Cluster is a running etcd, kube-apiserver and kube-controller-manager on
// 127.0.0.1, and a client of the API server with an admin token
// (group system:masters). Its methods are safe for concurrent use.
type Cluster struct {
	URL        string  // https://127.0.0.1:PORT, the API server
	Token      string  // bearer token of user kubeenv-admin, group system:masters
	CA         *CA     // the CA of the API server's serving certificate
	Dir        string  // logs, etcd data, certificates, kubeconfig
	Kubeconfig string  // Dir/kubeconfig: kubectl --kubeconfig=... while the cluster runs
	Timings    Timings // how long the start took

	client  *http.Client
	procs   []*process // in start order; stopped in reverse
	keep    bool
	grace   time.Duration
	stopped sync.Once
}

// Start launches a cluster for t and stops it in t.Cleanup, after logging
// the processes' logs if t failed. Without the binaries t is skipped (or
// fails when TIDEGATE_REQUIRE_TOOLS=1), naming the missing files and
// BuildCommand.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	c, err := Launch(o)
	if err != nil {
		if _, ok := errors.AsType[*MissingError](err); ok {
			skipOrFail(t, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.LogTails(t)
		}
		c.Stop()
	})
	return c
}

// Launch starts a cluster that lives until Stop: for a cluster shared by a
// package's tests (see Shared). Errors carry the end of each process's log.
func Launch(o Options) (*Cluster, error) {
	o = o.withDefaults()
	if err := o.Binaries.Check(); err != nil {
		return nil, err
	}
	begin := time.Now()
	deadline := begin.Add(o.StartTimeout) // for all attempts together
	for attempt := 1; ; attempt++ {
		c, err := launchOnce(o, deadline)
		if err == nil {
			c.Timings.Total = time.Since(begin)
			c.Timings.Attempts = attempt
			o.Logf("kubeenv: cluster at %s ready: %s", c.URL, c.Timings)
			if c.keep {
				o.Logf("kubeenv: %s=1: %s is kept after the run; kubectl --kubeconfig=%s while it runs", KeepEnv, c.Dir, c.Kubeconfig)
			}
			return c, nil
		}
		if !errors.Is(err, errPortTaken) || attempt == portAttempts {
			return nil, err
		}
		o.Logf("kubeenv: attempt %d: %v; starting over on other ports", attempt, err)
	}
}

// dirPrefix starts a cluster directory's name, followed by the test
// process's pid and "-": a run killed before its cleanups (a -timeout
// panic, a SIGKILL) leaves its directory, etcd's preallocated WAL with it,
// and the next Launch removes it once that pid is gone.
const dirPrefix = "kubeenv-"

// keptMarker marks a directory TIDEGATE_KUBE_KEEP=1 keeps: never swept.
const keptMarker = "kept"

// sweepDirs removes the cluster directories in tmp whose test process is
// gone and that are not marked kept; at most sweepMax per call.
func sweepDirs(tmp string, logf func(string, ...any)) {
	const sweepMax = 64
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	swept := 0
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		pidText, _, ok2 := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || !ok2 || err != nil || !e.IsDir() || pid == os.Getpid() || processAlive(pid) || swept == sweepMax {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		if _, err := os.Stat(filepath.Join(dir, keptMarker)); err == nil {
			continue
		}
		if err := os.RemoveAll(dir); err == nil && logf != nil {
			logf("kubeenv: removed %s, left by test process %d, which is gone", dir, pid)
		}
		swept++
	}
}

var errPortTaken = errors.New("a port the harness chose was taken before the process bound it")

func launchOnce(o Options, deadline time.Time) (_ *Cluster, err error) {
	sweepDirs(os.TempDir(), o.Logf)
	dir, err := os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, keep: os.Getenv(KeepEnv) == "1", grace: o.StopGrace}
	if c.keep {
		if err := os.WriteFile(filepath.Join(dir, keptMarker), nil, 0o600); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.writeSecrets(); err != nil {
		return nil, err
	}

	etcdURL, err := c.startEtcd(o, deadline)
	if err != nil {
		return nil, err
	}
	if err := c.startAPIServer(o, etcdURL, deadline); err != nil {
		return nil, err
	}
	if err := c.startControllerManager(o, deadline); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(name, bin string, args ...string) (*process, error) {
	p, err := startProcess(name, c.Dir, bin, args)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// waitReady polls ready until it returns nil, p exits, or deadline passes.
func (c *Cluster) waitReady(p *process, deadline time.Time, what string, ready func() error) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		last := ready()
		if last == nil {
			return nil
		}
		if done, exitErr := p.exited(); done {
			err := fmt.Errorf("kubeenv: waiting for %s: %s %v; end of its log:\n%s", what, p.name, exitErr, p.tail())
			if p.portTaken() {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubeenv: %s: not within the start timeout (last: %v); logs:\n%s", what, last, c.tails())
		}
		<-tick.C
	}
}

// Stop stops the processes (the controller manager first, etcd last;
// SIGTERM, then SIGKILL after Options.StopGrace), closes the client's
// connections and removes Dir unless TIDEGATE_KUBE_KEEP=1. It is
// idempotent.
func (c *Cluster) Stop() {
	c.stopped.Do(func() {
		if c.client != nil {
			c.client.CloseIdleConnections()
		}
		for _, p := range slices.Backward(c.procs) {
			p.stop(c.grace)
		}
		if !c.keep {
			_ = os.RemoveAll(c.Dir)
		}
	})
}

// LogTails logs the end of each process's log to t: what a failed test
// wants to see.
func (c *Cluster) LogTails(t testing.TB) {
	t.Helper()
	t.Logf("kubeenv: cluster %s, directory %s\n%s", c.URL, c.Dir, c.tails())
}

func (c *Cluster) tails() string {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "----- %s (%s) -----\n%s\n", p.name, p.logPath, p.tail())
	}
	return b.String()
}

// freePorts finds n ports free on 127.0.0.1 now; a process may still lose
// one to someone else before it binds (see portAttempts).
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
