package smtpin

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// The test directory, as the users service's sync feed would replicate it
// (shaped like the router's):
//
//	sites:  hq (example.com, this site), branch (branch.example.org)
//	users:  alice (hq, alias a.archer@; receive+send; password)
//	        bob   (hq; receive only; password)
//	        carol (branch, alias carol@example.com; receive+send; no hash here)
//	        dave  (hq; disabled; password)
//	        erin  (hq; send only, no internet_receive; password)
//	        mia   (hq; manager of sales; password)
//	        zs    "Zhangsan" (hq; staff of sales; password)
//	        nopw  (hq; enabled, no password hash)
//	        fuzzer (hq; receive+send; cheap bcrypt password)
//	groups: team@ = alice, bob
//	shared: sales@ manager mia, staff zs
const (
	hq     = "hq"
	branch = "branch"
)

// passwords of the test users (the hash is computed once per test binary).
const (
	alicePW = "alice-password-1"
	zsPW    = "zhangsan-password-1"
	davePW  = "dave-password-1"
	miaPW   = "mia-password-1"
	// fuzzer's hash is a cheap bcrypt (cost 4) of fuzzerPW, so that the
	// fuzz target, which logs in on every run, stays fast.
	fuzzerPW   = "fuzzer-password-1"
	fuzzerHash = "{BLF-CRYPT}$2a$04$CxhbmygvjmXRJQmgXjfKQeaQwfu2U5gHZ/n1cTf/pXHjQsIQqjR.S"
)

var (
	hashOnce sync.Once
	hashes   map[string]string
)

func testHashes(t testing.TB) map[string]string {
	t.Helper()
	hashOnce.Do(func() {
		hashes = map[string]string{}
		for user, pw := range map[string]string{"alice": alicePW, "zs": zsPW, "dave": davePW, "mia": miaPW, "bob": "bob-password-1", "erin": "erin-password-1"} {
			h, err := passwd.Hash(pw)
			if err != nil {
				panic(err)
			}
			hashes[user] = h
		}
	})
	return hashes
}

type perms struct{ recv, send bool }

func userEntry(id, username, primary, site, hash string, enabled bool, p perms, aliases ...string) sitestate.Entry {
	data, _ := json.Marshal(map[string]any{
		"id": id, "version": 1, "username": username, "display_name": username,
		"primary_address": primary, "aliases": aliases, "site": site, "groups": []string{},
		"enabled": enabled, "permissions": map[string]bool{"internet_receive": p.recv, "internet_send": p.send},
		"password_hash": hash,
	})
	keys := []string{strings.ToLower(username), strings.ToLower(primary)}
	for _, a := range aliases {
		keys = append(keys, strings.ToLower(a))
	}
	return sitestate.Entry{Kind: replica.KindUser, ID: id, Version: 1, Data: data, Keys: keys}
}

func testDirectory(t testing.TB) []sitestate.Entry {
	h := testHashes(t)
	site := func(name string, domains ...string) sitestate.Entry {
		data, _ := json.Marshal(map[string]any{"id": name, "name": name, "domains": domains, "smtp_endpoint": name + ".internal:25"})
		return sitestate.Entry{Kind: replica.KindSite, ID: name, Version: 1, Data: data, Keys: domains}
	}
	group, _ := json.Marshal(map[string]any{"id": "g-team", "name": "team", "address": "team@example.com",
		"members": []map[string]string{{"type": "user", "id": "u-alice"}, {"type": "user", "id": "u-bob"}}})
	shared, _ := json.Marshal(map[string]any{"id": "sm-sales", "address": "sales@example.com", "display_name": "Sales",
		"manager": "u-mia", "staff": []string{"u-zs"}, "forward_to_staff": true})
	all := perms{true, true}
	return []sitestate.Entry{
		site(hq, "example.com"),
		site(branch, "branch.example.org"),
		userEntry("u-alice", "alice", "alice@example.com", hq, h["alice"], true, all, "A.Archer@example.com"),
		userEntry("u-bob", "bob", "bob@example.com", hq, h["bob"], true, perms{recv: true}),
		userEntry("u-carol", "carol", "carol@branch.example.org", branch, "", true, all, "carol@example.com"),
		userEntry("u-dave", "dave", "dave@example.com", hq, h["dave"], false, all),
		userEntry("u-erin", "erin", "erin@example.com", hq, h["erin"], true, perms{send: true}),
		userEntry("u-mia", "mia", "mia@example.com", hq, h["mia"], true, all),
		userEntry("u-zs", "zhangsan", "zhangsan@example.com", hq, h["zs"], true, all),
		userEntry("u-nopw", "nopw", "nopw@example.com", hq, "", true, all),
		userEntry("u-fuzzer", "fuzzer", "fuzzer@example.com", hq, fuzzerHash, true, all),
		{Kind: replica.KindGroup, ID: "g-team", Version: 1, Data: group, Keys: []string{"team", "team@example.com"}},
		{Kind: replica.KindSharedMailbox, ID: "sm-sales", Version: 1, Data: shared, Keys: []string{"sales@example.com"}},
	}
}

