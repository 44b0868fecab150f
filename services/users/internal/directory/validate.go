package directory

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// FieldError is one problem with one field. Field is the JSON name of the
// field as the API spells it, with an index or a sub-field where needed:
// "aliases[2]", "members[0].id", "keep.days".
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Reason }

// ValidationError lists every problem found in one object, in the order the
// fields were checked. The Normalize methods collect all of them rather
// than stopping at the first. Reasons never contain a secret.
type ValidationError struct {
	Errors []FieldError `json:"errors"`
}

func (e *ValidationError) Error() string {
	switch len(e.Errors) {
	case 0:
		return "invalid"
	case 1:
		return "invalid " + e.Errors[0].Error()
	}
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.Error()
	}
	return fmt.Sprintf("%d invalid fields: %s", len(e.Errors), strings.Join(parts, "; "))
}

// Add records a problem with field.
func (e *ValidationError) Add(field, reason string) {
	e.Errors = append(e.Errors, FieldError{Field: field, Reason: reason})
}

// Addf records a problem with field, formatting the reason.
func (e *ValidationError) Addf(field, format string, args ...any) {
	e.Add(field, fmt.Sprintf(format, args...))
}

// Err returns e when it holds at least one problem and nil otherwise, so
// that `return v.Err()` never returns a typed nil.
func (e *ValidationError) Err() error {
	if e == nil || len(e.Errors) == 0 {
		return nil
	}
	return e
}

// addErr records err (a reason from NormalizeAddress and friends) for field.
func (e *ValidationError) addErr(field string, err error) {
	if err != nil {
		e.Add(field, err.Error())
	}
}

// Limits of the address syntax (RFC 5321 section 4.5.3.1).
const (
	MaxLocalPartLen = 64  // octets of the local part
	MaxDomainLen    = 253 // octets of a domain in A-label form (DNS limit without the root dot)
	MaxAddressLen   = 254 // octets of local@domain (a 256-octet path less the angle brackets)
	maxLabelLen     = 63
)

// NormalizeAddress checks that s is a mailbox in the syntax of RFC 5321
// (section 4.1.2) and returns its canonical form, the one the directory
// stores and compares:
//
//   - Surrounding white space is trimmed; any other white space, control
//     characters, angle brackets and display names ("John <j@x.org>") are
//     rejected: the directory wants the bare address.
//   - The local part is a dot-atom or a quoted string. A quoted local part
//     that is also a valid dot-atom loses its quotes (RFC 5321 says they
//     denote the same mailbox); otherwise it keeps them with the minimum of
//     backslash escapes. Internationalised local parts (RFC 6531) are
//     rejected.
//   - The domain is normalised by NormalizeDomain: IDNA A-labels, lower
//     case, at least two labels, no address literals ("[192.0.2.1]") since
//     mail for an IP address cannot be routed to a site.
//   - The whole address is lower-cased, local part included. RFC 5321 lets
//     a server treat local parts as case-sensitive, but mail administrators
//     expect John@ and john@ to be the same mailbox, and every mail system
//     in the seeds behaves that way; lower-casing once here means every
//     later comparison is plain string equality.
//   - Limits: 64 octets of local part, 254 octets of address.
//
// The result of a successful call is a fixed point: NormalizeAddress of it
// returns it unchanged. Errors are reasons for a FieldError, without the
// input.
func NormalizeAddress(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty address")
	}
	if !utf8.ValidString(s) {
		return "", errors.New("not valid UTF-8")
	}
	if strings.ContainsAny(s, "<>") {
		return "", errors.New("angle brackets or a display name are not allowed: give the bare address, like name@example.org")
	}
	for _, r := range s {
		if isControl(r) {
			return "", errors.New("control characters are not allowed")
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return "", errors.New("missing @domain")
	}
	local, domain := s[:at], s[at+1:]
	if local == "" {
		return "", errors.New("missing local part before @")
	}
	if domain == "" {
		return "", errors.New("missing domain after @")
	}
	local, err := normalizeLocalPart(local)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(domain, "[") {
		return "", errors.New("address literals (an IP address in brackets) are not allowed: use a domain")
	}
	domain, err = NormalizeDomain(domain)
	if err != nil {
		return "", fmt.Errorf("domain: %w", err)
	}
	addr := local + "@" + domain
	if len(addr) > MaxAddressLen {
		return "", fmt.Errorf("address longer than %d octets", MaxAddressLen)
	}
	return addr, nil
}

