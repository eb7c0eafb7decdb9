package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
)

// GenerateCerts makes a certificate authority and a server certificate it
// signs, both ECDSA P-256, valid from an hour ago (clock skew) for
// validity. Each host is a DNS name or an IP address in the server
// certificate's subject alternative names (the first is also its common
// name), e.g. "tidegate-inject.tidegate-system.svc" or "127.0.0.1". It
// returns PEM: the CA certificate (the webhook's caBundle), the server
// certificate and its PKCS #8 private key.
func GenerateCerts(hosts []string, validity time.Duration) (caPEM, certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, nil, errors.New("generate certificates: no hosts: give the DNS names or IP addresses the webhook is reached at")
	}
	if validity <= 0 {
		return nil, nil, nil, fmt.Errorf("generate certificates: validity %s: want a positive duration", validity)
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
			return nil, nil, nil, fmt.Errorf("generate certificates: empty host in %q", hosts)
		case net.ParseIP(h) != nil:
			ips = append(ips, net.ParseIP(h))
		default:
			dns = append(dns, h)
		}
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	caSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "tidegate-inject CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	srvSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: srvSerial,
		Subject:      pkix.Name{CommonName: strings.TrimSpace(hosts[0])},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign server certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("encode server key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// serial is a random 128-bit certificate serial number.
func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}

// servingCert is the certificate pair the server presents, with the digest
// of the file contents it came from.
type servingCert struct {
	cert *tls.Certificate
	sum  [sha256.Size]byte
}

// readCertFiles reads the pair and the digest of their contents.
func readCertFiles(certFile, keyFile string) (certPEM, keyPEM []byte, sum [sha256.Size]byte, err error) {
	certPEM, err1 := os.ReadFile(certFile)
	keyPEM, err2 := os.ReadFile(keyFile)
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, sha256.Sum256([]byte(err.Error())), err
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	copy(sum[:], h.Sum(nil))
	return certPEM, keyPEM, sum, nil
}

// loadCert reads and parses the pair.
func loadCert(certFile, keyFile string) (*servingCert, error) {
	certPEM, keyPEM, sum, err := readCertFiles(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &servingCert{cert: &c, sum: sum}, nil
}

// watchCerts checks the certificate files every s.interval until ctx ends.
func (s *Server) watchCerts(ctx context.Context) {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	last := s.cert.Load().sum // the contents last tried, loaded or not
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			last = s.checkCerts(last)
		}
	}
}

// checkCerts reloads the pair when the files' contents differ from last
// (the contents tried the time before), and returns the contents it saw.
// A pair that does not load is logged and counted once, and the served one
// kept: a rotation that writes the certificate and the key one after the
// other may be seen half done, and the next check picks up the whole.
func (s *Server) checkCerts(last [sha256.Size]byte) [sha256.Size]byte {
	_, _, sum, readErr := readCertFiles(s.certFile, s.keyFile)
	if sum == last || (readErr == nil && sum == s.cert.Load().sum) {
		return sum
	}
	var err error
	var sc *servingCert
	if readErr != nil {
		err = readErr
	} else {
		sc, err = loadCert(s.certFile, s.keyFile)
	}
	if err != nil {
		s.m.certReloads.WithLabelValues("error").Inc()
		s.log.Error("certificate reload failed; keeping the old certificate",
			zap.String("reason", err.Error()), zap.String("cert_file", s.certFile), zap.String("key_file", s.keyFile),
			zap.String("serial", certSerial(s.cert.Load())))
		return sum
	}
	s.cert.Store(sc)
	s.m.certReloads.WithLabelValues("ok").Inc()
	s.log.Info("certificate reloaded", zap.String("serial", certSerial(sc)), zap.Time("not_after", sc.cert.Leaf.NotAfter))
	return sc.sum
}

// certSerial is the leaf's serial number in hex, for logs.
func certSerial(sc *servingCert) string {
	if sc == nil || sc.cert.Leaf == nil {
		return ""
	}
	return sc.cert.Leaf.SerialNumber.Text(16)
}
