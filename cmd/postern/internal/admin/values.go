package admin

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/api/usersclient"
)

func ptr[T any](v T) *T { return &v }

// listValue is a repeatable flag whose values may also be comma-separated
// ("--domain a.org --domain b.org" or "--domain a.org,b.org"). Given only
// as "" it stands for the empty list, which clears a list in an edit.
type listValue struct{ items []string }

func (l *listValue) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.items, ",")
}

func (l *listValue) Set(v string) error {
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			l.items = append(l.items, item)
		}
	}
	return nil
}

// list is the values, never nil (an empty list is sent as []).
func (l *listValue) list() []string {
	if l.items == nil {
		return []string{}
	}
	return l.items
}

func listFlag(fs *flag.FlagSet, name, usage string) *listValue {
	l := &listValue{}
	fs.Var(l, name, usage+" (repeatable or comma-separated; \"\" for none)")
	return l
}

// sizeValue is a size in bytes: a whole number with an optional unit, K,
// M, G, T (powers of 1024, also written KiB…) or KB, MB, GB, TB (powers of
// 1000).
type sizeValue struct{ n int64 }

func (v *sizeValue) String() string {
	if v == nil {
		return "0"
	}
	return strconv.FormatInt(v.n, 10)
}

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	v.n = n
	return nil
}

func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (a whole number of bytes, or with K, M, G, T, KB, MB, GB, TB)", s)
	}
	mult := map[string]int64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q (K, M, G, T, KB, MB, GB, TB)", s, unit)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

func sizeFlag(fs *flag.FlagSet, name, usage string) *sizeValue {
	v := &sizeValue{}
	fs.Var(v, name, usage)
	return v
}

// parseKeep reads a keep policy: delete_after_delivery, keep or keep_days:N.
func parseKeep(s string) (usersclient.KeepPolicy, error) {
	policy, days, hasDays := strings.Cut(strings.TrimSpace(s), ":")
	k := usersclient.KeepPolicy{Policy: usersclient.KeepPolicyKind(policy)}
	switch {
	case k.Policy == usersclient.KeepPolicyKindKeepDays && hasDays:
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 {
			return k, fmt.Errorf("--keep %q: the days must be a whole number of at least 1", s)
		}
		k.Days = n
		return k, nil
	case k.Policy.Valid() && k.Policy != usersclient.KeepPolicyKindKeepDays && !hasDays:
		return k, nil
	}
	return k, fmt.Errorf("--keep %q: want delete_after_delivery, keep or keep_days:N", s)
}

func keepString(k usersclient.KeepPolicy) string {
	if k.Policy == usersclient.KeepPolicyKindKeepDays {
		return fmt.Sprintf("keep_days:%d", k.Days)
	}
	return string(k.Policy)
}

// seconds converts a poll interval to whole seconds.
func seconds(flagName string, d time.Duration) (int, error) {
	if d <= 0 || d%time.Second != 0 || d > 366*24*time.Hour {
		return 0, usageErrorf("--%s %v: want a positive whole number of seconds, such as 90s or 5m", flagName, d)
	}
	return int(d / time.Second), nil
}

// parseTime reads a time for a filter or an expiry: RFC 3339
// ("2026-01-15T09:00:00Z"), a date ("2026-01-15", midnight UTC), or a
// duration from now ("24h", "7d"), counted backwards when past is true.
func parseTime(flagName, s string, now time.Time, past bool) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		var n int
		if n, err = strconv.Atoi(days); err == nil {
			d = time.Duration(n) * 24 * time.Hour
		}
	}
	if err != nil || d < 0 {
		return time.Time{}, usageErrorf("--%s %q: want an RFC 3339 time, a date (2006-01-02) or a duration such as 24h or 7d", flagName, s)
	}
	if past {
		return now.Add(-d).UTC().Truncate(time.Second), nil
	}
	return now.Add(d).UTC().Truncate(time.Second), nil
}

// etag accepts an ETag as the server sends it ("3", quoted) or just the
// version number.
func etag(s string) *string {
	if s == "" {
		return nil
	}
	if strings.HasPrefix(s, `"`) || strings.HasPrefix(s, "W/") {
		return &s
	}
	return ptr(strconv.Quote(s))
}

// oneOf checks an enumerated flag value.
func oneOf[E ~string](flagName, v string, valid func(E) bool, choices ...E) (E, error) {
	e := E(v)
	if valid(e) {
		return e, nil
	}
	names := make([]string, len(choices))
	for i, c := range choices {
		names[i] = string(c)
	}
	return e, usageErrorf("--%s %q: want %s", flagName, v, strings.Join(names, ", "))
}

// ---------------------------------------------------------------- passwords

// password reads a password: the first line of stdin with --password-stdin,
// else from the terminal without echo, typed twice. Without a terminal it
// is a usage error. When optional, an empty answer at the prompt means no
// password and returns "".
func (s *session) password(fromStdin bool, who string, optional bool) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(s.env.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading the password from standard input: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return "", usageErrorf("--password-stdin: standard input holds no password")
		}
		return line, nil
	}
	if !s.env.StdinTerminal || s.env.ReadPassword == nil {
		if optional {
			return "", usageErrorf("no terminal to ask for the password: give --password-stdin, or --no-password")
		}
		return "", usageErrorf("no terminal to ask for the password: give --password-stdin")
	}
	prompt := "Password for " + who
	if optional {
		prompt += " (empty for none)"
	}
	for range 3 {
		fmt.Fprint(s.env.Stderr, prompt+": ")
		p1, err := s.env.ReadPassword()
		fmt.Fprintln(s.env.Stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if p1 == "" {
			if optional {
				return "", nil
			}
			continue
		}
		fmt.Fprint(s.env.Stderr, "Again: ")
		p2, err := s.env.ReadPassword()
		fmt.Fprintln(s.env.Stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if p1 == p2 {
			return p1, nil
		}
		fmt.Fprintln(s.env.Stderr, "The passwords differ; try again.")
	}
	return "", usageErrorf("no password given")
}

// ---------------------------------------------------------------- lists

// listOptions are the flags every list takes.
type listOptions struct {
	limit  int
	all    bool
	cursor string
}

func listFlags(fs *flag.FlagSet) *listOptions {
	o := &listOptions{}
	fs.IntVar(&o.limit, "limit", 0, "the largest number of items per page, 1 to 1000 (default: the server's, 100)")
	fs.BoolVar(&o.all, "all", false, "follow the pages to the end instead of showing only the first")
	fs.StringVar(&o.cursor, "cursor", "", "start at this `cursor` (the next_cursor of a previous page)")
	return o
}

type page[T any] struct {
	items []T
	next  string
	total int64
}

// collect gets one page, or with --all every page.
func collect[T any](o *listOptions, fetch func(cursor *string, limit *int) (page[T], error)) (page[T], error) {
	var cursor *string
	if o.cursor != "" {
		cursor = ptr(o.cursor)
	}
	var limit *int
	switch {
	case o.limit != 0:
		limit = ptr(o.limit)
	case o.all:
		limit = ptr(1000)
	}
	out := page[T]{items: []T{}}
	for {
		p, err := fetch(cursor, limit)
		if err != nil {
			return out, err
		}
		out.items = append(out.items, p.items...)
		out.next, out.total = p.next, p.total
		if !o.all || p.next == "" {
			return out, nil
		}
		if cursor != nil && *cursor == p.next {
			return out, errors.New("the server sent the same next_cursor twice")
		}
		cursor = ptr(p.next)
	}
}
