package dsn_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/dsn"
)

const original = "Received: from a by b; Mon, 2 Nov 2026 10:00:00 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: nobody@example.com\r\n" +
	"Subject: =?utf-8?q?caf=C3=A9?= and a long\r\n folded subject\r\n" +
	"Message-ID: <m1@example.com>\r\n" +
	"\r\n" +
	"The body is not attached.\r\n"

func report() dsn.Report {
	return dsn.Report{
		ReportingMTA: "mx.example.com",
		Postmaster:   "postmaster@example.com",
		To:           "alice@example.com",
		EnvelopeID:   "in-42",
		ArrivalDate:  time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC),
		Recipients: []dsn.Recipient{
			{Final: "nobody@example.com", Original: "Nobody@Example.com", Status: "5.1.1", Diagnostic: "550 5.1.1 no such user\r\nX-Injected: yes"},
			{Final: "far@example.net", Status: "5.7.1", Diagnostic: "smtp; 554 5.7.1 relay denied", RemoteMTA: "mx.example.net"},
		},
		Original: []byte(original),
		Now:      time.Date(2026, 11, 2, 10, 5, 0, 0, time.UTC),
	}
}

// parts parses a DSN with go-message and returns its header and parts.
func parts(t *testing.T, msg []byte) (*message.Entity, []*message.Entity, [][]byte) {
	t.Helper()
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("go-message cannot read the DSN: %v\n%s", err, msg)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("DSN is not multipart:\n%s", msg)
	}
	var ps []*message.Entity
	var bodies [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p.Body)
		ps = append(ps, p)
		bodies = append(bodies, b)
	}
	return e, ps, bodies
}

func TestBuildIsAnRFC3464Report(t *testing.T) {
	msg, err := dsn.Build(report())
	if err != nil {
		t.Fatal(err)
	}
	e, ps, bodies := parts(t, msg)
	typ, params, _ := e.Header.ContentType()
	if typ != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Errorf("Content-Type %s %v, want multipart/report; report-type=delivery-status", typ, params)
	}
	if got := e.Header.Get("To"); got != "<alice@example.com>" {
		t.Errorf("To = %q", got)
	}
	if got := e.Header.Get("Auto-Submitted"); got != "auto-replied" {
		t.Errorf("Auto-Submitted = %q", got)
	}
	if got := e.Header.Get("Subject"); got != "Undelivered Mail Returned to Sender" {
		t.Errorf("Subject = %q", got)
	}
	if len(ps) != 3 {
		t.Fatalf("%d parts, want 3 (text, delivery-status, headers)", len(ps))
	}
	wantTypes := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}
	for i, p := range ps {
		if typ, _, _ := p.Header.ContentType(); typ != wantTypes[i] {
			t.Errorf("part %d is %s, want %s", i+1, typ, wantTypes[i])
		}
	}
	if !strings.Contains(string(bodies[0]), "<nobody@example.com>: 550 5.1.1 no such user") {
		t.Errorf("human part does not explain the failure:\n%s", bodies[0])
	}

	// The delivery-status fields: one per-message group, then one group
	// per recipient, each readable as a header block.
	groups := strings.Split(strings.TrimSpace(string(bodies[1])), "\r\n\r\n")
	if len(groups) != 3 {
		t.Fatalf("delivery-status has %d groups, want 3:\n%s", len(groups), bodies[1])
	}
	field := func(g int) textproto.Header {
		h, err := textproto.ReadHeader(bufioFrom(groups[g] + "\r\n\r\n"))
		if err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
		return h
	}
	m := field(0)
	if m.Get("Reporting-MTA") != "dns; mx.example.com" || m.Get("Original-Envelope-Id") != "in-42" || m.Get("Arrival-Date") == "" {
		t.Errorf("per-message fields wrong:\n%s", groups[0])
	}
	r1 := field(1)
	for k, v := range map[string]string{
		"Final-Recipient": "rfc822; nobody@example.com", "Original-Recipient": "rfc822; Nobody@Example.com",
		"Action": "failed", "Status": "5.1.1", "Diagnostic-Code": "smtp; 550 5.1.1 no such user  X-Injected: yes",
	} {
		if got := r1.Get(k); got != v {
			t.Errorf("recipient 1 %s = %q, want %q", k, got, v)
		}
	}
	if r1.Has("X-Injected") {
		t.Error("a CRLF in the diagnostic injected a field")
	}
	r2 := field(2)
	if r2.Get("Remote-MTA") != "dns; mx.example.net" || r2.Get("Diagnostic-Code") != "smtp; 554 5.7.1 relay denied" {
		t.Errorf("recipient 2 fields wrong:\n%s", groups[2])
	}

	// The original header, and not the body.
	if !strings.Contains(string(bodies[2]), "Message-Id: <m1@example.com>") && !strings.Contains(string(bodies[2]), "Message-ID: <m1@example.com>") {
		t.Errorf("original header missing:\n%s", bodies[2])
	}
	if !strings.Contains(string(bodies[2]), "and a long\r\n folded subject") {
		t.Errorf("folded original header not kept:\n%s", bodies[2])
	}
	if strings.Contains(string(msg), "The body is not attached") {
		t.Error("the original body is attached")
	}
}

