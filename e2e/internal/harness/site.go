package harness

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/testenv"
)

// Mailbox kinds (relay.mailbox.kind).
const (
	MailboxMaildir = "maildir"
	MailboxLMTP    = "lmtp"
)

// SiteHostname is the host name every site's relay and router give in
// greetings, Received fields and bounces (relay.smtp.hostname,
// relay.delivery.hostname, router.reporting_mta); the relay's self-signed
// certificate is made for it.
const SiteHostname = "relay.e2e.test"

// dovecotLMTPSettings are the settings deployments/dovecot recommends for
// LMTP delivery: Postern writes Delivered-To itself and wants no Received
// field from Dovecot.
const dovecotLMTPSettings = "lmtp_hdr_delivery_address = none\nlmtp_add_received_header = no\n"

// SiteOptions describe a site's pipeline.
type SiteOptions struct {
	// Name is the site's name in the directory. Required.
	Name string
	// Users is the users service the site's fetcher syncs its directory
	// replica from (fetcher.aum.url). Required.
	Users *Users
	// Token is the site_agent token; empty: one is created.
	Token string
	// Mailbox is MailboxMaildir (default) or MailboxLMTP.
	Mailbox string
	// Smarthost is the host:port of the SMTP server outbound mail goes to
	// (plaintext, no AUTH: a sink on this machine); empty: none.
	Smarthost string
	// Services are the services of the process; default fetcher, router
	// and relay.
	Services []string
	// Config holds further keys (dotted, as in docs/configuration.md),
	// applied last.
	Config map[string]any
	// CA, when set, makes the site one of several: its relay's SMTP
	// listeners present a certificate of CA named after the site (see
	// CA.IssueSite) instead of the self-signed one, the inter-site
	// listener is on ("intersite") with mutual TLS against CA, and the
	// relay delivers to the other sites with that certificate. Mail
	// clients (ClientTLS) then trust CA. The site's smtp_endpoint in the
	// directory is the test's to set (Users.SetSiteEndpoint).
	CA *CA
	// SingleBox runs the users service in the site's process too, as
	// `make run` does: Users must be nil, the process's fetcher gets its
	// directory through the users service beside it with no configured
	// URL or token, and Site.Users is that users service.
	SingleBox bool
}

// Site is one site's pipeline in one `postern serve` process (embedded
// broker with its data directory, SQLite site state, Maildir), with a
// private Dovecot that serves the relay's mailboxes over IMAP and POP3 and
// authenticates users with the passwd-file the relay writes from the
// directory replica.
type Site struct {
	*Process
	// SiteName is the site's name in the directory.
	SiteName string
	// Dovecot serves the mailboxes (IMAP, POP3) and, with MailboxLMTP,
	// receives them over LMTP.
	Dovecot *testenv.DovecotServer
	// MailRoot is relay.mailbox.maildir.root and Dovecot's mail root: the
	// INBOX of user u is the Maildir MailRoot/u.
	MailRoot string
	// PasswdFile is relay.dovecot_auth.passwd_file, Dovecot's passdb.
	PasswdFile string
	// TLSDir is relay.smtp.tls.data_dir, where the relay keeps its
	// self-signed certificate (cert.pem).
	TLSDir string

	clientRoots *x509.CertPool // SiteOptions.CA's, when set
	// Users is the users service in the same process (SingleBox); nil
	// otherwise.
	Users *Users
}

// StartSite starts Dovecot and then the site's pipeline, in a new temporary
// directory. It returns once the process has printed its listeners; use
// WaitForUsers before sending mail.
func StartSite(t testing.TB, o SiteOptions) *Site {
	t.Helper()
	switch {
	case o.Name == "":
		t.Fatal("harness: StartSite needs a site name")
	case o.SingleBox && (o.Users != nil || o.Token != ""):
		t.Fatal("harness: a single box has its own users service and token")
	case !o.SingleBox && o.Users == nil:
		t.Fatal("harness: StartSite needs the users service")
	case o.Token == "" && !o.SingleBox:
		o.Token = o.Users.SiteAgentToken(t, o.Name)
	}
	if o.Mailbox == "" {
		o.Mailbox = MailboxMaildir
	}
	if o.Services == nil {
		o.Services = []string{"fetcher", "router", "relay"}
		if o.SingleBox {
			o.Services = []string{"users", "fetcher", "router", "relay"}
		}
	}
	dir, s := newSite(t, o.Name)
	cfg := Config{}
	cfg.Merge(map[string]any{
		"site":              o.Name,
		"services":          o.Services,
		"log.format":        "json",
		"shutdown_timeout":  "10s",
		"broker.listen":     "127.0.0.1:0",
		"broker.data_dir":   filepath.Join(dir, "broker"),
		"state.backend":     "sqlite",
		"state.sqlite_path": filepath.Join(dir, "state", "site.db"),
	})
	cfg.Merge(s.pipelineConfig(t, o.Mailbox, o.Smarthost))
	var usersToken string
	if o.SingleBox {
		usersToken = bootstrapToken()
		cfg.Merge(usersConfig(dir, usersToken))
	} else {
		cfg.Merge(map[string]any{"fetcher.aum.url": o.Users.URL(), "fetcher.aum.token": o.Token})
	}
	if o.CA != nil {
		certFile, keyFile := o.CA.IssueSite(t, filepath.Join(dir, "site-tls"), o.Name)
		cfg.Merge(o.CA.interSiteConfig(certFile, keyFile))
		s.clientRoots = o.CA.Pool
	}
	cfg.Merge(o.Config)
	s.Process = StartProcess(t, "site-"+o.Name, dir, cfg)
	if o.SingleBox {
		s.Users = newUsers(t, s.Process, usersToken)
	}
	return s
}

