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

func received(n int) []string {
	var h []string
	for i := 0; i < n; i++ {
		h = append(h, "Received: from hop"+string(rune('a'+i%26))+" by mx; Sun, 1 Mar 2026 10:00:00 +0000")
	}
	return h
}

func withHeaders(extra ...string) []byte {
	return msg("hello\r\n", append(extra, "From: Customer <c@customer.net>", "Subject: hi", "Message-ID: <m1@customer.net>")...)
}

// index records present in every routing test.
var indexRecords = map[string]sitestate.MessageRecord{
	"zs-1@example.com":       {StaffUserID: "u-zs", SharedMailboxID: "sm-sales", Sender: "sales@example.com"},
	"ls-1@example.com":       {StaffUserID: "u-ls", SharedMailboxID: "sm-sales", Sender: "sales@example.com"},
	"zs-support@example.com": {StaffUserID: "u-zs", SharedMailboxID: "sm-support", Sender: "zhangsan@example.com"},
	"zs2-sales@example.com":  {StaffUserID: "u-zs2", SharedMailboxID: "sm-sales", Sender: "sales@example.com"}, // zs2 is not sales staff
}

func TestRoute(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for id, rec := range indexRecords {
		rec.At = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
		if err := st.MessageIndex().Put(ctx, id, rec, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	r := newRouter(t, st, Config{})
	toSales := func(to string, extra ...string) []byte {
		return msg("thanks\r\n", append([]string{"From: Customer <c@customer.net>", "To: " + to, "Subject: Re: offer", "Message-ID: <r1@customer.net>"}, extra...)...)
	}

	tests := []struct {
		name    string
		in      events.Inbound
		want    []string // delivery summaries, in order
		rejects []string // "rcpt status bounce|nobounce"
		skipped []string // "rcpt mailbox"
		dead    string   // substring of the dead-letter reason
		records []string // Message-IDs to record
	}{
		// Local users.
		{name: "primary address", in: inbound("smtp", "c@customer.net", plain, "alice@example.com"), want: []string{"local:u-alice"}},
		{name: "alias, case-insensitive", in: inbound("smtp", "c@customer.net", plain, "A.ARCHER@Example.COM"), want: []string{"local:u-alice"}},
		{name: "plus-addressing", in: inbound("smtp", "c@customer.net", plain, "alice+news@example.com"), want: []string{"local:u-alice"}},
		{name: "plus-addressing on an alias", in: inbound("pop3", "c@customer.net", plain, "a.archer+x+y@example.com"), want: []string{"local:u-alice"}},
		{name: "one delivery per mailbox", in: inbound("smtp", "c@customer.net", plain, "alice@example.com", "ALICE@example.com", "a.archer@example.com", "alice+1@example.com"), want: []string{"local:u-alice"}},
		{name: "home site elsewhere, by alias", in: inbound("smtp", "c@customer.net", plain, "carol@example.com"), want: []string{"site:branch:u-carol"}},
		{name: "home site elsewhere, other site's domain", in: inbound("smtp", "c@customer.net", plain, "carol@branch.example.org"), want: []string{"site:branch:u-carol"}},
		{name: "disabled user refused", in: inbound("smtp", "c@customer.net", plain, "dave@example.com"), rejects: []string{"dave@example.com 5.2.1 bounce"}},
		{name: "unknown in this site's domain", in: inbound("smtp", "c@customer.net", plain, "nobody@example.com", "bob@example.com"), want: []string{"local:u-bob"}, rejects: []string{"nobody@example.com 5.1.1 bounce"}},
		{name: "unknown in another site's domain", in: inbound("smtp", "c@customer.net", plain, "nobody@branch.example.org"), rejects: []string{"nobody@branch.example.org 5.1.1 bounce"}},
		{name: "unknown, null sender: no bounce", in: inbound("smtp", "", plain, "nobody@example.com"), rejects: []string{"nobody@example.com 5.1.1 nobounce"}},
		{name: "malformed recipient", in: inbound("smtp", "c@customer.net", plain, "@example.com"), rejects: []string{"@example.com 5.1.3 bounce"}},
		{name: "tag on an unknown user", in: inbound("smtp", "c@customer.net", plain, "nobody+x@example.com"), rejects: []string{"nobody+x@example.com 5.1.1 bounce"}},

		// Groups.
		{name: "group from inside: recursive, each once, cycle-safe", in: inbound("auth:u-bob", "bob@example.com", plain, "team@example.com"),
			want: []string{"local:u-alice", "local:u-bob", "site:branch:u-carol", "local:u-erin"}, skipped: []string{"team@example.com u-ghost"}},
		{name: "group from outside skips members without internet_receive", in: inbound("smtp", "c@customer.net", plain, "sub@example.com"),
			want: []string{"local:u-bob", "site:branch:u-carol", "local:u-alice"}, skipped: []string{"sub@example.com u-erin", "sub@example.com u-ghost"}},
		{name: "group and member both addressed", in: inbound("smtp", "c@customer.net", plain, "bob@example.com", "team@example.com"),
			want: []string{"local:u-bob", "local:u-alice", "site:branch:u-carol"}, skipped: []string{"team@example.com u-erin", "team@example.com u-ghost"}},
		{name: "group without deliverable member", in: inbound("smtp", "c@customer.net", plain, "empty@example.com"),
			rejects: []string{"empty@example.com 5.2.1 bounce"}, skipped: []string{"empty@example.com u-dave"}},

		// Permissions.
		{name: "no internet_receive: refused from outside (smtp)", in: inbound("smtp", "c@customer.net", plain, "erin@example.com"), rejects: []string{"erin@example.com 5.7.1 bounce"}},
		{name: "no internet_receive: refused from outside (pop3, even with an org MAIL FROM)", in: inbound("pop3", "alice@example.com", plain, "erin@example.com"), rejects: []string{"erin@example.com 5.7.1 bounce"}},
		{name: "no internet_receive: refused from the null sender", in: inbound("smtp", "", plain, "erin@example.com"), rejects: []string{"erin@example.com 5.7.1 nobounce"}},
		{name: "no internet_receive: mail from inside (submission)", in: inbound("auth:u-alice", "alice@example.com", plain, "erin@example.com"), want: []string{"local:u-erin"}},
		{name: "no internet_receive: mail from inside (another site's user)", in: inbound("smtp", "carol@branch.example.org", plain, "erin@example.com"), want: []string{"local:u-erin"}},
		{name: "internet_send: outbound", in: inbound("auth:u-alice", "alice@example.com", plain, "x@customer.net", "Y@Other.net", "x@CUSTOMER.net"),
			want: []string{"outbound:alice@example.com:x@customer.net,Y@Other.net"}},
		{name: "authenticated by user name", in: inbound("auth:alice", "alice@example.com", plain, "x@customer.net"), want: []string{"outbound:alice@example.com:x@customer.net"}},
		{name: "no internet_send: outside refused, inside delivered", in: inbound("auth:u-bob", "bob@example.com", plain, "x@customer.net", "alice@example.com"),
			want: []string{"local:u-alice"}, rejects: []string{"x@customer.net 5.7.1 bounce"}},
		{name: "unknown authenticated user may not send outside", in: inbound("auth:u-nobody", "alice@example.com", plain, "x@customer.net"), rejects: []string{"x@customer.net 5.7.1 bounce"}},
		{name: "another site's user with internet_send", in: inbound("smtp", "carol@branch.example.org", plain, "x@customer.net"), want: []string{"outbound:carol@branch.example.org:x@customer.net"}},
		{name: "unknown org sender may not send outside", in: inbound("smtp", "ghost@example.com", plain, "x@customer.net"), rejects: []string{"x@customer.net 5.7.1 bounce"}},
		{name: "no relay: pop3 to outside", in: inbound("pop3", "c@customer.net", plain, "x@customer.net"), rejects: []string{"x@customer.net 5.7.1 nobounce"}},
		{name: "no relay: unauthenticated smtp to outside", in: inbound("smtp", "c@customer.net", plain, "x@customer.net", "bob@example.com"), want: []string{"local:u-bob"}, rejects: []string{"x@customer.net 5.7.1 nobounce"}},

		// Bounces (DSNs Postern wrote, with the null sender).
		{name: "bounce to an outside sender goes outbound", in: inbound("dsn", "", plain, "c@customer.net"), want: []string{"outbound::c@customer.net"}},
		{name: "bounce to a user without internet_receive", in: inbound("dsn", "", plain, "erin@example.com"), want: []string{"local:u-erin"}},
		{name: "bounce to an unknown address: refused, never bounced", in: inbound("dsn", "", plain, "nobody@example.com"), rejects: []string{"nobody@example.com 5.1.1 nobounce"}},

		// Loops.
		{name: "hops at the limit", in: inbound("smtp", "c@customer.net", withHeaders(received(30)...), "alice@example.com"), want: []string{"local:u-alice"}},
		{name: "hops over the limit", in: inbound("smtp", "c@customer.net", withHeaders(received(31)...), "alice@example.com"), dead: "31 Received"},
		{name: "our Delivered-To already present", in: inbound("smtp", "c@customer.net", withHeaders("Delivered-To: Alice@example.com"), "alice@example.com"), dead: "already delivered to alice@example.com"},
		{name: "Delivered-To of another recipient", in: inbound("smtp", "c@customer.net", withHeaders("Delivered-To: bob@example.com"), "alice@example.com"), want: []string{"local:u-alice"}},
		{name: "Delivered-To from the ISP (pop3)", in: inbound("pop3", "c@customer.net", withHeaders("Delivered-To: alice@example.com"), "alice@example.com"), want: []string{"local:u-alice"}},
		{name: "invalid inbound", in: inbound("smtp", "c@customer.net", plain), dead: "no recipients"},

		// Mail another site already routed.
		{name: "from another site: final mailbox only", in: inbound("site:branch", "c@customer.net", plain, "zhangsan@example.com", "lisi@example.com"), want: []string{"local:u-zs", "local:u-ls"}},
		{name: "from another site: user moved on", in: inbound("site:branch", "c@customer.net", plain, "carol@branch.example.org"), want: []string{"site:branch:u-carol"}},
		{name: "from another site: never outbound", in: inbound("site:branch", "carol@branch.example.org", plain, "x@customer.net"), rejects: []string{"x@customer.net 5.7.1 nobounce"}},

		// Shared mailbox, case 1.
		{name: "case 1: unified address, forward to staff (staff without internet_receive included)", in: inbound("smtp", "c@customer.net", toSales("sales@example.com"), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 1: via pop3, tagged", in: inbound("pop3", "c@customer.net", toSales("sales@example.com"), "Sales+quote@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 1: no forward_to_staff: manager only", in: inbound("smtp", "c@customer.net", toSales("support@example.com"), "support@example.com"),
			want: []string{"local:u-alice"}},

		// Case 2.
		{name: "case 2: staff address from outside: staff + each manager", in: inbound("smtp", "c@customer.net", plain, "zhangsan@example.com"),
			want: []string{"local:u-zs", "local:u-mia", "local:u-alice"}},
		{name: "case 2: staff without internet_receive refused, no manager copy", in: inbound("smtp", "c@customer.net", plain, "lisi@example.com"),
			rejects: []string{"lisi@example.com 5.7.1 bounce"}},
		{name: "case 2: not from outside: no manager copy", in: inbound("auth:u-bob", "bob@example.com", plain, "zhangsan@example.com", "lisi@example.com"),
			want: []string{"local:u-zs", "local:u-ls"}},
		{name: "case 2: tagged staff address; each manager copied once", in: inbound("smtp", "c@customer.net", plain, "zhangsan+x@example.com", "zhangsan2@example.com"),
			want: []string{"local:u-zs", "local:u-mia", "local:u-alice", "local:u-zs2"}},

		// Case 4.
		{name: "case 4: In-Reply-To names Zhangsan's message", in: inbound("smtp", "c@customer.net", toSales("sales@example.com", "In-Reply-To: <zs-1@EXAMPLE.com>"), "sales@example.com"),
			want: []string{"local:u-zs", "local:u-mia"}},
		{name: "case 4: newest known References entry (pop3)", in: inbound("pop3", "c@customer.net", toSales("sales@example.com", "References: <zs-1@example.com>\r\n <unknown@x.net> <ls-1@example.com>"), "sales@example.com"),
			want: []string{"local:u-ls", "local:u-mia"}},
		{name: "case 4: Message-ID beats the display name", in: inbound("smtp", "c@customer.net", toSales(`"Zhangsan" <sales@example.com>`, "In-Reply-To: <ls-1@example.com>"), "sales@example.com"),
			want: []string{"local:u-ls", "local:u-mia"}},
		{name: "case 4: malformed In-Reply-To still read", in: inbound("smtp", "c@customer.net", toSales("sales@example.com", "In-Reply-To: your message <zs-1@example.com> of Monday"), "sales@example.com"),
			want: []string{"local:u-zs", "local:u-mia"}},
		{name: "case 4: record of another shared mailbox ignored", in: inbound("smtp", "c@customer.net", toSales("sales@example.com", "In-Reply-To: <zs-support@example.com>"), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: record of someone no longer staff ignored", in: inbound("smtp", "c@customer.net", toSales("sales@example.com", "In-Reply-To: <zs2-sales@example.com>"), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: display name matches one staff member", in: inbound("smtp", "c@customer.net", toSales(`"  lisi " <Sales@Example.com>`), "sales@example.com"),
			want: []string{"local:u-ls", "local:u-mia"}},
		{name: "case 4: display name in Cc, encoded word", in: inbound("pop3", "c@customer.net", toSales("bob@example.com", "Cc: =?utf-8?q?Zhangsan?= <sales@example.com>"), "sales@example.com"),
			want: []string{"local:u-zs", "local:u-mia"}},
		{name: "case 4: display name on another address does not count", in: inbound("smtp", "c@customer.net", toSales(`"Zhangsan" <zhangsan@example.com>, sales@example.com`), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: display name matching two staff: case 1", in: inbound("smtp", "c@customer.net", toSales(`"Zhangsan" <support@example.com>`), "support@example.com"),
			want: []string{"local:u-alice"}},
		{name: "case 4: unknown display name: case 1", in: inbound("smtp", "c@customer.net", toSales(`"Wangwu" <sales@example.com>`), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: forged staff name in From: not routed by name", in: inbound("smtp", "zs@attacker.net",
			msg("hi\r\n", `From: "Zhangsan" <zs@attacker.net>`, `To: "Lisi" <sales@example.com>`), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: forged org From address: not routed by name", in: inbound("pop3", "x@attacker.net",
			msg("hi\r\n", `From: zhangsan@example.com`, `To: "Lisi" <sales@example.com>`), "sales@example.com"),
			want: []string{"local:u-mia", "local:u-zs", "local:u-ls"}},
		{name: "case 4: forged message still follows a Message-ID match", in: inbound("smtp", "zs@attacker.net",
			msg("hi\r\n", `From: "Zhangsan" <zs@attacker.net>`, `To: "Zhangsan" <sales@example.com>`, "In-Reply-To: <ls-1@example.com>"), "sales@example.com"),
			want: []string{"local:u-ls", "local:u-mia"}},
		{name: "case 4: colleague inside writing by name", in: inbound("auth:u-bob", "bob@example.com",
			msg("hi\r\n", `From: "Bob Baker" <bob@example.com>`, `To: "Zhangsan" <sales@example.com>`), "sales@example.com"),
			want: []string{"local:u-zs", "local:u-mia"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, err := r.Route(ctx, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if tt.dead != "" || dec.DeadLetter != "" {
				if !strings.Contains(dec.DeadLetter, tt.dead) || tt.dead == "" {
					t.Fatalf("dead letter = %q, want it to contain %q", dec.DeadLetter, tt.dead)
				}
				if len(dec.Deliveries)+len(dec.Rejections) > 0 {
					t.Errorf("dead-lettered decision has deliveries or rejections: %+v", dec)
				}
				return
			}
			var got, rej, skip []string
			for _, d := range dec.Deliveries {
				got = append(got, summary(d))
				if err := d.Validate(); err != nil {
					t.Errorf("invalid delivery: %v", err)
				}
			}
			for _, r := range dec.Rejections {
				rej = append(rej, rejection(r))
				if r.Reason == "" {
					t.Errorf("rejection of %s without a reason", r.Recipient)
				}
			}
			for _, s := range dec.Skipped {
				skip = append(skip, s.Recipient+" "+s.Mailbox)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("deliveries = %q, want %q", got, tt.want)
			}
			if !slices.Equal(rej, tt.rejects) {
				t.Errorf("rejections = %q, want %q", rej, tt.rejects)
			}
			if !slices.Equal(skip, tt.skipped) {
				t.Errorf("skipped = %q, want %q", skip, tt.skipped)
			}
			if len(dec.RecordMessageIDs) > 0 {
				t.Errorf("unexpected Message-ID records: %+v", dec.RecordMessageIDs)
			}
			for _, d := range dec.Deliveries {
				if !bytes.Equal(d.Message, tt.in.Message) {
					t.Errorf("%s: message bytes changed", d.ID)
				}
				if d.MailFrom != tt.in.MailFrom {
					t.Errorf("%s: mail from %q, want %q", d.ID, d.MailFrom, tt.in.MailFrom)
				}
			}
		})
	}
}
