package e2e

// The relay's pipeline as users meet it (issue 6, "Tests"): mail submitted
// over SMTP, routed, delivered into Maildir or over LMTP, and read back over
// IMAP and POP3 through a real Dovecot with the directory password; mail
// for the outside world handed to a real SMTP server standing in for the
// ISP's smarthost, with retries and bounces.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

const domain = "hq.e2e.test"

// The people of site hq. Alice may send to and receive from the Internet;
// Bob is a colleague who may not send out.
var (
	alice = harness.User{Username: "alice", Password: "alice-password-1", Address: "alice@" + domain, DisplayName: "Alice Martin", InternetSend: true, InternetReceive: true}
	bob   = harness.User{Username: "bob", Password: "bob-password-22", Address: "bob@" + domain, DisplayName: "Bob Durand", InternetReceive: true}
)

// pipeline is one site, hq, around its own users service, with a sink as
// its smarthost.
type pipeline struct {
	users *harness.Users
	site  *harness.Site
	sink  *harness.Sink
}

// startPipeline starts the users service with site hq and people, the sink,
// and hq's pipeline (fetcher, router, relay) configured by opts, and waits
// until the site's replica holds everyone.
func startPipeline(t *testing.T, opts harness.SiteOptions, people ...harness.User) *pipeline {
	t.Helper()
	p := &pipeline{users: harness.StartUsers(t), sink: harness.StartSink(t)}
	p.users.CreateSite(t, "hq", domain)
	names := make([]string, len(people))
	for i, u := range people {
		p.users.CreateUser(t, "hq", u)
		names[i] = u.Username
	}
	opts.Name, opts.Users, opts.Smarthost = "hq", p.users, p.sink.Addr
	p.site = harness.StartSite(t, opts)
	p.site.WaitForUsers(t, names...)
	return p
}

// imap reads u's INBOX over IMAP with u's directory password.
func (p *pipeline) imap(t *testing.T, u harness.User) [][]byte {
	t.Helper()
	msgs, err := p.site.Dovecot.IMAPMessages(u.Username, u.Password)
	if err != nil {
		t.Fatalf("IMAP as %s: %v", u.Username, err)
	}
	return msgs
}

// waitIMAP waits until u's INBOX holds n messages (over IMAP) and returns them.
func (p *pipeline) waitIMAP(t *testing.T, u harness.User, n int) [][]byte {
	t.Helper()
	var msgs [][]byte
	harness.Eventually(t, 60*time.Second, fmt.Sprintf("%d message(s) in %s's INBOX", n, u.Username), func() error {
		var err error
		if msgs, err = p.site.Dovecot.IMAPMessages(u.Username, u.Password); err != nil {
			return err
		}
		if len(msgs) < n {
			return fmt.Errorf("%d message(s) so far", len(msgs))
		}
		return nil
	}, p.site.Process)
	if len(msgs) != n {
		t.Fatalf("%s's INBOX holds %d messages, want %d", u.Username, len(msgs), n)
	}
	return msgs
}

// trickyMessage is a CRLF message with what tends to break byte-exactness
// along the way: a line starting with a dot, a lone dot line (SMTP's end of
// data if not dot-stuffed), 8-bit UTF-8, trailing white space, a long line
// and an empty last line.
func trickyMessage(from, to, id string) []byte {
	return []byte("From: Alice Martin <" + from + ">\r\n" +
		"To: <" + to + ">\r\n" +
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from the e2e test\r\n" +
		"Date: Sat, 21 Nov 2026 09:00:00 +0100\r\n" +
		"Message-ID: " + id + "\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße aus Zürich, 你好.  \r\n" +
		".leading dot\r\n" +
		".\r\n" +
		"..two dots\r\n" +
		strings.Repeat("long line ", 90) + "\r\n" +
		"\r\n")
}

