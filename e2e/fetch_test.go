package e2e

// The fetcher in the whole pipeline (issue 4, "Tests"; issue 7, the
// multi-drop end-to-end test): POP3 accounts created and edited in the
// users service, downloaded from a real Dovecot standing in for the ISP,
// routed and delivered, and read over IMAP by each user with their
// directory password; the ISP mailbox emptied once everything is
// delivered.
//
// An account's regular polls are ISPPollInterval (30s, the users API's
// minimum) apart; an account added or edited is polled at once (the
// fetcher syncs the replica and reads the accounts again within a second,
// see harness.QuickFetcher). The DELE of a message comes at the first
// session after its delivery, so each test waits for one regular poll.

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

// ispMessage is a message as it sits in an ISP mailbox: the ISP's trace
// fields (Return-Path, Received, Delivered-To...) first, given whole as
// lines, then the message a customer sent (CRLF line ends), with a line
// beginning with a dot that POP3 must stuff and unstuff.
func ispMessage(trace []string, from, to, subject, id string) []byte {
	var b bytes.Buffer
	for _, l := range trace {
		b.WriteString(l + "\r\n")
	}
	b.Write(harness.NewMessage(from, to, subject, id, "Hello,", ".a line beginning with a dot", "Regards."))
	return b.Bytes()
}

// ispReceived is the Received field of the ISP's MX, with a "for" clause
// when rcpt is not empty.
func ispReceived(rcpt string) string {
	f := "Received: from mail.outside.example (mail.outside.example [192.0.2.7])\r\n\tby mx.isp.example (Postfix) with ESMTPS id 4XaB1c2D3e"
	if rcpt != "" {
		f += "\r\n\tfor <" + rcpt + ">"
	}
	return f + "; Sat, 21 Nov 2026 09:00:00 +0100"
}

// checkDownloaded checks a message as a user read it: the bytes that were
// in the ISP mailbox, unchanged, after the relay's Return-Path (the
// message's envelope sender) and Delivered-To (the user's address).
func checkDownloaded(t *testing.T, who string, got, original []byte, sender, rcpt string) {
	t.Helper()
	if !bytes.HasSuffix(got, original) {
		t.Errorf("%s: the message in the ISP mailbox is not the end of the one read:\n got %q\nwant ...%q", who, got, original)
		return
	}
	head := string(got[:len(got)-len(original)])
	if want := "Return-Path: <" + sender + ">\r\nDelivered-To: " + rcpt + "\r\n"; head != want {
		t.Errorf("%s: the delivered message starts with %q, want %q", who, head, want)
	}
}

// readExactly waits until u's INBOX, read over IMAP with u's directory
// password, holds len(want) messages, and checks that they are exactly
// the messages of want (by Message-ID), each once, each the ISP's bytes
// after the relay's two fields.
func (p *pipeline) readExactly(t *testing.T, u harness.User, want map[string][]byte, sender string) {
	t.Helper()
	got := p.waitIMAP(t, u, len(want))
	seen := map[string]int{}
	for _, m := range got {
		id := harness.MessageID(m)
		seen[id]++
		orig, ok := want[id]
		if !ok {
			t.Errorf("%s's INBOX holds %s, which is not theirs:\n%.400q", u.Username, id, m)
			continue
		}
		checkDownloaded(t, u.Username+" "+id, m, orig, sender, u.Address)
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("%s's INBOX holds %s %d times, want once", u.Username, id, seen[id])
		}
	}
}

// waitISPEmpty waits until the ISP mailbox holds no message: every one was
// deleted over POP3 after its delivery.
func waitISPEmpty(t *testing.T, isp *harness.ISP, mailbox string, p *pipeline) {
	t.Helper()
	harness.Eventually(t, harness.ISPPollInterval+30*time.Second, "the ISP mailbox "+mailbox+" emptied", func() error {
		n, err := isp.Count(mailbox)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d message(s) still there", n)
		}
		return nil
	}, p.site.Process)
}

// checkFetcherMetrics checks the fetcher's counters: every message
// downloaded and deleted once, no errors.
func checkFetcherMetrics(t *testing.T, p *pipeline, downloaded, postmaster int) {
	t.Helper()
	for _, c := range []struct {
		name string
		want int
	}{
		{"postern_pop3_messages_downloaded_total", downloaded},
		{"postern_pop3_deleted_total", downloaded},
		{"postern_pop3_postmaster_total", postmaster},
		{"postern_pop3_errors_total", 0},
	} {
		v, err := p.site.Metric("fetcher", c.name)
		if err != nil {
			t.Errorf("fetcher metric %s: %v", c.name, err)
		} else if v != float64(c.want) {
			t.Errorf("fetcher metric %s = %v, want %d", c.name, v, c.want)
		}
	}
}

