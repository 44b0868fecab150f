package routing

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"
)

func TestRewriteKeepsBytes(t *testing.T) {
	from := &mail.Address{Name: "Zhangsan", Address: "sales@example.com"}
	tests := []struct {
		name string
		in   string
		rw   senderRewrite
		want string
	}{
		{"folded From replaced in place",
			"X-A: 1\r\nFrom: \"Zhang\r\n san\" <zhangsan@example.com>\r\nSubject: a\r\n b\r\n\r\nbody\r\n",
			senderRewrite{From: from},
			"X-A: 1\r\nFrom: \"Zhangsan\" <sales@example.com>\r\nSubject: a\r\n b\r\n\r\nbody\r\n"},
		{"several From and Sender fields",
			"From: a@example.com\r\nSender: a@example.com\r\nFrom: b@example.com\r\nSender: b@example.com\r\n\r\n",
			senderRewrite{From: from, ReplyTo: from},
			"From: \"Zhangsan\" <sales@example.com>\r\nReply-To: \"Zhangsan\" <sales@example.com>\r\n\r\n"},
		{"no From: added at the end",
			"Subject: x\r\n\r\nbody",
			senderRewrite{From: from, MessageID: "id@example.com"},
			"Subject: x\r\nFrom: \"Zhangsan\" <sales@example.com>\r\nMessage-ID: <id@example.com>\r\n\r\nbody"},
		{"bare LF message stays LF",
			"From: z@example.com\nSubject: a\n\tb \xe4\n\n8-bit body \xe4\r\nmixed\n",
			senderRewrite{From: from, ReplyTo: from},
			"From: \"Zhangsan\" <sales@example.com>\nReply-To: \"Zhangsan\" <sales@example.com>\nSubject: a\n\tb \xe4\n\n8-bit body \xe4\r\nmixed\n"},
		{"header only, no blank line",
			"From: z@example.com\r\nSubject: s\r\n",
			senderRewrite{From: from},
			"From: \"Zhangsan\" <sales@example.com>\r\nSubject: s\r\n"},
		{"non-ASCII display name is encoded",
			"From: z@example.com\r\n\r\nb",
			senderRewrite{From: &mail.Address{Name: "张三", Address: "sales@example.com"}},
			"From: =?utf-8?q?=E5=BC=A0=E4=B8=89?= <sales@example.com>\r\n\r\nb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMessage([]byte(tt.in)).rewrite(tt.rw)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "\r\nbody", " leading space\r\n\r\n", "no colon here\r\n\r\n"} {
		if _, err := parseMessage([]byte(bad)).rewrite(senderRewrite{From: from}); err == nil {
			t.Errorf("rewrite(%q): no error", bad)
		}
	}
}

func TestDeliveryIDsAndFields(t *testing.T) {
	st := newStore(t)
	r := newRouter(t, st, Config{})
	ctx := context.Background()
	in := inbound("auth:u-alice", "alice@example.com", plain, "Y@other.net", "A.Archer+x@example.com", "carol@example.com", "x@customer.net")
	in.ID = "01JX"
	dec, err := r.Route(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	in2 := in
	in2.Recipients = []string{"x@customer.net", "carol@example.com", "a.archer+x@example.com", "y@OTHER.net"}
	dec2, err := r.Route(ctx, in2)
	if err != nil {
		t.Fatal(err)
	}
	var ids, ids2 []string
	for _, d := range dec.Deliveries {
		ids = append(ids, d.ID)
	}
	for _, d := range dec2.Deliveries {
		ids2 = append(ids2, d.ID)
	}
	want := []string{"01JX:local:u-alice", "01JX:site:branch:u-carol", "01JX:outbound:"}
	if len(ids) != 3 || ids[0] != want[0] || ids[1] != want[1] || !strings.HasPrefix(ids[2], want[2]) || len(ids[2]) != len(want[2])+16 {
		t.Fatalf("ids = %q, want %q + 16 hex digits", ids, want)
	}
	slices.Sort(ids)
	slices.Sort(ids2)
	if !slices.Equal(ids, ids2) {
		t.Errorf("ids depend on recipient order or case: %q vs %q", ids, ids2)
	}
	local, site, out := dec.Deliveries[0], dec.Deliveries[1], dec.Deliveries[2]
	if local.OriginalRecipient != "A.Archer+x@example.com" || !slices.Equal(local.Recipients, []string{"alice@example.com"}) || local.Site != hq {
		t.Errorf("local: %+v", local)
	}
	if site.TargetSite != branch || !slices.Equal(site.Recipients, []string{"carol@branch.example.org"}) || site.OriginalRecipient != "carol@example.com" {
		t.Errorf("site: %+v", site)
	}
	if !slices.Equal(out.Recipients, []string{"Y@other.net", "x@customer.net"}) || out.OriginalRecipient != "" || out.Source != in.Source {
		t.Errorf("outbound: %+v", out)
	}
}

func TestUnknownToPostmaster(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for _, tt := range []struct {
		postmaster string
		want       []string
		rejects    []string
	}{
		{"postmaster@example.com", []string{"local:u-alice"}, nil},
		{"team@example.com", []string{"local:u-alice", "local:u-bob", "site:branch:u-carol", "local:u-erin"}, nil}, // no permission check
		{"sales@example.com", []string{"local:u-mia"}, nil},
		{"gone@example.com", nil, []string{"nobody@example.com 5.1.1 bounce"}},
	} {
		t.Run(tt.postmaster, func(t *testing.T) {
			r := newRouter(t, st, Config{Unknown: UnknownPostmaster, Postmaster: tt.postmaster})
			dec, err := r.Route(ctx, inbound("smtp", "c@customer.net", plain, "nobody@example.com"))
			if err != nil {
				t.Fatal(err)
			}
			var got, rej []string
			for _, d := range dec.Deliveries {
				got = append(got, summary(d))
				if d.OriginalRecipient != "nobody@example.com" {
					t.Errorf("original recipient %q", d.OriginalRecipient)
				}
			}
			for _, r := range dec.Rejections {
				rej = append(rej, rejection(r))
			}
			if !slices.Equal(got, tt.want) || !slices.Equal(rej, tt.rejects) {
				t.Errorf("deliveries %q rejections %q; want %q %q", got, rej, tt.want, tt.rejects)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	st := newStore(t)
	for _, c := range []Config{
		{},
		{Site: hq, Unknown: "drop"},
		{Site: hq, Unknown: UnknownPostmaster},
		{Site: hq, MaxHops: -1},
		{Site: hq, MessageIDTTL: -1},
	} {
		if _, err := New(c, st.Directory(), st.MessageIndex()); err == nil {
			t.Errorf("New(%+v): no error", c)
		}
	}
	if _, err := New(Config{Site: hq}, nil, st.MessageIndex()); err == nil {
		t.Error("New without a directory: no error")
	}
}

// A directory that does not answer is a temporary error, not a decision.
func TestStateErrorIsTemporary(t *testing.T) {
	st := newStore(t)
	r := newRouter(t, st, Config{})
	st.Close()
	dec, err := r.Route(context.Background(), inbound("smtp", "c@customer.net", plain, "alice@example.com"))
	if err == nil {
		t.Fatalf("no error from a closed state; decision %+v", dec)
	}
}

func TestMsgIDs(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
	}{
		{"<a@B.com>", []string{"a@b.com"}},
		{" <a@b>\r\n <c@D> ", []string{"a@b", "c@d"}},
		{"garbage <x@y> more <z@w", []string{"x@y"}},
		{"bare@Id.Example", []string{"bare@id.example"}},
		{"", nil},
		{"<>", nil},
	} {
		if got := msgIDs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("msgIDs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	m := parseMessage([]byte("In-Reply-To: <r@x>\r\nReferences: <a@x> <b@x>\r\n <r@x>\r\n\r\n"))
	if got, want := m.referencedIDs(), []string{"r@x", "b@x", "a@x"}; !slices.Equal(got, want) {
		t.Errorf("referencedIDs = %q, want %q", got, want)
	}
}

func TestParseAddress(t *testing.T) {
	for _, tt := range []struct{ in, want, base string }{
		{"Alice@Example.COM", "alice@example.com", ""},
		{"<alice+Tag@example.com.>", "alice+tag@example.com", "alice@example.com"},
		{"a+b+c@x", "a+b+c@x", "a@x"},
		{"+tag@x", "+tag@x", ""},
		{"\"odd@local\"@x", "\"odd@local\"@x", ""},
		{"", "", ""}, {"alice", "", ""}, {"@x", "", ""}, {"a@", "", ""}, {"a b@x", "", ""}, {"a@x\x00", "", ""}, {"a@\xff", "", ""},
	} {
		a, err := ParseAddress(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ParseAddress(%q) = %q, want an error", tt.in, a)
			}
			continue
		}
		if err != nil || a.String() != tt.want {
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", tt.in, a, err, tt.want)
			continue
		}
		b, ok := a.WithoutTag()
		if got := map[bool]string{true: b.String(), false: ""}[ok]; got != tt.base {
			t.Errorf("WithoutTag(%q) = %q, want %q", tt.in, got, tt.base)
		}
	}
}

func TestRewriteOfSubmittedIsMinimal(t *testing.T) {
	out, err := parseMessage(submitted).rewrite(senderRewrite{From: &mail.Address{Name: "Lisi", Address: "sales@example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, []byte("\r\n\r\n"+submittedBody)) {
		t.Error("body or separator changed")
	}
	for _, keep := range []string{"Subject: =?utf-8?q?Angebot?= for your\r\n\tvery long and folded\r\n subject line  \r\n", "X-Note: Grüße aus Köln \xff\r\n"} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("lost %q", keep)
		}
	}
}
