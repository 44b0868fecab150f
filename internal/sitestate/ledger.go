package sitestate

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// toMS converts t to Unix milliseconds; the zero time is 0.
func toMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS is the inverse of toMS: 0 is the zero time, anything else is UTC.
func fromMS(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// stamp returns at as stored (millisecond precision, UTC), or now if at is
// zero.
func stamp(at time.Time) time.Time {
	if at.IsZero() {
		at = time.Now()
	}
	return fromMS(toMS(at))
}

// ttlMS converts a TTL to whole milliseconds, rounding up.
func ttlMS(ttl time.Duration) (int64, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: ttl %v: must be positive", ErrInvalid, ttl)
	}
	return int64((ttl + time.Millisecond - 1) / time.Millisecond), nil
}

func checkLedgerKey(account, uidl string) error {
	if err := checkString("account", account); err != nil {
		return err
	}
	return checkString("uidl", uidl)
}

// newLedgerEntry validates a hand-off and builds the entry it creates.
func newLedgerEntry(account, uidl string, h Handoff) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	if !utf8.ValidString(h.MessageID) {
		return LedgerEntry{}, fmt.Errorf("%w: message-id of %s/%s is not valid UTF-8", ErrInvalid, account, uidl)
	}
	e := LedgerEntry{
		Account:     account,
		UIDL:        uidl,
		MessageID:   h.MessageID,
		HandedOffAt: stamp(h.At),
		Delivered:   map[string]time.Time{},
	}
	seen := map[string]bool{}
	for _, r := range h.Recipients {
		if err := checkString("recipient", r); err != nil {
			return LedgerEntry{}, err
		}
		if !seen[r] {
			seen[r] = true
			e.Recipients = append(e.Recipients, r)
		}
	}
	if len(e.Recipients) == 0 {
		return LedgerEntry{}, fmt.Errorf("%w: hand-off of %s/%s without recipients", ErrInvalid, account, uidl)
	}
	return e, nil
}

// markDelivered marks rcpts of e delivered at at and reports whether e
// changed.
func markDelivered(e *LedgerEntry, at time.Time, rcpts []string) bool {
	changed := false
	for _, r := range rcpts {
		if _, done := e.Delivered[r]; done {
			continue
		}
		for _, want := range e.Recipients {
			if r == want {
				if e.Delivered == nil {
					e.Delivered = map[string]time.Time{}
				}
				e.Delivered[r] = at
				changed = true
				break
			}
		}
	}
	return changed
}

// markDeleted sets e.DeletedAt unless it is set and reports whether e
// changed.
func markDeleted(e *LedgerEntry, at time.Time) bool {
	if !e.DeletedAt.IsZero() {
		return false
	}
	e.DeletedAt = at
	return true
}

// compareLedger orders entries by HandedOffAt, then UIDL.
func compareLedger(a, b LedgerEntry) int {
	if c := a.HandedOffAt.Compare(b.HandedOffAt); c != 0 {
		return c
	}
	switch {
	case a.UIDL < b.UIDL:
		return -1
	case a.UIDL > b.UIDL:
		return 1
	}
	return 0
}

// storedLedger is the serialised form of a LedgerEntry (Account and UIDL are
// where it is stored).
type storedLedger struct {
	MessageID  string           `json:"mid,omitempty"`
	Recipients []string         `json:"rcpt"`
	Delivered  map[string]int64 `json:"dlv,omitempty"`
	HandedOff  int64            `json:"at"`
	Deleted    int64            `json:"del,omitempty"`
}

func encodeDelivered(d map[string]time.Time) map[string]int64 {
	if len(d) == 0 {
		return nil
	}
	out := make(map[string]int64, len(d))
	for r, t := range d {
		out[r] = toMS(t)
	}
	return out
}

func decodeDelivered(d map[string]int64) map[string]time.Time {
	out := make(map[string]time.Time, len(d))
	for r, ms := range d {
		out[r] = fromMS(ms)
	}
	return out
}

func encodeLedger(e LedgerEntry) ([]byte, error) {
	return json.Marshal(storedLedger{
		MessageID:  e.MessageID,
		Recipients: e.Recipients,
		Delivered:  encodeDelivered(e.Delivered),
		HandedOff:  toMS(e.HandedOffAt),
		Deleted:    toMS(e.DeletedAt),
	})
}

func decodeLedger(account, uidl string, b []byte) (LedgerEntry, error) {
	var s storedLedger
	if err := json.Unmarshal(b, &s); err != nil {
		return LedgerEntry{}, fmt.Errorf("decode ledger entry %s/%s: %w", account, uidl, err)
	}
	return LedgerEntry{
		Account:     account,
		UIDL:        uidl,
		MessageID:   s.MessageID,
		Recipients:  s.Recipients,
		Delivered:   decodeDelivered(s.Delivered),
		HandedOffAt: fromMS(s.HandedOff),
		DeletedAt:   fromMS(s.Deleted),
	}, nil
}
