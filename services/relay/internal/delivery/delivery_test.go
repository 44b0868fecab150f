package delivery_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/mailbox"
	"github.com/postern/postern/services/relay/internal/smtpout"
	"github.com/postern/postern/services/relay/internal/smtpout/sinktest"
)

func outbound(id, from string, rcpts ...string) events.Delivery {
	return events.Delivery{
		ID: id, InboundID: "in-" + id, Site: site, Destination: events.DestOutbound, MailFrom: from, Recipients: rcpts,
		Source: events.Source{Kind: events.SourcePOP3, POP3Account: "isp", POP3UIDL: "uidl-" + id}, Message: rawMessage,
	}
}

func TestOutboundArrivesWithItsEnvelopeByteForByte(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{})
	e.start(testConfig(sink.Addr), nil)
	e.publish(outbound("d1", "zs@example.com", "c1@example.net", "c2@example.net"))

	sts := e.final("c1@example.net", "c2@example.net")
	txs := sink.Transactions()
	if len(txs) != 1 {
		t.Fatalf("sink got %d transactions, want 1", len(txs))
	}
	tx := txs[0]
	if tx.From != "zs@example.com" || !reflect.DeepEqual(tx.To, []string{"c1@example.net", "c2@example.net"}) {
		t.Errorf("envelope MAIL FROM %q RCPT %q", tx.From, tx.To)
	}
	if !bytes.Equal(tx.Data, rawMessage) {
		t.Errorf("message not byte-identical:\n got %q\nwant %q", tx.Data, rawMessage)
	}
	if tx.Helo != "relay.hq.example.com" {
		t.Errorf("EHLO %q, want the configured hostname", tx.Helo)
	}
	for _, r := range []string{"c1@example.net", "c2@example.net"} {
		s := finalOf(sts, r)
		if s.Outcome != events.OutcomeDelivered || s.Stage != "relay" || s.InboundID != "in-d1" || s.DeliveryID != "d1" ||
			s.Source.POP3UIDL != "uidl-d1" || s.Attempt != 1 || s.SMTPCode != 250 || s.MessageID != "<m1@example.com>" || s.Destination != events.DestOutbound {
			t.Errorf("status of %s: %+v", r, s)
		}
	}
}

func TestTemporaryFailuresAreRetriedUntilDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var tries atomic.Int32
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(to string) error {
		if to == "slow@example.net" && tries.Add(1) <= 2 {
			return sinktest.Reply(451, [3]int{4, 3, 0}, "try again later")
		}
		return nil
	}})
	e.start(testConfig(sink.Addr), nil)
	e.publish(outbound("d2", "zs@example.com", "fast@example.net", "slow@example.net"))

	sts := e.final("fast@example.net", "slow@example.net")
	if got := outcomes(sts, "slow@example.net"); !reflect.DeepEqual(got, []string{"deferred", "deferred", "delivered"}) {
		t.Errorf("outcomes of slow@: %q, want deferred, deferred, delivered", got)
	}
	if got := outcomes(sts, "fast@example.net"); !reflect.DeepEqual(got, []string{"delivered"}) {
		t.Errorf("outcomes of fast@: %q, want delivered once", got)
	}
	for _, s := range sts {
		if s.Recipient != "slow@example.net" {
			continue
		}
		switch s.Outcome {
		case events.OutcomeDeferred:
			if s.NextAttempt.IsZero() || s.SMTPCode != 451 || s.Reason != "451 4.3.0 try again later" {
				t.Errorf("deferred status %+v", s)
			}
		case events.OutcomeDelivered:
			if s.Attempt != 3 {
				t.Errorf("delivered at attempt %d, want 3", s.Attempt)
			}
		}
	}
	var got [][]string
	for _, tx := range sink.Transactions() {
		got = append(got, tx.To)
	}
	if !reflect.DeepEqual(got, [][]string{{"fast@example.net"}, {"slow@example.net"}}) {
		t.Errorf("sink transactions %q, want fast@ once then slow@ once", got)
	}
}

