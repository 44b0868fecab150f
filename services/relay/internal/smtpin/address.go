package smtpin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxAddressLen bounds an envelope address (RFC 5321: 64 + 1 + 255; some
// software writes a little more).
const maxAddressLen = 320

// address is an envelope address, lower-cased for lookups, split at its
// last "@".
type address struct {
	local, domain string
}

func (a address) String() string { return a.local + "@" + a.domain }

// withoutTag returns user@domain for user+tag@domain.
func (a address) withoutTag() (address, bool) {
	i := strings.IndexByte(a.local, '+')
	if i <= 0 {
		return a, false
	}
	return address{a.local[:i], a.domain}, true
}

var errBadAddress = errors.New("malformed address")

// parseAddress checks an envelope address as go-smtp gives it (without
// brackets): a local part and a domain, no whitespace, control characters,
// brackets or invalid UTF-8 (the characters mail.inbound cannot carry).
func parseAddress(s string) (address, error) {
	if s == "" || len(s) > maxAddressLen || !utf8.ValidString(s) {
		return address{}, errBadAddress
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '<' || r == '>' {
			return address{}, errBadAddress
		}
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return address{}, errBadAddress
	}
	domain := strings.TrimSuffix(strings.ToLower(s[at+1:]), ".")
	if domain == "" || strings.HasPrefix(domain, ".") || strings.Contains(domain, "..") {
		return address{}, errBadAddress
	}
	return address{strings.ToLower(s[:at]), domain}, nil
}

// siteOfCert returns the site a client certificate authenticates: the
// certificate must verify against the inter-site CA and name (DNS name,
// else common name) a site of the replica other than this one. "" when it
// does not.
func (s *Server) siteOfCert(ctx context.Context, state tls.ConnectionState) (string, error) {
	leaf := verifyClient(state, s.caPool, s.now())
	if leaf == nil {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeouts.Command)
	defer cancel()
	for _, name := range clientNames(leaf) {
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		if name == "" || len(name) > 253 {
			continue
		}
		site, err := s.dir.Site(ctx, name)
		if err != nil {
			return "", fmt.Errorf("site %q: %w", name, err)
		}
		if site != nil && site.Name != s.deps.Site {
			return site.Name, nil
		}
	}
	return "", nil
}

// received returns buf with the Received header field (RFC 5321 section
// 4.4) of a message appended: the client's HELO name and address, this
// server, the protocol (RFC 3848: ESMTP, with S for TLS and A for AUTH),
// the message id, the recipient when there is only one, and the date.
func (s *session) received(buf []byte, id string, now time.Time) []byte {
	proto := "ESMTP"
	switch {
	case s.tls && s.user != nil:
		proto = "ESMTPSA"
	case s.tls:
		proto = "ESMTPS"
	case s.user != nil:
		proto = "ESMTPA"
	}
	buf = append(buf, "Received: from "...)
	buf = append(buf, sanitizeHelo(s.conn.Hostname())...)
	buf = append(buf, " ("...)
	buf = append(buf, addressLiteral(s.ip)...)
	buf = append(buf, ")\r\n\tby "...)
	buf = append(buf, s.srv.hostname...)
	buf = append(buf, " (Postern) with "...)
	buf = append(buf, proto...)
	buf = append(buf, " id "...)
	buf = append(buf, id...)
	if len(s.rcpts) == 1 {
		if a, err := parseAddress(s.rcpts[0]); err == nil {
			buf = append(buf, "\r\n\tfor <"...)
			buf = append(buf, a.String()...)
			buf = append(buf, '>')
		}
	}
	buf = append(buf, ";\r\n\t"...)
	buf = append(buf, now.Format(time.RFC1123Z)...)
	return append(buf, "\r\n"...)
}

// addressLiteral writes ip as an RFC 5321 address literal.
func addressLiteral(ip netip.Addr) string {
	switch {
	case !ip.IsValid():
		return "[unknown]"
	case ip.Is4():
		return "[" + ip.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// sanitizeHelo keeps the client's HELO name printable and short for the
// Received field and the record header: characters outside letters,
// digits and ".-_:[]" become "?".
func sanitizeHelo(h string) string {
	if h == "" {
		return "unknown"
	}
	if len(h) > 255 {
		h = h[:255]
	}
	var b strings.Builder
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0 {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}
