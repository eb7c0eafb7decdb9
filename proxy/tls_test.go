package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial, and its key, into dir.
func writeCert(t *testing.T, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "tidegate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: nil, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTLSListenerALPNAndReload(t *testing.T) {
	app := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	})
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, 1)
	cfg, err := LoadTLS(TLSOptions{CertFile: certFile, KeyFile: keyFile, CheckEvery: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	up, _ := ParseUpstream(app.Listener.Addr().String())
	tr := NewTracker(TrackerOptions{})
	h, err := NewHandler(Options{Upstream: up, Tracker: tr})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ln, h, tr, ServerOptions{TLS: cfg})
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	defer func() { _ = s.Close(); <-served; h.CloseIdleConnections() }()
	url := "https://" + s.Addr().String() + "/"

	get := func(h2 bool) (proto, body string, serial int64) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2, DisableKeepAlives: true} //nolint:gosec // test certificate
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Proto, string(b), resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if proto, body, serial := get(true); proto != "HTTP/2.0" || body != "https" || serial != 1 {
		t.Fatalf("h2 client: %s %q serial %d", proto, body, serial)
	}
	if proto, _, _ := get(false); proto != "HTTP/1.1" {
		t.Fatalf("http/1.1 client: %s", proto)
	}

	// Replace the pair: new handshakes get the new certificate.
	next := t.TempDir()
	c2, k2 := writeCert(t, next, 2)
	for _, p := range [][2]string{{c2, certFile}, {k2, keyFile}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
		future := time.Now().Add(time.Minute) // a visible mtime change, however coarse the clock
		if err := os.Chtimes(p[1], future, future); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { _, _, serial := get(false); return serial == 2 })
}

func TestLoadTLSErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, _ := writeCert(t, dir, 1)
	_, otherKey := writeCert(t, t.TempDir(), 2)
	if _, err := LoadTLS(TLSOptions{CertFile: certFile, KeyFile: otherKey}); err == nil || !strings.Contains(err.Error(), "does not match") || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := LoadTLS(TLSOptions{CertFile: certFile, KeyFile: filepath.Join(dir, "missing.key")}); err == nil || !strings.Contains(err.Error(), "missing.key") {
		t.Fatalf("missing key: %v", err)
	}
}
