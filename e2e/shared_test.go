package e2e

// The shared mailbox of DOMAIN.md section 5 (issue 7, "End-to-end tests"),
// through the whole pipeline: customers' mail downloaded from the ISP's
// POP3 mailbox (multi-drop) and sent straight to the site's inbound
// listener, staff mail submitted over SMTP, every mailbox read over IMAP
// through the site's Dovecot, and what leaves for the Internet taken from
// the smarthost (an SMTP sink).

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

// The sales team of site hq: sales@ is the unified address, Mia its
// manager; Zhangsan, Lisi and Wangwu are staff. Zhangsan may send to and
// receive from the Internet, Lisi may send but not receive (case 2's
// refusal), Wangwu may receive but not send. Alice (relay_test.go) is a
// colleague outside the team.
var (
	salesAddr = "sales@" + domain
	mia       = harness.User{Username: "mia", Password: "mia-password-10", Address: "mia@" + domain, DisplayName: "Mia Manager", InternetSend: true, InternetReceive: true}
	zhangsan  = harness.User{Username: "zhangsan", Password: "zhangsan-password-11", Address: "zhangsan@" + domain, DisplayName: "Zhangsan", InternetSend: true, InternetReceive: true}
	lisi      = harness.User{Username: "lisi", Password: "lisi-password-12", Address: "lisi@" + domain, DisplayName: "Lisi", InternetSend: true}
	wangwu    = harness.User{Username: "wangwu", Password: "wangwu-password-13", Address: "wangwu@" + domain, DisplayName: "Wangwu", InternetReceive: true}
)

// customer is the sales team's customer, outside the organisation.
const customer = "customer@outside.example"