func TestPermanentFailureBouncesToTheSender(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(to string) error {
		if to == "gone@example.net" {
			return sinktest.Reply(550, [3]int{5, 1, 1}, "no such user")
		}
		return nil
	}})
	e.start(testConfig(sink.Addr), nil)
	e.publish(outbound("d3", "zs@example.com", "gone@example.net", "ok@example.net"))

	sts := e.final("gone@example.net", "ok@example.net")
	if s := finalOf(sts, "gone@example.net"); s.Outcome != events.OutcomeBounced || s.SMTPCode != 550 || s.Reason != "550 5.1.1 no such user" {
		t.Errorf("status of gone@: %+v", s)
	}
	if s := finalOf(sts, "ok@example.net"); s.Outcome != events.OutcomeDelivered {
		t.Errorf("status of ok@: %+v", s)
	}
	in := e.inbound(1)[0]
	if in.MailFrom != "" || !reflect.DeepEqual(in.Recipients, []string{"zs@example.com"}) || in.Source.Kind != events.SourceDSN || in.Site != site {
		t.Errorf("bounce envelope: from %q to %q source %q site %q", in.MailFrom, in.Recipients, in.Source.Kind, in.Site)
	}
	report := dsnReport(t, in)
	for _, want := range []string{"Final-Recipient: rfc822; gone@example.net", "Action: failed", "Status: 5.1.1", "550 5.1.1 no such user", "Reporting-MTA: dns; relay.hq.example.com"} {
		if !strings.Contains(report, want) {
			t.Errorf("delivery-status part lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "ok@example.net") {
		t.Errorf("the delivered recipient is in the bounce:\n%s", report)
	}
}

func TestNoBounceToTheNullSender(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(string) error {
		return sinktest.Reply(550, [3]int{5, 1, 1}, "no such user")
	}})
	e.start(testConfig(sink.Addr), nil) // one consumer: records are handled in order
	e.publish(outbound("d4", "", "gone@example.net"))
	e.publish(outbound("d5", "zs@example.com", "gone2@example.net"))

	sts := e.final("gone@example.net", "gone2@example.net")
	if s := finalOf(sts, "gone@example.net"); s.Outcome != events.OutcomeBounced {
		t.Errorf("status of the null sender's message: %+v", s)
	}
	// d5 was handled after d4, so d4's outputs are all published: the
	// only bounce is d5's.
	in := e.inbound(1)
	if !reflect.DeepEqual(in[0].Recipients, []string{"zs@example.com"}) {
		t.Errorf("bounce to %q, want zs@ (d5's sender)", in[0].Recipients)
	}
	if n := e.topicSize(events.TopicInbound); n != 1 {
		t.Errorf("%d records on mail.inbound, want 1 (no bounce to <>)", n)
	}
}

func TestExpiredMessageBounces(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(string) error {
		return sinktest.Reply(451, [3]int{4, 4, 1}, "mailbox temporarily unavailable")
	}})
	cfg := testConfig(sink.Addr)
	cfg.Retry.MaxLifetime = 600 * time.Millisecond
	e.start(cfg, nil)
	e.publish(outbound("d6", "zs@example.com", "late@example.net"))

	sts := e.final("late@example.net")
	got := outcomes(sts, "late@example.net")
	if len(got) < 2 || got[0] != "deferred" || got[len(got)-1] != "bounced" {
		t.Fatalf("outcomes %q, want deferred ... bounced", got)
	}
	b := finalOf(sts, "late@example.net")
	if !strings.Contains(b.Reason, "expired") || !strings.Contains(b.Reason, "451") {
		t.Errorf("bounced reason %q, want expiry and the last reply", b.Reason)
	}
	for _, s := range sts {
		if s.Outcome == events.OutcomeDeferred && s.NextAttempt.After(s.At.Add(cfg.Retry.MaxLifetime)) {
			t.Errorf("deferred to %s, past the lifetime", s.NextAttempt)
		}
	}
	report := dsnReport(t, e.inbound(1)[0])
	if !strings.Contains(report, "Status: 4.4.7") || !strings.Contains(report, "Action: failed") {
		t.Errorf("delivery-status part:\n%s", report)
	}
	if len(sink.Transactions()) != 0 {
		t.Error("sink accepted a message it refused")
	}
}