// normalizeLocalPart returns the canonical, lower-cased form of a local
// part: a dot-atom, or a quoted string when it cannot be one.
func normalizeLocalPart(local string) (string, error) {
	if strings.HasPrefix(local, `"`) {
		content, err := unquoteLocalPart(local)
		if err != nil {
			return "", err
		}
		content = strings.ToLower(content)
		if isDotAtom(content) {
			local = content
		} else {
			local = quoteLocalPart(content)
		}
	} else {
		if strings.ContainsFunc(local, unicode.IsSpace) {
			return "", errors.New("spaces are not allowed in an address")
		}
		if err := checkDotAtom(local); err != nil {
			return "", err
		}
		local = strings.ToLower(local)
	}
	if len(local) > MaxLocalPartLen {
		return "", fmt.Errorf("local part longer than %d octets", MaxLocalPartLen)
	}
	return local, nil
}

// unquoteLocalPart parses an RFC 5321 Quoted-string (DQUOTE *QcontentSMTP
// DQUOTE) that must span all of s, and returns its content.
func unquoteLocalPart(s string) (string, error) {
	if len(s) < 2 || s[len(s)-1] != '"' {
		return "", errors.New("unterminated quoted local part")
	}
	var b strings.Builder
	inner := s[1 : len(s)-1]
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case c == '\\':
			i++
			if i >= len(inner) {
				return "", errors.New("quoted local part ends in a lone backslash")
			}
			if inner[i] < 32 || inner[i] > 126 {
				return "", errors.New("invalid escaped character in quoted local part")
			}
			b.WriteByte(inner[i])
		case c == '"':
			return "", errors.New(`unescaped " inside quoted local part`)
		case c >= 32 && c <= 126:
			b.WriteByte(c)
		default:
			return "", errors.New("non-ASCII characters are not allowed in the local part")
		}
	}
	if b.Len() == 0 {
		return "", errors.New("empty quoted local part")
	}
	return b.String(), nil
}

// quoteLocalPart writes content as a Quoted-string, escaping only " and \.
func quoteLocalPart(content string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(content); i++ {
		if c := content[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(content[i])
	}
	b.WriteByte('"')
	return b.String()
}

func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func isDotAtom(s string) bool { return checkDotAtom(s) == nil }

func checkDotAtom(s string) error {
	if s == "" {
		return errors.New("empty local part")
	}
	if s[0] == '.' || s[len(s)-1] == '.' {
		return errors.New("the local part may not begin or end with a dot")
	}
	if strings.Contains(s, "..") {
		return errors.New("the local part may not contain two dots in a row")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' || isAtext(c) {
			continue
		}
		if c >= utf8.RuneSelf {
			return errors.New("non-ASCII characters are not allowed in the local part")
		}
		if c == '@' {
			return errors.New("more than one @ (quote the local part if it really contains one)")
		}
		return fmt.Errorf("character %q is not allowed in an unquoted local part", c)
	}
	return nil
}

// NormalizeDomain checks a mail domain and returns it in the form the
// directory stores: IDNA A-labels (UTS 46 lookup mapping, so "Bücher.DE"
// becomes "xn--bcher-kva.de"), lower case, without surrounding white space.
// It rejects address literals and IP addresses, a trailing dot, labels
// that are empty, longer than 63 octets or not letters, digits and inner
// hyphens, names longer than 253 octets, single-label names ("localhost",
// a typo like "examplecom") and all-numeric top-level labels.
func NormalizeDomain(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty domain")
	}
	if strings.HasPrefix(s, "[") {
		return "", errors.New("address literals are not allowed: use a domain")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return "", errors.New("an IP address is not a mail domain")
	}
	a, err := normalizeHostname(s)
	if err != nil {
		return "", err
	}
	labels := strings.Split(a, ".")
	if len(labels) < 2 {
		return "", errors.New("a mail domain needs at least two labels, like example.org")
	}
	if isAllDigits(labels[len(labels)-1]) {
		return "", errors.New("the last label may not be all digits")
	}
	return a, nil
}

