package events

import (
	"fmt"
	"time"
)

// Inbound record headers (mail.inbound, version 1).
const (
	HeaderID          = "postern-id"           // id given at the edge, one per message (the same when a source sends it again); the source reference every later record carries
	HeaderSite        = "postern-site"         // the site that accepted the message
	HeaderMailFrom    = "postern-mail-from"    // envelope sender; empty value for the null sender <>
	HeaderRecipient   = "postern-rcpt"         // envelope recipient, one header per recipient, in order
	HeaderSource      = "postern-source"       // SourcePOP3 or SourceSMTP
	HeaderPOP3Account = "postern-pop3-account" // POP3 account id (source pop3)
	HeaderPOP3UIDL    = "postern-pop3-uidl"    // the message's UIDL on that account (source pop3)
	HeaderSMTPSession = "postern-smtp-session" // SMTP session id (source smtp)
	HeaderSMTPRemote  = "postern-smtp-remote"  // client address ip:port (source smtp)
	HeaderSMTPHelo    = "postern-smtp-helo"    // HELO/EHLO name (source smtp)
	HeaderAuthUser    = "postern-auth-user"    // authenticated user id, if any (source smtp)
	HeaderReceivedAt  = "postern-received-at"  // when the edge accepted it, RFC 3339
)

// Version of the mail.inbound record this package writes and reads.
const InboundVersion = 1

// Where an inbound message came from.
const (
	SourcePOP3 = "pop3" // downloaded from an ISP POP3 mailbox by the fetcher
	SourceSMTP = "smtp" // received by the relay over SMTP (submission, inbound or another site)
	SourceDSN  = "dsn"  // a delivery status notification (bounce) Postern wrote itself, with the null sender
)

// Source identifies where a message entered Postern, so that outcomes can be
// traced back to it (the fetcher deletes a POP3 message once every recipient
// is delivered).
type Source struct {
	Kind        string // SourcePOP3 or SourceSMTP
	POP3Account string // POP3 account id (pop3)
	POP3UIDL    string // UIDL of the message on that account (pop3)
	SMTPSession string // SMTP session id (smtp)
	SMTPRemote  string // remote address (smtp)
	SMTPHelo    string // HELO/EHLO name (smtp)
	AuthUser    string // authenticated user id (smtp submission)
}

// Inbound is a message entering a site, on mail.inbound.
type Inbound struct {
	// ID is given at the edge, one per message: the same when its source
	// gives the message again — a POP3 message downloaded again, a message
	// an SMTP client sends again after a lost 250 (same sender, envelope
	// and bytes; see the relay's smtpin) — so that the idempotency keys
	// derived from it drop the copy. Two records may carry one ID.
	ID         string
	Site       string    // site that accepted it
	MailFrom   string    // envelope sender; "" is the null sender
	Recipients []string  // envelope recipients, at least one
	Source     Source    // where it came from
	ReceivedAt time.Time // when the edge accepted it
	Message    []byte    // the raw RFC 5322 message, exactly as received
}

// Validate reports the first missing or impossible field.
func (m Inbound) Validate() error {
	switch {
	case m.ID == "":
		return malformed("mail.inbound: id is empty")
	case len(m.Recipients) == 0:
		return malformed("mail.inbound %s: no recipients", m.ID)
	case len(m.Message) == 0:
		return malformed("mail.inbound %s: empty message", m.ID)
	}
	if err := validAddress(m.MailFrom); err != nil {
		return malformed("mail.inbound %s: mail from: %v", m.ID, err)
	}
	for _, r := range m.Recipients {
		if r == "" {
			return malformed("mail.inbound %s: empty recipient", m.ID)
		}
		if err := validAddress(r); err != nil {
			return malformed("mail.inbound %s: recipient: %v", m.ID, err)
		}
	}
	switch m.Source.Kind {
	case SourcePOP3:
		if m.Source.POP3Account == "" || m.Source.POP3UIDL == "" {
			return malformed("mail.inbound %s: pop3 source needs account and uidl", m.ID)
		}
	case SourceSMTP:
	case SourceDSN:
		if m.MailFrom != "" {
			return malformed("mail.inbound %s: a %s record must have the null sender", m.ID, SourceDSN)
		}
	default:
		return malformed("mail.inbound %s: source %q is not %q, %q or %q", m.ID, m.Source.Kind, SourcePOP3, SourceSMTP, SourceDSN)
	}
	return nil
}

// Encode returns the record for mail.inbound: key = ID (so every record of
// one message lands in one partition), value = the raw message, envelope in
// headers.
func (m Inbound) Encode() (Record, error) {
	if err := m.Validate(); err != nil {
		return Record{}, err
	}
	var h headerWriter
	h.add(HeaderType, TopicInbound)
	h.add(HeaderVersion, fmt.Sprint(InboundVersion))
	h.add(HeaderID, m.ID)
	h.addOpt(HeaderSite, m.Site)
	h.add(HeaderMailFrom, m.MailFrom)
	for _, r := range m.Recipients {
		h.add(HeaderRecipient, r)
	}
	writeSource(&h, m.Source)
	h.addTime(HeaderReceivedAt, m.ReceivedAt)
	return Record{Key: []byte(m.ID), Value: m.Message, Headers: h}, nil
}

// DecodeInbound reads a mail.inbound record. Errors wrap ErrUnsupported or
// ErrMalformed.
func DecodeInbound(r Record) (Inbound, error) {
	if err := checkType(r, TopicInbound, InboundVersion); err != nil {
		return Inbound{}, err
	}
	hr := headerReader{r: r, typ: TopicInbound}
	m := Inbound{
		ID:         hr.required(HeaderID),
		Site:       hr.optional(HeaderSite),
		MailFrom:   hr.optional(HeaderMailFrom),
		Recipients: r.All(HeaderRecipient),
		Source:     readSource(&hr),
		ReceivedAt: hr.time(HeaderReceivedAt, false),
		Message:    r.Value,
	}
	if hr.err != nil {
		return Inbound{}, hr.err
	}
	if _, ok := r.Get(HeaderMailFrom); !ok {
		return Inbound{}, malformed("mail.inbound %s: header %s missing", m.ID, HeaderMailFrom)
	}
	return m, m.Validate()
}

func writeSource(h *headerWriter, s Source) {
	h.add(HeaderSource, s.Kind)
	h.addOpt(HeaderPOP3Account, s.POP3Account)
	h.addOpt(HeaderPOP3UIDL, s.POP3UIDL)
	h.addOpt(HeaderSMTPSession, s.SMTPSession)
	h.addOpt(HeaderSMTPRemote, s.SMTPRemote)
	h.addOpt(HeaderSMTPHelo, s.SMTPHelo)
	h.addOpt(HeaderAuthUser, s.AuthUser)
}

func readSource(hr *headerReader) Source {
	return Source{
		Kind:        hr.required(HeaderSource),
		POP3Account: hr.optional(HeaderPOP3Account),
		POP3UIDL:    hr.optional(HeaderPOP3UIDL),
		SMTPSession: hr.optional(HeaderSMTPSession),
		SMTPRemote:  hr.optional(HeaderSMTPRemote),
		SMTPHelo:    hr.optional(HeaderSMTPHelo),
		AuthUser:    hr.optional(HeaderAuthUser),
	}
}
