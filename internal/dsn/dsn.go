// Package dsn writes delivery status notifications (bounces): RFC 3464
// multipart/report messages that tell an envelope sender what became of
// their message, with the original message's header attached
// (text/rfc822-headers, RFC 6522).
//
// The router writes them for recipients it refuses, the relay for
// permanent delivery failures and expired retries. Either way the bounce
// enters the pipeline as a mail.inbound record with the null sender
// ([Inbound]), so it is routed like any other message — to the sender's
// mailbox, another site or the Internet — and can never bounce again.
package dsn

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/postern/postern/api/events"
)

// Actions of a recipient (RFC 3464 §2.3.3).
const (
	ActionFailed  = "failed"  // the message could not be delivered and will not be tried again
	ActionDelayed = "delayed" // delivery is still being retried
)

// ErrNullSender is returned for a report to the null sender: bounces are
// never sent to <> (RFC 5321 §6.1), which also stops bounce loops.
var ErrNullSender = errors.New("dsn: the envelope sender is null (<>): no bounce is sent to it")

// maxOriginalHeader bounds the attached header of the original message.
const maxOriginalHeader = 64 << 10

// Recipient is one recipient's outcome.
type Recipient struct {
	Final      string // Final-Recipient address (required)
	Original   string // Original-Recipient: the address as the sender wrote it (optional)
	Action     string // ActionFailed (default) or ActionDelayed
	Status     string // enhanced status code, e.g. "5.1.1" (default 5.0.0, or 4.0.0 when delayed)
	Diagnostic string // e.g. "smtp; 550 5.1.1 no such user"; "smtp; " is added when missing
	RemoteMTA  string // the host that answered, if any
}

// Report is what a DSN says.
type Report struct {
	ReportingMTA string    // this site's host name (Reporting-MTA)
	Postmaster   string    // the bounce's From: address, e.g. postmaster@example.com
	To           string    // the original envelope sender; empty is ErrNullSender
	EnvelopeID   string    // the original message's inbound id (Original-Envelope-Id)
	ArrivalDate  time.Time // when the original entered Postern (optional)
	Recipients   []Recipient
	Original     []byte    // the original message; only its header is attached
	Now          time.Time // the report's Date; zero means time.Now()
}

func (r *Report) check() error {
	if strings.TrimSpace(r.To) == "" {
		return ErrNullSender
	}
	if len(r.Recipients) == 0 {
		return errors.New("dsn: no recipients to report")
	}
	if r.ReportingMTA == "" {
		return errors.New("dsn: reporting MTA is empty")
	}
	if r.Postmaster == "" {
		return errors.New("dsn: postmaster address is empty")
	}
	for i, rc := range r.Recipients {
		if rc.Final == "" {
			return fmt.Errorf("dsn: recipient %d has no final address", i+1)
		}
		switch rc.Action {
		case "", ActionFailed, ActionDelayed:
		default:
			return fmt.Errorf("dsn: recipient %s: action %q is neither %q nor %q", rc.Final, rc.Action, ActionFailed, ActionDelayed)
		}
	}
	return nil
}

// clean makes a value safe for one header line: no CR, LF or other control
// characters (a remote server's reply must not inject headers), trimmed.
func clean(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s))
}

func (rc Recipient) action() string {
	if rc.Action == "" {
		return ActionFailed
	}
	return rc.Action
}

func (rc Recipient) status() string {
	if s := clean(rc.Status); s != "" {
		return s
	}
	if rc.action() == ActionDelayed {
		return "4.0.0"
	}
	return "5.0.0"
}

func (rc Recipient) diagnostic() string {
	d := clean(rc.Diagnostic)
	if d == "" {
		return ""
	}
	if !strings.Contains(d, ";") {
		d = "smtp; " + d
	}
	return d
}

// ID is the bounce's deterministic id: the same report about the same
// envelope, recipients and outcomes gives the same id, so a failure handled
// twice (Kafka redelivery) yields one bounce downstream.
func (r Report) ID() string {
	keys := make([]string, 0, len(r.Recipients))
	for _, rc := range r.Recipients {
		keys = append(keys, strings.ToLower(rc.Final)+"\x00"+rc.action()+"\x00"+rc.status())
	}
	sort.Strings(keys)
	h := sha256.New()
	h.Write([]byte(r.EnvelopeID))
	h.Write([]byte{0})
	h.Write([]byte(strings.ToLower(r.To)))
	for _, k := range keys {
		h.Write([]byte{0})
		h.Write([]byte(k))
	}
	return "dsn-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Build writes the report as an RFC 3464 message: multipart/report with a
// human-readable part, a message/delivery-status part and the original
// header as text/rfc822-headers. Lines end in CRLF.
func Build(r Report) ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	delayed := true
	for _, rc := range r.Recipients {
		if rc.action() != ActionDelayed {
			delayed = false
		}
	}

	var h message.Header
	h.Set("From", fmt.Sprintf("Mail Delivery System <%s>", clean(r.Postmaster)))
	h.Set("To", "<"+clean(r.To)+">")
	if delayed {
		h.Set("Subject", "Delayed Mail (still being retried)")
	} else {
		h.Set("Subject", "Undelivered Mail Returned to Sender")
	}
	h.Set("Date", now.Format(time.RFC1123Z))
	h.Set("Message-Id", fmt.Sprintf("<%s@%s>", r.ID(), clean(r.ReportingMTA)))
	h.Set("Auto-Submitted", "auto-replied") // RFC 3834: no auto-reply to this
	h.Set("MIME-Version", "1.0")
	h.SetContentType("multipart/report", map[string]string{"report-type": "delivery-status"})

	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	if err := writePart(w, "text/plain", map[string]string{"charset": "utf-8"}, humanText(r, delayed)); err != nil {
		return nil, err
	}
	if err := writePart(w, "message/delivery-status", nil, statusFields(r, now)); err != nil {
		return nil, err
	}
	if err := writePart(w, "text/rfc822-headers", nil, originalHeader(r.Original)); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	return buf.Bytes(), nil
}

