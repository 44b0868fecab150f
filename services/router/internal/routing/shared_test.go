package routing

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/sitestate"
)

// A submitted message with what must survive a rewrite: a folded Subject, an
// 8-bit header, a Sender, a multipart body with 8-bit and base64 parts, a
// line starting with a dot and trailing whitespace.
const submittedHead = "Received: from [192.0.2.7] by hq.example.com with ESMTPSA; Sun, 1 Mar 2026 10:00:00 +0000\r\n" +
	"From: \"Lisi\" <lisi@example.com>\r\n" +
	"Sender: lisi@example.com\r\n" +
	"To: Customer <c@customer.net>\r\n" +
	"Subject: =?utf-8?q?Angebot?= for your\r\n\tvery long and folded\r\n subject line  \r\n" +
	"X-Note: Grüße aus Köln \xff\r\n" +
	"Message-ID: <Lisi.42@Example.COM>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"

const submittedBody = "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
	"Grüße,\r\n.a line with a dot \r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
	"AAECAwQFBgcICQ==\r\n--b1--\r\n"

var submitted = []byte(submittedHead + "\r\n" + submittedBody)

// rewrittenLisi is submitted as it must leave: From replaced in place,
// Reply-To after it, Sender gone, everything else byte for byte.
var rewrittenLisi = []byte(strings.Replace(strings.Replace(submittedHead,
	"From: \"Lisi\" <lisi@example.com>\r\n", "From: \"Lisi\" <sales@example.com>\r\nReply-To: \"Lisi\" <sales@example.com>\r\n", 1),
	"Sender: lisi@example.com\r\n", "", 1) + "\r\n" + submittedBody)

