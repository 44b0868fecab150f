// Package sinktest runs a real SMTP server (emersion/go-smtp) on 127.0.0.1
// for tests: it records every mail transaction, can be told to fail
// commands (failure injection), and offers STARTTLS or implicit TLS, AUTH
// PLAIN and client-certificate checks. It also makes the test certificates
// (a CA, server and client certificates).
package sinktest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Transaction is one message the sink accepted.
type Transaction struct {
	Helo     string   // the EHLO name of the session
	From     string   // MAIL FROM ("" for <>)
	To       []string // the accepted RCPT TO, in order
	Data     []byte   // the message as received (dot-unstuffed)
	TLS      bool     // the session was encrypted
	ClientCN string   // the verified client certificate's common name, if any
	AuthUser string   // the AUTH user, if any
}

// Options configure a sink.
type Options struct {
	// TLS, when set, offers STARTTLS (or, with Implicit, TLS from the first byte).
	TLS      *tls.Config
	Implicit bool
	// Users, when set, offers AUTH PLAIN and requires it before MAIL.
	Users map[string]string
	// Mail, Rcpt and Data inject failures: a non-nil error (an
	// *smtp.SMTPError for a chosen reply) refuses the command. Data gets
	// the transaction's accepted recipients.
	Mail func(from string) error
	Rcpt func(to string) error
	Data func(to []string) error
	// MaxMessageBytes is advertised with SIZE (0: no limit).
	MaxMessageBytes int64
}

// Server is a running sink.
type Server struct {
	Addr string // 127.0.0.1:port

	opts  Options
	srv   *smtp.Server
	debug lockedBuffer

	mu        sync.Mutex
	txs       []Transaction
	accepted  int
	active    int
	maxActive int
	conns     map[*countedConn]struct{}
}

// Start starts a sink; it is closed when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	s := &Server{opts: o, conns: map[*countedConn]struct{}{}}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "sink.test"
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.TLSConfig = o.TLS
	srv.AllowInsecureAuth = o.TLS == nil
	srv.Debug = &s.debug
	srv.ErrorLog = nopLogger{}
	s.srv = srv
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink: %v", err)
	}
	var ln net.Listener = &countingListener{Listener: l, s: s}
	if o.Implicit {
		if o.TLS == nil {
			t.Fatal("sink: Implicit without TLS")
		}
		ln = tls.NewListener(ln, o.TLS)
	}
	s.Addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

// Transactions returns the accepted messages, in order.
func (s *Server) Transactions() []Transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Transaction(nil), s.txs...)
}

// Connections returns how many connections the sink accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// MaxConcurrent returns the most connections that were open at once.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive
}

// Dialogue returns the SMTP dialogue so far (commands and replies, after
// TLS), for assertions on commands such as RSET and EHLO.
func (s *Server) Dialogue() string { return s.debug.String() }

// CloseConnections closes every open connection (the listener stays), as a
// server that drops idle clients does.
func (s *Server) CloseConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.Conn.Close()
	}
}

type session struct {
	s    *Server
	c    *smtp.Conn
	user string
	tx   Transaction
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, c: c}, nil
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain || ss.s.opts.Users == nil {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if pw, ok := ss.s.opts.Users[username]; ok && pw == password {
			ss.user = username
			return nil
		}
		return smtp.ErrAuthFailed
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.opts.Users != nil && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	if f := ss.s.opts.Mail; f != nil {
		if err := f(from); err != nil {
			return err
		}
	}
	ss.tx = Transaction{Helo: ss.c.Hostname(), From: from, AuthUser: ss.user}
	if st, ok := ss.c.TLSConnectionState(); ok {
		ss.tx.TLS = true
		if len(st.VerifiedChains) > 0 {
			ss.tx.ClientCN = st.PeerCertificates[0].Subject.CommonName
		}
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f := ss.s.opts.Rcpt; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.tx.To = append(ss.tx.To, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if f := ss.s.opts.Data; f != nil {
		if err := f(ss.tx.To); err != nil {
			return err
		}
	}
	ss.tx.Data = b
	ss.s.mu.Lock()
	ss.s.txs = append(ss.s.txs, ss.tx)
	ss.s.mu.Unlock()
	return nil
}

func (ss *session) Reset()        { ss.tx = Transaction{} }
func (ss *session) Logout() error { return nil }

// countingListener counts connections and how many are open at once.
type countingListener struct {
	net.Listener
	s *Server
}

type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.accepted++
	l.s.active++
	l.s.maxActive = max(l.s.maxActive, l.s.active)
	l.s.conns[cc] = struct{}{}
	l.s.mu.Unlock()
	return cc, nil
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.active--
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// Count returns how many lines of the dialogue start with prefix (a
// command the client sent, such as "RSET").
func Count(dialogue, prefix string) int {
	n := 0
	for _, line := range strings.Split(dialogue, "\n") {
		if strings.HasPrefix(strings.ToUpper(line), prefix) {
			n++
		}
	}
	return n
}

// Reply is a failure to inject: an SMTP reply with code, enhanced code and text.
func Reply(code int, enhanced [3]int, text string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(enhanced), Message: text}
}

// ---------------------------------------------------------------------------
// Certificates

// CA is a test certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a CA named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool returns a pool holding the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Cert is a certificate with its key, in PEM.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

var serial struct {
	sync.Mutex
	n int64
}

// Issue makes a certificate for cn, valid for the server names in hosts (IP
// addresses or DNS names) and for client authentication.
func (ca *CA) Issue(t testing.TB, cn string, hosts ...string) Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial.Lock()
	serial.n++
	sn := serial.n + 1
	serial.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return c
}

// WriteFiles writes c and the CA to dir and returns the file names.
func (ca *CA) WriteFiles(t testing.TB, dir string, c Cert) (certFile, keyFile, caFile string) {
	t.Helper()
	certFile, keyFile, caFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	for f, b := range map[string][]byte{certFile: c.CertPEM, keyFile: c.KeyPEM, caFile: ca.PEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}

// ServerTLS is a server configuration with cert; with clients set, a client
// certificate signed by clients is required.
func ServerTLS(cert Cert, clients *CA) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS12}
	if clients != nil {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = clients.Pool()
	}
	return c
}
