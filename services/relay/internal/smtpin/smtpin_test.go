package smtpin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/testenv"
)

func TestSubmissionHappyPath(t *testing.T) {
	e := start(t, nil)
	c := e.submit("alice", alicePW)
	msg := message("happy")
	if err := send(c, "alice@example.com", []string{"bob@example.com", "Someone@Internet.test"}, msg); err != nil {
		t.Fatalf("submission: %v", err)
	}
	// A second message in the same session, by LOGIN with the primary
	// address on implicit TLS.
	c2, err := smtp.DialTLS(e.addr(ListenerSubmissions), e.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Auth(sasl.NewLoginClient("Alice@Example.com", alicePW)); err != nil {
		t.Fatalf("AUTH LOGIN by primary address: %v", err)
	}
	if err := send(c2, "a.archer@example.com", []string{"team@example.com"}, message("second")); err != nil {
		t.Fatalf("submission on 465 from an alias: %v", err)
	}
	c2.Quit()

	got := e.collect(2)
	slices.SortFunc(got, func(a, b events.Inbound) int { return strings.Compare(a.MailFrom, b.MailFrom) })
	in := got[1]
	if in.MailFrom != "alice@example.com" || !slices.Equal(in.Recipients, []string{"bob@example.com", "Someone@Internet.test"}) {
		t.Errorf("envelope: from %q to %q", in.MailFrom, in.Recipients)
	}
	if in.Site != hq || in.Source.Kind != events.SourceSMTP || in.Source.AuthUser != "u-alice" {
		t.Errorf("source: site %q %+v", in.Site, in.Source)
	}
	if in.Source.SMTPSession == "" || !strings.HasPrefix(in.Source.SMTPRemote, "127.0.0.1:") || in.Source.SMTPHelo != "client.test" {
		t.Errorf("smtp source: %+v", in.Source)
	}
	if in.ID == "" || in.ReceivedAt.IsZero() {
		t.Errorf("id %q received at %v", in.ID, in.ReceivedAt)
	}
	received, rest := splitReceived(t, in.Message)
	if !bytes.Equal(rest, msg) {
		t.Errorf("message after the Received field differs:\n got %q\nwant %q", rest, msg)
	}
	for _, want := range []string{"from client.test ([127.0.0.1])", "by mx.example.com (Postern) with ESMTPSA id " + in.ID} {
		if !strings.Contains(received, want) {
			t.Errorf("Received field %q lacks %q", received, want)
		}
	}
	if strings.Contains(received, "for <") {
		t.Errorf("Received field names a recipient of a message with two: %q", received)
	}
	second := got[0]
	if second.MailFrom != "a.archer@example.com" || second.Source.AuthUser != "u-alice" {
		t.Errorf("second message: %q %+v", second.MailFrom, second.Source)
	}
	if r, _ := splitReceived(t, second.Message); !strings.Contains(r, "for <team@example.com>") {
		t.Errorf("Received field of a one-recipient message: %q", r)
	}
}

func TestSubmissionRefusesAuthBeforeTLS(t *testing.T) {
	e := start(t, nil)
	c := e.dial(ListenerSubmission)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not advertised")
	}
	err := c.Auth(sasl.NewPlainClient("", "alice", alicePW))
	if code(err) < 500 {
		t.Fatalf("AUTH before STARTTLS: %v, want a 5xx refusal", err)
	}

	r := e.raw(ListenerSubmission)
	r.cmd("EHLO raw.test")
	ir := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + alicePW))
	if got := r.cmd("AUTH PLAIN " + ir); !strings.HasPrefix(got, "5") {
		t.Fatalf("AUTH PLAIN before STARTTLS: %q", got)
	}
	if got := r.cmd("MAIL FROM:<alice@example.com>"); !strings.HasPrefix(got, "530 5.7.0") {
		t.Fatalf("MAIL before STARTTLS: %q", got)
	}

	// After STARTTLS, without AUTH: no mail either.
	c2 := e.tlsDial(ListenerSubmission, e.clientTLS())
	if ok, params := c2.Extension("AUTH"); !ok || !strings.Contains(params, "PLAIN") || !strings.Contains(params, "LOGIN") {
		t.Errorf("AUTH after STARTTLS: %v %q", ok, params)
	}
	wantCode(t, "MAIL without AUTH", c2.Mail("alice@example.com", nil), 530, "5.7.0")
}

