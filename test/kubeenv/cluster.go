package kubeenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
	// StartTimeout bounds the whole start: etcd healthy, kube-apiserver's
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
	for attempt := 1; ; attempt++ {
		c, err := launchOnce(o)
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

var errPortTaken = errors.New("a port the harness chose was taken before the process bound it")

func launchOnce(o Options) (_ *Cluster, err error) {
	dir, err := os.MkdirTemp("", "kubeenv-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, keep: os.Getenv(KeepEnv) == "1", grace: o.StopGrace}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	deadline := time.Now().Add(o.StartTimeout)
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

// writeSecrets makes the API server's CA and certificate, the service
// account signing key, the admin token and the kubeconfig, all in c.Dir.
func (c *Cluster) writeSecrets() error {
	ca, err := NewCA("kubeenv-apiserver-ca")
	if err != nil {
		return err
	}
	c.CA = ca
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1")
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saPEM, err := ecKeyPEM(saKey)
	if err != nil {
		return err
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok) // never fails (crypto/rand)
	c.Token = hex.EncodeToString(tok)
	c.client = &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 8,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		Timeout: requestTimeout,
	}
	return writeFiles(map[string][]byte{
		c.path("ca.crt"):        ca.PEM,
		c.path("apiserver.crt"): certPEM,
		c.path("apiserver.key"): keyPEM,
		c.path("sa.key"):        saPEM,
		c.path("tokens.csv"):    []byte(c.Token + `,kubeenv-admin,kubeenv-admin,"system:masters"` + "\n"),
	})
}

func (c *Cluster) path(name string) string { return filepath.Join(c.Dir, name) }

func (c *Cluster) startEtcd(o Options, deadline time.Time) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	data := c.path("etcd")
	if err := os.Mkdir(data, 0o700); err != nil { // etcd insists on 0700
		return "", err
	}
	began := time.Now()
	p, err := c.start("etcd", o.Binaries.Etcd,
		"--name=kubeenv",
		"--data-dir="+data,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubeenv="+peerURL,
		"--unsafe-no-fsync",               // throwaway data: no fsync stalls on a busy disk
		"--quota-backend-bytes=268435456", // 256 MiB: a test that floods etcd fails instead of filling the disk
		"--log-level=warn",
	)
	if err != nil {
		return "", err
	}
	health := &http.Client{Timeout: time.Second}
	err = c.waitReady(p, deadline, "etcd healthy", func() error {
		resp, err := health.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
			return fmt.Errorf("GET /health: %s %s", resp.Status, body)
		}
		return nil
	})
	health.CloseIdleConnections()
	c.Timings.Etcd = time.Since(began)
	return clientURL, err
}

func (c *Cluster) startAPIServer(o Options, etcdURL string, deadline time.Time) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	c.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
	if err := c.writeKubeconfig(); err != nil {
		return err
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		// The lease reconciler refuses a loopback advertise address; with
		// one API server there is nothing to reconcile.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + c.path("apiserver-certs"),
		"--tls-cert-file=" + c.path("apiserver.crt"),
		"--tls-private-key-file=" + c.path("apiserver.key"),
		"--token-auth-file=" + c.path("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.path("sa.key"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		// Priority and fairness only queues requests; off, the start is
		// shorter and a busy test is never throttled.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	began := time.Now()
	p, err := c.start("kube-apiserver", o.Binaries.APIServer, append(args, o.APIServerArgs...)...)
	if err != nil {
		return err
	}
	err = c.waitReady(p, deadline, "kube-apiserver /readyz", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Do(ctx, http.MethodGet, "/readyz", nil, "", nil)
	})
	c.Timings.APIServer = time.Since(began)
	return err
}

func (c *Cluster) startControllerManager(o Options, deadline time.Time) error {
	began := time.Now()
	p, err := c.start("kube-controller-manager", o.Binaries.ControllerManager,
		"--kubeconfig="+c.Kubeconfig,
		"--controllers="+strings.Join(o.Controllers, ","),
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--secure-port=0", // no health endpoint to serve: readiness is the default ServiceAccount
		"--service-account-private-key-file="+c.path("sa.key"),
		"--root-ca-file="+c.path("ca.crt"),
		"--kube-api-qps=100",
		"--kube-api-burst=200",
	)
	if err != nil {
		return err
	}
	err = c.waitReady(p, deadline, "kube-controller-manager made ServiceAccount default/default", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Get(ctx, "/api/v1/namespaces/default/serviceaccounts/default", nil)
	})
	c.Timings.ControllerManager = time.Since(began)
	return err
}

func (c *Cluster) writeKubeconfig() error {
	c.Kubeconfig = c.path("kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubeenv
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: kubeenv-admin
  user:
    token: %s
contexts:
- name: kubeenv
  context:
    cluster: kubeenv
    user: kubeenv-admin
current-context: kubeenv
`, c.URL, c.path("ca.crt"), c.Token)
	return os.WriteFile(c.Kubeconfig, []byte(kc), 0o600)
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

// Shared is one cluster for a package's tests, started by the first test
// that asks and stopped by TestMain:
//
//	var cluster kubeenv.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		cluster.Stop()
//		os.Exit(code)
//	}
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