// newSite makes a new temporary directory for site name and starts the
// site's Dovecot on the mail root below it.
func newSite(t testing.TB, name string) (string, *Site) {
	t.Helper()
	dir := TempDir(t, name)
	s := &Site{
		SiteName:   name,
		MailRoot:   filepath.Join(dir, "mail"),
		PasswdFile: filepath.Join(dir, "dovecot", "passwd"),
		TLSDir:     filepath.Join(dir, "tls"),
	}
	// Dovecot reads the passwd-file the relay writes (and replaces); it
	// must exist when Dovecot starts.
	if err := os.MkdirAll(filepath.Dir(s.PasswdFile), 0o755); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(s.PasswdFile, nil, 0o640); err != nil {
		t.Fatalf("harness: %v", err)
	}
	s.Dovecot = testenv.StartDovecot(t, testenv.DovecotOptions{
		MailDir:     s.MailRoot,
		PasswdFile:  s.PasswdFile,
		ExtraConfig: dovecotLMTPSettings,
	})
	t.Cleanup(func() { s.checkDovecotLog(t) })
	return dir, s
}

// pipelineConfig is the fetcher's, the router's and the relay's sections
// for the site: listeners on free ports, the site's Dovecot for mailboxes
// (mailbox kind) and logins, and smarthost (host:port, plaintext) when not
// empty.
func (s *Site) pipelineConfig(t testing.TB, mailbox, smarthost string) Config {
	t.Helper()
	cfg := Config{}
	cfg.Merge(map[string]any{
		"fetcher.http.listen": "127.0.0.1:0",
		"fetcher.aum.wait":    "5s",

		"router.http.listen":   "127.0.0.1:0",
		"router.reporting_mta": SiteHostname,

		"relay.http.listen":                                 "127.0.0.1:0",
		"relay.smtp.hostname":                               SiteHostname,
		"relay.smtp.submission.listen":                      "127.0.0.1:0",
		"relay.smtp.inbound.listen":                         "127.0.0.1:0",
		"relay.smtp.tls.data_dir":                           s.TLSDir,
		"relay.smtp.rate_limits.messages_per_ip_per_minute": 0,
		"relay.smtp.rate_limits.messages_per_user_per_hour": 0,
		"relay.delivery.hostname":                           SiteHostname,
		"relay.mailbox.kind":                                mailbox,
		"relay.mailbox.maildir.root":                        s.MailRoot,
		"relay.mailbox.maildir.owner":                       fmt.Sprintf("%d:%d", s.Dovecot.MailUID, s.Dovecot.MailGID),
		"relay.mailbox.lmtp.address":                        s.Dovecot.LMTPAddr,
		"relay.mailbox.lmtp.timeout":                        "30s",
		"relay.dovecot_auth.passwd_file":                    s.PasswdFile,
	})
	if smarthost != "" {
		host, portText, err := net.SplitHostPort(smarthost)
		port, perr := strconv.Atoi(portText)
		if err != nil || perr != nil {
			t.Fatalf("harness: smarthost %q is not host:port", smarthost)
		}
		cfg.Merge(map[string]any{
			"relay.delivery.smarthost.host": host,
			"relay.delivery.smarthost.port": port,
			"relay.delivery.smarthost.tls":  "none",
		})
	}
	return cfg
}

// WaitForUsers waits until the relay has written usernames into the
// passwd-file, i.e. until the site's directory replica holds them: from
// then on they can authenticate for submission and for IMAP/POP3, and mail
// for them is routed to their mailboxes. The process must run the relay.
func (s *Site) WaitForUsers(t testing.TB, usernames ...string) {
	t.Helper()
	Eventually(t, 60*time.Second, "the directory replica of site "+s.SiteName, func() error {
		f, err := os.Open(s.PasswdFile)
		if err != nil {
			return err
		}
		defer f.Close()
		have := map[string]bool{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if name, _, ok := strings.Cut(sc.Text(), ":"); ok {
				have[name] = true
			}
		}
		for _, u := range usernames {
			if !have[strings.ToLower(u)] {
				return fmt.Errorf("%s is not in %s yet", u, s.PasswdFile)
			}
		}
		return nil
	}, s.Process)
}

// ClientTLS is the TLS configuration of a mail client that was told to
// trust the relay's self-signed certificate.
func (s *Site) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	if s.clientRoots != nil {
		return &tls.Config{RootCAs: s.clientRoots, ServerName: SiteHostname, MinVersion: tls.VersionTLS12}
	}
	pem, err := os.ReadFile(filepath.Join(s.TLSDir, "cert.pem"))
	if err != nil {
		t.Fatalf("harness: the relay's certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("harness: no certificate in %s/cert.pem", s.TLSDir)
	}
	return &tls.Config{RootCAs: pool, ServerName: SiteHostname, MinVersion: tls.VersionTLS12}
}

// MaildirFiles returns the paths of the messages in the INBOX Maildir of
// username (new/ and cur/), as Dovecot would list them.
func (s *Site) MaildirFiles(username string) ([]string, error) {
	var files []string
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(s.MailRoot, strings.ToLower(username), sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(s.MailRoot, strings.ToLower(username), sub, e.Name()))
			}
		}
	}
	slices.Sort(files)
	return files, nil
}

// checkDovecotLog fails the test for what Dovecot logs as an error,
// warning or panic: it complains about Maildir files it finds odd (a wrong
// S= size, an unreadable file) and about passwd-file lines it cannot use.
func (s *Site) checkDovecotLog(t testing.TB) {
	for _, line := range strings.Split(s.Dovecot.Log(), "\n") {
		if strings.Contains(line, "Error:") || strings.Contains(line, "Warning:") || strings.Contains(line, "Panic:") {
			t.Errorf("dovecot of site %s logged: %s", s.SiteName, line)
		}
	}
}
