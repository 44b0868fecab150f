package smtpout_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/services/relay/internal/smtpout"
	"github.com/postern/postern/services/relay/internal/smtpout/sinktest"
)

// msg has what must survive byte for byte: CRLF, a folded header, 8-bit
// text and lines starting with dots.
var msg = []byte("From: zs@example.com\r\nTo: c@example.net\r\nSubject: a folded\r\n subject\r\nMessage-ID: <m1@example.com>\r\n\r\n.leading dot\r\n..two dots\r\nbody \xe4\xb8\xad\r\n.\r\nend\r\n")

func newPool(t *testing.T, o smtpout.Options) *smtpout.Pool {
	t.Helper()
	if o.Name == "" {
		o.Name = "sink"
	}
	if o.TLS == "" {
		o.TLS = smtpout.TLSNone
	}
	if o.Helo == "" {
		o.Helo = "relay.test"
	}
	o.DialTimeout, o.CommandTimeout, o.DataTimeout = 10*time.Second, 10*time.Second, 10*time.Second
	p, err := smtpout.NewPool(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mustDeliver(t *testing.T, res []smtpout.Result, rcpts ...string) {
	t.Helper()
	if len(res) != len(rcpts) {
		t.Fatalf("%d results, want %d", len(res), len(rcpts))
	}
	for i, r := range res {
		if r.Recipient != rcpts[i] {
			t.Errorf("result %d is for %q, want %q", i, r.Recipient, rcpts[i])
		}
		if !r.Delivered() {
			t.Errorf("%s not delivered: %s (%v)", r.Recipient, r.Reason(), r.Err)
		}
	}
}

func TestSendReusesOneSessionWithRSET(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, MaxSessions: 2, IdleTimeout: time.Minute})
	ctx := context.Background()
	for i := range 3 {
		rcpt := fmt.Sprintf("c%d@example.net", i)
		mustDeliver(t, p.Send(ctx, "zs@example.com", []string{rcpt, "d@example.net"}, msg), rcpt, "d@example.net")
	}
	txs := sink.Transactions()
	if len(txs) != 3 {
		t.Fatalf("sink got %d messages, want 3", len(txs))
	}
	for i, tx := range txs {
		if tx.From != "zs@example.com" || !reflect.DeepEqual(tx.To, []string{fmt.Sprintf("c%d@example.net", i), "d@example.net"}) {
			t.Errorf("message %d: envelope %q -> %q", i, tx.From, tx.To)
		}
		if !bytes.Equal(tx.Data, msg) {
			t.Errorf("message %d is not byte-identical:\n got %q\nwant %q", i, tx.Data, msg)
		}
		if tx.Helo != "relay.test" {
			t.Errorf("EHLO name %q, want relay.test", tx.Helo)
		}
	}
	if n := sink.Connections(); n != 1 {
		t.Errorf("%d connections for 3 sequential messages, want 1 (reused)", n)
	}
	if n := sinktest.Count(sink.Dialogue(), "RSET"); n != 2 {
		t.Errorf("%d RSET commands, want 2 (one before each reuse)", n)
	}
}

func TestSendReconnectsWhenTheServerDroppedTheSession(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, MaxSessions: 3, IdleTimeout: time.Minute})
	ctx := context.Background()
	// Several idle sessions, all dropped by the server.
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			rcpt := fmt.Sprintf("r%d@example.net", i)
			mustDeliver(t, p.Send(ctx, "a@example.com", []string{rcpt}, msg), rcpt)
		})
	}
	wg.Wait()
	sink.CloseConnections()
	mustDeliver(t, p.Send(ctx, "a@example.com", []string{"c@example.net"}, msg), "c@example.net")
	mustDeliver(t, p.Send(ctx, "a@example.com", []string{"d@example.net"}, msg), "d@example.net")
	if n := len(sink.Transactions()); n != 8 {
		t.Errorf("sink got %d messages, want 8", n)
	}
	if n := sink.MaxConcurrent(); n > 3 {
		t.Errorf("%d sessions at once, limit 3", n)
	}
}

