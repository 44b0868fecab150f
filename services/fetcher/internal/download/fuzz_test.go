package download

import (
	"strings"
	"testing"

	"github.com/postern/postern/api/events"
)

// FuzzHeaderInfo feeds arbitrary headers to the envelope parsing: it must
// never panic, and every address it returns must be one a mail.inbound
// record accepts.
func FuzzHeaderInfo(f *testing.F) {
	f.Add("Delivered-To: alice@example.com\r\nReturn-Path: <a@b.c>\r\nMessage-ID: <x@y>\r\n\r\nbody")
	f.Add("Received: from a (b (c)) by d for <bob@example.com>; Tue\r\nTo: \"x, y\" <c@example.com>, d@example.com\r\n\r\n")
	f.Add("Envelope-To: a@example.com,,<b@example.com>\r\n \r\n\tcontinued\r\n\r\n")
	f.Add("To: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\nBcc:\r\n\r\n")
	f.Add(" leading space\r\n\r\n")
	f.Fuzz(func(t *testing.T, msg string) {
		h := readHeaderInfo([]byte(msg))
		check := func(what, a string) {
			if a == "" {
				return
			}
			if !strings.Contains(a, "@") || a != strings.ToLower(a) {
				t.Fatalf("%s %q is not a lower-case address", what, a)
			}
			in := events.Inbound{ID: "x", Recipients: []string{a}, MailFrom: a, Message: []byte("x"),
				Source: events.Source{Kind: events.SourcePOP3, POP3Account: "a", POP3UIDL: "u"}}
			if err := in.Validate(); err != nil {
				t.Fatalf("%s %q: %v", what, a, err)
			}
		}
		check("mail from", h.mailFrom)
		all := func(string) bool { return true }
		for _, a := range envelopeRecipients(h.h, []string{"Delivered-To", "X-Original-To", "Envelope-To", "Received"}, all) {
			check("envelope recipient", a)
		}
		for _, a := range headerRecipients(h.h, all) {
			check("header recipient", a)
		}
		for _, v := range h.h.Values("Received") {
			for _, a := range receivedFor(v) {
				check("received for", a)
			}
		}
	})
}