func TestAuthFailures(t *testing.T) {
	e := start(t, nil)
	for _, tc := range []struct{ name, user, pw string }{
		{"wrong password", "alice", "wrong"},
		{"alias is not a login", "a.archer@example.com", alicePW},
		{"disabled user", "dave", davePW},
		{"user without a hash", "nopw", ""},
		{"unknown user", "nobody", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.tlsDial(ListenerSubmission, e.clientTLS())
			wantCode(t, "AUTH", c.Auth(sasl.NewPlainClient("", tc.user, tc.pw)), 535, "5.7.8")
		})
	}
	c := e.tlsDial(ListenerSubmission, e.clientTLS())
	wantCode(t, "PLAIN with another authorisation identity", c.Auth(sasl.NewPlainClient("bob", "alice", alicePW)), 535, "5.7.8")
}

func TestInboundIsNotAnOpenRelay(t *testing.T) {
	e := start(t, nil)
	// From 127.0.0.1, no trusted networks: outside recipients refused.
	c := e.dial(ListenerInbound)
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised on the inbound listener")
	}
	if err := c.Mail("someone@internet.test", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "RCPT outside the organisation", c.Rcpt("victim@elsewhere.test", nil), 550, "5.7.1")
	if err := c.Rcpt("bob@example.com", nil); err != nil {
		t.Fatalf("RCPT to a local user: %v", err)
	}
	// Forged sender in our domain from outside.
	c.Reset()
	wantCode(t, "MAIL FROM in our domain", c.Mail("alice@example.com", nil), 550, "5.7.1")
	wantCode(t, "MAIL FROM in another site's domain", c.Mail("carol@branch.example.org", nil), 550, "5.7.1")

	// Submission without AUTH (after STARTTLS) cannot relay either.
	s := e.tlsDial(ListenerSubmission, e.clientTLS())
	wantCode(t, "MAIL on submission without AUTH", s.Mail("someone@internet.test", nil), 530, "5.7.0")

	// A trusted network may relay and use our domains.
	tr := start(t, func(c *Config, _ *testPKI) { c.TrustedNetworks = []string{"127.0.0.0/8"} })
	tc := tr.dial(ListenerInbound)
	if err := send(tc, "printer@example.com", []string{"someone@internet.test"}, message("trusted")); err != nil {
		t.Fatalf("trusted network relaying: %v", err)
	}
	got := tr.collect(1)[0]
	if got.Source.AuthUser != "" || got.MailFrom != "printer@example.com" {
		t.Errorf("trusted relay record: %q %+v", got.MailFrom, got.Source)
	}
}

func TestSubmissionSenderPolicy(t *testing.T) {
	e := start(t, nil)
	c := e.submit("alice", alicePW)
	wantCode(t, "MAIL as bob", c.Mail("bob@example.com", nil), 553, "5.7.1")
	wantCode(t, "MAIL as an outsider", c.Mail("alice@internet.test", nil), 553, "5.7.1")
	wantCode(t, "MAIL as a shared mailbox alice does not staff", c.Mail("sales@example.com", nil), 553, "5.7.1")
	wantCode(t, "null sender", c.Mail("", nil), 553, "5.7.1")
	if err := c.Mail("alice+lists@example.com", nil); err != nil {
		t.Errorf("MAIL with a +tag of her own address: %v", err)
	}
	c.Reset()

	// Zhangsan staffs sales@.
	z := e.submit("zhangsan", zsPW)
	if err := send(z, "sales@example.com", []string{"customer@internet.test"}, message("sales")); err != nil {
		t.Fatalf("sending as a staffed shared mailbox: %v", err)
	}
	in := e.collect(1)[0]
	if in.MailFrom != "sales@example.com" || in.Source.AuthUser != "u-zs" {
		t.Errorf("record: %q %+v", in.MailFrom, in.Source)
	}
	// Mia manages sales@ but does not staff it.
	m := e.submit("mia", miaPW)
	wantCode(t, "manager as shared mailbox", m.Mail("sales@example.com", nil), 553, "5.7.1")
}

