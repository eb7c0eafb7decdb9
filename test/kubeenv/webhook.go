package kubeenv

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Listen is a TCP listener on 127.0.0.1:0, closed in t.Cleanup: where a
// webhook that does its own TLS (deploy/webhook's Serve) listens.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// URL is https://ADDR/path for a listener: a webhook's clientConfig.url.
func URL(ln net.Listener, path string) string {
	return "https://" + ln.Addr().String() + path
}

// WebhookServer is h served over TLS on 127.0.0.1 with a certificate of a
// CA of its own, for webhooks written in a test.
type WebhookServer struct {
	Addr     string // 127.0.0.1:PORT
	CABundle []byte // the CA that signed the certificate: clientConfig.caBundle
	srv      *http.Server
	served   chan struct{} // closed when Serve has returned
	stopOnce sync.Once
}

// StartWebhook serves h over TLS on 127.0.0.1:0 until Stop or t.Cleanup.
func StartWebhook(t testing.TB, h http.Handler) *WebhookServer {
	t.Helper()
	sc := NewServingCert(t)
	cert, err := tls.LoadX509KeyPair(sc.CertFile, sc.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &WebhookServer{
		Addr:     ln.Addr().String(),
		CABundle: sc.CABundle,
		srv: &http.Server{
			Handler:           h,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			ReadHeaderTimeout: 10 * time.Second,
		},
		served: make(chan struct{}),
	}
	go func() {
		defer close(w.served)
		if err := w.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("webhook server on %s: %v", w.Addr, err)
		}
	}()
	t.Cleanup(w.Stop)
	return w
}

// URL is https://127.0.0.1:PORT/path.
func (w *WebhookServer) URL(path string) string { return "https://" + w.Addr + path }

// Stop closes the listener and every connection, requests in flight
// included, so that the API server's calls are refused: a webhook that is
// down. (A graceful Shutdown would wait for the API server to close its
// idle HTTP/2 connections, up to a second.) It is idempotent.
func (w *WebhookServer) Stop() {
	w.stopOnce.Do(func() {
		_ = w.srv.Close()
		<-w.served
	})
}