// customerMessage is a customer's message as it sits in the ISP's mailbox
// (after the ISP's trace fields, given whole as lines) or as the
// customer's mail server sends it (no trace): From the customer, To to,
// with extra header fields (In-Reply-To, References) before the body.
func customerMessage(trace []string, to, subject, id string, extra ...string) []byte {
	var b bytes.Buffer
	for _, l := range trace {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("From: Customer <" + customer + ">\r\nTo: " + to + "\r\nSubject: " + subject +
		"\r\nDate: Sat, 21 Nov 2026 09:00:00 +0100\r\nMessage-ID: " + id + "\r\n")
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDear sales team,\r\n.a line beginning with a dot\r\nRegards.\r\n")
	return b.Bytes()
}

// staffMessage is a message a staff member's mail client submits: From
// the given field, an 8-bit body that a rewrite must leave alone.
func staffMessage(from, to, cc, subject, id string, extra ...string) []byte {
	var b bytes.Buffer
	b.WriteString("From: " + from + "\r\n")
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("To: " + to + "\r\n")
	if cc != "" {
		b.WriteString("Cc: " + cc + "\r\n")
	}
	b.WriteString("Subject: " + subject + "\r\nDate: Sat, 21 Nov 2026 10:00:00 +0100\r\nMessage-ID: " + id +
		"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"Grüße — our offer is attached.  \r\n.a line beginning with a dot\r\n\r\n")
	return b.Bytes()
}

// mailboxHolds waits until u's INBOX, read over IMAP, holds len(want)
// messages and checks that they are exactly those of want (by
// Message-ID), each once; it returns them by Message-ID.
func (p *pipeline) mailboxHolds(t *testing.T, u harness.User, want ...string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	n := map[string]int{}
	for _, m := range p.waitIMAP(t, u, len(want)) {
		id := harness.MessageID(m)
		got[id] = m
		n[id]++
	}
	for _, id := range want {
		if n[id] != 1 {
			t.Errorf("%s's INBOX holds %s %d times, want once", u.Username, id, n[id])
		}
	}
	for id := range n {
		if !slices.Contains(want, id) {
			t.Errorf("%s's INBOX holds %s, which is not for them", u.Username, id)
		}
	}
	return got
}

// checkInbound checks a customer's message as a user read it: the bytes the
// customer's side handed over, unchanged, after the relay's Return-Path and
// Delivered-To (the user's address) and, for SMTP, its Received field.
func checkInbound(t *testing.T, who string, got, sent []byte, u harness.User, smtpIn bool) {
	t.Helper()
	if !bytes.HasSuffix(got, sent) {
		t.Errorf("%s: the customer's message is not the end of the one %s read:\n got %q\nwant ...%q", who, u.Username, got, sent)
		return
	}
	head := string(got[:len(got)-len(sent)])
	want := "Return-Path: <" + customer + ">\r\nDelivered-To: " + u.Address + "\r\n"
	if smtpIn {
		want += "Received: from " + harness.InboundHelo + " ("
	}
	if !strings.HasPrefix(head, want) || (!smtpIn && head != want) {
		t.Errorf("%s: the message %s read starts with %q, want %q", who, u.Username, head, want)
	}
}

// rewritten is a submitted message as case 3 makes it leave: its From
// replaced by "<name>" <sales@>, a Reply-To with the same after it, its
// Sender field dropped; everything else byte for byte.
func rewritten(submitted []byte, from, sender, name string) []byte {
	unified := `"` + name + `" <` + salesAddr + `>`
	out := bytes.Replace(submitted, []byte("From: "+from+"\r\n"), []byte("From: "+unified+"\r\nReply-To: "+unified+"\r\n"), 1)
	if sender != "" {
		out = bytes.Replace(out, []byte("Sender: "+sender+"\r\n"), nil, 1)
	}
	return out
}

// TestSharedMailbox: the four cases of DOMAIN.md section 5 with the sales
// team above (sales@ forwards to staff, rewrites the sender and copies
// staff's outbound mail to the manager).
//
//  3. Zhangsan writes to the customer (Cc Alice) and Lisi does too, her
//     mail client calling her "Li Si (mobile)": each leaves once through
//     the smarthost from "<directory name>" <sales@> (envelope sender
//     sales@, Reply-To the same, no Sender, no staff address anywhere in
//     the header), the rest byte for byte; Mia keeps a copy as submitted;
//     Alice gets Zhangsan's as submitted. Wangwu may not send outside
//     (refused at RCPT). Not case 3: Alice (not staff) writing out leaves
//     unchanged with no copy for Mia, and Zhangsan writing only to Alice
//     is neither rewritten nor copied.
//  1. The customer writes to sales@, once through the ISP mailbox and
//     once straight to the inbound listener: Mia and every staff member
//     (Lisi too, though she does not receive Internet mail), no one else.
//  2. The customer writes to Zhangsan (both ways): Zhangsan and Mia only.
//     To Lisi: refused at RCPT over SMTP; from the ISP mailbox, no one
//     gets it and the customer gets a bounce through the smarthost.
//  4. The customer's replies to sales@, from the ISP mailbox: one answering
//     Zhangsan's message (In-Reply-To) reaches Zhangsan and Mia only; one
//     whose References name Lisi's message though its To says "Zhangsan"
//     reaches Lisi and Mia only (the Message-ID wins); one naming only
//     "Wangwu" reaches Wangwu and Mia only.
//
// Every mailbox then holds exactly its messages, each once, and the
// smarthost exactly the three outbound messages and the bounce.
func TestSharedMailbox(t *testing.T) {
	t.Parallel()
	const box = "hq-all@isp.example"
	isp := harness.StartISP(t, testenv.DovecotUser{Username: box, Password: "isp-password-sales"})
	p := &pipeline{users: harness.StartUsers(t), sink: harness.StartSink(t)}
	p.users.CreateSite(t, "hq", domain)
	people := []harness.User{alice, mia, zhangsan, lisi, wangwu}
	ids := map[string]string{}
	for _, u := range people {
		ids[u.Username] = p.users.CreateUser(t, "hq", u)
	}
	name, forward := "Sales", true
	p.users.CreateSharedMailbox(t, usersclient.SharedMailboxCreate{
		Address: salesAddr, DisplayName: &name, Manager: ids[mia.Username],
		Staff:          &[]string{ids[zhangsan.Username], ids[lisi.Username], ids[wangwu.Username]},
		ForwardToStaff: &forward, // rewrite_sender and copy_outbound_to_manager are on by default
	})
	cfg := harness.QuickFetcher()
	cfg["relay.delivery.retry.base"] = "300ms"
	cfg["relay.delivery.retry.cap"] = "1s"
	p.site = harness.StartSite(t, harness.SiteOptions{Name: "hq", Users: p.users, Smarthost: p.sink.Addr, Config: cfg})
	p.site.WaitForUsers(t, alice.Username, mia.Username, zhangsan.Username, lisi.Username, wangwu.Username)
	start := time.Now()

	submit := func(u harness.User, rcpts []string, msg []byte) error {
		t.Helper()
		return p.site.Submit(t, u.Username, u.Password, u.Address, rcpts, msg)
	}
	refusedAtRcpt := func(what string, err error) {
		t.Helper()
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
			t.Errorf("%s: %v, want 550 5.7.1", what, err)
		}
	}

	// Case 3 first: the customer's replies (case 4) answer these messages.
	const (
		c3zs      = "<sm-c3-zs.1@hq.e2e.test>"
		c3ls      = "<sm-c3-ls.1@hq.e2e.test>"
		c3ww      = "<sm-c3-ww.1@hq.e2e.test>"
		notStaff  = "<sm-alice-out@hq.e2e.test>"
		staffIn   = "<sm-zhangsan-inside@hq.e2e.test>"
		customer2 = "partner@elsewhere.example"
	)
	zsFrom := `"Zhangsan" <` + zhangsan.Address + `>`
	msgZS := staffMessage(zsFrom, "Customer <"+customer+">", "Alice Martin <"+alice.Address+">", "Your offer", c3zs, "Sender: "+zhangsan.Address)
	lsFrom := `"Li Si (mobile)" <` + lisi.Address + `>`
	msgLS := staffMessage(lsFrom, "Customer <"+customer+">", "", "Our prices", c3ls)
	msgWW := staffMessage(`"Wangwu" <`+wangwu.Address+`>`, "Customer <"+customer+">", "", "Hello", c3ww)
	msgAlice := staffMessage("Alice Martin <"+alice.Address+">", "Partner <"+customer2+">", "", "Not sales", notStaff, "Sender: "+alice.Address)
	msgInside := staffMessage(zsFrom, "Alice Martin <"+alice.Address+">", "", "Lunch?", staffIn)
	if err := submit(zhangsan, []string{customer, alice.Address}, msgZS); err != nil {
		t.Fatalf("Zhangsan's submission: %v", err)
	}
	if err := submit(lisi, []string{customer}, msgLS); err != nil {
		t.Fatalf("Lisi's submission: %v", err)
	}
	refusedAtRcpt("Wangwu (no internet_send) writing to the customer", submit(wangwu, []string{customer}, msgWW))
	if err := submit(alice, []string{customer2}, msgAlice); err != nil {
		t.Fatalf("Alice's submission: %v", err)
	}
	if err := submit(zhangsan, []string{alice.Address}, msgInside); err != nil {
		t.Fatalf("Zhangsan's submission to Alice: %v", err)
	}
	harness.Eventually(t, 60*time.Second, "the outbound messages at the smarthost", func() error {
		n := p.sink.CountByMessageID()
		if n[c3zs] == 0 || n[c3ls] == 0 || n[notStaff] == 0 {
			return fmt.Errorf("accepted so far: %v", n)
		}
		return nil
	}, p.site.Process)
	// Mia's copies are routed with the outbound messages, and the
	// Message-IDs recorded then: wait for them before the replies come.
	p.waitIMAP(t, mia, 2)

	// Cases 1, 2 and 4 from the ISP mailbox (multi-drop: the ISP's
	// Delivered-To names the recipient).
	const (
		c1      = "<sm-c1@outside.example>"
		c2zs    = "<sm-c2-zhangsan@outside.example>"
		c2ls    = "<sm-c2-lisi@outside.example>"
		c4zs    = "<sm-c4-zhangsan@outside.example>"
		c4ls    = "<sm-c4-lisi@outside.example>"
		c4ww    = "<sm-c4-wangwu@outside.example>"
		c1smtp  = "<sm-c1-smtp@outside.example>"
		c2zsSMT = "<sm-c2-zhangsan-smtp@outside.example>"
		c2lsSMT = "<sm-c2-lisi-smtp@outside.example>"
	)
	trace := func(rcpt string) []string {
		return []string{"Return-Path: <" + customer + ">", "Delivered-To: " + rcpt, ispReceived(rcpt)}
	}
	fromISP := map[string][]byte{
		c1:   customerMessage(trace(salesAddr), "Sales <"+salesAddr+">", "Request for a quote", c1),
		c2zs: customerMessage(trace(zhangsan.Address), "Zhangsan <"+zhangsan.Address+">", "Directly to you", c2zs),
		c2ls: customerMessage(trace(lisi.Address), "Lisi <"+lisi.Address+">", "Directly to you", c2ls),
		c4zs: customerMessage(trace(salesAddr), `"Zhangsan" <`+salesAddr+`>`, "Re: Your offer", c4zs, "In-Reply-To: "+c3zs, "References: "+c3zs),
		c4ls: customerMessage(trace(salesAddr), `"Zhangsan" <`+salesAddr+`>`, "Re: Our prices", c4ls, "References: <unknown@outside.example> "+c3ls),
		c4ww: customerMessage(trace(salesAddr), `"Wangwu" <`+salesAddr+`>`, "For Wangwu", c4ww),
	}
	for _, id := range []string{c1, c2zs, c2ls, c4zs, c4ls, c4ww} {
		isp.Deliver(t, box, fromISP[id])
	}
	acct := isp.Account(t, "isp-hq", "hq", box, usersclient.TLSModeTLS)
	mode := usersclient.POP3ModeMulti
	pm := ids[alice.Username] // a message for no one would land with Alice
	acct.Mode, acct.Postmaster = &mode, &pm
	p.users.CreatePOP3Account(t, acct)

	// Cases 1 and 2 straight from the customer's mail server.
	fromSMTP := map[string][]byte{
		c1smtp:  customerMessage(nil, "Sales <"+salesAddr+">", "Another request", c1smtp),
		c2zsSMT: customerMessage(nil, "Zhangsan <"+zhangsan.Address+">", "Directly to you again", c2zsSMT),
	}
	if err := p.site.SendInbound(t, customer, []string{salesAddr}, fromSMTP[c1smtp]); err != nil {
		t.Fatalf("the customer's mail to %s: %v", salesAddr, err)
	}
	if err := p.site.SendInbound(t, customer, []string{zhangsan.Address}, fromSMTP[c2zsSMT]); err != nil {
		t.Fatalf("the customer's mail to %s: %v", zhangsan.Address, err)
	}
	refusedAtRcpt("the customer writing to Lisi (no internet_receive) over SMTP",
		p.site.SendInbound(t, customer, []string{lisi.Address}, customerMessage(nil, "Lisi <"+lisi.Address+">", "Directly to you", c2lsSMT)))

	want := map[string][]string{
		mia.Username:      {c3zs, c3ls, c1, c2zs, c4zs, c4ls, c4ww, c1smtp, c2zsSMT},
		zhangsan.Username: {c1, c2zs, c4zs, c1smtp, c2zsSMT},
		lisi.Username:     {c1, c4ls, c1smtp},
		wangwu.Username:   {c1, c4ww, c1smtp},
		alice.Username:    {c3zs, staffIn},
	}
	for _, u := range people {
		p.waitIMAP(t, u, len(want[u.Username]))
	}
	harness.Eventually(t, 60*time.Second, "the bounce for Lisi at the smarthost", func() error {
		if n := len(p.sink.Accepted()); n < 4 {
			return fmt.Errorf("%d message(s) so far", n)
		}
		return nil
	}, p.site.Process)
	t.Logf("everything delivered %v after the site was up", time.Since(start).Round(time.Millisecond))
	harness.Quiesce(t, 30*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		var counts []int
		for _, u := range people {
			files, err := p.site.MaildirFiles(u.Username)
			if err != nil {
				return "", err
			}
			counts = append(counts, len(files))
		}
		return fmt.Sprint(counts, len(p.sink.Accepted())), nil
	}, p.site.Process)

	// Every mailbox holds exactly its messages, as the customer or the
	// staff member wrote them: nothing is rewritten on the way in, nor in
	// the copies that stay inside.
	got := map[string]map[string][]byte{}
	for _, u := range people {
		got[u.Username] = p.mailboxHolds(t, u, want[u.Username]...)
	}
	for _, u := range people {
		for id, m := range got[u.Username] {
			who := u.Username + " " + id
			switch {
			case fromISP[id] != nil:
				checkInbound(t, who, m, fromISP[id], u, false)
			case fromSMTP[id] != nil:
				checkInbound(t, who, m, fromSMTP[id], u, true)
			default: // a staff member's message, as submitted
				sub := map[string][]byte{c3zs: msgZS, c3ls: msgLS, staffIn: msgInside}[id]
				sender := zhangsan.Address
				if id == c3ls {
					sender = lisi.Address
				}
				if !bytes.HasSuffix(m, sub) {
					t.Errorf("%s: the submitted message is not the end of the one read (rewritten inside?):\n%q", who, m)
				}
				if want := "Return-Path: <" + sender + ">\r\nDelivered-To: " + u.Address + "\r\n"; !bytes.HasPrefix(m, []byte(want)) {
					t.Errorf("%s: starts with %.120q, want %q", who, m, want)
				}
			}
		}
	}

	// The smarthost: the two staff messages rewritten, Alice's unchanged,
	// the bounce of the message for Lisi; each once.
	accepted := p.sink.Accepted()
	if len(accepted) != 4 {
		t.Errorf("the smarthost accepted %d messages, want 4", len(accepted))
	}
	var bounces int
	for _, m := range accepted {
		switch m.MessageID {
		case c3zs, c3ls:
			sub, from, sender, name := msgZS, zsFrom, zhangsan.Address, "Zhangsan"
			if m.MessageID == c3ls {
				sub, from, sender, name = msgLS, lsFrom, "", "Lisi"
			}
			if m.From != salesAddr || !slices.Equal(m.To, []string{customer}) {
				t.Errorf("%s left with MAIL FROM %q and RCPT TO %q, want %s and [%s]", m.MessageID, m.From, m.To, salesAddr, customer)
			}
			out := rewritten(sub, from, sender, name)
			if !bytes.HasSuffix(m.Data, out) {
				t.Errorf("%s at the smarthost:\n%q\nwant it to end with\n%q", m.MessageID, m.Data, out)
			}
			head, _, _ := bytes.Cut(m.Data, []byte("\r\n\r\n"))
			for _, staff := range []string{zhangsan.Address, lisi.Address, "Li Si"} {
				if bytes.Contains(head, []byte(staff)) {
					t.Errorf("%s gives %q away at the smarthost:\n%s", m.MessageID, staff, head)
				}
			}
		case notStaff:
			if m.From != alice.Address || !slices.Equal(m.To, []string{customer2}) || !bytes.HasSuffix(m.Data, msgAlice) {
				t.Errorf("Alice's message (not staff) changed on its way out: MAIL FROM %q, RCPT TO %q:\n%q", m.From, m.To, m.Data)
			}
		default:
			bounces++
			ds := string(m.Data)
			if m.From != "" || !slices.Equal(m.To, []string{customer}) ||
				!strings.Contains(ds, "Final-Recipient: rfc822; "+lisi.Address) || !strings.Contains(ds, "Status: 5.7.1") ||
				!strings.Contains(ds, "Message-ID: "+c2ls) {
				t.Errorf("at the smarthost, not the bounce of %s for %s: MAIL FROM %q, RCPT TO %q:\n%.1500s", c2ls, lisi.Address, m.From, m.To, ds)
			}
		}
	}
	if n := p.sink.CountByMessageID(); n[c3zs] != 1 || n[c3ls] != 1 || n[notStaff] != 1 || bounces != 1 {
		t.Errorf("the smarthost accepted %v and %d bounce(s), want each message once and one bounce", n, bounces)
	}
	if n := p.sink.Attempts(c3ww); n != 0 {
		t.Errorf("Wangwu's refused message reached the smarthost %d time(s)", n)
	}
}

