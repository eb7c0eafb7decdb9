package proxy

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// TLSOptions turns on TLS for an HTTP listener: ALPN offers h2 and
// http/1.1, and the certificate is reloaded when its files change.
type TLSOptions struct {
	CertFile, KeyFile string
	// CheckEvery is how often, at most, a handshake looks at the files'
	// modification times. Zero means 10s.
	CheckEvery time.Duration
	// Logger receives reloads and reload failures. Nil means no logs.
	Logger *zap.Logger
}

// certReloader serves the certificate of a key pair and reloads it when
// either file changes; a pair that fails to load keeps the previous one.
type certReloader struct {
	o       TLSOptions
	cert    atomic.Pointer[tls.Certificate]
	checked atomic.Int64 // unix nanos of the last look at the files

	mu     sync.Mutex // one reload at a time
	mtimes [2]time.Time
}

// LoadTLS checks the key pair and returns the server's TLS configuration.
// The error names the files and what is wrong with them.
func LoadTLS(o TLSOptions) (*tls.Config, error) {
	kp, err := NewKeyPair(o)
	if err != nil {
		return nil, err
	}
	return kp.Config(), nil
}

// KeyPair is a listener's certificate and key, read again when the files
// change (looked at by a handshake at most every CheckEvery) or when told
// (Reload, on a config reload).
type KeyPair struct{ r *certReloader }

// NewKeyPair loads the key pair. The error names the files and what is
// wrong with them.
func NewKeyPair(o TLSOptions) (*KeyPair, error) {
	if o.CheckEvery <= 0 {
		o.CheckEvery = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	r := &certReloader{o: o}
	if err := r.load(); err != nil {
		return nil, err
	}
	r.checked.Store(time.Now().UnixNano())
	return &KeyPair{r: r}, nil
}

// Config is the server's TLS configuration: TLS 1.2 and up, ALPN h2 and
// http/1.1, the key pair's current certificate.
func (k *KeyPair) Config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: k.r.get,
	}
}

// Reload reads the files now; on error the previous certificate stays and
// the error names the files.
func (k *KeyPair) Reload() error {
	k.r.mu.Lock()
	defer k.r.mu.Unlock()
	if err := k.r.load(); err != nil {
		return err
	}
	k.r.checked.Store(time.Now().UnixNano())
	return nil
}

func (r *certReloader) load() error {
	var mt [2]time.Time
	for i, f := range []string{r.o.CertFile, r.o.KeyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		mt[i] = st.ModTime()
	}
	cert, err := tls.LoadX509KeyPair(r.o.CertFile, r.o.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: certificate %s with key %s: %w", r.o.CertFile, r.o.KeyFile, err)
	}
	r.cert.Store(&cert)
	r.mtimes = mt
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := time.Now()
	if last := r.checked.Load(); now.UnixNano()-last >= int64(r.o.CheckEvery) && r.checked.CompareAndSwap(last, now.UnixNano()) {
		r.maybeReload()
	}
	return r.cert.Load(), nil
}

func (r *certReloader) maybeReload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range []string{r.o.CertFile, r.o.KeyFile} {
		st, err := os.Stat(f)
		if err != nil || st.ModTime().Equal(r.mtimes[i]) {
			continue
		}
		if err := r.load(); err != nil {
			r.o.Logger.Warn("tls: certificate changed but does not load; keeping the previous one", zap.Error(err))
			return
		}
		r.o.Logger.Info("tls: certificate reloaded", zap.String("cert", r.o.CertFile))
		return
	}
}
