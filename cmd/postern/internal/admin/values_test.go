package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/usersclient"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "0", want: 0},
		{in: "1073741824", want: 1 << 30},
		{in: "2G", want: 2 << 30},
		{in: "2GiB", want: 2 << 30},
		{in: "500m", want: 500 << 20},
		{in: "1 TiB", want: 1 << 40},
		{in: "3KB", want: 3000},
		{in: "5GB", want: 5e9},
		{in: "12B", want: 12},
		{in: "", bad: true},
		{in: "-1", bad: true},
		{in: "1.5G", bad: true},
		{in: "2X", bad: true},
		{in: "G", bad: true},
		{in: "9223372036854775807K", bad: true},
	} {
		got, err := parseSize(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "2G", "500 MiB", "3KB", "-1", "9223372036854775807K"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err == nil && n < 0 {
			t.Errorf("parseSize(%q) = %d", s, n)
		}
	})
}

func TestParseKeep(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want usersclient.KeepPolicy
		bad  bool
	}{
		{in: "keep", want: usersclient.KeepPolicy{Policy: usersclient.KeepPolicyKindKeep}},
		{in: "delete_after_delivery", want: usersclient.KeepPolicy{Policy: usersclient.KeepPolicyKindDeleteAfterDelivery}},
		{in: "keep_days:7", want: usersclient.KeepPolicy{Policy: usersclient.KeepPolicyKindKeepDays, Days: 7}},
		{in: "keep_days", bad: true},
		{in: "keep_days:0", bad: true},
		{in: "keep_days:x", bad: true},
		{in: "keep:3", bad: true},
		{in: "forever", bad: true},
	} {
		got, err := parseKeep(tc.in)
		if tc.bad != (err != nil) || (!tc.bad && got != tc.want) {
			t.Errorf("parseKeep(%q) = %+v, %v", tc.in, got, err)
		}
		if !tc.bad && keepString(got) != tc.in {
			t.Errorf("keepString(%+v) = %q, want %q", got, keepString(got), tc.in)
		}
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 500, time.UTC)
	for _, tc := range []struct {
		in   string
		past bool
		want time.Time
		bad  bool
	}{
		{in: "2026-01-15T09:00:00Z", want: time.Date(2026, 1, 15, 9, 0, 0, 0, time.UTC)},
		{in: "2026-01-15T10:00:00+01:00", want: time.Date(2026, 1, 15, 9, 0, 0, 0, time.UTC)},
		{in: "2026-01-15", want: time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)},
		{in: "24h", past: true, want: time.Date(2026, 3, 9, 12, 0, 0, 0, time.UTC)},
		{in: "7d", past: true, want: time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC)},
		{in: "90d", want: time.Date(2026, 6, 8, 12, 0, 0, 0, time.UTC)},
		{in: "yesterday", bad: true},
		{in: "-3h", bad: true},
		{in: "d", bad: true},
	} {
		got, err := parseTime("since", tc.in, now, tc.past)
		if tc.bad != (err != nil) || !got.Equal(tc.want) {
			t.Errorf("parseTime(%q, past %v) = %v, %v", tc.in, tc.past, got, err)
		}
	}
}

func TestETag(t *testing.T) {
	for in, want := range map[string]string{"3": `"3"`, `"3"`: `"3"`, `W/"3"`: `W/"3"`} {
		if got := etag(in); got == nil || *got != want {
			t.Errorf("etag(%q) = %v, want %s", in, got, want)
		}
	}
	if etag("") != nil {
		t.Error(`etag("") is not nil`)
	}
}

func TestQuota(t *testing.T) {
	for n, want := range map[int64]string{0: "none", 1 << 30: "1 GiB", 3 << 20: "3 MiB", 1536: "1536 bytes",
		1<<30 + 1: "1024.0 MiB (1073741825 bytes)", 5 << 40: "5 TiB"} {
		if got := quota(n); got != want {
			t.Errorf("quota(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestErrorLines(t *testing.T) {
	for _, tc := range []struct {
		fe        usersclient.FieldError
		api, file string
	}{
		{usersclient.FieldError{Field: "aliases[1]", Reason: "taken"}, "  aliases[1]: taken", "f.csv: column aliases[1]: taken"},
		{usersclient.FieldError{Reason: "empty body"}, "  empty body", "f.csv: empty body"},
		{usersclient.FieldError{Line: 3, Column: 4, Field: "email", Reason: "bad"}, "  line 3, column 4 (email): bad", "f.csv:3: column email: bad"},
		{usersclient.FieldError{Line: 7, Reason: "wrong number of fields"}, "  line 7: wrong number of fields", "f.csv:7: wrong number of fields"},
		{usersclient.FieldError{Line: 7, Column: 2, Reason: "bad quote"}, "  line 7, column 2: bad quote", "f.csv:7: column 2: bad quote"},
	} {
		if got := fieldErrorLine(tc.fe); got != tc.api {
			t.Errorf("fieldErrorLine(%+v) = %q, want %q", tc.fe, got, tc.api)
		}
		if got := csvErrorLine("f.csv", tc.fe); got != tc.file {
			t.Errorf("csvErrorLine(%+v) = %q, want %q", tc.fe, got, tc.file)
		}
	}
}

func TestSanitize(t *testing.T) {
	in := "Evil\x1b[2J\rname\ttab\nline\u0085"
	if got := sanitize(in, false); strings.ContainsAny(got, "\x1b\r\t\n\u0085") {
		t.Errorf("sanitize kept control characters: %q", got)
	}
	if got := sanitize(in, true); strings.Count(got, "\n") != 1 || strings.Contains(got, "\x1b") {
		t.Errorf("sanitize(keepNewlines): %q", got)
	}
}

func TestListValue(t *testing.T) {
	var l listValue
	for _, v := range []string{"a.org, b.org", "c.org", ""} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(l.list(), "|"); got != "a.org|b.org|c.org" {
		t.Errorf("list %q", got)
	}
	var empty listValue
	_ = empty.Set("")
	if got := empty.list(); got == nil || len(got) != 0 {
		t.Errorf(`--x "" gives %#v, want an empty, non-nil list`, got)
	}
}
