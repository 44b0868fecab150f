package httpapi

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/postern/postern/api/usersapi"
)

// etag is the entity tag of an object's version: "3".
func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// entityTag is one tag of an If-Match or If-None-Match list (RFC 9110
// section 8.8.3).
type entityTag struct {
	weak   bool
	opaque string // without the quotes
}

// tagList is a parsed If-Match or If-None-Match header: "*" or tags.
type tagList struct {
	any  bool
	tags []entityTag
}

var errBadTag = errors.New(`not a list of entity tags such as "3" (with the quotes), nor *`)

// parseTagList parses `*` or `"a", W/"b"`.
func parseTagList(s string) (tagList, error) {
	s = strings.TrimSpace(s)
	if s == "*" {
		return tagList{any: true}, nil
	}
	var l tagList
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		var t entityTag
		if strings.HasPrefix(s, "W/") {
			t.weak = true
			s = s[2:]
		}
		if !strings.HasPrefix(s, `"`) {
			return tagList{}, errBadTag
		}
		end := strings.IndexByte(s[1:], '"')
		if end < 0 {
			return tagList{}, errBadTag
		}
		t.opaque = s[1 : 1+end]
		for i := 0; i < len(t.opaque); i++ {
			if c := t.opaque[i]; c < 0x21 || c == 0x7f { // etagc excludes controls and spaces
				return tagList{}, errBadTag
			}
		}
		l.tags = append(l.tags, t)
		s = strings.TrimLeft(s[2+end:], " \t")
		if s == "" {
			break
		}
		if s[0] != ',' {
			return tagList{}, errBadTag
		}
		s = s[1:]
	}
	if len(l.tags) == 0 {
		return tagList{}, errBadTag
	}
	return l, nil
}

// matchStrong reports whether the list matches version by the strong
// comparison of If-Match (a weak tag never matches).
func (l tagList) matchStrong(version int64) bool {
	if l.any {
		return true
	}
	v := strconv.FormatInt(version, 10)
	for _, t := range l.tags {
		if !t.weak && t.opaque == v {
			return true
		}
	}
	return false
}

// matchWeak reports whether the list matches version by the weak
// comparison of If-None-Match.
func (l tagList) matchWeak(version int64) bool {
	if l.any {
		return true
	}
	v := strconv.FormatInt(version, 10)
	for _, t := range l.tags {
		if t.opaque == v {
			return true
		}
	}
	return false
}

// parseIfMatch checks an If-Match header early (400 when malformed), so
// that a bad header is refused before any work. nil means no header.
func parseIfMatch(h *string) (*tagList, error) {
	return parseConditional("If-Match", h)
}

func parseConditional(name string, h *string) (*tagList, error) {
	if h == nil {
		return nil, nil
	}
	l, err := parseTagList(*h)
	if err != nil {
		return nil, badRequest(fmt.Sprintf("The %s header is malformed.", name), usersapi.FieldError{Field: name, Reason: err.Error()})
	}
	return &l, nil
}

// checkIfMatch refuses (412) a write whose If-Match does not match the
// object's current version. A nil list (no header) always matches.
func checkIfMatch(l *tagList, raw *string, version int64) error {
	if l == nil || l.matchStrong(version) {
		return nil
	}
	return preconditionFailed(fmt.Sprintf("If-Match %s does not match the current ETag %s.", strings.TrimSpace(*raw), etag(version)))
}

// notModified reports whether a GET with If-None-Match h may answer 304
// for an object at version; a malformed header is 400.
func notModified(h *string, version int64) (bool, error) {
	l, err := parseConditional("If-None-Match", h)
	if err != nil || l == nil {
		return false, err
	}
	return l.matchWeak(version), nil
}
