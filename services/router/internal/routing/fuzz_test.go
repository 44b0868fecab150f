package routing

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/emersion/go-message/mail"

	"github.com/postern/postern/api/events"
)

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"alice@example.com", "<A+b@X.>", "+@x", "a@b@c", "\"q\"@x", "a@\xff", "ä+ö@ü.de", " <x@y> "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		again, err := ParseAddress(a.String())
		if err != nil || again != a {
			t.Fatalf("ParseAddress(%q) = %q, which parses as %q, %v", s, a, again, err)
		}
		if b, ok := a.WithoutTag(); ok {
			if strings.Contains(b.Local, "+") || b.Local == "" || b.Domain != a.Domain {
				t.Fatalf("WithoutTag(%q) = %q", a, b)
			}
			if _, err := ParseAddress(b.String()); err != nil {
				t.Fatalf("WithoutTag(%q) = %q does not parse: %v", a, b, err)
			}
		}
	})
}

func FuzzRewrite(f *testing.F) {
	f.Add(submitted)
	f.Add([]byte("From: a@b\nSubject: x\n\tfolded\n\nbody"))
	f.Add([]byte("From: a@b\r\n\r\n"))
	f.Add([]byte("Subject: only header\r\n"))
	f.Add([]byte("From: \"x\r\n y\" <a@b>\r\nSender: s@b\r\nReply-To: r@b\r\n\r\n\xff\x00body"))
	from := &mail.Address{Name: "Zhang \"San\"", Address: "sales@example.com"}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := parseMessage(raw)
		out, err := m.rewrite(senderRewrite{From: from, ReplyTo: from, MessageID: "id@example.com"})
		if err != nil {
			return
		}
		if !bytes.HasSuffix(out, raw[m.bodyStart:]) {
			t.Fatalf("body not kept:\n%q\n->\n%q", raw, out)
		}
		again := parseMessage(out)
		if again.err != nil {
			t.Fatalf("rewritten header does not parse: %v\n%q", again.err, out)
		}
		if !bytes.Equal(out[again.bodyStart:], raw[m.bodyStart:]) {
			t.Fatalf("body moved:\n%q\n->\n%q", raw, out)
		}
		froms := again.addresses("From")
		if again.count("From") != 1 || len(froms) != 1 || froms[0].Address != from.Address || froms[0].Name != from.Name {
			t.Fatalf("From not rewritten: %q", out)
		}
		if again.count("Sender") != 0 {
			t.Fatalf("Sender kept: %q", out)
		}
		// Every other field is still there, as it was.
		fs := m.header.Fields()
		for fs.Next() {
			if k := fs.Key(); k != "From" && k != "Sender" {
				r, _ := fs.Raw()
				r = bytes.TrimRight(r, "\r\n")
				if !bytes.Contains(out, r) && !bytes.Contains(out, bytes.ReplaceAll(r, []byte("\r\n"), []byte("\n"))) {
					t.Fatalf("field %s lost: %q", k, out)
				}
			}
		}
	})
}

// FuzzRoute routes arbitrary messages and recipients through the real
// directory: no panic, every delivery valid, rewriting only on the way out.
func FuzzRoute(f *testing.F) {
	st := newStore(f)
	r := newRouter(f, st, Config{})
	f.Add("auth:u-ls", "lisi@example.com", "c@customer.net", submitted)
	f.Add("smtp", "c@customer.net", "sales@example.com", []byte("To: \"Lisi\" <sales@example.com>\r\nIn-Reply-To: <ls-1@example.com>\r\n\r\n"))
	f.Add("pop3", "", "Team+x@Example.com", []byte("Delivered-To: team@example.com\r\n\r\nx"))
	f.Add("site:branch", "x@y", "zhangsan@example.com", []byte("From: \"Zhangsan\" <zs@evil>\r\n\r\n"))
	f.Fuzz(func(t *testing.T, src, from, rcpt string, raw []byte) {
		switch {
		case src == "pop3", src == "smtp", strings.HasPrefix(src, "auth:"), strings.HasPrefix(src, "site:"):
		default:
			src = "smtp"
		}
		if len(raw) == 0 {
			raw = []byte("\r\n")
		}
		in := inbound(src, from, raw, strings.Split(rcpt, ",")...)
		dec, err := r.Route(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		if in.Validate() != nil {
			if dec.DeadLetter == "" {
				t.Fatal("invalid inbound not dead-lettered")
			}
			return
		}
		for _, d := range dec.Deliveries {
			if err := d.Validate(); err != nil {
				t.Fatalf("invalid delivery: %v", err)
			}
			if !bytes.Equal(d.Message, raw) {
				if d.Destination != events.DestOutbound {
					t.Fatalf("%s: message changed", d.ID)
				}
				m := parseMessage(raw)
				if !bytes.HasSuffix(d.Message, raw[m.bodyStart:]) {
					t.Fatalf("%s: body changed", d.ID)
				}
			}
		}
		for _, rj := range dec.Rejections {
			if rj.Bounce && in.MailFrom == "" {
				t.Fatal("bounce to the null sender")
			}
		}
	})
}
