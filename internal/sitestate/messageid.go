package sitestate

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxMessageIDLen is the longest Message-ID accepted, in bytes: a header
// line may not be longer (RFC 5322, section 2.1.1).
const maxMessageIDLen = 998

// NormalizeMessageID returns the form of one Message-ID (as found in a
// Message-ID, In-Reply-To or References header) that the MessageIndex uses as
// its key:
//
//   - whitespace around it, folding line breaks included, is removed;
//   - one pair of enclosing angle brackets is removed, with any whitespace
//     just inside them;
//   - the part after the last "@" (the domain, case-insensitive) is
//     lower-cased, ASCII letters only; the part before it is kept as it is,
//     since it is case-sensitive.
//
// So "<Abc.123@Example.COM>" becomes "Abc.123@example.com". It fails with
// ErrInvalid when nothing is left, when the ID is longer than 998 bytes or
// not UTF-8, or when it still holds whitespace, control characters or angle
// brackets (a whole References header, an unbalanced bracket). IDs without
// an "@" are accepted as they are, since some software writes them.
// NormalizeMessageID is idempotent.
func NormalizeMessageID(s string) (string, error) {
	id := strings.TrimSpace(s)
	if strings.HasPrefix(id, "<") && strings.HasSuffix(id, ">") && len(id) >= 2 {
		id = strings.TrimSpace(id[1 : len(id)-1])
	}
	if id == "" {
		return "", fmt.Errorf("%w: empty message-id %q", ErrInvalid, s)
	}
	if len(id) > maxMessageIDLen {
		return "", fmt.Errorf("%w: message-id longer than %d bytes", ErrInvalid, maxMessageIDLen)
	}
	if !utf8.ValidString(id) {
		return "", fmt.Errorf("%w: message-id %q is not valid UTF-8", ErrInvalid, s)
	}
	for _, r := range id {
		switch {
		case r == '<' || r == '>':
			return "", fmt.Errorf("%w: message-id %q: stray angle bracket", ErrInvalid, s)
		case unicode.IsSpace(r) || unicode.IsControl(r):
			return "", fmt.Errorf("%w: message-id %q: whitespace or control character", ErrInvalid, s)
		}
	}
	at := strings.LastIndexByte(id, '@')
	if at < 0 {
		return id, nil
	}
	return id[:at+1] + asciiLower(id[at+1:]), nil
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// storedRecord is the serialised form of a MessageRecord.
type storedRecord struct {
	Staff   string `json:"staff,omitempty"`
	Mailbox string `json:"mailbox,omitempty"`
	Sender  string `json:"sender,omitempty"`
	At      int64  `json:"at,omitempty"`
}

// prepareMessageRecord validates a Put and returns the normalised ID, the
// record's serialised form and the TTL in milliseconds.
func prepareMessageRecord(messageID string, rec MessageRecord, ttl time.Duration) (string, []byte, int64, error) {
	id, err := NormalizeMessageID(messageID)
	if err != nil {
		return "", nil, 0, err
	}
	ms, err := ttlMS(ttl)
	if err != nil {
		return "", nil, 0, err
	}
	for what, s := range map[string]string{"staff user id": rec.StaffUserID, "shared mailbox id": rec.SharedMailboxID, "sender": rec.Sender} {
		if !utf8.ValidString(s) {
			return "", nil, 0, fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
		}
	}
	body, err := json.Marshal(storedRecord{
		Staff: rec.StaffUserID, Mailbox: rec.SharedMailboxID, Sender: rec.Sender, At: toMS(rec.At),
	})
	if err != nil {
		return "", nil, 0, fmt.Errorf("encode message record: %w", err)
	}
	return id, body, ms, nil
}

func decodeMessageRecord(id string, body []byte) (MessageRecord, error) {
	var s storedRecord
	if err := json.Unmarshal(body, &s); err != nil {
		return MessageRecord{}, fmt.Errorf("decode message record %q: %w", id, err)
	}
	return MessageRecord{StaffUserID: s.Staff, SharedMailboxID: s.Mailbox, Sender: s.Sender, At: fromMS(s.At)}, nil
}
