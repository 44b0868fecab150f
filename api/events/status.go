package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Version of the mail.status record.
const StatusVersion = 1

// Outcomes of a delivery attempt for one recipient.
const (
	OutcomeDelivered = "delivered" // in the mailbox, or accepted by the next hop
	OutcomeDeferred  = "deferred"  // temporary failure; NextAttempt says when it is tried again
	OutcomeBounced   = "bounced"   // permanent failure or expiry; a DSN went to the sender
	OutcomeRejected  = "rejected"  // refused by policy (permissions, unknown user)
)

// Status is the outcome for one recipient, on mail.status. It is JSON in the
// record value; the type and version are in headers like every record.
type Status struct {
	InboundID  string `json:"inbound_id"`            // the mail.inbound record
	DeliveryID string `json:"delivery_id,omitempty"` // the mail.delivery record, when routing produced one
	Site       string `json:"site,omitempty"`        // the site reporting
	Stage      string `json:"stage"`                 // "router" or "relay"
	Recipient  string `json:"recipient"`             // the recipient this outcome is about
	// OriginalRecipient is the envelope recipient of the mail.inbound
	// record this outcome answers for (before alias, group and
	// shared-mailbox expansion): the fetcher marks that recipient of the
	// POP3 message delivered. Empty when it is Recipient itself.
	OriginalRecipient string    `json:"original_recipient,omitempty"`
	Outcome           string    `json:"outcome"`               // Outcome*
	Reason            string    `json:"reason,omitempty"`      // human-readable cause (never secret or internal detail)
	SMTPCode          int       `json:"smtp_code,omitempty"`   // the remote reply code, if any
	NextAttempt       time.Time `json:"next_attempt,omitzero"` // for deferred
	At                time.Time `json:"at"`                    // when this outcome happened
	MessageID         string    `json:"message_id,omitempty"`  // the message's Message-ID header, for tracing
	Source            Source    `json:"source"`                // where the message entered Postern
	Attempt           int       `json:"attempt,omitempty"`     // 1 for the first attempt
	Destination       string    `json:"destination,omitempty"` // Dest*
	// ReceivedAt is when the edge accepted the message (the inbound
	// record's ReceivedAt), so that At - ReceivedAt is the message's
	// latency up to this outcome. Zero (absent) for older records.
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// Validate reports the first missing or impossible field.
func (s Status) Validate() error {
	switch {
	case s.InboundID == "":
		return malformed("mail.status: inbound_id is empty")
	case s.Recipient == "":
		return malformed("mail.status %s: recipient is empty", s.InboundID)
	case s.At.IsZero():
		return malformed("mail.status %s: at is zero", s.InboundID)
	}
	switch s.Outcome {
	case OutcomeDelivered, OutcomeBounced, OutcomeRejected:
	case OutcomeDeferred:
		if s.NextAttempt.IsZero() {
			return malformed("mail.status %s: deferred without next_attempt", s.InboundID)
		}
	default:
		return malformed("mail.status %s: outcome %q unknown", s.InboundID, s.Outcome)
	}
	return nil
}

// Encode returns the record for mail.status, keyed by the inbound id.
func (s Status) Encode() (Record, error) {
	if err := s.Validate(); err != nil {
		return Record{}, err
	}
	v, err := json.Marshal(s)
	if err != nil {
		return Record{}, fmt.Errorf("mail.status: %w", err)
	}
	var h headerWriter
	h.add(HeaderType, TopicStatus)
	h.add(HeaderVersion, fmt.Sprint(StatusVersion))
	return Record{Key: []byte(s.InboundID), Value: v, Headers: h}, nil
}

// DecodeStatus reads a mail.status record. Unknown JSON fields are refused
// so that a newer writer is noticed rather than half-read.
func DecodeStatus(r Record) (Status, error) {
	if err := checkType(r, TopicStatus, StatusVersion); err != nil {
		return Status{}, err
	}
	var s Status
	if err := decodeStrict(r.Value, &s); err != nil {
		return Status{}, malformed("mail.status: %v", err)
	}
	return s, s.Validate()
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}