// TestUsersEditInEffectAtNextCycle: with the site running, the
// administrator creates Frank and a single-drop POP3 account for his ISP
// mailbox (STARTTLS, the ISP's self-signed certificate accepted with
// tls_skip_verify); the two messages waiting there reach Frank, who reads
// them over IMAP with his directory password. Then Frank hands the mailbox
// over: the administrator creates Grace and moves the account's target to
// her; the message that came meanwhile reaches Grace only, the two already
// downloaded are not downloaded again, and the ISP mailbox is emptied once
// all three are delivered.
func TestUsersEditInEffectAtNextCycle(t *testing.T) {
	t.Parallel()
	const box = "hq-frank@isp.example"
	isp := harness.StartISP(t, testenv.DovecotUser{Username: box, Password: "isp-password-frank"})
	p := startPipeline(t, harness.SiteOptions{Config: harness.QuickFetcher()}, alice)

	const sender = "customer@outside.example"
	m1 := ispMessage([]string{"Return-Path: <" + sender + ">", "Delivered-To: " + box, ispReceived(box)},
		"Customer <"+sender+">", "Frank <"+box+">", "first", "<edit-1@outside.example>")
	m2 := ispMessage([]string{"Return-Path: <" + sender + ">", "Delivered-To: " + box, ispReceived(box)},
		"Customer <"+sender+">", "Frank <"+box+">", "second", "<edit-2@outside.example>")
	isp.Deliver(t, box, m1, m2)

	// A new user and a new account, while the pipeline runs.
	frank := harness.User{Username: "frank", Password: "frank-password-6", Address: "frank@" + domain, InternetReceive: true}
	frankID := p.users.CreateUser(t, "hq", frank)
	acct := isp.Account(t, "isp-frank", "hq", box, usersclient.TLSModeStarttls)
	skip := true
	acct.TLSFingerprint, acct.TLSSkipVerify = nil, &skip
	mode := usersclient.POP3ModeSingle
	acct.Mode, acct.TargetUser = &mode, &frankID
	created := p.users.CreatePOP3Account(t, acct)
	start := time.Now()

	p.readExactly(t, frank, map[string][]byte{"<edit-1@outside.example>": m1, "<edit-2@outside.example>": m2}, sender)
	t.Logf("the new account's messages read by frank %v after it was created", time.Since(start).Round(time.Millisecond))

	// The account's first session ran moments ago; its next regular poll
	// is ISPPollInterval after it. Meanwhile a third message arrives and
	// the account is moved to a new user: the edit makes the account due
	// at once, and the sync before that session brings Grace and the new
	// target.
	m3 := ispMessage([]string{"Return-Path: <" + sender + ">", "Delivered-To: " + box, ispReceived(box)},
		"Customer <"+sender+">", "Frank <"+box+">", "third", "<edit-3@outside.example>")
	isp.Deliver(t, box, m3)
	grace := harness.User{Username: "grace", Password: "grace-password-7", Address: "grace@" + domain, InternetReceive: true}
	graceID := p.users.CreateUser(t, "hq", grace)
	moved := p.users.UpdatePOP3Account(t, created.ID, usersclient.POP3AccountPatch{TargetUser: &graceID})
	if moved.TargetUser != graceID || moved.Version <= created.Version {
		t.Fatalf("the account after the edit: target %s version %d, want %s and a version above %d", moved.TargetUser, moved.Version, graceID, created.Version)
	}

	edited := time.Now()
	p.readExactly(t, grace, map[string][]byte{"<edit-3@outside.example>": m3}, sender)
	t.Logf("the third message read by grace %v after the edit", time.Since(edited).Round(time.Millisecond))
	waitISPEmpty(t, isp, box, p)
	t.Logf("the ISP mailbox empty %v after the edit", time.Since(edited).Round(time.Millisecond))
	harness.Quiesce(t, 30*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		a, err := p.site.MaildirFiles(frank.Username)
		b, err2 := p.site.MaildirFiles(grace.Username)
		return fmt.Sprint(len(a), len(b)), errors.Join(err, err2)
	}, p.site.Process)

	p.readExactly(t, frank, map[string][]byte{"<edit-1@outside.example>": m1, "<edit-2@outside.example>": m2}, sender)
	p.readExactly(t, grace, map[string][]byte{"<edit-3@outside.example>": m3}, sender)
	if n := len(p.imap(t, alice)); n != 0 {
		t.Errorf("alice's INBOX holds %d message(s), want none", n)
	}
	if n := len(p.sink.Accepted()); n != 0 {
		t.Errorf("the smarthost got %d message(s), want none (a bounce?)", n)
	}
	checkFetcherMetrics(t, p, 3, 0)
}

