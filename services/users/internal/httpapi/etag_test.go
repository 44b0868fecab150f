package httpapi

import (
	"errors"
	"net/http"
	"testing"
)

func TestParseTagList(t *testing.T) {
	tests := []struct {
		in      string
		want    tagList
		wantErr bool
	}{
		{in: `*`, want: tagList{any: true}},
		{in: ` * `, want: tagList{any: true}},
		{in: `"3"`, want: tagList{tags: []entityTag{{opaque: "3"}}}},
		{in: `W/"3"`, want: tagList{tags: []entityTag{{weak: true, opaque: "3"}}}},
		{in: `"3", W/"4" ,"5"`, want: tagList{tags: []entityTag{{opaque: "3"}, {weak: true, opaque: "4"}, {opaque: "5"}}}},
		{in: `""`, want: tagList{tags: []entityTag{{opaque: ""}}}},
		{in: `3`, wantErr: true},
		{in: `"3`, wantErr: true},
		{in: `"3" "4"`, wantErr: true},
		{in: `"3",`, want: tagList{tags: []entityTag{{opaque: "3"}}}},
		{in: ``, wantErr: true},
		{in: `w/"3"`, wantErr: true},
		{in: `"a b"`, wantErr: true},
		{in: `*, "3"`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseTagList(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseTagList(%q): error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if got.any != tt.want.any || len(got.tags) != len(tt.want.tags) {
			t.Errorf("parseTagList(%q) = %+v, want %+v", tt.in, got, tt.want)
			continue
		}
		for i := range got.tags {
			if got.tags[i] != tt.want.tags[i] {
				t.Errorf("parseTagList(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		}
	}
}

func TestConditionals(t *testing.T) {
	tests := []struct {
		header        string
		version       int64
		ifMatch       bool // If-Match passes
		notModified   bool // If-None-Match answers 304
		malformedBoth bool
	}{
		{header: `"3"`, version: 3, ifMatch: true, notModified: true},
		{header: `"3"`, version: 4, ifMatch: false, notModified: false},
		{header: `W/"3"`, version: 3, ifMatch: false, notModified: true}, // strong vs weak comparison
		{header: `"2", "3"`, version: 3, ifMatch: true, notModified: true},
		{header: `*`, version: 9, ifMatch: true, notModified: true},
		{header: `3`, version: 3, malformedBoth: true},
	}
	for _, tt := range tests {
		h := tt.header
		l, err := parseIfMatch(&h)
		if tt.malformedBoth {
			var p *problemError
			if !errors.As(err, &p) || p.Status != http.StatusBadRequest || len(p.Errors) != 1 || p.Errors[0].Field != "If-Match" {
				t.Errorf("If-Match %s: %v, want a 400 naming If-Match", h, err)
			}
			if _, err := notModified(&h, tt.version); err == nil {
				t.Errorf("If-None-Match %s: no error", h)
			}
			continue
		}
		if err != nil {
			t.Fatalf("If-Match %s: %v", h, err)
		}
		err = checkIfMatch(l, &h, tt.version)
		if tt.ifMatch != (err == nil) {
			t.Errorf("If-Match %s at version %d: %v, want pass %v", h, tt.version, err, tt.ifMatch)
		}
		if err != nil {
			var p *problemError
			if !errors.As(err, &p) || p.Status != http.StatusPreconditionFailed || p.Type != typePrecondition {
				t.Errorf("If-Match %s: %v, want 412", h, err)
			}
		}
		nm, err := notModified(&h, tt.version)
		if err != nil || nm != tt.notModified {
			t.Errorf("If-None-Match %s at version %d: %v %v, want %v", h, tt.version, nm, err, tt.notModified)
		}
	}
	if l, err := parseIfMatch(nil); l != nil || err != nil || checkIfMatch(nil, nil, 7) != nil {
		t.Errorf("no If-Match header: %v %v", l, err)
	}
	if nm, err := notModified(nil, 1); nm || err != nil {
		t.Errorf("no If-None-Match header: %v %v", nm, err)
	}
	if etag(42) != `"42"` {
		t.Errorf("etag(42) = %s", etag(42))
	}
}
