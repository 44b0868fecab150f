package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/testenv"
)

// ISPPollInterval is the poll interval ISP.Account gives: the users API's
// minimum (poll_interval_seconds), so the shortest wait between two
// regular polls of an account. Nothing lowers it for tests: the fetcher's
// fetcher.download.min_poll_interval is a floor, not a ceiling.
const ISPPollInterval = 30 * time.Second

// QuickFetcher returns fetcher settings for tests, to merge into
// SiteOptions.Config: the downloader reads the replica again every 250ms
// for new, changed or removed POP3 accounts (fetcher.download.rescan_interval;
// such an account is polled at once, so an edit in the users service is
// in effect within a second), and poll intervals are not spread
// (fetcher.download.jitter 0), so the next regular poll of an account
// comes exactly its interval (ISPPollInterval) after the start of the last.
func QuickFetcher() map[string]any {
	return map[string]any{
		"fetcher.download.rescan_interval": "250ms",
		"fetcher.download.jitter":          0,
		"fetcher.download.command_timeout": "20s",
	}
}

// ISP is "the ISP": a private Dovecot whose POP3 mailboxes a site's fetcher
// downloads, on 127.0.0.1, with plaintext POP3 (STLS offered) and POP3S
// (implicit TLS) with a self-signed certificate. Fill a mailbox with
// Deliver, as the ISP's own mail system would.
type ISP struct {
	*testenv.DovecotServer
	passwords map[string]string // mailbox login → password
}

// StartISP starts the ISP's Dovecot with the given mailboxes (login and
// password); it is stopped when the test ends.
func StartISP(t testing.TB, mailboxes ...testenv.DovecotUser) *ISP {
	t.Helper()
	i := &ISP{passwords: map[string]string{}}
	for _, m := range mailboxes {
		i.passwords[m.Username] = m.Password
	}
	i.DovecotServer = testenv.StartDovecot(t, testenv.DovecotOptions{Users: mailboxes, TLS: true})
	return i
}

// Deliver puts each message into the ISP mailbox (its Maildir, as the
// ISP's delivery agent would), in order.
func (i *ISP) Deliver(t testing.TB, mailbox string, msgs ...[]byte) {
	t.Helper()
	for _, m := range msgs {
		i.DeliverToMaildir(t, mailbox, m)
	}
}

// Count returns how many messages the ISP mailbox holds: the files in its
// Maildir's new/ and cur/ (a message Dovecot moves between the two while
// they are read may count twice, never zero times). A message deleted over
// POP3 (DELE, then QUIT) is gone from both.
func (i *ISP) Count(mailbox string) (int, error) {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(i.UserMaildir(mailbox), sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		for _, e := range ents {
			if !e.IsDir() {
				n++
			}
		}
	}
	return n, nil
}

// Fingerprint is the SHA-256 of the ISP's certificate (DER), in hex: what
// an account's tls_fingerprint pins.
func (i *ISP) Fingerprint(t testing.TB) string {
	t.Helper()
	b, _ := pem.Decode(i.CertPEM)
	if b == nil {
		t.Fatal("harness: the ISP's certificate is not PEM")
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:])
}

// Account returns the users API's body for a POP3 account named name at
// site downloading the ISP mailbox with its password, over tls: none
// (plaintext, with allow_insecure), starttls or tls (implicit), the
// certificate pinned by its fingerprint. It is deleted from the ISP once
// delivered (keep policy delete_after_delivery) and polled every
// ISPPollInterval. The caller sets the mode and the target user (single)
// or the postmaster (multi), and may change the rest.
func (i *ISP) Account(t testing.TB, name, site, mailbox string, tls usersclient.TLSMode) usersclient.POP3AccountCreate {
	t.Helper()
	pw, ok := i.passwords[mailbox]
	if !ok {
		t.Fatalf("harness: the ISP has no mailbox %q", mailbox)
	}
	addr := i.POP3Addr
	if tls == usersclient.TLSModeTLS {
		addr = i.POP3SAddr
	}
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("harness: the ISP's POP3 address %q: %v", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		t.Fatalf("harness: the ISP's POP3 address %q: %v", addr, err)
	}
	auth := usersclient.POP3AuthUser
	interval := int(ISPPollInterval / time.Second)
	enabled := true
	a := usersclient.POP3AccountCreate{
		Name:                name,
		Site:                site,
		Host:                host,
		Port:                &port,
		TLS:                 &tls,
		Auth:                &auth,
		Username:            mailbox,
		Password:            &pw,
		Keep:                &usersclient.KeepPolicy{Policy: usersclient.KeepPolicyKindDeleteAfterDelivery},
		PollIntervalSeconds: &interval,
		Enabled:             &enabled,
	}
	if tls == usersclient.TLSModeNone {
		insecure := true
		a.AllowInsecure = &insecure
	} else {
		fp := i.Fingerprint(t)
		a.TLSFingerprint = &fp
	}
	return a
}