// newStore opens a real SQLite site state seeded with the test directory.
func newStore(t testing.TB) sitestate.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: testDirectory(t)}); err != nil {
		t.Fatal(err)
	}
	return st
}

// env is a running server with its collaborators.
type env struct {
	t     testing.TB
	srv   *Server
	bus   *msgbus.Bus
	state sitestate.Store
	cfg   Config
	roots *x509.CertPool // trusts the server's self-signed certificate
	pki   *testPKI
}

// testConfig listens on 127.0.0.1 ephemeral ports with generous limits.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.Hostname = "mx.example.com"
	cfg.Submission.Listen = "127.0.0.1:0"
	cfg.Submissions.Listen = "127.0.0.1:0"
	cfg.Inbound.Listen = "127.0.0.1:0"
	cfg.TLS.DataDir = t.TempDir()
	cfg.RateLimits = RateLimitConfig{}
	return cfg
}

// start runs a server with cfg (after mod) on a fresh bus and store.
func start(t testing.TB, mod func(*Config, *testPKI)) *env {
	t.Helper()
	return startWith(t, testenv.Bus(t), newStore(t), mod)
}

func startWith(t testing.TB, bus *msgbus.Bus, st sitestate.Store, mod func(*Config, *testPKI), deps ...func(*Deps)) *env {
	t.Helper()
	cfg := testConfig(t)
	pki := newPKI(t)
	if mod != nil {
		mod(&cfg, pki)
	}
	d := Deps{Site: hq, Bus: bus, State: st, Logger: testLogger(t)}
	for _, f := range deps {
		f(&d)
	}
	srv, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	certPEM, err := os.ReadFile(filepath.Join(cfg.TLS.DataDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return &env{t: t, srv: srv, bus: bus, state: st, cfg: cfg, roots: roots, pki: pki}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (e *env) addr(listener string) string {
	a := e.srv.Addrs()[listener]
	if a == "" {
		e.t.Fatalf("listener %s is not running", listener)
	}
	return a
}

// clientTLS trusts the server's certificate (for the name localhost).
func (e *env) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: e.roots, ServerName: "localhost"}
}

// dial connects to listener and says EHLO.
func (e *env) dial(listener string) *smtp.Client {
	e.t.Helper()
	c, err := smtp.Dial(e.addr(listener))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// dialTLS connects to listener, starts TLS with cfg and says EHLO.
func (e *env) dialTLS(listener string, cfg *tls.Config) (*smtp.Client, error) {
	conn, err := net.Dial("tcp", e.addr(listener))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		return nil, err
	}
	return c, c.Hello("client.test")
}

// tlsDial is dialTLS that must succeed.
func (e *env) tlsDial(listener string, cfg *tls.Config) *smtp.Client {
	e.t.Helper()
	c, err := e.dialTLS(listener, cfg)
	if err != nil {
		e.t.Fatalf("STARTTLS on %s: %v", listener, err)
	}
	return c
}

// submit connects to submission, starts TLS and logs in.
func (e *env) submit(user, pw string) *smtp.Client {
	e.t.Helper()
	c := e.tlsDial(ListenerSubmission, e.clientTLS())
	if err := c.Auth(sasl.NewPlainClient("", user, pw)); err != nil {
		e.t.Fatalf("AUTH as %s: %v", user, err)
	}
	return c
}

// send runs one transaction and returns the error of the first step that
// failed (nil: the message was accepted).
func send(c *smtp.Client, from string, to []string, msg []byte) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

// code returns the SMTP reply code of err (0 when it is not a reply).
func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func enhanced(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		c := se.EnhancedCode
		return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
	}
	return ""
}