// TestMultiDropMailbox: one ISP mailbox (implicit TLS, the certificate
// pinned by its fingerprint) collects the mail of the whole site. Its
// messages name their recipients in the fields ISPs write — Delivered-To,
// X-Original-To, Received "for", Envelope-To with two people, X-Envelope-To
// in upper case, most after the ISP's own Delivered-To of the mailbox,
// which is not the organisation's — and one names no one in any
// envelope field, only in To and Cc, which a multi-drop account does not
// guess from. Each user reads exactly their mail over IMAP, the message
// without a recipient is in the postmaster's INBOX, nothing is lost or
// doubled, and the ISP mailbox ends empty.
func TestMultiDropMailbox(t *testing.T) {
	t.Parallel()
	const box = "hq-all@isp.example"
	isp := harness.StartISP(t, testenv.DovecotUser{Username: box, Password: "isp-password-hq"})
	carol := harness.User{Username: "carol", Password: "carol-password-8", Address: "carol@" + domain, InternetReceive: true}
	postmaster := harness.User{Username: "postmaster", Password: "postmaster-password-9", Address: "postmaster@" + domain, InternetReceive: true}
	p := startPipeline(t, harness.SiteOptions{Config: harness.QuickFetcher()}, alice, bob, carol)

	const sender = "customer@outside.example"
	from := "Customer <" + sender + ">"
	msg := func(id string, trace ...string) []byte {
		trace = append([]string{"Return-Path: <" + sender + ">"}, trace...)
		return ispMessage(trace, from, "Sales <sales@outside.example>", "multi-drop "+id, id)
	}
	ispMark := "Delivered-To: " + box // the ISP's final delivery into the mailbox
	msgs := map[string][]byte{
		"<md-delivered-to@outside.example>": msg("<md-delivered-to@outside.example>", "Delivered-To: alice@"+domain, ispReceived("")),
		"<md-x-original@outside.example>":   msg("<md-x-original@outside.example>", ispMark, "X-Original-To: bob@"+domain, ispReceived("")),
		"<md-received@outside.example>":     msg("<md-received@outside.example>", ispMark, ispReceived("carol@"+domain)),
		"<md-envelope-to@outside.example>":  msg("<md-envelope-to@outside.example>", ispMark, "Envelope-To: alice@"+domain+", carol@"+domain, ispReceived("")),
		"<md-x-envelope@outside.example>":   msg("<md-x-envelope@outside.example>", ispMark, "X-Envelope-To: <BOB@"+strings.ToUpper(domain)+">", ispReceived("")),
	}
	// No envelope field names anyone of the organisation; To and Cc do,
	// but they say whom the sender wrote to, not whom the ISP delivered to.
	const noRcptID = "<md-no-recipient@outside.example>"
	msgs[noRcptID] = ispMessage([]string{"Return-Path: <" + sender + ">", ispMark, ispReceived(""), "Cc: " + bob.Address},
		from, alice.Address, "to whom?", noRcptID)

	ids := make([]string, 0, len(msgs))
	for id := range msgs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		isp.Deliver(t, box, msgs[id])
	}

	pick := func(ids ...string) map[string][]byte {
		out := map[string][]byte{}
		for _, id := range ids {
			out[id] = msgs[id]
		}
		return out
	}
	// The postmaster, and the account, while the pipeline runs.
	pm := p.users.CreateUser(t, "hq", postmaster)
	acct := isp.Account(t, "isp-hq", "hq", box, usersclient.TLSModeTLS)
	mode := usersclient.POP3ModeMulti
	acct.Mode, acct.Postmaster = &mode, &pm
	p.users.CreatePOP3Account(t, acct)
	start := time.Now()

	want := map[string]map[string][]byte{
		alice.Username:      pick("<md-delivered-to@outside.example>", "<md-envelope-to@outside.example>"),
		bob.Username:        pick("<md-x-original@outside.example>", "<md-x-envelope@outside.example>"),
		carol.Username:      pick("<md-received@outside.example>", "<md-envelope-to@outside.example>"),
		postmaster.Username: pick(noRcptID),
	}
	people := []harness.User{alice, bob, carol, postmaster}
	for _, u := range people {
		p.waitIMAP(t, u, len(want[u.Username]))
	}
	t.Logf("every message delivered %v after the account was created", time.Since(start).Round(time.Millisecond))
	waitISPEmpty(t, isp, box, p)
	t.Logf("the ISP mailbox empty %v after the account was created", time.Since(start).Round(time.Millisecond))
	harness.Quiesce(t, 30*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		var counts []int
		for _, u := range people {
			files, err := p.site.MaildirFiles(u.Username)
			if err != nil {
				return "", err
			}
			counts = append(counts, len(files))
		}
		return fmt.Sprint(counts), nil
	}, p.site.Process)
	for _, u := range people {
		p.readExactly(t, u, want[u.Username], sender)
	}
	if n := len(p.sink.Accepted()); n != 0 {
		t.Errorf("the smarthost got %d message(s), want none (a bounce?)", n)
	}
	checkFetcherMetrics(t, p, len(msgs), 1)
}