func writePart(w *message.Writer, typ string, params map[string]string, body []byte) error {
	var ph message.Header
	ph.SetContentType(typ, params)
	if typ == "text/plain" {
		ph.Set("Content-Transfer-Encoding", "8bit")
	}
	pw, err := w.CreatePart(ph)
	if err != nil {
		return fmt.Errorf("dsn: %s part: %w", typ, err)
	}
	if _, err := pw.Write(body); err != nil {
		return fmt.Errorf("dsn: %s part: %w", typ, err)
	}
	return pw.Close()
}

func humanText(r Report, delayed bool) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\n", clean(r.ReportingMTA))
	if delayed {
		b.WriteString("Your message could not be delivered yet to the recipients below.\r\nIt is still being retried; you need not send it again.\r\n\r\n")
	} else {
		b.WriteString("I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\n")
	}
	for _, rc := range r.Recipients {
		fmt.Fprintf(&b, "<%s>: ", clean(rc.Final))
		if d := rc.diagnostic(); d != "" {
			_, d, _ = strings.Cut(d, ";")
			b.WriteString(strings.TrimSpace(d))
		} else {
			fmt.Fprintf(&b, "status %s", rc.status())
		}
		b.WriteString("\r\n")
	}
	return []byte(b.String())
}

func statusFields(r Report, now time.Time) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "Reporting-MTA: dns; %s\r\n", clean(r.ReportingMTA))
	if id := clean(r.EnvelopeID); id != "" {
		fmt.Fprintf(&b, "Original-Envelope-Id: %s\r\n", id)
	}
	if !r.ArrivalDate.IsZero() {
		fmt.Fprintf(&b, "Arrival-Date: %s\r\n", r.ArrivalDate.Format(time.RFC1123Z))
	}
	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		if o := clean(rc.Original); o != "" {
			fmt.Fprintf(&b, "Original-Recipient: rfc822; %s\r\n", o)
		}
		fmt.Fprintf(&b, "Final-Recipient: rfc822; %s\r\n", clean(rc.Final))
		fmt.Fprintf(&b, "Action: %s\r\n", rc.action())
		fmt.Fprintf(&b, "Status: %s\r\n", rc.status())
		if m := clean(rc.RemoteMTA); m != "" {
			fmt.Fprintf(&b, "Remote-MTA: dns; %s\r\n", m)
		}
		if d := rc.diagnostic(); d != "" {
			fmt.Fprintf(&b, "Diagnostic-Code: %s\r\n", d)
		}
		fmt.Fprintf(&b, "Last-Attempt-Date: %s\r\n", now.Format(time.RFC1123Z))
	}
	return []byte(b.String())
}

// originalHeader returns the original message's header section, CRLF line
// endings, read with go-message's header parser; at most maxOriginalHeader
// bytes of it. A message whose header cannot be parsed is attached as far
// as it could be read.
func originalHeader(msg []byte) []byte {
	if len(msg) == 0 {
		return nil
	}
	end := len(msg)
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		end = i + 2
	}
	if i := bytes.Index(msg, []byte("\n\n")); i >= 0 && i+1 < end {
		end = i + 1
	}
	head := msg[:end]
	if len(head) > maxOriginalHeader {
		head = head[:maxOriginalHeader]
		if i := bytes.LastIndexByte(head, '\n'); i > 0 {
			head = head[:i+1]
		}
	}
	// Normalise line endings: parse and re-write with go-message, which
	// keeps field order and raw values (folding included).
	hdr, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(append([]byte{}, head...), "\r\n"...))))
	if err != nil {
		return bytes.ReplaceAll(bytes.ReplaceAll(head, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	}
	var out bytes.Buffer
	if err := textproto.WriteHeader(&out, hdr); err != nil {
		return nil
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\r\n"))
}

// Inbound returns the bounce as a mail.inbound record of site: null
// envelope sender, one recipient (r.To), source SourceDSN, id [Report.ID].
func Inbound(r Report, site string) (events.Inbound, error) {
	msg, err := Build(r)
	if err != nil {
		return events.Inbound{}, err
	}
	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	in := events.Inbound{
		ID:         r.ID(),
		Site:       site,
		MailFrom:   "",
		Recipients: []string{clean(r.To)},
		Source:     events.Source{Kind: events.SourceDSN},
		ReceivedAt: now.UTC(),
		Message:    msg,
	}
	return in, in.Validate()
}
