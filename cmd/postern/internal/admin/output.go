package admin

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// printJSON writes v, indented, to stdout.
func (s *session) printJSON(v any) error {
	enc := json.NewEncoder(s.env.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// printTable writes an aligned table with a header line to stdout. Cells
// come from the directory, so control characters are replaced: a display
// name must not be able to move the cursor or forge lines.
func (s *session) printTable(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(s.env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		cells := make([]string, len(row))
		for i, c := range row {
			if c == "" {
				c = "-"
			}
			cells[i] = sanitize(c, false)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// field is one line of a "key: value" block.
type field struct{ key, value string }

// printFields writes a "key: value" block to stdout, values aligned.
func (s *session) printFields(fields []field) error {
	tw := tabwriter.NewWriter(s.env.Stdout, 0, 0, 1, ' ', 0)
	for _, f := range fields {
		v := f.value
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f.key, sanitize(v, false))
	}
	return tw.Flush()
}

// printList writes a page of a list as a table, and says on stderr when
// more items exist than were shown.
func (s *session) printList(header []string, rows [][]string, next string, total int64) error {
	if err := s.printTable(header, rows); err != nil {
		return err
	}
	if next != "" {
		s.errorf("%d of %d shown; --all shows every one, --cursor %s the next page\n", len(rows), total, next)
	}
	return nil
}

// say writes a confirmation to stdout, except under --json (where the
// output is for programs and a delete prints nothing).
func (s *session) say(format string, args ...any) {
	if s.json {
		return
	}
	fmt.Fprint(s.env.Stdout, sanitize(fmt.Sprintf(format, args...), true))
}

// sanitize is Sanitize, under the name the package's commands use.
func sanitize(s string, keepNewlines bool) string { return Sanitize(s, keepNewlines) }

// Sanitize replaces control characters (escape sequences, carriage
// returns, tabs that would break a table) with U+FFFD; newlines survive
// only when keepNewlines. Every command of the binary passes what came
// from a server (a directory entry, a remote SMTP reply, an address from a
// message) through it before the operator's terminal.
func Sanitize(s string, keepNewlines bool) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '\n' && keepNewlines {
			return r
		}
		if unicode.IsControl(r) {
			return '\uFFFD'
		}
		return r
	}, s)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func list(items []string) string { return strings.Join(items, ", ") }

func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func optTimestamp(t *time.Time) string {
	if t == nil {
		return ""
	}
	return timestamp(*t)
}

// quota shows a size in bytes for people: "none" for 0, "1 GiB" for
// 1073741824; exact (with the byte count) otherwise.
func quota(n int64) string {
	if n == 0 {
		return "none"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	for i := len(units) - 1; i >= 0; i-- {
		size := int64(1) << (10 * (i + 1))
		if n >= size && n%size == 0 {
			return strconv.FormatInt(n/size, 10) + " " + units[i]
		}
	}
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/(1<<20), n)
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

func itoa[T ~int | ~int64](n T) string { return strconv.FormatInt(int64(n), 10) }