func TestRelayStoppedDuringARetryWaitDeliversOnceAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var tries atomic.Int32
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(string) error {
		if tries.Add(1) == 1 {
			return sinktest.Reply(421, [3]int{4, 3, 2}, "shutting down")
		}
		return nil
	}})
	cfg := testConfig(sink.Addr)
	cfg.Hostname = "relay-a.example.com"
	cfg.Retry.Base, cfg.Retry.Cap, cfg.Retry.Jitter = 3*time.Second, 3*time.Second, 0
	stopA := e.start(cfg, nil)
	e.publish(outbound("d7", "zs@example.com", "c@example.net"))
	sts := e.statuses(func(ss []events.Status) bool { return len(ss) > 0 })
	if sts[0].Outcome != events.OutcomeDeferred {
		t.Fatalf("first status %+v, want deferred", sts[0])
	}
	stopA() // during the 3s wait

	cfg.Hostname = "relay-b.example.com"
	e.start(cfg, nil)
	sts = e.final("c@example.net")
	if got := outcomes(sts, "c@example.net"); !reflect.DeepEqual(got, []string{"deferred", "delivered"}) {
		t.Errorf("outcomes %q, want deferred, delivered", got)
	}
	txs := sink.Transactions()
	if len(txs) != 1 {
		t.Fatalf("sink got %d messages, want exactly 1", len(txs))
	}
	if txs[0].Helo != "relay-b.example.com" {
		t.Errorf("delivered by %s, want the restarted relay", txs[0].Helo)
	}
}

func TestRelayStoppedDuringASessionFinishesItAndDoesNotSendAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	entered := make(chan struct{}, 1)
	sink := sinktest.Start(t, sinktest.Options{Data: func([]string) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		time.Sleep(300 * time.Millisecond) // the relay is told to stop meanwhile
		return nil
	}})
	cfg := testConfig(sink.Addr)
	stopA := e.start(cfg, nil)
	e.publish(outbound("d17", "zs@example.com", "c@example.net"))
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the message never reached the sink")
	}
	stopA() // returns once the drained session is done
	if n := len(sink.Transactions()); n != 1 {
		t.Fatalf("sink has %d messages after the stop, want 1 (the session was finished)", n)
	}
	e.start(cfg, nil)
	s := finalOf(e.final("c@example.net"), "c@example.net")
	if s.Outcome != events.OutcomeDelivered {
		t.Errorf("status %+v", s)
	}
	if n := len(sink.Transactions()); n != 1 {
		t.Errorf("sink has %d messages after the restart, want 1", n)
	}
}

func TestRedeliveredRecordIsNotSentTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{})
	e.start(testConfig(sink.Addr), nil)
	d := outbound("d8", "zs@example.com", "c@example.net")
	e.publish(d)
	e.publish(d) // as Kafka does after a crash before the commit
	e.statuses(func(ss []events.Status) bool { return len(outcomes(ss, "c@example.net")) >= 2 })
	if n := len(sink.Transactions()); n != 1 {
		t.Errorf("sink got %d copies, want 1", n)
	}
}

// TestRecipientBeingSentElsewhereIsDeferred: after a consumer-group
// rebalance two consumers may hold the same record; the one that finds the
// recipient's sending lease taken defers it instead of sending a second
// copy, and delivers it once the lease is released.
func TestRecipientBeingSentElsewhereIsDeferred(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{})
	d := outbound("d-lease", "zs@example.com", "c@example.net")
	lease := "sending:" + d.ID + ":c@example.net"
	if ok, err := e.state.Idempotency().Claim(t.Context(), lease, time.Hour); !ok || err != nil {
		t.Fatalf("taking the lease: %v, %v", ok, err)
	}
	e.start(testConfig(sink.Addr), nil)
	e.publish(d)
	ss := e.statuses(func(ss []events.Status) bool { return len(outcomes(ss, "c@example.net")) >= 1 })
	if got := outcomes(ss, "c@example.net"); got[0] != events.OutcomeDeferred {
		t.Fatalf("first outcome %v, want deferred while another consumer sends", got)
	}
	if n := len(sink.Transactions()); n != 0 {
		t.Fatalf("sink got %d copies while the lease was held", n)
	}
	if err := e.state.Idempotency().Forget(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	e.final("c@example.net")
	if n := len(sink.Transactions()); n != 1 {
		t.Errorf("sink got %d copies, want 1", n)
	}
}

func TestSiteDeliveryOverMutualTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ca := sinktest.NewCA(t, "Postern sites CA")
	branch := sinktest.Start(t, sinktest.Options{TLS: sinktest.ServerTLS(ca.Issue(t, "relay.branch", "127.0.0.1"), ca)})
	e.put(entry(t, replica.KindSite, "branch", map[string]any{"name": "branch", "domains": []string{"branch.example.com"}, "smtp_endpoint": branch.Addr}, "branch.example.com"))

	cfg := testConfig("")
	cfg.Sites.CertFile, cfg.Sites.KeyFile, cfg.Sites.CAFile = ca.WriteFiles(t, t.TempDir(), ca.Issue(t, site, site))
	e.start(cfg, nil)
	e.publish(events.Delivery{ID: "d9", InboundID: "in-d9", Site: site, Destination: events.DestSite, TargetSite: "branch",
		MailFrom: "zs@example.com", Recipients: []string{"lisi@branch.example.com"}, Source: events.Source{Kind: events.SourceSMTP}, Message: rawMessage})

	sts := e.final("lisi@branch.example.com")
	if s := finalOf(sts, "lisi@branch.example.com"); s.Outcome != events.OutcomeDelivered || s.Destination != events.DestSite {
		t.Errorf("status %+v", s)
	}
	txs := branch.Transactions()
	if len(txs) != 1 || !txs[0].TLS || txs[0].ClientCN != site || !bytes.Equal(txs[0].Data, rawMessage) {
		t.Fatalf("branch got %+v, want one message over TLS from the client certificate of site hq", txs)
	}

	t.Run("a certificate from another CA is refused", func(t *testing.T) {
		e := newEnv(t)
		e.put(entry(t, replica.KindSite, "branch", map[string]any{"name": "branch", "domains": []string{"branch.example.com"}, "smtp_endpoint": branch.Addr}, "branch.example.com"))
		rogue := sinktest.NewCA(t, "rogue")
		cfg := testConfig("")
		cfg.Sites.CertFile, cfg.Sites.KeyFile, _ = rogue.WriteFiles(t, t.TempDir(), rogue.Issue(t, "relay.hq"))
		_, _, cfg.Sites.CAFile = ca.WriteFiles(t, t.TempDir(), ca.Issue(t, "unused"))
		e.start(cfg, nil)
		e.publish(events.Delivery{ID: "d10", InboundID: "in-d10", Destination: events.DestSite, TargetSite: "branch",
			MailFrom: "zs@example.com", Recipients: []string{"lisi@branch.example.com"}, Source: events.Source{Kind: events.SourceSMTP}, Message: rawMessage})
		sts := e.statuses(func(ss []events.Status) bool { return len(ss) > 0 })
		if sts[0].Outcome != events.OutcomeDeferred {
			t.Errorf("status %+v, want deferred", sts[0])
		}
		if n := len(branch.Transactions()); n != 1 {
			t.Errorf("branch accepted mail from an unknown certificate")
		}
	})
}

func TestUnknownSiteAndMissingMailboxBounce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(testConfig(""), nil)
	e.publish(events.Delivery{ID: "d11", InboundID: "in-d11", Destination: events.DestSite, TargetSite: "atlantis",
		MailFrom: "zs@example.com", Recipients: []string{"x@atlantis.example"}, Source: events.Source{Kind: events.SourceSMTP}, Message: rawMessage})
	e.publish(events.Delivery{ID: "d12", InboundID: "in-d12", Destination: events.DestLocal, Mailbox: "u-deleted",
		MailFrom: "zs@example.com", Recipients: []string{"old@example.com"}, Source: events.Source{Kind: events.SourceSMTP}, Message: rawMessage})
	sts := e.final("x@atlantis.example", "old@example.com")
	for _, r := range []string{"x@atlantis.example", "old@example.com"} {
		if s := finalOf(sts, r); s.Outcome != events.OutcomeBounced || s.Reason == "" {
			t.Errorf("status of %s: %+v", r, s)
		}
	}
	for _, in := range e.inbound(2) {
		if !reflect.DeepEqual(in.Recipients, []string{"zs@example.com"}) || in.MailFrom != "" {
			t.Errorf("bounce %+v", in)
		}
	}
}

