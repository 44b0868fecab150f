package trace

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
)

// TestResentMessageIsOneArrival: an SMTP client that sent a message again
// after a lost 250 made two mail.inbound records with one inbound id
// (their sessions differ). Where both got as far as a status — the router
// or relay killed between the two — the trace lists the message once, with
// the source it saw first, and each outcome once.
func TestResentMessageIsOneArrival(t *testing.T) {
	ctx := t.Context()
	s := openState(t)
	x := newIndexer(t, s, DefaultConfig())
	h := &Handler{Site: "hq", Index: s.TraceIndex()}

	first := status("r1", "bob@x.example", events.OutcomeDelivered, 1, t0)
	second := first
	second.At = t0.Add(40 * time.Second)
	second.Source.SMTPSession, second.Source.SMTPRemote = "s2", "192.0.2.9:40517"
	rejected := status("r1", "nobody@x.example", events.OutcomeRejected, 0, t0)
	rejected.Stage, rejected.DeliveryID, rejected.Destination = "router", "", ""
	rejectedAgain := rejected
	rejectedAgain.At = second.At
	rejectedAgain.Source = second.Source
	for _, c := range []struct {
		st   events.Status
		want string
	}{{first, "indexed"}, {rejected, "indexed"}, {second, "duplicate"}, {rejectedAgain, "duplicate"}} {
		if got, err := x.Index(ctx, c.st); err != nil || got != c.want {
			t.Errorf("Index(%s %s session %s) = %q, %v; want %q", c.st.Stage, c.st.Recipient, c.st.Source.SMTPSession, got, err, c.want)
		}
	}

	code, body, _ := serve(t, h, "?inbound_id=r1")
	if code != 200 {
		t.Fatalf("GET = %d %s", code, body)
	}
	var doc Document
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Messages) != 1 {
		t.Fatalf("%d messages, want the one arrival: %s", len(doc.Messages), body)
	}
	m := doc.Messages[0]
	if m.Source.SMTPSession != "s1" || len(m.Recipients) != 2 {
		t.Errorf("message: source %+v, %d recipients; want session s1's, 2: %s", m.Source, len(m.Recipients), body)
	}
	for _, r := range m.Recipients {
		if len(r.Events) != 1 {
			t.Errorf("%s: %d events, want 1: %+v", r.Recipient, len(r.Events), r.Events)
		}
	}
}
