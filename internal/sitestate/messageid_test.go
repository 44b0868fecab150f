package sitestate_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/postern/postern/internal/sitestate"
)

func TestNormalizeMessageID(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" means ErrInvalid
	}{
		{"<abc@example.com>", "abc@example.com"},
		{"abc@example.com", "abc@example.com"},
		{"<ABC.Def@Example.COM>", "ABC.Def@example.com"},
		{"  <abc@EXAMPLE.com>\r\n", "abc@example.com"},
		{"\r\n\t<abc@example.com>", "abc@example.com"},
		{"< abc@example.com >", "abc@example.com"},
		{"<\"quoted@local\"@Host>", "\"quoted@local\"@host"}, // the last @ starts the domain
		{"<abc@[192.0.2.1]>", "abc@[192.0.2.1]"},
		{"<no-at-sign>", "no-at-sign"},
		{"<Ünïcode@Exämple.ORG>", "Ünïcode@exämple.org"}, // only ASCII is folded
		{"<a@b@C>", "a@b@c"},
		{"", ""},
		{"   ", ""},
		{"<>", ""},
		{"< >", ""},
		{"<a@b", ""},
		{"a@b>", ""},
		{"<<a@b>>", ""},
		{"<a@b> <c@d>", ""},
		{"a b@c", ""},
		{"a\tb@c", ""},
		{"a@b\x00", ""},
		{"a@b\x7f", ""},
		{"a\u00a0b@c", ""},
		{"a\u2028b@c", ""},
		{"\xff@x", ""},
		{"<" + strings.Repeat("a", 991) + "@example>", ""},
	} {
		got, err := sitestate.NormalizeMessageID(tc.in)
		if tc.want == "" {
			if !errors.Is(err, sitestate.ErrInvalid) {
				t.Errorf("NormalizeMessageID(%q) = %q, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeMessageID(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzNormalizeMessageID(f *testing.F) {
	for _, s := range []string{
		"<abc@example.com>", "ABC@EXAMPLE.COM", " <a@b> ", "<a@b> <c@d>", "<>", "<",
		"\r\n <x.y@[1.2.3.4]>", "\"q@x\"@Y", "ü@Ä", "\xff", "a\u2028b", "<<a@b>>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := sitestate.NormalizeMessageID(in)
		if err != nil {
			if !errors.Is(err, sitestate.ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			if got != "" {
				t.Fatalf("error with a result %q", got)
			}
			return
		}
		if got == "" || len(got) > 998 || !utf8.ValidString(got) {
			t.Fatalf("NormalizeMessageID(%q) = %q", in, got)
		}
		if strings.ContainsAny(got, "<>") || strings.ContainsFunc(got, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r)
		}) {
			t.Fatalf("NormalizeMessageID(%q) = %q: brackets, space or control left", in, got)
		}
		// Idempotent, and bracketing or surrounding space does not matter.
		for _, v := range []string{got, "<" + got + ">", " <" + got + ">\r\n"} {
			again, err := sitestate.NormalizeMessageID(v)
			if err != nil || again != got {
				t.Fatalf("NormalizeMessageID(%q) = %q, %v; want %q", v, again, err, got)
			}
		}
		// Only the domain's case is folded.
		if at := strings.LastIndexByte(got, '@'); at >= 0 {
			if got[at+1:] != strings.Map(func(r rune) rune {
				if 'A' <= r && r <= 'Z' {
					return r + 'a' - 'A'
				}
				return r
			}, got[at+1:]) {
				t.Fatalf("domain of %q not folded", got)
			}
			if !strings.Contains(in, got[:at+1]) {
				t.Fatalf("local part of %q changed (input %q)", got, in)
			}
		} else if !strings.Contains(in, got) {
			t.Fatalf("%q changed without a domain to fold (input %q)", got, in)
		}
	})
}