func TestSessionMessageLimit(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, IdleTimeout: time.Minute, MaxMessagesPerSession: 2})
	for i := range 5 {
		rcpt := fmt.Sprintf("r%d@example.net", i)
		mustDeliver(t, p.Send(context.Background(), "a@example.com", []string{rcpt}, msg), rcpt)
	}
	if n := sink.Connections(); n != 3 {
		t.Errorf("%d connections for 5 messages at 2 per session, want 3", n)
	}
	if n := sinktest.Count(sink.Dialogue(), "QUIT"); n != 2 {
		t.Errorf("%d QUIT, want 2 (sessions ended politely at the limit)", n)
	}
}

func TestSendRespectsTheSessionLimit(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, MaxSessions: 2, IdleTimeout: time.Minute})
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			rcpt := fmt.Sprintf("r%d@example.net", i)
			mustDeliver(t, p.Send(context.Background(), "a@example.com", []string{rcpt}, msg), rcpt)
		})
	}
	wg.Wait()
	if n := len(sink.Transactions()); n != 12 {
		t.Errorf("sink got %d messages, want 12", n)
	}
	if n := sink.MaxConcurrent(); n > 2 {
		t.Errorf("%d sessions open at once, limit 2", n)
	}
}

func TestSendReportsEachRecipient(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(to string) error {
		switch to {
		case "gone@example.net":
			return sinktest.Reply(550, [3]int{5, 1, 1}, "no such user")
		case "busy@example.net":
			return sinktest.Reply(451, [3]int{4, 3, 0}, "try again later")
		}
		return nil
	}})
	p := newPool(t, smtpout.Options{Addr: sink.Addr})
	res := p.Send(context.Background(), "a@example.com", []string{"ok@example.net", "gone@example.net", "busy@example.net"}, msg)
	if !res[0].Delivered() {
		t.Errorf("ok@: %s", res[0].Reason())
	}
	if r := res[1]; r.Delivered() || !r.Permanent || r.Code != 550 || r.Status != "5.1.1" || r.Reason() != "550 5.1.1 no such user" {
		t.Errorf("gone@: %+v, reason %q", r, r.Reason())
	}
	if d := res[1].Diagnostic(); d != "smtp; 550 5.1.1 no such user" {
		t.Errorf("diagnostic %q", d)
	}
	if r := res[2]; r.Delivered() || r.Permanent || r.Code != 451 {
		t.Errorf("busy@: %+v", r)
	}
	txs := sink.Transactions()
	if len(txs) != 1 || !reflect.DeepEqual(txs[0].To, []string{"ok@example.net"}) {
		t.Errorf("sink transactions %+v, want one to ok@ only", txs)
	}
}

func TestDataReplyAppliesToEveryAcceptedRecipient(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{Data: func([]string) error {
		return sinktest.Reply(554, [3]int{5, 6, 0}, "content rejected")
	}})
	p := newPool(t, smtpout.Options{Addr: sink.Addr})
	for _, r := range p.Send(context.Background(), "a@example.com", []string{"b@example.net", "c@example.net"}, msg) {
		if r.Delivered() || !r.Permanent || r.Code != 554 {
			t.Errorf("%s: %+v", r.Recipient, r)
		}
	}
	// The session survives a refused message.
	sink2 := sinktest.Start(t, sinktest.Options{})
	p2 := newPool(t, smtpout.Options{Addr: sink2.Addr})
	mustDeliver(t, p2.Send(context.Background(), "", []string{"b@example.net"}, msg), "b@example.net")
	if tx := sink2.Transactions(); len(tx) != 1 || tx[0].From != "" {
		t.Errorf("null sender: %+v", tx)
	}
}

func tlsSink(t *testing.T, o sinktest.Options) (*sinktest.Server, *tls.Config) {
	ca := sinktest.NewCA(t, "test CA")
	o.TLS = sinktest.ServerTLS(ca.Issue(t, "sink", "127.0.0.1"), nil)
	return sinktest.Start(t, o), &tls.Config{RootCAs: ca.Pool()}
}

