package routing

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxAddressLen bounds an envelope address (RFC 5321 allows 64 + 1 + 255;
// some software writes a little more).
const maxAddressLen = 320

// Address is an envelope address split at its last "@", normalised for
// lookups: the whole address is lower-cased (local parts are compared
// case-insensitively in the organisation, as the issue asks) and a trailing
// dot of the domain is dropped.
type Address struct {
	Local  string
	Domain string
}

func (a Address) String() string { return a.Local + "@" + a.Domain }

// WithoutTag returns user@domain for user+tag@domain (the tag is everything
// from the first "+"), and false when the local part has no tag or nothing
// before it.
func (a Address) WithoutTag() (Address, bool) {
	i := strings.IndexByte(a.Local, '+')
	if i <= 0 {
		return a, false
	}
	return Address{Local: a.Local[:i], Domain: a.Domain}, true
}

var errBadAddress = errors.New("malformed address")

// ParseAddress parses an envelope address ("user@domain", optionally in angle
// brackets). It rejects empty local parts or domains, empty domain labels,
// whitespace, control characters, brackets and invalid UTF-8. The local part
// is not otherwise checked: the directory decides what exists.
func ParseAddress(s string) (Address, error) {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>' {
		s = s[1 : len(s)-1]
	}
	if s == "" || len(s) > maxAddressLen || !utf8.ValidString(s) {
		return Address{}, errBadAddress
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '<' || r == '>' {
			return Address{}, errBadAddress
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return Address{}, errBadAddress
	}
	domain := strings.TrimSuffix(strings.ToLower(s[at+1:]), ".")
	if domain == "" || domain[0] == '.' || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
		return Address{}, errBadAddress
	}
	return Address{Local: strings.ToLower(s[:at]), Domain: domain}, nil
}