// wantCode fails unless err is a reply with code and enhanced code.
func wantCode(t testing.TB, what string, err error, wantCode int, wantEnhanced string) {
	t.Helper()
	if code(err) != wantCode || (wantEnhanced != "" && enhanced(err) != wantEnhanced) {
		t.Fatalf("%s: got %v, want %d %s", what, err, wantCode, wantEnhanced)
	}
}

// collect reads n records of mail.inbound.
func (e *env) collect(n int) []events.Inbound {
	e.t.Helper()
	recs := testenv.Collect(e.t, e.bus, events.TopicInbound, n, 30*time.Second)
	out := make([]events.Inbound, 0, len(recs))
	for _, r := range recs {
		in, err := events.DecodeInbound(r.Event())
		if err != nil {
			e.t.Fatalf("decode mail.inbound: %v", err)
		}
		out = append(out, in)
	}
	if len(out) != n {
		e.t.Fatalf("mail.inbound: got %d records, want %d", len(out), n)
	}
	return out
}

// splitReceived checks that msg starts with one Received field and returns
// that field and the rest.
func splitReceived(t testing.TB, msg []byte) (string, []byte) {
	t.Helper()
	s := string(msg)
	if !strings.HasPrefix(s, "Received: from ") {
		t.Fatalf("message does not start with a Received field:\n%.300s", s)
	}
	// The field ends at the first CRLF not followed by white space.
	i := 0
	for {
		j := strings.Index(s[i:], "\r\n")
		if j < 0 {
			t.Fatalf("unterminated Received field")
		}
		i += j + 2
		if i >= len(s) || (s[i] != ' ' && s[i] != '\t') {
			return s[:i], msg[i:]
		}
	}
}

// rawConn is a line-level SMTP client for replies go-smtp's client hides.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (e *env) raw(listener string) *rawConn {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr(listener))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	r := &rawConn{t: e.t, c: c, br: bufio.NewReader(c)}
	r.expect("220")
	return r
}

// cmd sends a line and returns the whole reply (lines joined by "\n").
func (r *rawConn) cmd(line string) string {
	r.t.Helper()
	_ = r.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(r.c, line+"\r\n"); err != nil {
		r.t.Fatalf("writing %q: %v", line, err)
	}
	return r.read()
}

func (r *rawConn) read() string {
	r.t.Helper()
	_ = r.c.SetDeadline(time.Now().Add(30 * time.Second))
	var lines []string
	for range 100 {
		l, err := r.br.ReadString('\n')
		if err != nil {
			r.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	return strings.Join(lines, "\n")
}

func (r *rawConn) expect(prefix string) string {
	r.t.Helper()
	got := r.read()
	if !strings.HasPrefix(got, prefix) {
		r.t.Fatalf("reply %q, want %s...", got, prefix)
	}
	return got
}

// testPKI is a CA for the sites' relays, a second unrelated CA, and
// certificates they sign.
type testPKI struct {
	t       testing.TB
	dir     string
	ca      *x509.Certificate
	caKey   *ecdsa.PrivateKey
	other   *x509.Certificate
	otherKy *ecdsa.PrivateKey
	caFile  string
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{t: t, dir: t.TempDir()}
	p.ca, p.caKey = makeCA(t, "Postern sites CA")
	p.other, p.otherKy = makeCA(t, "Someone else's CA")
	p.caFile = filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func makeCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
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
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// clientCert returns a client certificate for name signed by the sites' CA
// (or by the other CA when foreign).
func (p *testPKI) clientCert(name string, foreign bool) tls.Certificate {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	ca, caKey := p.ca, p.caKey
	if foreign {
		ca, caKey = p.other, p.otherKy
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// message is a test message with CRLF line ends, a leading-dot line (dot
// stuffing on the wire) and 8-bit bytes.
func message(subject string) []byte {
	return []byte("From: Alice <alice@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\nHello Bob,\r\n.a line starting with a dot\r\n..two dots\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n\r\n-- \r\nAlice\r\n")
}
