package mailbox_test

// End-to-end tests with a real Dovecot: users and password hashes in a real
// SQLite directory replica, the passwd-file written from it by dovecotauth,
// messages delivered by the Maildir and LMTP deliverers, and read back over
// IMAP and POP3 by the user with their directory password.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/relay/internal/dovecotauth"
	"github.com/postern/postern/services/relay/internal/mailbox"
)

// The Dovecot settings deployments/dovecot recommends for LMTP delivery:
// Postern writes Delivered-To itself and wants no Received field.
const lmtpSettings = "lmtp_hdr_delivery_address = none\nlmtp_add_received_header = no\n"

type testUser struct {
	id, username, address, password string
}

var (
	alice = testUser{"u-alice", "alice", "alice@example.test", "alice-secret-1"}
	bob   = testUser{"u-bob", "bob", "bob@example.test", "bob-secret-22"}
)

// hashes caches passwd.Hash results (about 60 ms and 64 MiB each).
var hashes sync.Map

func hashOf(t *testing.T, pw string) string {
	t.Helper()
	if h, ok := hashes.Load(pw); ok {
		return h.(string)
	}
	h, err := passwd.Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	hashes.Store(pw, h)
	return h
}

// siteEnv is one site: its replica, the passwd-file writer and Dovecot.
type siteEnv struct {
	store  sitestate.Store
	auth   *dovecotauth.Writer
	dc     *testenv.DovecotServer
	cursor int
}

func userEntry(t *testing.T, u testUser, hash string, enabled bool) sitestate.Entry {
	t.Helper()
	data, err := json.Marshal(replica.User{
		ID: u.id, Version: 1, Username: u.username, PrimaryAddress: u.address,
		Site: "hq", Enabled: enabled, PasswordHash: hash,
	})
	if err != nil {
		t.Fatal(err)
	}
	return sitestate.Entry{Kind: replica.KindUser, ID: u.id, Version: 1, Data: data, Keys: []string{u.username, u.address}}
}

// newSite starts a replica holding users (site hq), writes the passwd-file
// and starts Dovecot on it with the recommended LMTP settings.
func newSite(t *testing.T, users ...testUser) *siteEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	store, err := sitestate.OpenSQLite(ctx, filepath.Join(dir, "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s := &siteEnv{store: store}
	var puts []sitestate.Entry
	for _, u := range users {
		puts = append(puts, userEntry(t, u, hashOf(t, u.password), true))
	}
	s.apply(t, sitestate.ChangeSet{Snapshot: true, Put: puts})

	s.auth, err = dovecotauth.New(dovecotauth.Config{
		PasswdFile: filepath.Join(dir, "passwd"), LoginByAddress: true, PollInterval: time.Second,
	}, store.Directory(), "hq", dovecotauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.auth.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s.dc = testenv.StartDovecot(t, testenv.DovecotOptions{PasswdFile: s.auth.Path(), ExtraConfig: lmtpSettings})
	t.Cleanup(func() {
		log := s.dc.Log()
		// Dovecot complains about Maildir files it finds odd (a wrong
		// S= size, unreadable files) as errors or warnings.
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "Error:") || strings.Contains(line, "Warning:") || strings.Contains(line, "Panic:") {
				t.Errorf("dovecot logged: %s", line)
			}
		}
		if t.Failed() {
			t.Logf("dovecot log:\n%s", log)
		}
	})
	return s
}

func (s *siteEnv) apply(t *testing.T, cs sitestate.ChangeSet) {
	t.Helper()
	s.cursor++
	cs.Cursor = fmt.Sprint(s.cursor)
	if err := s.store.Directory().Apply(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
}

// testMessage is a CRLF message with what tends to break byte-exactness:
// a line starting with a dot, a lone dot line, 8-bit UTF-8, trailing
// spaces, a long line and an empty last line.
func testMessage(subject string) []byte {
	return []byte("From: Bob <bob@example.org>\r\n" +
		"To: Alice <alice@example.test>\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße aus Zürich, 你好.  \r\n" +
		".leading dot\r\n" +
		".\r\n" +
		strings.Repeat("long line ", 90) + "\r\n" +
		"\r\n")
}

// want is what the mailbox must hold: the envelope fields, then the
// message unchanged.
func want(from, rcpt string, msg []byte) []byte {
	return append([]byte("Return-Path: <"+from+">\r\nDelivered-To: "+rcpt+"\r\n"), msg...)
}

func imapMessages(t *testing.T, d *testenv.DovecotServer, login, pw string) [][]byte {
	t.Helper()
	msgs, err := d.IMAPMessages(login, pw)
	if err != nil {
		t.Fatalf("IMAP as %s: %v", login, err)
	}
	return msgs
}

func checkMessages(t *testing.T, via string, got [][]byte, want ...[]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages in the mailbox, want %d", via, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("%s: message %d differs:\n got %q\nwant %q", via, i+1, got[i], want[i])
		}
	}
}

