package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tidegate/tidegate/deploy/webhook"
)

// The webhook mode (go run ./test/bench -mode webhook) measures the
// admission webhook alone: an in-process deploy/webhook Server over TLS,
// an open-loop client at a fixed rate of AdmissionReviews for a pod as a
// ReplicaSet creates it, over one HTTP/2 connection as the API server
// uses. It needs none of the harness's tools.

// isWebhookMode says whether the harness's arguments ask for -mode webhook.
func isWebhookMode(args []string) bool {
	for i, a := range args {
		a = strings.TrimLeft(a, "-")
		if a == "mode=webhook" || a == "mode" && i+1 < len(args) && args[i+1] == "webhook" {
			return true
		}
	}
	return false
}

// benchPod is a pod as the ReplicaSet of a realistic Deployment creates it,
// after the API server's own admission (service account token volume).
const benchPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"checkout-7f9c8d6b5-","namespace":"shop",
"labels":{"app.kubernetes.io/name":"checkout","app.kubernetes.io/part-of":"shop","pod-template-hash":"7f9c8d6b5"},
"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-01-10T09:00:00Z"},
"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"checkout-7f9c8d6b5","uid":"8c1f5a7e-2b1d-4c4e-9f7a-1d2e3f4a5b6c","controller":true,"blockOwnerDeletion":true}]},
"spec":{"serviceAccountName":"checkout","terminationGracePeriodSeconds":30,"securityContext":{"runAsNonRoot":true,"fsGroup":2000},
"containers":[{"name":"checkout","image":"registry.example/shop/checkout:3.14.1","args":["--config=/etc/checkout/config.yaml"],
"ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"admin","containerPort":9000,"protocol":"TCP"}],
"env":[{"name":"DB_HOST","value":"postgres.shop.svc"},{"name":"POD_IP","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}}],
"resources":{"requests":{"cpu":"250m","memory":"256Mi"},"limits":{"memory":"512Mi"}},
"readinessProbe":{"httpGet":{"path":"/ready","port":"http"},"periodSeconds":5,"failureThreshold":3},
"livenessProbe":{"httpGet":{"path":"/live","port":"admin"},"periodSeconds":10,"failureThreshold":3},
"startupProbe":{"tcpSocket":{"port":8080},"periodSeconds":2,"failureThreshold":30},
"lifecycle":{"preStop":{"exec":{"command":["/bin/sh","-c","sleep 2"]}}},
"volumeMounts":[{"name":"config","mountPath":"/etc/checkout"},{"name":"kube-api-access-x1","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}]},
{"name":"log-shipper","image":"registry.example/fluent-bit:3.1","resources":{"requests":{"cpu":"20m","memory":"32Mi"}},
"volumeMounts":[{"name":"kube-api-access-x1","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}]}],
"volumes":[{"name":"config","configMap":{"name":"checkout-config"}},{"name":"kube-api-access-x1","projected":{"sources":[
{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},{"configMap":{"name":"kube-root-ca.crt","items":[{"key":"ca.crt","path":"ca.crt"}]}},
{"downwardAPI":{"items":[{"path":"namespace","fieldRef":{"apiVersion":"v1","fieldPath":"metadata.namespace"}}]}}]}}]}}`

func webhookReview(uid int) []byte {
	return []byte(fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"bench-%d",`+
		`"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},`+
		`"namespace":"shop","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},`+
		`"object":%s,"dryRun":false}}`, uid, benchPod))
}

// runWebhookBench is -mode webhook.
func runWebhookBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench -mode webhook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String("mode", "webhook", "webhook")
	rate := fs.Float64("rate", 200, "admissions per second (open loop)")
	duration := fs.Duration("duration", 10*time.Second, "length of the measured run")
	maxInFlight := fs.Int("max-inflight", 512, "bound on admissions in flight; one more is counted as an error")
	out := fs.String("out", "", "also write the Markdown report to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 || *duration <= 0 || *maxInFlight < 1 {
		return errors.New("-rate and -duration must be positive, -max-inflight at least 1")
	}
	tmp, err := os.MkdirTemp("", "tidegate-bench-webhook-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	caPEM, certPEM, keyPEM, err := webhook.GenerateCerts([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(tmp, "tls.crt"), filepath.Join(tmp, "tls.key")
	if err := errors.Join(os.WriteFile(certFile, certPEM, 0o600), os.WriteFile(keyFile, keyPEM, 0o600)); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	s, err := webhook.New(webhook.Options{CertFile: certFile, KeyFile: keyFile, Registerer: reg})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(sctx, ln) }()
	defer func() { stop(); <-served }()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "https://" + ln.Addr().String() + webhook.PathMutate

	admit := func(uid int) error {
		resp, err := client.Post(url, "application/json", bytes.NewReader(webhookReview(uid)))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var ar struct {
			Response struct {
				UID     string `json:"uid"`
				Allowed bool   `json:"allowed"`
				Patch   []byte `json:"patch"`
			} `json:"response"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ar); err != nil {
			return err
		}
		if resp.StatusCode != 200 || !ar.Response.Allowed || len(ar.Response.Patch) == 0 || ar.Response.UID != fmt.Sprintf("bench-%d", uid) {
			return fmt.Errorf("status %d, allowed %v, patch %d bytes, uid %q", resp.StatusCode, ar.Response.Allowed, len(ar.Response.Patch), ar.Response.UID)
		}
		return nil
	}
	for i := range 50 { // warm-up: the connection, the handshake, the code
		if err := admit(-i - 1); err != nil {
			return fmt.Errorf("warm-up admission: %w", err)
		}
	}

	n := int(*rate * duration.Seconds())
	interval := time.Duration(float64(time.Second) / *rate)
	lat := make([]time.Duration, 0, n)
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, *maxInFlight)
	cpu0 := cpuTime()
	start := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d) // the open loop's schedule, not a wait for a condition
		}
		select {
		case sem <- struct{}{}:
		default:
			mu.Lock()
			errs = append(errs, "more than -max-inflight admissions in flight")
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			defer func() { <-sem }()
			err := admit(i)
			d := time.Since(due) // from when it was due: queueing counts
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			lat = append(lat, d)
		}(i, due)
	}
	wg.Wait()
	wall := time.Since(start)
	cpu := cpuTime() - cpu0

	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	var rep strings.Builder
	fmt.Fprintf(&rep, "## tidegate webhook under load\n\ncommand: `go run ./test/bench %s`\n\n", strings.Join(args, " "))
	fmt.Fprintf(&rep, "%d AdmissionReviews (Pod CREATE, %d-byte pod, JSONPatch answer) at %.0f/s for %s over TLS 1.3 and HTTP/2, in process.\n\n",
		n, len(benchPod), *rate, *duration)
	fmt.Fprintf(&rep, "| admissions | errors | achieved/s | p50 | p90 | p99 | max | CPU (client+server) |\n|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&rep, "| %d | %d | %.1f | %s | %s | %s | %s | %.2fs = %.1f%% of a core |\n\n", len(lat), len(errs), float64(len(lat))/wall.Seconds(),
		msStr(q(0.50)), msStr(q(0.90)), msStr(q(0.99)), msStr(q(1)), cpu.Seconds(), 100*cpu.Seconds()/wall.Seconds())
	if len(errs) > 0 {
		fmt.Fprintf(&rep, "First error: %s\n\n", errs[0])
	}
	fmt.Fprint(stdout, rep.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(rep.String()), 0o644); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d admissions failed", len(errs), n)
	}
	return nil
}

func msStr(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
