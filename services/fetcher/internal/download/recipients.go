package download

import (
	"bufio"
	"bytes"
	"net/mail"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/postern/postern/internal/sitestate"
)

// headerInfo is what the downloader reads from a downloaded message's
// header. The message itself is published byte for byte; nothing here
// changes it.
type headerInfo struct {
	h         textproto.Header
	messageID string // normalised (sitestate.NormalizeMessageID); "" without a usable one
	mailFrom  string // the envelope sender to publish; "" is the null sender
}

// maxHeaderScan bounds how much of a message is read as its header.
const maxHeaderScan = 1 << 20

// readHeaderInfo parses the header of msg. A malformed header is read up to
// the first bad line: what comes before it still counts (go-message's
// reader returns the fields it parsed), the message is never refused for it.
func readHeaderInfo(msg []byte) headerInfo {
	if len(msg) > maxHeaderScan {
		msg = msg[:maxHeaderScan]
	}
	h, _ := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	info := headerInfo{h: h}
	if id := strings.TrimSpace(h.Get("Message-Id")); id != "" {
		if n, err := sitestate.NormalizeMessageID(id); err == nil {
			info.messageID = n
		}
	}
	info.mailFrom = envelopeSender(h)
	return info
}

// envelopeSender is the envelope sender of a downloaded message: the
// Return-Path the ISP's final delivery wrote ("<>" is the null sender),
// else the Sender, else the first From address; "" when none is usable.
func envelopeSender(h textproto.Header) string {
	if rp := h.Values("Return-Path"); len(rp) > 0 {
		v := strings.TrimSpace(rp[0])
		if v == "<>" || strings.ReplaceAll(v, " ", "") == "<>" {
			return ""
		}
		if a, ok := parseAddress(v); ok {
			return a
		}
	}
	for _, k := range []string{"Sender", "From"} {
		for _, a := range addressList(h.Get(k)) {
			return a
		}
	}
	return ""
}

// envelopeRecipients returns the recipients found in the first of headers
// (names, in order) that names at least one address of the organisation:
// the first field of that name, top down, holding such an address gives
// all of that field's organisation addresses. "Received" fields are read
// for their "for <addr>" clause; others as address lists. Addresses are
// lower-cased and unique, in order.
func envelopeRecipients(h textproto.Header, headers []string, inOrg func(string) bool) []string {
	for _, name := range headers {
		for _, v := range h.Values(name) {
			var addrs []string
			if strings.EqualFold(name, "Received") {
				addrs = receivedFor(v)
			} else {
				addrs = addressList(v)
			}
			if got := keepOrg(addrs, inOrg); len(got) > 0 {
				return got
			}
		}
	}
	return nil
}

// headerRecipients returns the organisation's addresses among To, Cc and
// Bcc (the fallback an account may enable).
func headerRecipients(h textproto.Header, inOrg func(string) bool) []string {
	var all []string
	for _, k := range []string{"To", "Cc", "Bcc"} {
		for _, v := range h.Values(k) {
			all = append(all, addressList(v)...)
		}
	}
	return keepOrg(all, inOrg)
}

func keepOrg(addrs []string, inOrg func(string) bool) []string {
	var out []string
	for _, a := range addrs {
		if inOrg(domainOf(a)) && !contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// domainOf returns the lower-cased domain of addr, without a trailing dot.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(addr[i+1:]), ".")
}

// addressList parses a header value holding one or more addresses
// ("a@x", "<a@x>", "Name <a@x>, b@y"). What net/mail cannot parse as a
// list is split at commas and each part tried alone, so that one bad
// address does not hide the others.
func addressList(v string) []string {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil
	}
	var out []string
	if list, err := mail.ParseAddressList(v); err == nil {
		for _, a := range list {
			if s, ok := cleanAddress(a.Address); ok {
				out = append(out, s)
			}
		}
		return out
	}
	for _, part := range strings.Split(v, ",") {
		if s, ok := parseAddress(part); ok {
			out = append(out, s)
		}
	}
	return out
}

// parseAddress parses one address, with or without angle brackets or a
// display name.
func parseAddress(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", false
	}
	if a, err := mail.ParseAddress(v); err == nil {
		return cleanAddress(a.Address)
	}
	if i := strings.LastIndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return cleanAddress(v[i+1 : i+j])
		}
	}
	return cleanAddress(v)
}

// cleanAddress lower-cases addr and checks that it can travel as an
// envelope address: local@domain with no space, bracket, quote or control
// character.
func cleanAddress(addr string) (string, bool) {
	addr = strings.TrimSpace(addr)
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || len(addr) > 320 {
		return "", false
	}
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '"' || c == '(' || c == ')' || c == ',' || c == ';' {
			return "", false
		}
	}
	if strings.Count(addr, "@") != 1 {
		// An @ in the local part needs quoting, which envelope
		// addresses here do not carry.
		return "", false
	}
	return strings.ToLower(addr), true
}

// receivedFor returns the addresses of the "for" clauses of a Received
// field (RFC 5321 section 4.4: "for <addr>" before the ";" and the date).
// Comments are skipped.
func receivedFor(v string) []string {
	var out []string
	s := stripComments(v)
	if i := strings.LastIndexByte(s, ';'); i >= 0 {
		s = s[:i]
	}
	fields := strings.Fields(s)
	for i := 0; i+1 < len(fields); i++ {
		if !strings.EqualFold(fields[i], "for") {
			continue
		}
		tok := fields[i+1]
		if strings.HasPrefix(tok, "<") {
			// "<addr>" possibly followed by junk, or "< addr >".
			rest := strings.Join(fields[i+1:], " ")
			end := strings.IndexByte(rest, '>')
			if end < 0 {
				continue
			}
			tok = rest[1:end]
		}
		tok = strings.TrimRight(tok, ",;")
		if a, ok := cleanAddress(tok); ok {
			out = append(out, a)
		}
	}
	return out
}

// stripComments removes RFC 5322 comments (nested parentheses, with
// backslash escapes) from s.
func stripComments(s string) string {
	if !strings.Contains(s, "(") {
		return s
	}
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && depth > 0:
			i++
		case c == '(':
			depth++
			if depth == 1 {
				b.WriteByte(' ')
			}
		case c == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}