func local(id string, rcpts ...string) events.Delivery {
	return events.Delivery{ID: id, InboundID: "in-" + id, Site: site, Destination: events.DestLocal, Mailbox: "u-zs",
		MailFrom: "c@example.net", Recipients: rcpts, Source: events.Source{Kind: events.SourceSMTP}, Message: rawMessage}
}

func TestLocalDeliveryIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(testConfig(""), nil)
	e.publish(local("d13", "zs@example.com"))
	e.publish(local("d13", "zs@example.com")) // redelivered
	sts := e.statuses(func(ss []events.Status) bool { return len(ss) >= 2 })
	for _, s := range sts {
		if s.Outcome != events.OutcomeDelivered || s.Destination != events.DestLocal {
			t.Errorf("status %+v", s)
		}
	}
	msgs := e.local.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the mailboxes, want 1", len(msgs))
	}
	m := msgs[0]
	if m.DeliveryID != "d13" || m.Username != "zhangsan" || m.Recipient != "zs@example.com" || m.MailFrom != "c@example.net" || !bytes.Equal(m.Data, rawMessage) {
		t.Errorf("delivered %+v", m)
	}
}

func TestLocalDeliveryIntoMaildir(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	root := t.TempDir()
	md, err := mailbox.NewMaildir(mailbox.MaildirConfig{Root: root}, mailbox.Options{Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	e.start(testConfig(""), md)
	e.publish(local("d14", "zs@example.com"))
	e.publish(local("d14", "zs@example.com")) // redelivered
	e.publish(local("d15", "zs@example.com", "zhangsan@example.com"))
	e.statuses(func(ss []events.Status) bool { return len(ss) >= 4 })

	files, err := filepath.Glob(filepath.Join(root, "zhangsan", "new", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("%d messages in the Maildir, want 3 (d14 once, d15 for each of its two recipients)", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(b, rawMessage) || !bytes.Contains(b, []byte("Delivered-To: ")) {
			t.Errorf("%s: not the message with a Delivered-To:\n%q", f, b)
		}
	}
}

// TestOutboundThroughPostfixSmtpSink uses Postfix's smtp-sink as the
// smarthost (.ci/run installs Postfix for it; skipped outside CI without it).
func TestOutboundThroughPostfixSmtpSink(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("smtp-sink")
	if err != nil {
		if testenv.InCI() {
			t.Fatal("Postfix's smtp-sink is required with CI=true (apt-get install postfix; .ci/run does)")
		}
		t.Skip("Postfix's smtp-sink is not installed (apt-get install postfix)")
	}
	dir, err := os.MkdirTemp("", "postern-smtp-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	args := []string{"-d", filepath.Join(dir, "msg."), "-h", "sink.test"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody")
	}
	cmd := exec.Command(bin, append(args, addr, "16")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitListening(t, addr, &stderr)

	e := newEnv(t)
	e.start(testConfig(addr), nil)
	e.publish(outbound("d16", "zs@example.com", "c1@example.net", "c2@example.net"))
	if s := finalOf(e.final("c1@example.net", "c2@example.net"), "c1@example.net"); s.Outcome != events.OutcomeDelivered {
		t.Fatalf("status %+v", s)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "msg.*"))
	if len(files) != 1 {
		t.Fatalf("smtp-sink wrote %d dumps, want 1", len(files))
	}
	dump, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"X-Mail-Args: <zs@example.com>", "X-Rcpt-Args: <c1@example.net>", "X-Rcpt-Args: <c2@example.net>", "X-Helo-Args: relay.hq.example.com"} {
		if !bytes.Contains(dump, []byte(want)) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}
	// smtp-sink writes lines with LF: compare the message that way.
	lf := bytes.ReplaceAll(rawMessage, []byte("\r\n"), []byte("\n"))
	if !bytes.Contains(bytes.ReplaceAll(dump, []byte("\r\n"), []byte("\n")), lf) {
		t.Errorf("dump does not hold the message:\n%s", dump)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := delivery.DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*delivery.Config)
		key  string
	}{
		{"no consumers", func(c *delivery.Config) { c.Consumers = 0 }, "consumers"},
		{"base 0", func(c *delivery.Config) { c.Retry.Base = 0 }, "retry.base"},
		{"cap below base", func(c *delivery.Config) { c.Retry.Cap = time.Second }, "retry.cap"},
		{"factor below 1", func(c *delivery.Config) { c.Retry.Factor = 0.5 }, "retry.factor"},
		{"too many tiers", func(c *delivery.Config) { c.Retry.Factor = 1.01 }, "retry.factor"},
		{"jitter", func(c *delivery.Config) { c.Retry.Jitter = 1.5 }, "retry.jitter"},
		{"lifetime", func(c *delivery.Config) { c.Retry.MaxLifetime = 0 }, "retry.max_lifetime"},
		{"tls mode", func(c *delivery.Config) { c.Smarthost.TLS = "ssl" }, "smarthost.tls"},
		{"auth in clear", func(c *delivery.Config) {
			c.Smarthost.TLS, c.Smarthost.Username, c.Smarthost.Password = smtpout.TLSNone, "u", config.Secret("p")
		}, "smarthost.tls"},
		{"user without password", func(c *delivery.Config) { c.Smarthost.Username = "u" }, "smarthost.password"},
		{"bad port", func(c *delivery.Config) { c.Smarthost.Port = 0 }, "smarthost.port"},
		{"sender smarthost without host", func(c *delivery.Config) {
			c.SenderSmarthosts = []delivery.SenderSmarthost{{Domain: "example.org"}}
		}, "sender_smarthosts[0].host"},
		{"site cert without key", func(c *delivery.Config) { c.Sites.CertFile = "c.pem" }, "sites.key_file"},
		{"site plaintext", func(c *delivery.Config) { c.Sites.TLS = "none" }, "sites.tls"},
		{"idempotency shorter than lifetime", func(c *delivery.Config) { c.IdempotencyTTL = time.Hour }, "idempotency_ttl"},
		{"postmaster", func(c *delivery.Config) { c.Postmaster = "nobody" }, "postmaster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := delivery.DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			if keys := config.Keys(err); !contains(keys, tt.key) {
				t.Errorf("error %v names %q, want %q", err, keys, tt.key)
			}
			if strings.Contains(err.Error(), "p\"") {
				t.Errorf("error shows a secret: %v", err)
			}
		})
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestRetrySchedule(t *testing.T) {
	r := delivery.DefaultConfig().Retry
	if n := r.Tiers(); n != 9 {
		t.Errorf("1m doubling to 4h: %d tiers, want 9 (1m 2m 4m ... 128m, 4h)", n)
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute, 64 * time.Minute, 128 * time.Minute, 4 * time.Hour}
	for i, w := range want {
		if d := r.TierDelay(i); d != w {
			t.Errorf("tier %d waits %s, want %s", i, d, w)
		}
	}
	for n := 1; n <= 200; n++ {
		tier := r.Tier(n)
		base := r.TierDelay(tier)
		lo, hi := r.Delay(n, 0), r.Delay(n, 0.999999)
		if tier != min(n-1, 8) {
			t.Errorf("attempt %d in tier %d", n, tier)
		}
		if float64(lo) < 0.8*float64(base)-1 || hi > r.Cap || float64(hi) > 1.2*float64(base)+1 {
			t.Errorf("attempt %d: delays %s..%s around %s, cap %s", n, lo, hi, base, r.Cap)
		}
	}
	if d := r.Delay(1<<30, 0.5); d != r.Cap {
		t.Errorf("a huge attempt number waits %s, want the cap", d)
	}
}

func TestNewRefusesMissingDeps(t *testing.T) {
	if _, err := delivery.New(delivery.DefaultConfig(), delivery.Deps{}); err == nil {
		t.Error("New without a bus succeeded")
	}
	cfg := delivery.DefaultConfig()
	cfg.Smarthost.CAFile = filepath.Join(t.TempDir(), "missing.pem")
	cfg.Smarthost.Host = "smtp.example.net"
	e := newEnv(t)
	_, err := delivery.New(cfg, delivery.Deps{Bus: e.bus, Directory: e.state.Directory(), Idempotency: e.state.Idempotency(), Local: e.local, Site: site})
	if err == nil || !strings.Contains(err.Error(), "smarthost.ca_file") {
		t.Errorf("missing CA file: err = %v, want one naming smarthost.ca_file", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) {
		t.Errorf("err = %v, want the file error", err)
	}
}