// receivedField matches the Received field the relay's submission listener
// writes for one recipient: the client's EHLO name and address, the relay's
// host name, ESMTPSA (TLS and AUTH), the inbound id, the recipient, the date.
func receivedField(rcpt string) *regexp.Regexp {
	return regexp.MustCompile(`^Received: from ` + regexp.QuoteMeta(harness.SubmissionHelo) + ` \(\[127\.0\.0\.1\]\)\r\n` +
		`\tby ` + regexp.QuoteMeta(harness.SiteHostname) + ` \(Postern\) with ESMTPSA id [A-Za-z0-9._-]+\r\n` +
		`\tfor <` + regexp.QuoteMeta(rcpt) + `>;\r\n` +
		`\t([^\r\n]+)\r\n$`)
}

// checkReceived checks field against receivedField(rcpt) and its date
// against the time the message was sent (to the second).
func checkReceived(t *testing.T, field []byte, rcpt string, sent time.Time) {
	t.Helper()
	m := receivedField(rcpt).FindSubmatch(field)
	if m == nil {
		t.Errorf("the Received field is not what the relay writes for %s:\n%q", rcpt, field)
		return
	}
	at, err := time.Parse(time.RFC1123Z, string(m[1]))
	if err != nil {
		t.Errorf("Received date %q: %v", m[1], err)
	} else if at.Before(sent.Truncate(time.Second)) || at.After(time.Now()) {
		t.Errorf("Received date %s is not the time of submission (%s)", at, sent)
	}
}

// checkStored checks a message as it came out of a mailbox: the submitted
// bytes, unchanged, after exactly Return-Path, Delivered-To and the
// relay's Received field.
func checkStored(t *testing.T, via string, got, submitted []byte, from, rcpt string, sent time.Time) {
	t.Helper()
	if !bytes.HasSuffix(got, submitted) {
		t.Fatalf("%s: the submitted message is not the end of the stored one:\n got %q\nwant ...%q", via, got, submitted)
	}
	head := got[:len(got)-len(submitted)]
	want := "Return-Path: <" + from + ">\r\nDelivered-To: " + rcpt + "\r\n"
	if !bytes.HasPrefix(head, []byte(want)) {
		t.Fatalf("%s: the stored message starts with %q, want %q", via, head, want)
	}
	checkReceived(t, head[len(want):], rcpt, sent)
}

// TestLocalMailReadOverIMAPAndPOP3: Alice submits a message to her
// colleague Bob (STARTTLS, AUTH PLAIN with her directory password); Bob
// reads it over IMAP and over POP3 with his directory password, byte for
// byte: the submitted bytes after Return-Path, Delivered-To and the relay's
// Received field. It stays on the LAN: the smarthost never sees it. Once
// with the relay writing the Maildir, once over LMTP into Dovecot.
func TestLocalMailReadOverIMAPAndPOP3(t *testing.T) {
	for _, kind := range []string{harness.MailboxMaildir, harness.MailboxLMTP} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p := startPipeline(t, harness.SiteOptions{Mailbox: kind}, alice, bob)
			msg := trickyMessage(alice.Address, bob.Address, "<local-"+kind+"@e2e.test>")
			sent := time.Now()
			if err := p.site.Submit(t, alice.Username, alice.Password, alice.Address, []string{bob.Address}, msg); err != nil {
				t.Fatalf("submission: %v", err)
			}

			got := p.waitIMAP(t, bob, 1)[0]
			checkStored(t, "IMAP", got, msg, alice.Address, bob.Address, sent)
			pop, err := p.site.Dovecot.POP3Messages(bob.Username, bob.Password)
			if err != nil {
				t.Fatalf("POP3 as bob: %v", err)
			}
			if len(pop) != 1 || !bytes.Equal(pop[0], got) {
				t.Errorf("POP3 gives %d message(s), want the one IMAP gives, byte for byte:\n got %q\nwant %q", len(pop), pop, got)
			}
			// His primary address is a login too.
			if byAddr, err := p.site.Dovecot.IMAPMessages(bob.Address, bob.Password); err != nil || len(byAddr) != 1 || !bytes.Equal(byAddr[0], got) {
				t.Errorf("IMAP logged in as %s: %d message(s), %v; want the same message", bob.Address, len(byAddr), err)
			}
			if _, err := p.site.Dovecot.IMAPMessages(bob.Username, alice.Password); !errors.Is(err, testenv.ErrLoginRefused) {
				t.Errorf("IMAP as bob with alice's password: %v, want the login refused", err)
			}
			if kind == harness.MailboxMaildir {
				onDisk, err := p.site.MaildirMessages(bob.Username)
				if err != nil || len(onDisk) != 1 || !bytes.Equal(onDisk[0], got) {
					t.Errorf("bob's Maildir holds %d file(s) (%v), want the message IMAP gives", len(onDisk), err)
				}
			}
			if n := len(p.imap(t, alice)); n != 0 {
				t.Errorf("alice's INBOX holds %d message(s), want none", n)
			}
			if n := p.sink.Attempts(harness.MessageID(msg)); n != 0 {
				t.Errorf("mail between colleagues reached the smarthost (%d time(s))", n)
			}
		})
	}
}