func TestSubmissionRecipientPolicy(t *testing.T) {
	e := start(t, nil)
	c := e.submit("bob", "bob-password-1") // receive only: no internet_send
	if err := c.Mail("bob@example.com", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "outside recipient without internet_send", c.Rcpt("someone@internet.test", nil), 550, "5.7.1")
	if err := c.Rcpt("alice@example.com", nil); err != nil {
		t.Errorf("local recipient: %v", err)
	}
	if err := c.Rcpt("erin@example.com", nil); err != nil {
		t.Errorf("colleague without internet_receive, from inside: %v", err)
	}
	wantCode(t, "unknown local recipient", c.Rcpt("nobody@example.com", nil), 550, "5.1.1")
}

func TestAuthLockout(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) {
		c.AuthLockout = LockoutConfig{MaxFailuresPerUser: 3, MaxFailuresPerIP: 50, Window: time.Hour}
	})
	auth := func(user, pw string) error {
		c := e.tlsDial(ListenerSubmission, e.clientTLS())
		return c.Auth(sasl.NewPlainClient("", user, pw))
	}
	// Mia fails twice then succeeds: her count is cleared.
	for range 2 {
		wantCode(t, "mia wrong", auth("mia", "guess"), 535, "5.7.8")
	}
	if err := auth("mia", miaPW); err != nil {
		t.Fatalf("mia after two failures: %v", err)
	}
	if n, _, _ := e.state.RateLimits().Count(context.Background(), "smtp-auth:user:u-mia"); n != 0 {
		t.Errorf("mia's failure count after a success: %d", n)
	}
	// Alice is guessed at, by user name and by address alike.
	for i, user := range []string{"alice", "alice@example.com", "ALICE"} {
		wantCode(t, "guess "+string(rune('1'+i)), auth(user, "guess"), 535, "5.7.8")
	}
	if n, _, _ := e.state.RateLimits().Count(context.Background(), "smtp-auth:user:u-alice"); n != 3 {
		t.Errorf("alice's failure count: %d, want 3", n)
	}
	wantCode(t, "right password while locked", auth("alice", alicePW), 454, "4.7.0")
	wantCode(t, "wrong password while locked", auth("alice", "guess"), 454, "4.7.0")
	// Others are not locked by it.
	if err := auth("zhangsan", zsPW); err != nil {
		t.Fatalf("another user during alice's lockout: %v", err)
	}
	// Per client address.
	e2 := start(t, func(c *Config, _ *testPKI) {
		c.AuthLockout = LockoutConfig{MaxFailuresPerUser: 100, MaxFailuresPerIP: 2, Window: time.Hour}
	})
	auth2 := func(user, pw string) error {
		c := e2.tlsDial(ListenerSubmission, e2.clientTLS())
		return c.Auth(sasl.NewPlainClient("", user, pw))
	}
	wantCode(t, "spray 1", auth2("nobody1", "x"), 535, "5.7.8")
	wantCode(t, "spray 2", auth2("nobody2", "x"), 535, "5.7.8")
	wantCode(t, "address locked", auth2("alice", alicePW), 454, "4.7.0")
}