// TestSubmissionLocalAndOutside: Alice sends one message to her colleague
// Bob and, in Cc, to Carol outside. Bob reads it over IMAP as submitted;
// the smarthost gets it exactly once, for Carol only (Bob's copy never
// leaves the LAN); Alice's INBOX stays empty. (TestLocalMailReadOverIMAPAndPOP3
// and TestOutboundThroughSmarthost cover each kind of recipient alone.)
func TestSubmissionLocalAndOutside(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, harness.SiteOptions{}, alice, bob)
	const carol = "carol@outside.example"
	const id = "<split-1@e2e.test>"
	msg := staffMessage("Alice Martin <"+alice.Address+">", "Bob Durand <"+bob.Address+">", "Carol <"+carol+">", "Minutes", id)
	if err := p.site.Submit(t, alice.Username, alice.Password, alice.Address, []string{bob.Address, carol}, msg); err != nil {
		t.Fatalf("submission: %v", err)
	}
	got := p.waitIMAP(t, bob, 1)[0]
	// The relay's Received field names the recipient only when there is one.
	head := "Return-Path: <" + alice.Address + ">\r\nDelivered-To: " + bob.Address + "\r\nReceived: from " + harness.SubmissionHelo + " ([127.0.0.1])\r\n\tby " + harness.SiteHostname + " (Postern) with ESMTPSA id "
	if !bytes.HasPrefix(got, []byte(head)) || !bytes.HasSuffix(got, msg) {
		t.Errorf("Bob read\n%q\nwant %q ... then the submitted message", got, head)
	}
	harness.Eventually(t, 60*time.Second, "Carol's copy at the smarthost", func() error {
		if p.sink.Attempts(id) == 0 {
			return errors.New("not yet")
		}
		return nil
	}, p.site.Process)
	harness.Quiesce(t, 20*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		files, err := p.site.MaildirFiles(bob.Username)
		return fmt.Sprint(len(files), len(p.sink.Accepted())), err
	}, p.site.Process)
	acc := p.sink.Accepted()
	if len(acc) != 1 {
		t.Fatalf("the smarthost accepted %d messages, want 1", len(acc))
	}
	if m := acc[0]; m.From != alice.Address || !slices.Equal(m.To, []string{carol}) || !bytes.HasSuffix(m.Data, msg) {
		t.Errorf("at the smarthost: MAIL FROM %q RCPT TO %q, want %s and [%s] (never Bob), and the submitted bytes:\n%q", m.From, m.To, alice.Address, carol, m.Data)
	}
	if n := len(p.waitIMAP(t, bob, 1)); n != 1 {
		t.Errorf("Bob's INBOX holds %d messages, want 1", n)
	}
	if n := len(p.imap(t, alice)); n != 0 {
		t.Errorf("Alice's INBOX holds %d message(s), want none", n)
	}
}
