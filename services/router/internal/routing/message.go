package routing

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/postern/postern/internal/sitestate"
)

// maxReferencedIDs bounds the In-Reply-To/References IDs looked up in the
// Message-ID index per shared-mailbox recipient.
const maxReferencedIDs = 32

// message is an inbound message with its header block parsed by
// go-message/textproto. The body (everything after the blank line that ends
// the header) is never parsed.
type message struct {
	raw       []byte
	header    textproto.Header // what could be read; partial when err != nil
	bodyStart int              // offset of the first body byte in raw
	err       error            // the header block is malformed
}

func parseMessage(raw []byte) *message {
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	h, err := textproto.ReadHeader(br)
	consumed := len(raw) - rd.Len() - br.Buffered()
	if err != nil {
		err = fmt.Errorf("message header: %w", err)
	}
	return &message{raw: raw, header: h, bodyStart: consumed, err: err}
}

// count returns how many fields named key the header has.
func (m *message) count(key string) int {
	return m.header.FieldsByKey(key).Len()
}

// addresses returns the addresses of an address-list field; nil when it is
// absent or cannot be parsed.
func (m *message) addresses(key string) []*mail.Address {
	var out []*mail.Address
	for _, v := range m.header.Values(key) {
		l, err := mail.ParseAddressList(v)
		if err != nil {
			continue
		}
		out = append(out, l...)
	}
	return out
}

// messageID returns the message's own Message-ID, normalised as the index
// keys it, or "" when it has none that can be used.
func (m *message) messageID() string {
	ids := msgIDs(m.header.Get("Message-Id"))
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}

// referencedIDs returns the Message-IDs a reply names, normalised: those of
// In-Reply-To first, then References from the newest (last) to the oldest,
// each once, at most maxReferencedIDs.
func (m *message) referencedIDs() []string {
	var out []string
	seen := map[string]bool{}
	add := func(ids []string) {
		for _, id := range ids {
			if len(out) < maxReferencedIDs && !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	for _, v := range m.header.Values("In-Reply-To") {
		add(msgIDs(v))
	}
	for _, v := range m.header.Values("References") {
		ids := msgIDs(v)
		for i, j := 0, len(ids)-1; i < j; i, j = i+1, j-1 {
			ids[i], ids[j] = ids[j], ids[i]
		}
		add(ids)
	}
	return out
}

// msgIDs parses a msg-id list with go-message; when that fails (clients
// write odd things), it falls back to every "<...>" in the value. The IDs are
// normalised with sitestate.NormalizeMessageID; those it refuses are dropped.
func msgIDs(v string) []string {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	h := mail.Header{}
	h.Set("X-Ids", v)
	ids, err := h.MsgIDList("X-Ids")
	if err != nil {
		ids = nil
		for rest := v; ; {
			i := strings.IndexByte(rest, '<')
			if i < 0 {
				break
			}
			j := strings.IndexByte(rest[i+1:], '>')
			if j < 0 {
				break
			}
			ids = append(ids, rest[i+1:i+1+j])
			rest = rest[i+1+j+1:]
		}
		if len(ids) == 0 {
			ids = []string{v} // a bare ID without brackets
		}
	}
	var out []string
	for _, id := range ids {
		if n, err := sitestate.NormalizeMessageID(id); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// senderRewrite is what case 3 changes in the header of outbound mail.
type senderRewrite struct {
	From      *mail.Address // replaces every From field (at the first one's place)
	ReplyTo   *mail.Address // added after From when the message has no Reply-To
	MessageID string        // added at the end of the header when not empty (without brackets)
}

var errNoHeader = errors.New("message has no header block")

// rewrite returns the message with From replaced, Sender removed, Reply-To
// and Message-ID added as rw says. Every other header field is copied from
// the raw bytes as it was read (folding, 8-bit bytes and order kept), and the
// body is copied unchanged. New fields use the header's line ending (CRLF,
// or LF for a message whose header uses bare LF).
func (m *message) rewrite(rw senderRewrite) ([]byte, error) {
	if m.err != nil {
		return nil, m.err
	}
	head := m.raw[:m.bodyStart]
	if m.header.Len() == 0 {
		return nil, errNoHeader
	}
	eol := "\r\n"
	if i := bytes.IndexByte(head, '\n'); i >= 0 && (i == 0 || head[i-1] != '\r') {
		eol = "\n"
	}
	field := func(k string, a *mail.Address) string { return k + ": " + a.String() + eol }

	var b bytes.Buffer
	b.Grow(len(m.raw) + 256)
	wroteFrom := false
	writeFrom := func() {
		b.WriteString(field("From", rw.From))
		if rw.ReplyTo != nil && !m.header.Has("Reply-To") {
			b.WriteString(field("Reply-To", rw.ReplyTo))
		}
		wroteFrom = true
	}
	fs := m.header.Fields()
	for fs.Next() {
		switch fs.Key() {
		case "From":
			if !wroteFrom {
				writeFrom()
			}
			continue
		case "Sender":
			continue
		}
		raw, err := fs.Raw()
		if err != nil {
			return nil, fmt.Errorf("header field %s: %w", fs.Key(), err)
		}
		if eol == "\n" {
			raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
		}
		b.Write(raw)
	}
	if !wroteFrom {
		writeFrom()
	}
	if rw.MessageID != "" {
		b.WriteString("Message-ID: <" + rw.MessageID + ">" + eol)
	}
	// The blank line that ended the header, as it was (absent when the
	// message is only a header).
	if n := len(head); n > 0 && head[n-1] == '\n' {
		start := bytes.LastIndexByte(head[:n-1], '\n') + 1
		if sep := head[start:]; len(bytes.TrimRight(sep, "\r\n")) == 0 {
			b.Write(sep)
		}
	}
	b.Write(m.raw[m.bodyStart:])
	return b.Bytes(), nil
}
