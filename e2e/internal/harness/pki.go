package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a test certificate authority for the sites' relays: the one whose
// certificate every site names in relay.smtp.intersite.ca_file and
// relay.delivery.sites.ca_file, as an organisation's own CA would be. Give
// it to each site in SiteOptions.CA.
type CA struct {
	// File is the PEM file of the CA's certificate.
	File string
	// Pool holds the CA's certificate.
	Pool *x509.CertPool

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

// NewCA creates a CA (ECDSA P-256, valid for a day) in a new temporary
// directory.
func NewCA(t testing.TB) *CA {
	t.Helper()
	dir := TempDir(t, "ca")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("harness: CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "Postern e2e sites CA", Organization: []string{"Postern e2e"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("harness: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("harness: CA certificate: %v", err)
	}
	ca := &CA{File: filepath.Join(dir, "ca.pem"), Pool: x509.NewCertPool(), cert: cert, key: key, dir: dir}
	ca.Pool.AddCert(cert)
	if err := os.WriteFile(ca.File, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return ca
}

// IssueSite writes into dir a certificate and key (cert.pem, key.pem) for
// the relay of site: for client and server authentication, named after the
// site (its common name and first DNS name, which is what the other sites'
// inter-site listeners check), and also for SiteHostname and 127.0.0.1 (the
// names mail clients and the other sites' relays dial it by). It returns
// the two paths.
func (ca *CA) IssueSite(t testing.TB, dir, site string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("harness: key for %s: %v", site, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: site, Organization: []string{"Postern e2e"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{site, SiteHostname},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("harness: certificate for %s: %v", site, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("harness: key for %s: %v", site, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("harness: %v", err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return certFile, keyFile
}

// interSiteConfig is the relay configuration of a site whose relay
// presents certFile/keyFile (issued by ca) on every SMTP listener and to
// the other sites, runs the inter-site listener on a free port, and trusts
// ca for the other sites' relays, in both directions.
func (ca *CA) interSiteConfig(certFile, keyFile string) map[string]any {
	return map[string]any{
		"relay.smtp.tls.cert_file":          certFile,
		"relay.smtp.tls.key_file":           keyFile,
		"relay.smtp.intersite.listen":       "127.0.0.1:0",
		"relay.smtp.intersite.ca_file":      ca.File,
		"relay.delivery.sites.cert_file":    certFile,
		"relay.delivery.sites.key_file":     keyFile,
		"relay.delivery.sites.ca_file":      ca.File,
		"relay.delivery.sites.tls":          "starttls",
		"relay.smtp.intersite.tls_mode":     "starttls",
		"relay.delivery.sites.idle_timeout": "5s",
	}
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("harness: serial: %v", err)
	}
	return n
}
