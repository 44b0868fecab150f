package smtpin

import (
	"github.com/postern/postern/internal/atomicfile"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// serverCertificate loads the configured certificate, or the self-signed
// one in DataDir (generating it the first time).
func serverCertificate(c TLSConfig, hostname string, now time.Time) (tls.Certificate, error) {
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("smtp tls: loading tls.cert_file %s and tls.key_file %s: %w", c.CertFile, c.KeyFile, err)
		}
		return cert, nil
	}
	certPath := filepath.Join(c.DataDir, "cert.pem")
	keyPath := filepath.Join(c.DataDir, "key.pem")
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return cert, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("smtp tls: loading the self-signed certificate %s: %w (delete both files to generate new ones)", certPath, err)
	}
	certPEM, keyPEM, err := selfSigned(hostname, now)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("smtp tls: generating a self-signed certificate: %w", err)
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("smtp tls: %w", err)
	}
	// Key first: a certificate without its key is a broken pair on the
	// next start, a key without certificate is simply regenerated.
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("smtp tls: writing %s: %w", keyPath, err)
	}
	if err := atomicfile.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("smtp tls: writing %s: %w", certPath, err)
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// selfSigned returns a PEM certificate and key (ECDSA P-256, ten years) for
// hostname, localhost and the loopback addresses.
func selfSigned(hostname string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	names := []string{hostname}
	if hostname != "localhost" {
		names = append(names, "localhost")
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{"Postern relay (self-signed)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// loadCAPool reads a PEM file of CA certificates.
func loadCAPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("smtp tls: reading intersite.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("smtp tls: intersite.ca_file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// clientNames returns the names a verified client certificate claims, in
// order of preference: its DNS names, else its common name.
func clientNames(cert *x509.Certificate) []string {
	if len(cert.DNSNames) > 0 {
		return cert.DNSNames
	}
	if cert.Subject.CommonName != "" {
		return []string{cert.Subject.CommonName}
	}
	return nil
}

// verifyClient verifies the client's certificate chain against pool for
// client authentication and returns its leaf, or nil when the client sent
// none or it does not verify.
func verifyClient(state tls.ConnectionState, pool *x509.CertPool, now time.Time) *x509.Certificate {
	if pool == nil || len(state.PeerCertificates) == 0 {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range state.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := state.PeerCertificates[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil
	}
	return leaf
}