// normalizeHostname converts a host name to lower-case A-labels and checks
// its DNS syntax (single labels allowed).
func normalizeHostname(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", errors.New("not valid UTF-8")
	}
	if strings.HasSuffix(s, ".") {
		return "", errors.New("trailing dot is not allowed")
	}
	for _, r := range s {
		if isControl(r) || unicode.IsSpace(r) {
			return "", errors.New("spaces and control characters are not allowed")
		}
	}
	if isASCII(s) {
		// Precise reasons for plain names before IDNA's generic one.
		if err := checkLDHLabels(strings.ToLower(s)); err != nil {
			return "", err
		}
	}
	a, err := idna.Lookup.ToASCII(s)
	if err != nil {
		return "", errors.New("not a valid (internationalised) domain name")
	}
	a = strings.ToLower(a)
	if len(a) > MaxDomainLen {
		return "", fmt.Errorf("longer than %d octets", MaxDomainLen)
	}
	if err := checkLDHLabels(a); err != nil {
		return "", err
	}
	// The A-label form must be stable (it is what we store and compare).
	if again, err := idna.Lookup.ToASCII(a); err != nil || again != a {
		return "", errors.New("not a valid (internationalised) domain name")
	}
	return a, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func checkLDHLabels(name string) error {
	if len(name) > MaxDomainLen {
		return fmt.Errorf("longer than %d octets", MaxDomainLen)
	}
	for _, l := range strings.Split(name, ".") {
		if err := checkLDHLabel(l); err != nil {
			return err
		}
	}
	return nil
}

func checkLDHLabel(l string) error {
	if l == "" {
		return errors.New("empty label (two dots in a row?)")
	}
	if len(l) > maxLabelLen {
		return fmt.Errorf("label longer than %d octets", maxLabelLen)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return errors.New("a label may not begin or end with a hyphen")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("character %q is not allowed in a domain", c)
		}
	}
	return nil
}

// NormalizeHostPort checks a "host:port" endpoint (a site's SMTP endpoint)
// and returns it with the host lower-cased in A-label form. The host may be
// a DNS name (single labels allowed: LAN names), an IPv4 address or an
// IPv6 address in brackets; the port is 1..65535 and required.
func NormalizeHostPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(strings.TrimSpace(s))
	if err != nil {
		return "", errors.New("want host:port, like mail.example.org:25 or [2001:db8::1]:25")
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 || port != strconv.Itoa(p) {
		return "", errors.New("port must be a number from 1 to 65535")
	}
	h, err := NormalizeHost(host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(h, port), nil
}

// NormalizeHost checks a server host name or IP address (a POP3 server,
// the host of an SMTP endpoint) and returns it lower-cased in A-label
// form, IP addresses in their canonical text. Single-label names are
// allowed (LAN servers).
func NormalizeHost(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty host")
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" {
			return "", errors.New("IPv6 zones are not allowed")
		}
		return ip.String(), nil
	}
	return normalizeHostname(s)
}

// ValidUsername reports why s is not a valid username, or nil: 1 to 64
// characters, lower-case ASCII letters, digits, '.', '_' and '-',
// beginning with a letter or a digit. User.Normalize lower-cases and
// trims a username before checking it.
func ValidUsername(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 64 {
		return errors.New("longer than 64 characters")
	}
	if !isLowerAlnum(s[0]) {
		return errors.New("must begin with a lower-case letter or a digit")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isLowerAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("character %q is not allowed: use lower-case letters, digits, '.', '_' and '-'", c)
		}
	}
	return nil
}

// ValidSlug reports why s is not a valid name for a site, group, template
// or POP3 account, or nil: 1 to 63 characters, lower-case ASCII letters,
// digits and '-', beginning and ending with a letter or a digit (so a site
// name is also a DNS label).
func ValidSlug(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 63 {
		return errors.New("longer than 63 characters")
	}
	if !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return errors.New("must begin and end with a lower-case letter or a digit")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isLowerAlnum(c) && c != '-' {
			return fmt.Errorf("character %q is not allowed: use lower-case letters, digits and '-'", c)
		}
	}
	return nil
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func isAllDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// isControl reports C0 and C1 control characters and DEL.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) }

// checkText checks free text: valid UTF-8, at most max characters, no
// control characters (line breaks and tabs only when multiline).
func checkText(v *ValidationError, field, s string, max int, multiline bool) {
	if !utf8.ValidString(s) {
		v.Add(field, "not valid UTF-8")
		return
	}
	if n := utf8.RuneCountInString(s); n > max {
		v.Addf(field, "longer than %d characters", max)
	}
	for _, r := range s {
		if multiline && (r == '\n' || r == '\t' || r == '\r') {
			continue
		}
		if isControl(r) {
			if multiline {
				v.Add(field, "control characters other than line breaks and tabs are not allowed")
			} else {
				v.Add(field, "control characters (line breaks included) are not allowed")
			}
			return
		}
	}
}

// checkID checks a reference to another object by ID: non-empty, at most
// 128 printable ASCII characters without spaces.
func checkID(v *ValidationError, field, s string) {
	if s == "" {
		v.Add(field, "required")
		return
	}
	if len(s) > 128 {
		v.Add(field, "longer than 128 characters")
		return
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			v.Add(field, "not a valid ID")
			return
		}
	}
}
