package events

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header is one Kafka record header. Keys may repeat (a recipient list is
// one header per recipient, in order).
type Header struct {
	Key   string
	Value []byte
}

// Record is a Kafka record as the contract sees it: key, value and headers.
// The bus adds the topic.
type Record struct {
	Key     []byte
	Value   []byte
	Headers []Header
}

// Get returns the first value of header key.
func (r Record) Get(key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// All returns every value of header key, in order.
func (r Record) All(key string) []string {
	var out []string
	for _, h := range r.Headers {
		if h.Key == key {
			out = append(out, string(h.Value))
		}
	}
	return out
}

// ErrUnsupported is returned when a record's type or version is not one
// this code understands. It is permanent: retrying will not help.
var ErrUnsupported = errors.New("unsupported record")

// ErrMalformed is returned when a record lacks a required field or holds a
// value that cannot be parsed. It is permanent.
var ErrMalformed = errors.New("malformed record")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// checkType verifies the type and version headers of r.
func checkType(r Record, typ string, version int) error {
	got, ok := r.Get(HeaderType)
	if !ok {
		return malformed("header %s missing (want %q)", HeaderType, typ)
	}
	if got != typ {
		return fmt.Errorf("%w: type %q, want %q", ErrUnsupported, got, typ)
	}
	v, ok := r.Get(HeaderVersion)
	if !ok {
		return malformed("%s: header %s missing", typ, HeaderVersion)
	}
	if v != strconv.Itoa(version) {
		return fmt.Errorf("%w: %s version %q, this build reads version %d", ErrUnsupported, typ, v, version)
	}
	return nil
}

// headerWriter builds a header list.
type headerWriter []Header

func (w *headerWriter) add(key, value string) {
	*w = append(*w, Header{Key: key, Value: []byte(value)})
}

// addOpt adds the header only when value is not empty.
func (w *headerWriter) addOpt(key, value string) {
	if value != "" {
		w.add(key, value)
	}
}

func (w *headerWriter) addTime(key string, t time.Time) {
	if !t.IsZero() {
		w.add(key, t.UTC().Format(time.RFC3339Nano))
	}
}

// headerReader reads headers, remembering the first problem.
type headerReader struct {
	r   Record
	typ string
	err error
}

func (hr *headerReader) required(key string) string {
	v, ok := hr.r.Get(key)
	if !ok || v == "" {
		hr.fail("%s: header %s missing", hr.typ, key)
	}
	return v
}

func (hr *headerReader) optional(key string) string {
	v, _ := hr.r.Get(key)
	return v
}

func (hr *headerReader) time(key string, required bool) time.Time {
	v, ok := hr.r.Get(key)
	if !ok || v == "" {
		if required {
			hr.fail("%s: header %s missing", hr.typ, key)
		}
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		hr.fail("%s: header %s: %q is not an RFC 3339 time", hr.typ, key, v)
	}
	return t
}

func (hr *headerReader) fail(format string, args ...any) {
	if hr.err == nil {
		hr.err = malformed(format, args...)
	}
}

// validAddress rejects what can never be an envelope address on the wire:
// control characters and angle brackets. Full RFC 5321 parsing is done at the
// edges (SMTP, POP3 header extraction); the contract only guards the headers.
func validAddress(a string) error {
	if strings.ContainsAny(a, "<>\r\n\x00 ") {
		return fmt.Errorf("address %q contains a space, bracket or control character", a)
	}
	if a != "" && !strings.Contains(a, "@") {
		return fmt.Errorf("address %q has no domain", a)
	}
	return nil
}