// TestOutboundThroughSmarthost: Alice writes to three people outside the
// organisation. The smarthost (a real SMTP server) accepts the first
// message at once, answers the second 451 twice before taking it, and
// refuses the third with 554. The first two arrive exactly once with the
// envelope Alice gave and her bytes after the relay's Received field; the
// third comes back to Alice as a delivery status notification
// (multipart/report) she reads over IMAP.
func TestOutboundThroughSmarthost(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, harness.SiteOptions{Config: map[string]any{
		"relay.delivery.retry.base":         "300ms",
		"relay.delivery.retry.factor":       2,
		"relay.delivery.retry.cap":          "1s",
		"relay.delivery.retry.jitter":       0,
		"relay.delivery.retry.max_lifetime": "1h",
	}}, alice, bob)

	const (
		carol = "carol@outside.example"
		dave  = "dave@outside.example"
		erin  = "erin@outside.example"
	)
	okID, retryID, rejectID := "<out-ok@e2e.test>", "<out-retry@e2e.test>", "<out-reject@e2e.test>"
	rejection := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Recipient refuses mail from e2e"}
	p.sink.SetReply(func(m harness.SinkMessage) error {
		switch {
		case m.MessageID == retryID && m.Attempt <= 2:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try again later"}
		case m.MessageID == rejectID:
			return rejection
		}
		return nil
	})

	msgs := map[string][]byte{
		okID:     harness.NewMessage(alice.Address, carol, "accepted at once", okID, "Hello Carol."),
		retryID:  harness.NewMessage(alice.Address, dave, "accepted on the third attempt", retryID, "Hello Dave."),
		rejectID: harness.NewMessage(alice.Address, erin, "refused", rejectID, "Hello Erin."),
	}
	rcpts := map[string]string{okID: carol, retryID: dave, rejectID: erin}
	sent := time.Now()
	c, err := p.site.DialSubmission(t, alice.Username, alice.Password)
	if err != nil {
		t.Fatalf("submission: %v", err)
	}
	for _, id := range []string{okID, retryID, rejectID} {
		if err := c.Send(alice.Address, []string{rcpts[id]}, msgs[id]); err != nil {
			t.Fatalf("submitting %s: %v", id, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	harness.Eventually(t, 60*time.Second, "both messages at the smarthost", func() error {
		n := p.sink.CountByMessageID()
		if n[okID] == 0 || n[retryID] == 0 {
			return fmt.Errorf("accepted so far: %v (attempts of %s: %d)", n, retryID, p.sink.Attempts(retryID))
		}
		return nil
	}, p.site.Process)
	dsn := p.waitIMAP(t, alice, 1)[0]

	for _, m := range p.sink.Accepted() {
		if m.MessageID == rejectID {
			t.Errorf("the sink accepted %s, which it refused", rejectID)
			continue
		}
		if m.From != alice.Address || len(m.To) != 1 || m.To[0] != rcpts[m.MessageID] {
			t.Errorf("%s arrived with MAIL FROM %q and RCPT TO %q, want %q and [%s]", m.MessageID, m.From, m.To, alice.Address, rcpts[m.MessageID])
		}
		submitted := msgs[m.MessageID]
		if !bytes.HasSuffix(m.Data, submitted) {
			t.Errorf("%s: the sink got %q, which does not end with the submitted %q", m.MessageID, m.Data, submitted)
			continue
		}
		checkReceived(t, m.Data[:len(m.Data)-len(submitted)], rcpts[m.MessageID], sent)
	}
	if n := p.sink.CountByMessageID(); n[okID] != 1 || n[retryID] != 1 {
		t.Errorf("the sink accepted %d copies of %s and %d of %s, want one each", n[okID], okID, n[retryID], retryID)
	}
	if a := p.sink.Attempts(retryID); a != 3 {
		t.Errorf("%s was attempted %d times, want 3 (451, 451, 250)", retryID, a)
	}
	if a := p.sink.Attempts(rejectID); a != 1 {
		t.Errorf("%s was attempted %d times after a 554, want once", rejectID, a)
	}
	checkBounce(t, dsn, alice.Address, erin, rejectID, "5.7.1", "554 5.7.1 Recipient refuses mail from e2e")
}

// checkBounce checks the delivery status notification Alice found: from
// the null sender, a multipart/report of type delivery-status whose
// machine-readable part names the failed recipient with the smarthost's
// status and reply, with the original message's header attached.
func checkBounce(t *testing.T, got []byte, sender, rcpt, origID, status, reply string) {
	t.Helper()
	if !bytes.HasPrefix(got, []byte("Return-Path: <>\r\nDelivered-To: "+sender+"\r\n")) {
		t.Errorf("the bounce does not start with the null sender's Return-Path and Delivered-To %s:\n%.300q", sender, got)
	}
	e, err := message.Read(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("reading the bounce: %v\n%q", err, got)
	}
	ct, params, err := e.Header.ContentType()
	if err != nil || ct != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("the bounce's Content-Type is %q %v (%v), want multipart/report; report-type=delivery-status", ct, params, err)
	}
	if to := e.Header.Get("To"); !strings.Contains(to, sender) {
		t.Errorf("the bounce is addressed To: %q, want %s", to, sender)
	}
	mr := e.MultipartReader()
	parts := map[string]string{}
	var order []string
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading the bounce's parts: %v", err)
		}
		pct, _, _ := part.Header.ContentType()
		body, err := io.ReadAll(part.Body)
		if err != nil {
			t.Fatalf("reading the bounce's %s part: %v", pct, err)
		}
		parts[pct] = string(body)
		order = append(order, pct)
	}
	if len(order) != 3 || order[0] != "text/plain" || order[1] != "message/delivery-status" || order[2] != "text/rfc822-headers" {
		t.Errorf("the bounce's parts are %v, want text/plain, message/delivery-status, text/rfc822-headers", order)
	}
	ds := strings.ReplaceAll(parts["message/delivery-status"], "\r\n", "\n")
	for _, want := range []string{
		"Reporting-MTA: dns; " + harness.SiteHostname,
		"Final-Recipient: rfc822; " + rcpt,
		"Action: failed",
		"Status: " + status,
		"Diagnostic-Code: smtp; " + reply,
	} {
		if !strings.Contains(ds, want+"\n") {
			t.Errorf("the delivery-status part lacks %q:\n%s", want, ds)
		}
	}
	if !strings.Contains(parts["text/rfc822-headers"], "Message-ID: "+origID+"\r\n") {
		t.Errorf("the attached header lacks the original Message-ID %s:\n%s", origID, parts["text/rfc822-headers"])
	}
	if !strings.Contains(parts["text/plain"], rcpt) {
		t.Errorf("the human-readable part does not name %s:\n%s", rcpt, parts["text/plain"])
	}
}