func TestCase3StaffOutbound(t *testing.T) {
	st := newStore(t)
	r := newRouter(t, st, Config{MessageIDTTL: 48 * time.Hour})
	ctx := context.Background()

	t.Run("rewrite, manager copy, Message-ID recorded", func(t *testing.T) {
		in := inbound("auth:u-ls", "lisi@example.com", submitted, "c@customer.net", "bob@example.com")
		dec, err := r.Route(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range dec.Deliveries {
			got = append(got, summary(d))
		}
		want := []string{"local:u-bob", "local:u-mia", "outbound:sales@example.com:c@customer.net"}
		if !slices.Equal(got, want) || len(dec.Rejections) > 0 {
			t.Fatalf("deliveries = %q, rejections %+v; want %q", got, dec.Rejections, want)
		}
		for _, d := range dec.Deliveries {
			switch d.Destination {
			case events.DestOutbound:
				if !bytes.Equal(d.Message, rewrittenLisi) {
					t.Errorf("outbound message:\n%q\nwant\n%q", d.Message, rewrittenLisi)
				}
			default: // colleagues and the manager get the message as submitted
				if !bytes.Equal(d.Message, submitted) {
					t.Errorf("%s: message changed", d.ID)
				}
				if d.MailFrom != "lisi@example.com" {
					t.Errorf("%s: mail from %q", d.ID, d.MailFrom)
				}
			}
		}
		if m := dec.Deliveries[1]; m.OriginalRecipient != "sales@example.com" || !slices.Equal(m.Recipients, []string{"mia@example.com"}) {
			t.Errorf("manager copy: original %q, recipients %q", m.OriginalRecipient, m.Recipients)
		}
		wantRec := []MessageIDRecord{{
			MessageID: "Lisi.42@example.com",
			Record:    sitestate.MessageRecord{StaffUserID: "u-ls", SharedMailboxID: "sm-sales", Sender: "sales@example.com", At: in.ReceivedAt},
			TTL:       48 * time.Hour,
		}}
		if !slices.Equal(dec.RecordMessageIDs, wantRec) {
			t.Errorf("records = %+v, want %+v", dec.RecordMessageIDs, wantRec)
		}

		// The customer's reply comes back to Lisi once the record is stored.
		for _, rec := range dec.RecordMessageIDs {
			if err := st.MessageIndex().Put(ctx, rec.MessageID, rec.Record, rec.TTL); err != nil {
				t.Fatal(err)
			}
		}
		reply := msg("ok\r\n", "From: Customer <c@customer.net>", "To: Sales <sales@example.com>", "In-Reply-To: <Lisi.42@example.com>")
		dec, err = r.Route(ctx, inbound("pop3", "c@customer.net", reply, "sales@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, d := range dec.Deliveries {
			got = append(got, summary(d))
		}
		if want := []string{"local:u-ls", "local:u-mia"}; !slices.Equal(got, want) {
			t.Errorf("reply: deliveries = %q, want %q", got, want)
		}
	})

	tests := []struct {
		name     string
		in       events.Inbound
		want     []string
		rejects  []string
		records  []string // "message-id staff mailbox sender"
		rewrote  bool
		checkOut func(t *testing.T, out []byte)
	}{
		{name: "staff of two mailboxes sending as one of them (From), no rewrite there",
			in:      inbound("auth:u-zs", "zhangsan@example.com", msg("x\r\n", `From: "Zhangsan" <support@example.com>`, "Message-ID: <zs.7@example.com>"), "c@customer.net"),
			want:    []string{"local:u-alice", "outbound:zhangsan@example.com:c@customer.net"},
			records: []string{"zs.7@example.com u-zs sm-support zhangsan@example.com"}},
		{name: "staff of two mailboxes sending as one of them (MAIL FROM), rewrite",
			in:      inbound("auth:u-zs", "sales@example.com", msg("x\r\n", `From: "Zhangsan" <zhangsan@example.com>`, "Message-ID: <zs.8@example.com>"), "c@customer.net"),
			want:    []string{"local:u-mia", "outbound:sales@example.com:c@customer.net"},
			records: []string{"zs.8@example.com u-zs sm-sales sales@example.com"}, rewrote: true},
		{name: "staff of two mailboxes, own address: ambiguous, no shared-mailbox treatment",
			in:   inbound("auth:u-zs", "zhangsan@example.com", msg("x\r\n", `From: "Zhangsan" <zhangsan@example.com>`, "Message-ID: <zs.9@example.com>"), "c@customer.net"),
			want: []string{"outbound:zhangsan@example.com:c@customer.net"}},
		{name: "staff without internet_send: refused, no copy, nothing recorded",
			in:      inbound("auth:u-zs2", "zhangsan2@example.com", msg("x\r\n", `From: "Zhangsan" <zhangsan2@example.com>`, "Message-ID: <zs2.1@example.com>"), "c@customer.net"),
			rejects: []string{"c@customer.net 5.7.1 bounce"}},
		{name: "staff mail inside only: no case 3",
			in:   inbound("auth:u-ls", "lisi@example.com", submitted, "bob@example.com"),
			want: []string{"local:u-bob"}},
		{name: "no Message-ID: one is added and recorded",
			in:      inbound("auth:u-ls", "lisi@example.com", msg("x\r\n", `From: Lisi <lisi@example.com>`, "Subject: s"), "c@customer.net"),
			want:    []string{"local:u-mia", "outbound:sales@example.com:c@customer.net"},
			records: []string{"postern.@example.com u-ls sm-sales sales@example.com"}, rewrote: true,
			checkOut: func(t *testing.T, out []byte) {
				if !bytes.Contains(out, []byte("\r\nMessage-ID: <postern.")) {
					t.Errorf("no Message-ID added:\n%s", out)
				}
			}},
		{name: "existing Reply-To kept, Sender dropped",
			in:      inbound("auth:u-ls", "lisi@example.com", msg("x\r\n", `From: "Li Si (mobile)" <lisi@example.com>`, "Reply-To: team@example.com", "Sender: <lisi@example.com>", "Message-ID: <a@b>"), "c@customer.net"),
			want:    []string{"local:u-mia", "outbound:sales@example.com:c@customer.net"},
			records: []string{"a@b u-ls sm-sales sales@example.com"}, rewrote: true,
			checkOut: func(t *testing.T, out []byte) {
				want := "From: \"Lisi\" <sales@example.com>\r\nReply-To: team@example.com\r\nMessage-ID: <a@b>\r\n\r\nx\r\n"
				if string(out) != want {
					t.Errorf("got\n%q\nwant\n%q", out, want)
				}
			}},
		{name: "malformed header: outbound refused",
			in:      inbound("auth:u-ls", "lisi@example.com", []byte("From: lisi@example.com\r\nthis is not a header\r\n\r\nbody"), "c@customer.net"),
			rejects: []string{"c@customer.net 5.6.0 bounce"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, err := r.Route(ctx, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			var got, rej, recs []string
			for _, d := range dec.Deliveries {
				got = append(got, summary(d))
				if err := d.Validate(); err != nil {
					t.Error(err)
				}
				changed := !bytes.Equal(d.Message, tt.in.Message)
				if changed != (tt.rewrote && d.Destination == events.DestOutbound) {
					t.Errorf("%s: message changed = %v", d.ID, changed)
				}
				if changed && tt.checkOut != nil {
					tt.checkOut(t, d.Message)
				}
			}
			for _, r := range dec.Rejections {
				rej = append(rej, rejection(r))
			}
			for _, r := range dec.RecordMessageIDs {
				id := r.MessageID
				if strings.HasPrefix(id, "postern.") {
					id = "postern." + id[strings.IndexByte(id, '@'):]
				}
				recs = append(recs, strings.Join([]string{id, r.Record.StaffUserID, r.Record.SharedMailboxID, r.Record.Sender}, " "))
			}
			if !slices.Equal(got, tt.want) || !slices.Equal(rej, tt.rejects) || !slices.Equal(recs, tt.records) {
				t.Errorf("deliveries %q, rejections %q, records %q\nwant       %q, %q, %q", got, rej, recs, tt.want, tt.rejects, tt.records)
			}
		})
	}
}
