package pipeline

import (
	"context"
	"slices"
	"testing"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
)

// TestSMTPResendIsDropped: a message an SMTP client sent again after a
// lost 250 comes as a second mail.inbound record with the same id (the
// relay derives it from the sender, the envelope and the client's bytes)
// but another session, client address, Received field and time. Once the
// first is routed, the second yields nothing; handled before the first's
// keys are set (a router killed in between), it yields the same outputs
// with the same ids, which the relay's final delivery drops.
func TestSMTPResendIsDropped(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := newPipeline(t, options(st))
	body := rfc822(400, "From: Alice <alice@example.com>", "To: bob@example.com", "Message-ID: <r1@example.com>")
	accept := func(session, remote, received string, offset int64) msgbus.Record {
		in := inbound("r1id", "auth:u-alice", "alice@example.com", append([]byte(received), body...),
			"bob@example.com", "nobody@example.com", "x@customer.net")
		in.Source.SMTPSession, in.Source.SMTPRemote = session, remote
		r, err := in.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return msgbus.Record{Message: msgbus.NewMessage(events.TopicInbound, r), WireTopic: events.TopicInbound, Partition: 0, Offset: offset}
	}
	first := accept("sess-1", "192.0.2.7:40001", "Received: from a (192.0.2.7) by mx id r1id; Sun, 1 Mar 2026 10:00:00 +0000\r\n", 1)
	again := accept("sess-2", "192.0.2.8:40517", "Received: from b (192.0.2.8) by mx id r1id; Sun, 1 Mar 2026 10:00:31 +0000\r\n", 2)
	keys := func(ms []msgbus.Message) []string {
		var out []string
		for _, m := range ms {
			k, _ := keyOf(m)
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}

	outs, err := p.Handle(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 4 { // bob, x@customer.net, nobody's status and the bounce
		t.Fatalf("first acceptance: outputs %q", keys(outs))
	}
	early, err := p.Handle(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys(early), keys(outs)) {
		t.Errorf("the resend before the first's keys are set: outputs %q, want the same ids %q", keys(early), keys(outs))
	}
	if err := p.AfterPublish(ctx, first, outs); err != nil {
		t.Fatal(err)
	}
	late, err := p.Handle(ctx, again)
	if err != nil || len(late) != 0 {
		t.Errorf("the resend after the first was routed: outputs %q, %v; want none", keys(late), err)
	}
}