// TestAuthLockoutParallel: guesses started at the same time are counted
// before any is verified, so no more than the limit get a verdict.
func TestAuthLockoutParallel(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) {
		c.AuthLockout = LockoutConfig{MaxFailuresPerUser: 3, MaxFailuresPerIP: 1000, Window: time.Hour}
	})
	const tries = 20
	codes := make(chan int, tries)
	var wg sync.WaitGroup
	for range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.tlsDial(ListenerSubmission, e.clientTLS())
			codes <- code(c.Auth(sasl.NewPlainClient("", "alice", "guess")))
		}()
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[535] > 3 || got[535]+got[454] != tries {
		t.Errorf("replies %v: want at most 3 verdicts (535) and the rest locked (454)", got)
	}
}

func TestSizeLimit(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) { c.MaxMessageBytes = 4096 })
	c := e.submit("alice", alicePW)
	if ok, v := c.Extension("SIZE"); !ok || v != "4096" {
		t.Errorf("SIZE extension: %v %q", ok, v)
	}
	wantCode(t, "MAIL with SIZE over the limit", c.Mail("alice@example.com", &smtp.MailOptions{Size: 5000}), 552, "5.3.4")

	big := append(message("big"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"), 100)...)
	wantCode(t, "oversize DATA without SIZE", send(c, "alice@example.com", []string{"bob@example.com"}, big), 552, "5.3.4")

	// The session goes on; a message within the limit passes.
	small := message("small")
	if err := send(c, "alice@example.com", []string{"bob@example.com"}, small); err != nil {
		t.Fatalf("small message after a refused one: %v", err)
	}
	// One byte under the limit passes (go-smtp refuses exactly the limit).
	edge := append(message("edge"), bytes.Repeat([]byte(strings.Repeat("x", 98)+"\r\n"), 50)...)
	edge = append(edge[:4095-2], "\r\n"...)
	if err := send(c, "alice@example.com", []string{"bob@example.com"}, edge); err != nil {
		t.Fatalf("message of max_message_bytes-1 bytes: %v", err)
	}
	got := e.collect(2)
	sizes := []int{}
	for _, in := range got {
		_, rest := splitReceived(t, in.Message)
		sizes = append(sizes, len(rest))
		if !bytes.Equal(rest, small) && !bytes.Equal(rest, edge) {
			t.Errorf("unexpected record: %.100q", rest)
		}
	}
	slices.Sort(sizes)
	if sizes[1] != 4095 {
		t.Errorf("message sizes %v", sizes)
	}
	// BDAT (CHUNKING) over the limit is refused too.
	r := e.raw(ListenerInbound)
	r.cmd("EHLO raw.test")
	r.cmd("MAIL FROM:<x@internet.test>")
	r.cmd("RCPT TO:<bob@example.com>")
	chunk := strings.Repeat(strings.Repeat("x", 98)+"\r\n", 50) // 5000 bytes
	if got := r.cmd("BDAT 5000 LAST\r\n" + chunk[:len(chunk)-2]); !strings.HasPrefix(got, "552 5.3.4") {
		t.Errorf("BDAT over the limit: %q", got)
	}
}

func TestRecipientChecks(t *testing.T) {
	e := start(t, nil)
	c := e.dial(ListenerInbound)
	if err := c.Mail("customer@internet.test", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "unknown user", c.Rcpt("nobody@example.com", nil), 550, "5.1.1")
	wantCode(t, "unknown user at another site", c.Rcpt("nobody@branch.example.org", nil), 550, "5.1.1")
	wantCode(t, "disabled user", c.Rcpt("dave@example.com", nil), 550, "5.2.1")
	wantCode(t, "user without internet_receive", c.Rcpt("erin@example.com", nil), 550, "5.7.1")
	wantCode(t, "user without internet_receive, tagged", c.Rcpt("erin+x@example.com", nil), 550, "5.7.1")
	wantCode(t, "unknown, tagged", c.Rcpt("nobody+x@example.com", nil), 550, "5.1.1")
	for _, ok := range []string{"alice@example.com", "Alice+News@Example.COM", "a.archer@example.com", "team@example.com", "sales@example.com", "team+x@example.com", "Sales+Q1@example.com", "carol@branch.example.org", "carol@example.com"} {
		if err := c.Rcpt(ok, nil); err != nil {
			t.Errorf("RCPT %s: %v", ok, err)
		}
	}
	// Mail from inside (a trusted client with our sender) reaches erin.
	tr := start(t, func(c *Config, _ *testPKI) { c.TrustedNetworks = []string{"127.0.0.1"} })
	tc := tr.dial(ListenerInbound)
	if err := tc.Mail("scanner@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := tc.Rcpt("erin@example.com", nil); err != nil {
		t.Errorf("erin from inside: %v", err)
	}
	// And the null sender (a bounce) from a trusted client counts as outside.
	tc.Reset()
	if err := tc.Mail("", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "erin from the null sender", tc.Rcpt("erin@example.com", nil), 550, "5.7.1")
}

func TestMaxRecipientsAndRate(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) {
		c.MaxRecipients = 2
		c.RateLimits = RateLimitConfig{MessagesPerIPPerMinute: 3, MessagesPerUserPerHour: 2}
	})
	c := e.dial(ListenerInbound)
	if err := c.Mail("x@internet.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"alice@example.com", "bob@example.com"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, "third recipient", c.Rcpt("team@example.com", nil), 452, "4.5.3")
	c.Reset()
	// Per user: two transactions an hour; the third is refused.
	s := e.submit("alice", alicePW)
	for i := range 2 {
		if err := s.Mail("alice@example.com", nil); err != nil {
			t.Fatalf("transaction %d: %v", i+1, err)
		}
		s.Reset()
	}
	wantCode(t, "user over the limit", s.Mail("alice@example.com", nil), 451, "4.7.1")
	// Per address: this was the fourth MAIL from 127.0.0.1 this minute.
	wantCode(t, "address over the limit", c.Mail("y@internet.test", nil), 451, "4.7.1")
}

