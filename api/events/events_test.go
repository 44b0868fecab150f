package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var at = time.Date(2026, 11, 21, 9, 30, 0, 123456789, time.UTC)

// A message with the things that must survive byte for byte: CRLF, a folded
// header, an 8-bit header and a line starting with a dot.
var rawMessage = []byte("From: \"Zhängsan\" <zs@example.com>\r\nSubject: a folded\r\n subject line\r\nTo: sales@example.com\r\n\r\n.a line with a dot\r\nbody \xff\r\n")

func TestInboundRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   Inbound
	}{
		{"pop3", Inbound{
			ID: "01JCZ8", Site: "hq", MailFrom: "zs@example.com",
			Recipients: []string{"a@example.org", "b@example.org"},
			Source:     Source{Kind: SourcePOP3, POP3Account: "acc-1", POP3UIDL: "UID 17.x"},
			ReceivedAt: at, Message: rawMessage,
		}},
		{"smtp null sender", Inbound{
			ID: "01JCZ9", MailFrom: "", Recipients: []string{"postmaster@example.org"},
			Source:  Source{Kind: SourceSMTP, SMTPSession: "s1", SMTPRemote: "192.0.2.1:4455", SMTPHelo: "mx.example.net", AuthUser: "u1"},
			Message: rawMessage,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := tt.in.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if string(rec.Key) != tt.in.ID {
				t.Errorf("key = %q, want the id %q", rec.Key, tt.in.ID)
			}
			if !bytes.Equal(rec.Value, rawMessage) {
				t.Errorf("value is not the raw message")
			}
			if got := rec.All(HeaderRecipient); !reflect.DeepEqual(got, tt.in.Recipients) {
				t.Errorf("recipient headers = %q, want %q in order", got, tt.in.Recipients)
			}
			out, err := DecodeInbound(rec)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(out, tt.in) {
				t.Errorf("round trip:\n got %+v\nwant %+v", out, tt.in)
			}
		})
	}
}