func bufioFrom(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func TestNeverToTheNullSender(t *testing.T) {
	r := report()
	r.To = ""
	if _, err := dsn.Build(r); !errors.Is(err, dsn.ErrNullSender) {
		t.Errorf("Build to <> = %v, want ErrNullSender", err)
	}
	if _, err := dsn.Inbound(r, "hq"); !errors.Is(err, dsn.ErrNullSender) {
		t.Errorf("Inbound to <> = %v, want ErrNullSender", err)
	}
}

func TestBadReports(t *testing.T) {
	for name, mod := range map[string]func(*dsn.Report){
		"no recipients":  func(r *dsn.Report) { r.Recipients = nil },
		"no final":       func(r *dsn.Report) { r.Recipients[0].Final = "" },
		"unknown action": func(r *dsn.Report) { r.Recipients[0].Action = "exploded" },
		"no MTA":         func(r *dsn.Report) { r.ReportingMTA = "" },
		"no postmaster":  func(r *dsn.Report) { r.Postmaster = "" },
	} {
		r := report()
		mod(&r)
		if _, err := dsn.Build(r); err == nil {
			t.Errorf("%s: Build accepted it", name)
		}
	}
}

func TestInboundRecord(t *testing.T) {
	r := report()
	in, err := dsn.Inbound(r, "hq")
	if err != nil {
		t.Fatal(err)
	}
	if in.MailFrom != "" || len(in.Recipients) != 1 || in.Recipients[0] != "alice@example.com" || in.Source.Kind != events.SourceDSN || in.Site != "hq" {
		t.Errorf("inbound = %+v", in)
	}
	rec, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := events.DecodeInbound(rec)
	if err != nil || back.ID != in.ID || !bytes.Equal(back.Message, in.Message) {
		t.Errorf("round trip: %v", err)
	}
	// Deterministic: the same failure reported again (later, recipients
	// in another order) has the same id; another outcome does not.
	r2 := report()
	r2.Now = r2.Now.Add(time.Hour)
	r2.Recipients[0], r2.Recipients[1] = r2.Recipients[1], r2.Recipients[0]
	in2, _ := dsn.Inbound(r2, "hq")
	if in2.ID != in.ID {
		t.Errorf("same report, ids %s and %s", in.ID, in2.ID)
	}
	r3 := report()
	r3.Recipients[0].Status = "5.2.2"
	if in3, _ := dsn.Inbound(r3, "hq"); in3.ID == in.ID {
		t.Error("another outcome has the same id")
	}
	r4 := report()
	r4.EnvelopeID = "in-43"
	if in4, _ := dsn.Inbound(r4, "hq"); in4.ID == in.ID {
		t.Error("another message has the same id")
	}
}

func TestDelayedReport(t *testing.T) {
	r := report()
	r.Recipients = []dsn.Recipient{{Final: "slow@example.net", Action: dsn.ActionDelayed, Diagnostic: "451 try later"}}
	msg, err := dsn.Build(r)
	if err != nil {
		t.Fatal(err)
	}
	e, _, bodies := parts(t, msg)
	if e.Header.Get("Subject") != "Delayed Mail (still being retried)" {
		t.Errorf("Subject = %q", e.Header.Get("Subject"))
	}
	if !strings.Contains(string(bodies[1]), "Action: delayed\r\nStatus: 4.0.0") {
		t.Errorf("delayed status fields:\n%s", bodies[1])
	}
}

func TestOriginalWithBareLFAndNoBody(t *testing.T) {
	r := report()
	r.Original = []byte("From: a@example.com\nSubject: lf only\n\nbody\n")
	msg, err := dsn.Build(r)
	if err != nil {
		t.Fatal(err)
	}
	_, _, bodies := parts(t, msg)
	if !strings.Contains(string(bodies[2]), "Subject: lf only\r\n") || strings.Contains(string(bodies[2]), "body") {
		t.Errorf("LF original header:\n%q", bodies[2])
	}
	r.Original = nil
	if _, err := dsn.Build(r); err != nil {
		t.Errorf("no original: %v", err)
	}
}

func FuzzBuild(f *testing.F) {
	f.Add("alice@example.com", "x@example.com", "550 no", []byte(original))
	f.Add("a\r\nb", "\x00", "", []byte("\n\n\n"))
	f.Fuzz(func(t *testing.T, to, final, diag string, orig []byte) {
		r := dsn.Report{ReportingMTA: "mx", Postmaster: "pm@x", To: to, Recipients: []dsn.Recipient{{Final: final, Diagnostic: diag}}, Original: orig}
		msg, err := dsn.Build(r)
		if err != nil {
			return
		}
		e, err := message.Read(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("unreadable DSN: %v", err)
		}
		if e.MultipartReader() == nil {
			t.Fatal("not multipart")
		}
	})
}