func TestIntersite(t *testing.T) {
	e := start(t, func(c *Config, p *testPKI) {
		c.Intersite.Listen = "127.0.0.1:0"
		c.Intersite.CAFile = p.caFile
	})
	siteTLS := func(cert *tls.Certificate) *tls.Config {
		cfg := e.clientTLS()
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return cfg
	}
	good := e.pki.clientCert("branch", false)

	plain := e.dial(ListenerIntersite)
	wantCode(t, "MAIL before STARTTLS", plain.Mail("carol@branch.example.org", nil), 530, "5.7.0")
	c := e.tlsDial(ListenerIntersite, siteTLS(&good))
	wantCode(t, "relay through another site", send(c, "carol@branch.example.org", []string{"someone@internet.test"}, message("x")), 550, "5.7.1")
	c.Reset()
	msg := message("from-branch")
	if err := send(c, "carol@branch.example.org", []string{"alice@example.com"}, msg); err != nil {
		t.Fatalf("mail from the branch: %v", err)
	}
	// The same certificate on the inbound listener (a site's port 25).
	c2 := e.tlsDial(ListenerInbound, siteTLS(&good))
	if err := send(c2, "", []string{"alice@example.com"}, message("bounce-from-branch")); err != nil {
		t.Fatalf("null sender from the branch on the inbound listener: %v", err)
	}
	got := e.collect(2)
	for _, in := range got {
		if in.Source.AuthUser != "site:branch" {
			t.Errorf("record %q: auth user %q, want site:branch", in.MailFrom, in.Source.AuthUser)
		}
		if in.MailFrom == "carol@branch.example.org" {
			if _, rest := splitReceived(t, in.Message); !bytes.Equal(rest, msg) {
				t.Errorf("message differs")
			}
		}
	}

	// Without a certificate, with a foreign one: the handshake fails.
	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "foreign CA": ptr(e.pki.clientCert("branch", true))} {
		c, err := e.dialTLS(ListenerIntersite, siteTLS(cert))
		if err == nil {
			err = c.Mail("carol@branch.example.org", nil)
		}
		if err == nil {
			t.Errorf("%s: session went on", name)
		}
	}
	// Our CA, but not a site of the directory.
	bad := e.pki.clientCert("elsewhere", false)
	_, err := e.dialTLS(ListenerIntersite, siteTLS(&bad))
	wantCode(t, "certificate naming no site", err, 554, "5.7.1")
	// Nor this site's own name.
	own := e.pki.clientCert(hq, false)
	_, err = e.dialTLS(ListenerIntersite, siteTLS(&own))
	wantCode(t, "certificate naming this site", err, 554, "5.7.1")
	// A foreign certificate on the inbound listener is ignored: the
	// session is an ordinary inbound one.
	c4 := e.tlsDial(ListenerInbound, siteTLS(ptr(e.pki.clientCert("branch", true))))
	wantCode(t, "inbound, foreign cert, our sender", c4.Mail("carol@branch.example.org", nil), 550, "5.7.1")
}

