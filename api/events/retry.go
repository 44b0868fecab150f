package events

import (
	"strconv"
	"strings"
	"time"
)

// The relay's retry tiers. A delivery that failed temporarily is published
// again, with the retry headers below, to the tier topic of its delay: tier
// i holds the records that wait about base·factorⁱ (capped), so each tier is
// roughly ordered by due time and a short delay never waits behind a long
// one. The relay creates the tiers it is configured for at start-up; they
// are not in AllTopics because their number is configuration.
//
// A retry record is a mail.delivery record (same type, version, key, value
// and headers, with the recipients still to be tried) plus the retry
// headers, so DecodeDelivery reads it too.
const (
	// TopicRetryPrefix starts every tier's logical topic name:
	// "mail.retry.0", "mail.retry.1", ...
	TopicRetryPrefix = "mail.retry."
	// MaxRetryTiers bounds the number of tiers a relay may use.
	MaxRetryTiers = 24
)

// Retry record headers, added to a mail.delivery record.
const (
	HeaderRetryAttempt   = "postern-retry-attempt"    // the attempt this record makes when it is due: 2 for the first retry
	HeaderRetryNext      = "postern-retry-next"       // when it is due, RFC 3339
	HeaderRetryFirst     = "postern-retry-first"      // when delivery was first attempted (the start of the message's lifetime), RFC 3339
	HeaderRetryLastCode  = "postern-retry-last-code"  // the SMTP reply code of the last failure, if there was a reply
	HeaderRetryLastError = "postern-retry-last-error" // the last failure, human-readable (remote reply text or a generic cause)
	HeaderRetryPartial   = "postern-retry-partial"    // "true": the recipients are what is left of a larger set (the others are done)
)

// TopicRetry returns the logical topic of retry tier (from 0).
func TopicRetry(tier int) string { return TopicRetryPrefix + strconv.Itoa(tier) }

// RetryTopics returns the logical topics of tiers 0 to n-1.
func RetryTopics(n int) []string {
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, TopicRetry(i))
	}
	return out
}

// Retry is a delivery waiting for another attempt, on a retry tier topic.
type Retry struct {
	Delivery     Delivery  // the delivery, with only the recipients still to be tried
	Attempt      int       // the attempt this record makes when due (at least 2)
	NextAttempt  time.Time // when it is due
	FirstAttempt time.Time // when delivery was first attempted
	LastCode     int       // SMTP reply code of the last failure (0: no reply)
	LastError    string    // the last failure, human-readable
	// Partial says Delivery.Recipients are what is left of the original
	// delivery's recipients, so per-recipient keys must stay in use.
	Partial bool
}

// Validate reports the first missing or impossible field.
func (r Retry) Validate() error {
	if err := r.Delivery.Validate(); err != nil {
		return err
	}
	switch {
	case r.Attempt < 2:
		return malformed("mail.retry %s: attempt %d is less than 2", r.Delivery.ID, r.Attempt)
	case r.NextAttempt.IsZero():
		return malformed("mail.retry %s: next attempt is zero", r.Delivery.ID)
	case r.FirstAttempt.IsZero():
		return malformed("mail.retry %s: first attempt is zero", r.Delivery.ID)
	case r.LastCode < 0 || r.LastCode > 599:
		return malformed("mail.retry %s: last code %d is not an SMTP reply code", r.Delivery.ID, r.LastCode)
	case strings.ContainsAny(r.LastError, "\r\n\x00"):
		return malformed("mail.retry %s: last error contains a line break", r.Delivery.ID)
	}
	return nil
}

// Encode returns the retry record: the delivery's record with the retry
// headers added.
func (r Retry) Encode() (Record, error) {
	if err := r.Validate(); err != nil {
		return Record{}, err
	}
	rec, err := r.Delivery.Encode()
	if err != nil {
		return Record{}, err
	}
	h := headerWriter(rec.Headers)
	h.add(HeaderRetryAttempt, strconv.Itoa(r.Attempt))
	h.addTime(HeaderRetryNext, r.NextAttempt)
	h.addTime(HeaderRetryFirst, r.FirstAttempt)
	if r.LastCode != 0 {
		h.add(HeaderRetryLastCode, strconv.Itoa(r.LastCode))
	}
	h.addOpt(HeaderRetryLastError, r.LastError)
	if r.Partial {
		h.add(HeaderRetryPartial, "true")
	}
	rec.Headers = h
	return rec, nil
}

// DecodeRetry reads a retry tier record.
func DecodeRetry(rec Record) (Retry, error) {
	d, err := DecodeDelivery(rec)
	if err != nil {
		return Retry{}, err
	}
	hr := headerReader{r: rec, typ: "mail.retry"}
	r := Retry{
		Delivery:     d,
		Attempt:      int(hr.int(HeaderRetryAttempt)),
		NextAttempt:  hr.time(HeaderRetryNext, true),
		FirstAttempt: hr.time(HeaderRetryFirst, true),
		LastError:    hr.optional(HeaderRetryLastError),
		Partial:      hr.optional(HeaderRetryPartial) == "true",
	}
	if v, ok := rec.Get(HeaderRetryLastCode); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			hr.fail("mail.retry: header %s: %q is not an integer", HeaderRetryLastCode, v)
		}
		r.LastCode = n
	}
	if hr.err != nil {
		return Retry{}, hr.err
	}
	return r, r.Validate()
}
