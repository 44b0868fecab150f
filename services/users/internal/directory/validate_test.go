package directory

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalizeAddress(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	ok := []struct{ in, want string }{
		{"john@example.org", "john@example.org"},
		{"John.Doe@Example.ORG", "john.doe@example.org"},
		{"  john@example.org\t", "john@example.org"},
		{"a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"},
		{"!#$%&'*+-/=?^_`{|}~@example.org", "!#$%&'*+-/=?^_`{|}~@example.org"},
		{"user@bücher.de", "user@xn--bcher-kva.de"},
		{"user@BÜCHER.DE", "user@xn--bcher-kva.de"},
		{"user@xn--bcher-kva.de", "user@xn--bcher-kva.de"},
		{"user@例え.テスト", "user@xn--r8jz45g.xn--zckzah"},
		{"user@straße.de", "user@xn--strae-oqa.de"}, // non-transitional UTS 46
		{`"john"@example.org`, "john@example.org"},  // quotes that are not needed go
		{`"John.Doe"@example.org`, "john.doe@example.org"},
		{`"john doe"@example.org`, `"john doe"@example.org`},
		{`"a@b"@example.org`, `"a@b"@example.org`},
		{`"a\"b"@example.org`, `"a\"b"@example.org`},
		{`"a\\b"@example.org`, `"a\\b"@example.org`},
		{`"\a"@example.org`, "a@example.org"}, // a needless quoted-pair
		{`"a..b"@example.org`, `"a..b"@example.org`},
		{strings.Repeat("x", 64) + "@example.org", strings.Repeat("x", 64) + "@example.org"},
		{"x@" + long63 + "." + long63 + "." + long63 + ".org", "x@" + long63 + "." + long63 + "." + long63 + ".org"},
	}
	for _, c := range ok {
		got, err := NormalizeAddress(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, reason string }{
		{"", "empty"},
		{"   ", "empty"},
		{"john", "missing @domain"},
		{"john@", "missing domain"},
		{"@example.org", "missing local part"},
		{"John Doe <john@example.org>", "angle brackets"},
		{"<john@example.org>", "angle brackets"},
		{"john doe@example.org", "spaces"},
		{"john@exa mple.org", "spaces"},
		{"john\x00@example.org", "control"},
		{"john\r\n@example.org", "control"},
		{"jo\u0085hn@example.org", "control"},
		{"john@[192.0.2.1]", "address literals"},
		{"john@[IPv6:2001:db8::1]", "address literals"},
		{"john@192.0.2.1", "IP address"},
		{"john@localhost", "two labels"},
		{"john@example.org.", "trailing dot"},
		{"john@example..org", "empty label"},
		{"john@-example.org", "hyphen"},
		{"john@exa_mple.org", "domain"},
		{"john@example.123", "all digits"},
		{".john@example.org", "begin or end with a dot"},
		{"john.@example.org", "begin or end with a dot"},
		{"jo..hn@example.org", "two dots"},
		{"jo(hn@example.org", "not allowed"},
		{"jo,hn@example.org", "not allowed"},
		{"jo@hn@example.org", "more than one @"},
		{"jöhn@example.org", "non-ASCII"},
		{`"jöhn"@example.org`, "non-ASCII"},
		{`"john@example.org`, "unterminated"},
		{`"jo"hn"@example.org`, `unescaped "`},
		{`""@example.org`, "empty quoted"},
		{`"john\"@example.org`, "lone backslash"},
		{"\xff@example.org", "UTF-8"},
		{strings.Repeat("x", 65) + "@example.org", "local part longer than 64"},
		{"x@" + strings.Repeat("a", 64) + ".org", "label longer than 63"},
		{strings.Repeat("x", 64) + "@" + long63 + "." + long63 + "." + long63 + ".org", "address longer than 254"},
		{"x@" + strings.Repeat("ab.", 84) + "org", "longer than 253"},
		{"x@xn--zz.org", "domain"},
	}
	for _, c := range bad {
		got, err := NormalizeAddress(c.in)
		if err == nil {
			t.Errorf("NormalizeAddress(%q) = %q, want an error about %q", c.in, got, c.reason)
			continue
		}
		if !strings.Contains(err.Error(), c.reason) {
			t.Errorf("NormalizeAddress(%q) error %q, want it to mention %q", c.in, err, c.reason)
		}
	}
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{
		"Example.ORG":       "example.org",
		" example.org ":     "example.org",
		"münchen.de":        "xn--mnchen-3ya.de",
		"xn--MNCHEN-3ya.de": "xn--mnchen-3ya.de",
		"a-b.example":       "a-b.example",
		"例え。テスト":            "xn--r8jz45g.xn--zckzah", // ideographic full stop maps to a dot
	} {
		if got, err := NormalizeDomain(in); err != nil || got != want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "org", "[127.0.0.1]", "127.0.0.1", "::1", "exa mple.org", "example.org.", "a..b", "-a.org", "a-.org", "a_b.org", "xn--a.org", "ex\x00.org"} {
		if got, err := NormalizeDomain(in); err == nil {
			t.Errorf("NormalizeDomain(%q) = %q, want an error", in, got)
		}
	}
}

func TestNormalizeHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"Mail.Example.org:25": "mail.example.org:25",
		"gw-branch:2525":      "gw-branch:2525",
		"192.0.2.1:25":        "192.0.2.1:25",
		"[2001:DB8::1]:25":    "[2001:db8::1]:25",
		"bücher.de:587":       "xn--bcher-kva.de:587",
	} {
		if got, err := NormalizeHostPort(in); err != nil || got != want {
			t.Errorf("NormalizeHostPort(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"mail.example.org", "mail.example.org:0", "mail.example.org:65536", "mail.example.org:smtp", "mail.example.org:025", ":25", "2001:db8::1:25", "[fe80::1%eth0]:25", "a b:25"} {
		if got, err := NormalizeHostPort(in); err == nil {
			t.Errorf("NormalizeHostPort(%q) = %q, want an error", in, got)
		}
	}
}

func TestValidUsername(t *testing.T) {
	for _, s := range []string{"john", "j", "john.doe", "john_doe", "john-doe", "0day", strings.Repeat("a", 64)} {
		if err := ValidUsername(s); err != nil {
			t.Errorf("ValidUsername(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "John", ".john", "_john", "-john", "jo hn", "jo@hn", "jöhn", strings.Repeat("a", 65)} {
		if ValidUsername(s) == nil {
			t.Errorf("ValidUsername(%q) = nil, want an error", s)
		}
	}
}

func TestValidSlug(t *testing.T) {
	for _, s := range []string{"hq", "branch-1", "0", strings.Repeat("a", 63)} {
		if err := ValidSlug(s); err != nil {
			t.Errorf("ValidSlug(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "HQ", "-hq", "hq-", "h_q", "h.q", "h q", strings.Repeat("a", 64)} {
		if ValidSlug(s) == nil {
			t.Errorf("ValidSlug(%q) = nil, want an error", s)
		}
	}
}

func TestValidationErrorMessage(t *testing.T) {
	var v ValidationError
	if v.Err() != nil {
		t.Fatal("empty ValidationError.Err() != nil")
	}
	v.Add("username", "empty")
	v.Addf("aliases[1]", "duplicate of aliases[%d]", 0)
	err := v.Err()
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Errors) != 2 {
		t.Fatalf("Err() = %#v", err)
	}
	if got, want := err.Error(), "2 invalid fields: username: empty; aliases[1]: duplicate of aliases[0]"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func FuzzNormalizeAddress(f *testing.F) {
	for _, s := range []string{
		"john@example.org", "John.Doe@Example.ORG", `"john doe"@example.org`, `"a\"b"@x.org`,
		"user@bücher.de", "a@b", "@", "", "<a@b.c>", "a@[1.2.3.4]", `"\a"@x.org`, "x@xn--bcher-kva.de",
		"a@例え。テスト", `"a@b"@c.de`, "a@b.c.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := NormalizeAddress(s)
		if err != nil {
			if got != "" {
				t.Errorf("NormalizeAddress(%q) returned %q with error %v", s, got, err)
			}
			return
		}
		if len(got) > MaxAddressLen {
			t.Errorf("NormalizeAddress(%q) = %q: %d octets", s, got, len(got))
		}
		if strings.ToLower(got) != got {
			t.Errorf("NormalizeAddress(%q) = %q: not lower case", s, got)
		}
		for i := 0; i < len(got); i++ {
			if got[i] < 0x20 || got[i] >= utf8.RuneSelf || got[i] == 0x7f {
				t.Fatalf("NormalizeAddress(%q) = %q: byte %#x", s, got, got[i])
			}
		}
		if strings.ContainsAny(got, "<>") {
			t.Errorf("NormalizeAddress(%q) = %q: angle brackets", s, got)
		}
		at := strings.LastIndexByte(got, '@')
		if at < 1 || at > MaxLocalPartLen {
			t.Errorf("NormalizeAddress(%q) = %q: local part length %d", s, got, at)
		}
		if _, err := NormalizeDomain(got[at+1:]); err != nil {
			t.Errorf("NormalizeAddress(%q) = %q: domain rejected: %v", s, got, err)
		}
		again, err := NormalizeAddress(got)
		if err != nil || again != got {
			t.Errorf("not a fixed point: NormalizeAddress(%q) = %q, NormalizeAddress(%q) = %q, %v", s, got, got, again, err)
		}
	})
}