func ptr[T any](v T) *T { return &v }

func TestPublishFailureIsTemporary(t *testing.T) {
	bus := testenv.Bus(t)
	e := startWith(t, bus, newStore(t), nil)
	c := e.submit("alice", alicePW)
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(message("lost?")); err != nil {
		t.Fatal(err)
	}
	bus.Close() // the broker is unreachable for this process from now on
	err = w.Close()
	wantCode(t, "DATA while the bus is down", err, 451, "4.3.0")
	var se *smtp.SMTPError
	if errors.As(err, &se) && strings.Contains(strings.ToLower(se.Message), "bus") {
		t.Errorf("reply carries internal text: %q", se.Message)
	}
	// Nothing reached mail.inbound.
	cfg := bus.Config()
	check, err := msgbus.New(cfg, msgbus.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	if n := len(testenv.Collect(t, check, events.TopicInbound, 1, 3*time.Second)); n != 0 {
		t.Errorf("mail.inbound holds %d records after a failed publish", n)
	}
}

func TestLimitsAndTimeouts(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) {
		c.Inbound.MaxConnections = 1
		c.Timeouts.Command = 300 * time.Millisecond
		c.Timeouts.Session = time.Minute
	})
	first := e.raw(ListenerInbound)
	second, err := netDial(e.addr(ListenerInbound))
	if err != nil {
		t.Fatal(err)
	}
	if got := second; !strings.HasPrefix(got, "421 4.7.0") {
		t.Errorf("second connection over max_connections: %q", got)
	}
	// The idle first connection is closed with 421 after the command timeout.
	if got := first.read(); !strings.HasPrefix(got, "421") {
		t.Errorf("idle connection: %q", got)
	}
}

