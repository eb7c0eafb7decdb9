package kubeenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

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