func TestDeliveryRoundTrip(t *testing.T) {
	for _, d := range []Delivery{
		{ID: "d1", InboundID: "i1", Site: "hq", Destination: DestLocal, Mailbox: "u-zs", MailFrom: "c@example.net",
			Recipients: []string{"zs@example.com"}, OriginalRecipient: "sales@example.com",
			Source: Source{Kind: SourcePOP3, POP3Account: "a", POP3UIDL: "1"}, ReceivedAt: at, Message: rawMessage},
		{ID: "d2", InboundID: "i1", Destination: DestSite, TargetSite: "branch", Recipients: []string{"x@example.com"},
			Source: Source{Kind: SourceSMTP}, Message: rawMessage},
		{ID: "d3", InboundID: "i2", Destination: DestOutbound, MailFrom: "sales@example.com",
			Recipients: []string{"c1@example.net", "c2@example.net"}, Source: Source{Kind: SourceSMTP, AuthUser: "u"}, Message: rawMessage},
	} {
		rec, err := d.Encode()
		if err != nil {
			t.Fatalf("%s: %v", d.ID, err)
		}
		out, err := DecodeDelivery(rec)
		if err != nil {
			t.Fatalf("%s: %v", d.ID, err)
		}
		if !reflect.DeepEqual(out, d) {
			t.Errorf("round trip %s:\n got %+v\nwant %+v", d.ID, out, d)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	for _, s := range []Status{
		{InboundID: "i1", DeliveryID: "d1", Site: "hq", Stage: "relay", Recipient: "zs@example.com", Outcome: OutcomeDelivered,
			At: at, MessageID: "<m1@example.net>", Source: Source{Kind: SourcePOP3, POP3Account: "a", POP3UIDL: "7"}, Attempt: 1, Destination: DestLocal,
			ReceivedAt: at.Add(-time.Second)},
		{InboundID: "i2", Stage: "relay", Recipient: "c@example.net", Outcome: OutcomeDeferred, Reason: "451 try later", SMTPCode: 451,
			NextAttempt: at.Add(time.Minute), At: at, Source: Source{Kind: SourceSMTP}, Attempt: 3, Destination: DestOutbound},
		{InboundID: "i3", Stage: "router", Recipient: "nobody@example.com", Outcome: OutcomeRejected, Reason: "no such user", At: at, Source: Source{Kind: SourceSMTP}},
	} {
		rec, err := s.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out, err := DecodeStatus(rec)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(out, s) {
			t.Errorf("round trip:\n got %+v\nwant %+v", out, s)
		}
	}
}

// ReceivedAt travels on mail.delivery (a header, RFC 3339 with nanoseconds)
// and mail.status (received_at), through a retry record too, and records
// written before it existed still decode, with a zero time.
func TestReceivedAtRoundTrip(t *testing.T) {
	d := Delivery{ID: "d1", InboundID: "i1", Destination: DestOutbound, Recipients: []string{"c@example.net"},
		Source: Source{Kind: SourceSMTP}, ReceivedAt: at, Message: rawMessage}
	rec, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := rec.Get(HeaderReceivedAt); v != "2026-11-21T09:30:00.123456789Z" {
		t.Errorf("%s header = %q, want RFC 3339 with nanoseconds", HeaderReceivedAt, v)
	}
	if out, err := DecodeDelivery(rec); err != nil || !out.ReceivedAt.Equal(at) {
		t.Errorf("delivery ReceivedAt = %v (%v), want %v", out.ReceivedAt, err, at)
	}
	retry, err := Retry{Delivery: d, Attempt: 2, NextAttempt: at.Add(time.Minute), FirstAttempt: at}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := DecodeRetry(retry); err != nil || !out.Delivery.ReceivedAt.Equal(at) {
		t.Errorf("retry ReceivedAt = %v (%v), want %v", out.Delivery.ReceivedAt, err, at)
	}

	// An older delivery record without the header.
	var old []Header
	for _, h := range rec.Headers {
		if h.Key != HeaderReceivedAt {
			old = append(old, h)
		}
	}
	if out, err := DecodeDelivery(Record{Key: rec.Key, Value: rec.Value, Headers: old}); err != nil || !out.ReceivedAt.IsZero() {
		t.Errorf("delivery without %s: ReceivedAt = %v (%v), want zero", HeaderReceivedAt, out.ReceivedAt, err)
	}

	s := Status{InboundID: "i1", Stage: "relay", Recipient: "c@example.net", Outcome: OutcomeDelivered, At: at.Add(2 * time.Second),
		Source: Source{Kind: SourceSMTP}, ReceivedAt: at}
	srec, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(srec.Value, []byte(`"received_at":"2026-11-21T09:30:00.123456789Z"`)) {
		t.Errorf("status JSON %s has no received_at", srec.Value)
	}
	if out, err := DecodeStatus(srec); err != nil || !out.ReceivedAt.Equal(at) {
		t.Errorf("status ReceivedAt = %v (%v), want %v", out.ReceivedAt, err, at)
	}
	s.ReceivedAt = time.Time{}
	if srec, _ = s.Encode(); bytes.Contains(srec.Value, []byte("received_at")) {
		t.Errorf("status JSON %s has received_at though it is zero", srec.Value)
	}
	hdr := []Header{{HeaderType, []byte(TopicStatus)}, {HeaderVersion, []byte("1")}}
	oldStatus := `{"inbound_id":"i","stage":"relay","recipient":"a@b","outcome":"delivered","at":"2026-11-21T00:00:00Z","source":{"kind":"smtp"}}`
	if out, err := DecodeStatus(Record{Value: []byte(oldStatus), Headers: hdr}); err != nil || !out.ReceivedAt.IsZero() {
		t.Errorf("status without received_at: ReceivedAt = %v (%v), want zero", out.ReceivedAt, err)
	}
}

func TestDirectoryChangeRoundTrip(t *testing.T) {
	for _, c := range []DirectoryChange{
		{Seq: 1, At: at, Kind: "user", ID: "u1", Op: OpUpsert, Data: json.RawMessage(`{"username":"john"}`), Actor: "token:admin"},
		{Seq: 2, At: at, Kind: "user", ID: "u1", Op: OpDelete},
	} {
		rec, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if string(rec.Key) != "user/u1" {
			t.Errorf("key = %q, want user/u1", rec.Key)
		}
		out, err := DecodeDirectoryChange(rec)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(out, c) {
			t.Errorf("round trip:\n got %+v\nwant %+v", out, c)
		}
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	orig, err := Inbound{ID: "i1", Recipients: []string{"a@example.com"}, Source: Source{Kind: SourceSMTP}, Message: rawMessage}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d := DeadLetter{Reason: "no route", Topic: "hq.mail.inbound", Partition: 2, Offset: 99, Handler: "router", Group: "hq.router", Attempts: 8, Time: at, Original: orig}
	rec := d.Encode()
	if v, _ := rec.Get(HeaderDeadLetterReason); v != "no route" {
		t.Errorf("reason header = %q", v)
	}
	out, err := DecodeDeadLetter(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, d) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, d)
	}
	// A replayed dead letter that fails again carries one set of headers.
	again := DeadLetter{Reason: "still no route", Topic: "hq.mail.inbound", Handler: "router", Attempts: 1, Original: rec}.Encode()
	if n := len(again.All(HeaderDeadLetterReason)); n != 1 {
		t.Errorf("re-dead-lettered record has %d reason headers, want 1", n)
	}
	if v, _ := again.Get(HeaderDeadLetterReason); v != "still no route" {
		t.Errorf("reason = %q, want the new one", v)
	}
	// The original record is still readable as what it was.
	if _, err := DecodeInbound(out.Original); err != nil {
		t.Errorf("original record: %v", err)
	}
}

func TestDecodeRefusesWhatItDoesNotUnderstand(t *testing.T) {
	good, _ := Inbound{ID: "i1", Recipients: []string{"a@example.com"}, Source: Source{Kind: SourceSMTP}, Message: rawMessage}.Encode()
	with := func(mod func(*Record)) Record {
		r := Record{Key: good.Key, Value: good.Value, Headers: append([]Header(nil), good.Headers...)}
		mod(&r)
		return r
	}
	set := func(key, value string) func(*Record) {
		return func(r *Record) {
			for i := range r.Headers {
				if r.Headers[i].Key == key {
					r.Headers[i].Value = []byte(value)
				}
			}
		}
	}
	drop := func(key string) func(*Record) {
		return func(r *Record) {
			var hs []Header
			for _, h := range r.Headers {
				if h.Key != key {
					hs = append(hs, h)
				}
			}
			r.Headers = hs
		}
	}
	tests := []struct {
		name    string
		rec     Record
		want    error
		mention string
	}{
		{"newer version", with(set(HeaderVersion, "2")), ErrUnsupported, "version"},
		{"other type", with(set(HeaderType, TopicStatus)), ErrUnsupported, "mail.status"},
		{"no type", with(drop(HeaderType)), ErrMalformed, HeaderType},
		{"no id", with(drop(HeaderID)), ErrMalformed, HeaderID},
		{"no recipients", with(drop(HeaderRecipient)), ErrMalformed, "no recipients"},
		{"no mail from", with(drop(HeaderMailFrom)), ErrMalformed, HeaderMailFrom},
		{"bad recipient", with(set(HeaderRecipient, "a@b\r\nRCPT TO:<x@y>")), ErrMalformed, "control character"},
		{"bad source", with(set(HeaderSource, "carrier-pigeon")), ErrMalformed, "carrier-pigeon"},
		{"bad time", with(func(r *Record) { r.Headers = append(r.Headers, Header{HeaderReceivedAt, []byte("yesterday")}) }), ErrMalformed, "RFC 3339"},
		{"empty value", with(func(r *Record) { r.Value = nil }), ErrMalformed, "empty message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeInbound(tt.rec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestStatusRefusesUnknownFieldsAndBadOutcomes(t *testing.T) {
	hdr := []Header{{HeaderType, []byte(TopicStatus)}, {HeaderVersion, []byte("1")}}
	for name, value := range map[string]string{
		"unknown field":             `{"inbound_id":"i","recipient":"a@b","outcome":"delivered","at":"2026-11-21T00:00:00Z","surprise":1}`,
		"bad outcome":               `{"inbound_id":"i","recipient":"a@b","outcome":"lost","at":"2026-11-21T00:00:00Z"}`,
		"deferred, no next attempt": `{"inbound_id":"i","recipient":"a@b","outcome":"deferred","at":"2026-11-21T00:00:00Z"}`,
		"not json":                  `delivered`,
		"trailing":                  `{"inbound_id":"i","recipient":"a@b","outcome":"delivered","at":"2026-11-21T00:00:00Z"} {}`,
	} {
		if _, err := DecodeStatus(Record{Value: []byte(value), Headers: hdr}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func TestTopic(t *testing.T) {
	if got := Topic("", TopicInbound); got != "mail.inbound" {
		t.Errorf("no prefix: %q", got)
	}
	if got := Topic("branch1", TopicInbound); got != "branch1.mail.inbound" {
		t.Errorf("prefix: %q", got)
	}
}

// FuzzDecode feeds arbitrary header values and bodies to every decoder: they
// may refuse, never panic, and what they accept re-encodes to an equal value.
func FuzzDecode(f *testing.F) {
	f.Add("mail.inbound", "1", "id", "a@b.c", "smtp", []byte("x"))
	f.Add("mail.status", "1", "", "", "", []byte(`{"inbound_id":"i","recipient":"a@b","outcome":"delivered","at":"2026-11-21T00:00:00Z"}`))
	f.Add("directory.changes", "1", "", "", "", []byte(`{"seq":1,"at":"2026-11-21T00:00:00Z","kind":"user","id":"u","op":"upsert","data":{}}`))
	f.Fuzz(func(t *testing.T, typ, version, id, rcpt, source string, value []byte) {
		rec := Record{Value: value, Headers: []Header{
			{HeaderType, []byte(typ)}, {HeaderVersion, []byte(version)}, {HeaderID, []byte(id)},
			{HeaderMailFrom, nil}, {HeaderRecipient, []byte(rcpt)}, {HeaderSource, []byte(source)},
			{HeaderDeliveryID, []byte(id)}, {HeaderInboundID, []byte(id)}, {HeaderDestination, []byte(source)},
		}}
		if m, err := DecodeInbound(rec); err == nil {
			if _, err := m.Encode(); err != nil {
				t.Errorf("accepted inbound does not re-encode: %v", err)
			}
		}
		if d, err := DecodeDelivery(rec); err == nil {
			if _, err := d.Encode(); err != nil {
				t.Errorf("accepted delivery does not re-encode: %v", err)
			}
		}
		if s, err := DecodeStatus(rec); err == nil {
			if _, err := s.Encode(); err != nil {
				t.Errorf("accepted status does not re-encode: %v", err)
			}
		}
		if c, err := DecodeDirectoryChange(rec); err == nil {
			if _, err := c.Encode(); err != nil {
				t.Errorf("accepted change does not re-encode: %v", err)
			}
		}
		_, _ = DecodeDeadLetter(rec)
	})
}