func TestStartTLSAndAuth(t *testing.T) {
	sink, client := tlsSink(t, sinktest.Options{Users: map[string]string{"isp-user": "isp-secret"}})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, TLS: smtpout.TLSStartTLS, TLSConfig: client, Username: "isp-user", Password: "isp-secret"})
	mustDeliver(t, p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg), "b@example.net")
	txs := sink.Transactions()
	if len(txs) != 1 || !txs[0].TLS || txs[0].AuthUser != "isp-user" {
		t.Fatalf("transactions %+v, want one over TLS as isp-user", txs)
	}
	d := sink.Dialogue()
	if n := sinktest.Count(d, "EHLO RELAY.TEST"); n != 2 {
		t.Errorf("%d EHLO relay.test, want 2 (before and after STARTTLS); dialogue:\n%s", n, d)
	}
	if strings.Contains(strings.ToLower(d), "ehlo localhost") {
		t.Errorf("the client greeted as localhost")
	}

	t.Run("wrong password is temporary", func(t *testing.T) {
		p := newPool(t, smtpout.Options{Addr: sink.Addr, TLS: smtpout.TLSStartTLS, TLSConfig: client, Username: "isp-user", Password: "wrong"})
		r := p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg)[0]
		if r.Delivered() || r.Permanent || r.Code != 535 {
			t.Errorf("result %+v, want a temporary 535", r)
		}
		if strings.Contains(r.Reason(), "wrong") {
			t.Errorf("reason %q shows the password", r.Reason())
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		p := newPool(t, smtpout.Options{Addr: sink.Addr, TLS: smtpout.TLSStartTLS, TLSConfig: &tls.Config{RootCAs: sinktest.NewCA(t, "other").Pool()}})
		r := p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg)[0]
		if r.Delivered() || r.Permanent || !strings.Contains(r.Reason(), "TLS") {
			t.Errorf("result %+v (%s), want a temporary TLS failure", r, r.Reason())
		}
	})
}

func TestImplicitTLS(t *testing.T) {
	ca := sinktest.NewCA(t, "test CA")
	sink := sinktest.Start(t, sinktest.Options{Implicit: true, TLS: sinktest.ServerTLS(ca.Issue(t, "sink", "127.0.0.1"), nil)})
	p := newPool(t, smtpout.Options{Addr: sink.Addr, TLS: smtpout.TLSImplicit, TLSConfig: &tls.Config{RootCAs: ca.Pool()}})
	mustDeliver(t, p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg), "b@example.net")
	if txs := sink.Transactions(); len(txs) != 1 || !txs[0].TLS {
		t.Errorf("transactions %+v, want one over TLS", txs)
	}
}

func TestStartTLSRequired(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{}) // offers no STARTTLS
	p := newPool(t, smtpout.Options{Addr: sink.Addr, TLS: smtpout.TLSStartTLS})
	r := p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg)[0]
	if r.Delivered() || r.Permanent {
		t.Errorf("result %+v, want a temporary failure", r)
	}
	if n := len(sink.Transactions()); n != 0 {
		t.Errorf("a message went in clear to a server without STARTTLS")
	}
}

func TestSizeLimitIsPermanent(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{MaxMessageBytes: 64})
	p := newPool(t, smtpout.Options{Addr: sink.Addr})
	r := p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg)[0]
	if r.Delivered() || !r.Permanent || r.Status != "5.3.4" {
		t.Errorf("result %+v, want permanent 5.3.4", r)
	}
}

func TestNoServerIsTemporary(t *testing.T) {
	p := newPool(t, smtpout.Options{Addr: "127.0.0.1:1"})
	r := p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg)[0]
	if r.Delivered() || r.Permanent || r.Code != 0 || !strings.Contains(r.Reason(), "could not connect") {
		t.Errorf("result %+v (%q), want a temporary connection failure", r, r.Reason())
	}
}

func TestNewPoolRefusesAuthInClear(t *testing.T) {
	if _, err := smtpout.NewPool(smtpout.Options{Name: "x", Addr: "127.0.0.1:25", TLS: smtpout.TLSNone, Username: "u", Password: "p"}); err == nil {
		t.Error("AUTH over a plaintext session was accepted")
	}
}