func newDeliverer(t *testing.T, kind string, s *siteEnv) mailbox.Deliverer {
	t.Helper()
	cfg := mailbox.DefaultConfig()
	cfg.Kind = kind
	cfg.Maildir.Root = s.dc.MailDir
	cfg.Maildir.Owner = fmt.Sprintf("%d:%d", s.dc.MailUID, s.dc.MailGID)
	cfg.LMTP.Address = s.dc.LMTPAddr
	cfg.LMTP.Timeout = 15 * time.Second
	d, err := mailbox.New(cfg, mailbox.Options{State: s.store.Idempotency(), Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestDeliverAndReadBack is the acceptance test for each kind of
// delivery: a message delivered to alice is read back over IMAP and POP3
// by alice with her directory password, byte for byte after the two
// envelope fields; delivering the same id again leaves one message; the
// null sender is written as Return-Path: <>; she may log in with her
// address too; a wrong password is refused; bob sees nothing of hers.
func TestDeliverAndReadBack(t *testing.T) {
	for _, kind := range []string{mailbox.KindMaildir, mailbox.KindLMTP} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := newSite(t, alice, bob)
			d := newDeliverer(t, kind, s)

			msg1 := testMessage(kind + " one")
			m := mailbox.Message{DeliveryID: "del-1", Username: "alice", Recipient: alice.address, MailFrom: "bob@example.org", Data: msg1}
			if err := d.Deliver(ctx, m); err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			want1 := want("bob@example.org", alice.address, msg1)
			checkMessages(t, "IMAP", imapMessages(t, s.dc, alice.username, alice.password), want1)
			pop, err := s.dc.POP3Messages(alice.username, alice.password)
			if err != nil {
				t.Fatalf("POP3: %v", err)
			}
			checkMessages(t, "POP3", pop, want1)

			// Redelivery of the same record (after IMAP moved the file
			// to cur/): still one message.
			if err := d.Deliver(ctx, m); err != nil {
				t.Fatalf("second Deliver of the same id: %v", err)
			}
			checkMessages(t, "IMAP after a duplicate", imapMessages(t, s.dc, alice.username, alice.password), want1)

			// A bounce (null sender), delivered with a user name in
			// upper case (Dovecot lower-cases logins, so must we).
			msg2 := testMessage(kind + " bounce")
			err = d.Deliver(ctx, mailbox.Message{DeliveryID: "del-2", Username: "Alice", Recipient: alice.address, MailFrom: "", Data: msg2})
			if err != nil {
				t.Fatalf("Deliver from <>: %v", err)
			}
			want2 := want("", alice.address, msg2)
			checkMessages(t, "IMAP by address", imapMessages(t, s.dc, alice.address, alice.password), want1, want2)

			if _, err := s.dc.IMAPMessages(alice.username, "wrong-password"); !errors.Is(err, testenv.ErrLoginRefused) {
				t.Errorf("IMAP login with a wrong password: %v, want refused", err)
			}
			if _, err := s.dc.POP3Messages(alice.username, bob.password); !errors.Is(err, testenv.ErrLoginRefused) {
				t.Errorf("POP3 login with another user's password: %v, want refused", err)
			}
			checkMessages(t, "bob's IMAP", imapMessages(t, s.dc, bob.username, bob.password))
		})
	}
}

// TestLMTPUnknownUserIsPermanent: Dovecot answers 550 to a user it does
// not know, a permanent failure (bounce), and the session stays usable.
func TestLMTPUnknownUserIsPermanent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newSite(t, alice)
	d := newDeliverer(t, mailbox.KindLMTP, s)
	err := d.Deliver(ctx, mailbox.Message{DeliveryID: "x-1", Username: "nosuchuser", Recipient: "nosuchuser@example.test", MailFrom: "bob@example.org", Data: testMessage("lost")})
	if err == nil || !mailbox.IsPermanent(err) {
		t.Fatalf("Deliver to an unknown user: %v, want a permanent error", err)
	}
	if !strings.Contains(err.Error(), "550") {
		t.Errorf("error %q does not carry the server's 550", err)
	}
	msg := testMessage("after the failure")
	if err := d.Deliver(ctx, mailbox.Message{DeliveryID: "x-2", Username: "alice", Recipient: alice.address, MailFrom: "bob@example.org", Data: msg}); err != nil {
		t.Fatalf("Deliver after a refused recipient: %v", err)
	}
	checkMessages(t, "IMAP", imapMessages(t, s.dc, alice.username, alice.password), want("bob@example.org", alice.address, msg))
}

// TestMaildirNewUserMailboxUsableByDovecot: the relay creates the Maildir
// of a user who never logged in; Dovecot (as its mail user) can read it.
func TestMaildirNewUserMailboxUsableByDovecot(t *testing.T) {
	t.Parallel()
	carol := testUser{"u-carol", "carol", "carol@example.test", "carol-secret-3"}
	s := newSite(t, carol)
	d := newDeliverer(t, mailbox.KindMaildir, s)
	msg := testMessage("first mail")
	if err := d.Deliver(context.Background(), mailbox.Message{DeliveryID: "c-1", Username: "carol", Recipient: carol.address, MailFrom: "x@example.org", Data: msg}); err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "IMAP", imapMessages(t, s.dc, carol.username, carol.password), want("x@example.org", carol.address, msg))
}

// TestLMTPConcurrentDeliveries: many concurrent deliveries over a few
// sessions, with duplicates among them, leave each id once.
func TestLMTPConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newSite(t, alice)
	d := newDeliverer(t, mailbox.KindLMTP, s)
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range 2 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c-%02d", i%n) // every id twice
			errs <- d.Deliver(ctx, mailbox.Message{DeliveryID: id, Username: "alice", Recipient: alice.address, MailFrom: "bob@example.org", Data: testMessage(id)})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := imapMessages(t, s.dc, alice.username, alice.password)
	if len(got) != n {
		t.Fatalf("%d messages, want %d (one per id)", len(got), n)
	}
	seen := map[string]bool{}
	for _, m := range got {
		i := bytes.Index(m, []byte("Subject: "))
		subj := string(m[i : i+bytes.IndexByte(m[i:], '\r')])
		if seen[subj] {
			t.Errorf("%s delivered twice", subj)
		}
		seen[subj] = true
	}
}