// netDial connects and returns the first line the server sends.
func netDial(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

func TestShutdownClosesIdleSessions(t *testing.T) {
	e := start(t, nil)
	r := e.raw(ListenerInbound)
	r.cmd("EHLO raw.test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle session: %v", err)
	}
	if got := r.read(); !strings.HasPrefix(got, "421") {
		t.Errorf("idle session at shutdown: %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default configuration: %v", err)
	}
	bad := DefaultConfig()
	bad.Submission.Listen = "nonsense"
	bad.Intersite.Listen = ":2626"
	bad.TLS = TLSConfig{CertFile: "x.pem"}
	bad.MaxRecipients = 0
	bad.TrustedNetworks = []string{"10.0.0.0/33"}
	bad.Timeouts.Session = time.Second
	err := bad.Validate()
	for _, key := range []string{"submission.listen", "intersite.ca_file", "tls.cert_file", "max_recipients", "trusted_networks[0]", "timeouts.session"} {
		if err == nil || !strings.Contains(err.Error(), key+":") {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	e := startWith(t, testenv.Bus(t), newStore(t), nil, func(d *Deps) { d.Meter = mp })

	c := e.submit("alice", alicePW)
	if err := send(c, "alice@example.com", []string{"bob@example.com"}, message("metrics")); err != nil {
		t.Fatal(err)
	}
	in := e.dial(ListenerInbound)
	if err := in.Mail("x@internet.test", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "relay", in.Rcpt("y@elsewhere.test", nil), 550, "5.7.1")
	bad := e.tlsDial(ListenerSubmission, e.clientTLS())
	wantCode(t, "bad password", bad.Auth(sasl.NewPlainClient("", "alice", "nope")), 535, "5.7.8")

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() == "listener" || l.GetName() == "reason" {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
			}
			got[key] += m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"postern_smtp_sessions_total,listener=submission":                    2,
		"postern_smtp_sessions_total,listener=inbound":                       1,
		"postern_smtp_messages_accepted_total,listener=submission":           1,
		"postern_smtp_rejections_total,listener=inbound,reason=relay_denied": 1,
		"postern_smtp_auth_failures_total,listener=submission":               1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}

func TestSelfSignedCertificateIsKept(t *testing.T) {
	dir := t.TempDir()
	cfg := TLSConfig{SelfSigned: true, DataDir: dir}
	a, err := serverCertificate(cfg, "mx.example.com", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, err := serverCertificate(cfg, "mx.example.com", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Certificate[0], b.Certificate[0]) {
		t.Error("a second start generated a new certificate instead of reusing the first")
	}
	if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi, err)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	cfg := testConfig(t)
	srv, err := New(cfg, Deps{Site: hq, Bus: testenv.Bus(t), State: newStore(t), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	// Run binds before serving: wait for the addresses, boundedly.
	var addr string
	for range 500 {
		if addr = srv.Addrs()[ListenerInbound]; addr != "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("Run did not start the listeners")
	}
	if line, err := netDial(addr); err != nil || !strings.HasPrefix(line, "220 mx.example.com") {
		t.Fatalf("greeting %q %v", line, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the listener still accepts connections after Run returned")
	}
}

func TestConfigLoads(t *testing.T) {
	type file struct {
		SMTP Config `yaml:"smtp"`
	}
	path := filepath.Join(t.TempDir(), "relay.yaml")
	yaml := "smtp:\n  hostname: mx.example.com\n  inbound:\n    listen: \":25\"\n  intersite:\n    listen: \":2626\"\n    ca_file: /etc/postern/sites-ca.pem\n  trusted_networks: [192.168.1.0/24]\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := file{SMTP: DefaultConfig()}
	env := []string{"POSTERN_SMTP_RATE_LIMITS_MESSAGES_PER_IP_PER_MINUTE=7", "POSTERN_SMTP_TRUSTED_NETWORKS=10.0.0.0/8,192.168.0.1"}
	if err := config.Load(path, env, &cfg); err != nil {
		t.Fatal(err)
	}
	c := cfg.SMTP
	if c.Inbound.Listen != ":25" || c.Intersite.Listen != ":2626" || c.Intersite.CAFile == "" || c.Intersite.TLSMode != TLSModeStartTLS ||
		c.RateLimits.MessagesPerIPPerMinute != 7 || !slices.Equal(c.TrustedNetworks, []string{"10.0.0.0/8", "192.168.0.1"}) {
		t.Errorf("loaded %+v", c)
	}
	if len(config.Reference(file{})) == 0 {
		t.Error("no reference fields")
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("smtp:\n  max_recipients: 0\n"), 0o644)
	cfg = file{SMTP: DefaultConfig()}
	if err := config.Load(bad, nil, &cfg); err == nil || !strings.Contains(err.Error(), "smtp.max_recipients") {
		t.Errorf("invalid value: %v", err)
	}
}
