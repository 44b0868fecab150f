// Package csvio reads and writes users as CSV, the import format of seed
// 002 with columns named by a header line, and writes the JSON export.
//
// Import (Parse) checks everything that one file can show on its own:
// the header, the CSV syntax, field counts, value syntax (usernames,
// addresses, booleans, numbers, the password policy and imported hash
// schemes) and duplicates within the file. It reports every problem with
// its physical line and column. What needs the directory (that sites and
// groups exist, addresses unique across the directory, template defaults)
// is the importer's: Row.User applies a template and LineErrorsFrom turns
// the directory's validation errors into line errors.
//
// Export (Write, WriteJSON) writes every column Parse reads except
// password, so that Parse(Write(users)) gives the users back exactly.
package csvio

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/postern/postern/services/users/internal/directory"
)

// Column names (case-insensitive in a header).
const (
	ColUsername        = "username"
	ColDescription     = "description"
	ColPassword        = "password"
	ColPasswordHash    = "password_hash"
	ColEmail           = "email"
	ColAliases         = "aliases"
	ColSite            = "site"
	ColGroups          = "groups"
	ColInternetReceive = "internet_receive"
	ColInternetSend    = "internet_send"
	ColEnabled         = "enabled"
	ColQuotaBytes      = "quota_bytes"
)

// ListSeparator separates the addresses of the aliases column and the
// names of the groups column.
const ListSeparator = ";"

// ExportColumns are the columns Write writes, in order.
var ExportColumns = []string{
	ColUsername, ColDescription, ColEmail, ColAliases, ColSite, ColGroups,
	ColInternetReceive, ColInternetSend, ColEnabled, ColQuotaBytes, ColPasswordHash,
}

var knownColumns = map[string]bool{
	ColUsername: true, ColDescription: true, ColPassword: true, ColPasswordHash: true, ColEmail: true,
	ColAliases: true, ColSite: true, ColGroups: true, ColInternetReceive: true, ColInternetSend: true,
	ColEnabled: true, ColQuotaBytes: true,
}

// LineError is one problem in an import file. Line is the physical line
// (1 is the header, unless empty lines precede it; a quoted field may span lines, and Line is where the
// field in question starts); Column is the column's name as the header
// spells it, or empty when the problem is the whole line.
type LineError struct {
	Line   int    `json:"line"`
	Column string `json:"column,omitempty"`
	Reason string `json:"reason"`
}

func (e LineError) Error() string {
	if e.Column == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Reason)
	}
	return fmt.Sprintf("line %d, column %s: %s", e.Line, e.Column, e.Reason)
}

// Given says which optional values a row gave: a column that is absent
// from the header, or a cell that is empty, is not given, so a template
// may supply the value.
type Given struct {
	Email           bool
	Aliases         bool
	Site            bool
	Groups          bool
	InternetReceive bool
	InternetSend    bool
	Enabled         bool
	QuotaBytes      bool
}

// Row is one accepted line: values normalized (username lower-cased,
// addresses by directory.NormalizeAddress, site and group names
// lower-cased), Description and Password exactly as written. At most one
// of Password and PasswordHash is set (none only for an export-shaped file,
// whose empty password_hash stands for a user without a password).
type Row struct {
	Line            int // physical line where the record starts
	Username        string
	Description     string
	Password        string // plain text, to be hashed; never log it
	PasswordHash    string // {ARGON2ID}... or {BLF-CRYPT}..., checked by directory.CheckImportedHash
	Email           string
	Aliases         []string
	Site            string
	Groups          []string
	InternetReceive bool
	InternetSend    bool
	Enabled         bool
	QuotaBytes      int64
	Given           Given
}

// Parse reads an import file. The first line is a header naming the
// columns in any order (trimmed, case-insensitive); username, description
// and one of password or password_hash are required; email, aliases,
// site, groups, internet_receive, internet_send, enabled and quota_bytes
// are optional; other names are errors. A UTF-8 byte order mark is
// skipped. Fields follow RFC 4180 (quotes, doubled quotes, commas and
// line breaks inside quoted fields; LF or CRLF line ends; white space
// before a field ignored); empty lines are skipped. Two consequences for
// hand-written files: an {ARGON2ID} hash contains commas and must be
// quoted, and so must a password that begins with white space.
//
// Each line needs exactly one of password and password_hash; booleans are
// true/false, yes/no or 1/0 in any case; quota_bytes is a non-negative
// integer; aliases and groups are lists separated by ';'. A username, and
// an address (email or alias), may appear once in the file.
//
// Parse returns the rows of the lines without problems, and every problem
// of every line (not just the first). A header problem stops it: rows are
// then not read. The caller should import nothing unless errs is empty.
func Parse(r io.Reader) (rows []Row, errs []LineError) {
	br := bufio.NewReader(r)
	if bom, err := br.Peek(3); err == nil && bytes.Equal(bom, []byte("\uFEFF")) {
		br.Discard(3)
	}
	cr := csv.NewReader(br)
	cr.TrimLeadingSpace = true
	cr.LazyQuotes = false
	cr.ReuseRecord = true
	cr.FieldsPerRecord = -1 // checked here, to say it clearly and go on

	header, err := cr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []LineError{{Line: 1, Reason: "empty file: want a header line naming the columns, like username,description,password"}}
		}
		return nil, []LineError{csvError(err, 1)}
	}
	headerLine, _ := cr.FieldPos(0)
	cols, errs := parseHeader(header, headerLine)
	if len(errs) > 0 {
		return nil, errs
	}

	p := parser{cols: cols, usernames: map[string]int{}, addresses: map[string]int{}}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			le := csvError(err, p.lastLine+1)
			errs = append(errs, le)
			var pe *csv.ParseError
			if !errors.As(err, &pe) {
				break // an I/O error: nothing more can be read
			}
			p.lastLine = pe.Line
			continue
		}
		start, _ := cr.FieldPos(0)
		end, _ := cr.FieldPos(len(rec) - 1)
		p.lastLine = end
		if len(rec) != len(cols) {
			hint := ""
			if len(rec) > len(cols) {
				hint = " (quote fields that contain commas)"
			}
			errs = append(errs, LineError{Line: start,
				Reason: fmt.Sprintf("%d fields, but the header has %d columns%s", len(rec), len(cols), hint)})
			continue
		}
		row, rowErrs := p.row(rec, start, func(i int) int { l, _ := cr.FieldPos(i); return l })
		if len(rowErrs) > 0 {
			errs = append(errs, rowErrs...)
			continue
		}
		rows = append(rows, row)
	}
	return rows, errs
}

// column is one column of the file: its canonical name and its name as
// the header spells it (for error messages).
type column struct {
	name, header string
}

func parseHeader(rec []string, line int) ([]column, []LineError) {
	var errs []LineError
	cols := make([]column, len(rec))
	seen := map[string]bool{}
	var unknown []string
	for i, h := range rec {
		name := strings.ToLower(strings.TrimSpace(h))
		cols[i] = column{name: name, header: strings.TrimSpace(h)}
		switch {
		case !utf8.ValidString(h):
			errs = append(errs, LineError{Line: line, Reason: fmt.Sprintf("column %d: name is not valid UTF-8 (save the file as UTF-8)", i+1)})
		case name == "":
			errs = append(errs, LineError{Line: line, Reason: fmt.Sprintf("column %d has no name", i+1)})
		case !knownColumns[name]:
			unknown = append(unknown, cols[i].header)
			errs = append(errs, LineError{Line: line, Column: cols[i].header, Reason: "unknown column"})
		case seen[name]:
			errs = append(errs, LineError{Line: line, Column: cols[i].header, Reason: "column given twice"})
		}
		seen[name] = true
	}
	for _, req := range []string{ColUsername, ColDescription} {
		if !seen[req] {
			errs = append(errs, LineError{Line: line, Column: req, Reason: "required column missing"})
		}
	}
	if !seen[ColPassword] && !seen[ColPasswordHash] {
		errs = append(errs, LineError{Line: line, Column: ColPassword, Reason: "required column missing: give password or password_hash"})
	}
	if len(unknown) > 0 {
		errs = append(errs, LineError{Line: line, Reason: fmt.Sprintf("unknown columns %q; the columns are %s", unknown, strings.Join(allColumns(), ", "))})
	}
	return cols, errs
}

func allColumns() []string {
	return []string{ColUsername, ColDescription, ColPassword, ColPasswordHash, ColEmail, ColAliases, ColSite, ColGroups,
		ColInternetReceive, ColInternetSend, ColEnabled, ColQuotaBytes}
}

// csvError turns an encoding/csv error into a LineError.
func csvError(err error, line int) LineError {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return LineError{Line: line, Reason: "read error: " + err.Error()}
	}
	switch {
	case errors.Is(pe.Err, csv.ErrBareQuote):
		return LineError{Line: pe.Line, Reason: `a " in a field that is not quoted: quote the whole field and double the quotes inside, like "John ""JD"" Doe"`}
	case errors.Is(pe.Err, csv.ErrQuote):
		if pe.StartLine != pe.Line {
			return LineError{Line: pe.Line, Reason: fmt.Sprintf(`unterminated or malformed quoted field (the record starts on line %d): a quoted field must end with " followed by a comma or the end of the line`, pe.StartLine)}
		}
		return LineError{Line: pe.Line, Reason: `malformed quoted field: a quoted field must end with " followed by a comma or the end of the line`}
	}
	return LineError{Line: pe.Line, Reason: pe.Err.Error()}
}

// parser holds what one file's rows are checked against.
type parser struct {
	cols      []column
	usernames map[string]int // username -> line
	addresses map[string]int // address -> line
	lastLine  int
}

// row checks one record of the right length.
func (p *parser) row(rec []string, start int, lineOf func(int) int) (Row, []LineError) {
	row := Row{Line: start}
	var errs []LineError
	fail := func(i int, format string, args ...any) {
		errs = append(errs, LineError{Line: lineOf(i), Column: p.cols[i].header, Reason: fmt.Sprintf(format, args...)})
	}
	pwCol, hashCol := -1, -1
	var addrs []struct {
		col  int
		addr string
	}
	for i, raw := range rec {
		if !utf8.ValidString(raw) {
			fail(i, "not valid UTF-8 (save the file as UTF-8)")
			continue
		}
		v := strings.TrimSpace(raw)
		switch p.cols[i].name {
		case ColUsername:
			u := strings.ToLower(v)
			if u == "" {
				fail(i, "empty username")
				continue
			}
			if err := directory.ValidUsername(u); err != nil {
				fail(i, "%v", err)
				continue
			}
			if first, dup := p.usernames[u]; dup {
				fail(i, "duplicate username %q (first on line %d)", u, first)
				continue
			}
			p.usernames[u] = start
			row.Username = u
		case ColDescription:
			row.Description = raw
		case ColPassword:
			if raw == "" {
				continue
			}
			pwCol = i
			if err := directory.CheckPassword(raw); err != nil {
				fail(i, "%v", err) // the reason never contains the password
				continue
			}
			row.Password = raw
		case ColPasswordHash:
			if v == "" {
				continue
			}
			hashCol = i
			if err := directory.CheckImportedHash(v); err != nil {
				fail(i, "%v", err)
				continue
			}
			row.PasswordHash = v
		case ColEmail:
			if v == "" {
				continue
			}
			a, err := directory.NormalizeAddress(v)
			if err != nil {
				fail(i, "%v", err)
				continue
			}
			row.Email, row.Given.Email = a, true
			addrs = append(addrs, struct {
				col  int
				addr string
			}{i, a})
		case ColAliases:
			items := splitList(v)
			if len(items) == 0 {
				continue
			}
			row.Given.Aliases = true
			row.Aliases = []string{}
			for _, item := range items {
				a, err := directory.NormalizeAddress(item)
				if err != nil {
					fail(i, "alias %q: %v", item, err)
					continue
				}
				row.Aliases = append(row.Aliases, a)
				addrs = append(addrs, struct {
					col  int
					addr string
				}{i, a})
			}
		case ColSite:
			if v == "" {
				continue
			}
			s := strings.ToLower(v)
			if err := directory.ValidSlug(s); err != nil {
				fail(i, "site %q: %v", v, err)
				continue
			}
			row.Site, row.Given.Site = s, true
		case ColGroups:
			items := splitList(v)
			if len(items) == 0 {
				continue
			}
			row.Given.Groups = true
			row.Groups = []string{}
			seen := map[string]bool{}
			for _, item := range items {
				g := strings.ToLower(item)
				if err := directory.ValidSlug(g); err != nil {
					fail(i, "group %q: %v", item, err)
					continue
				}
				if seen[g] {
					fail(i, "group %q given twice", g)
					continue
				}
				seen[g] = true
				row.Groups = append(row.Groups, g)
			}
		case ColInternetReceive, ColInternetSend, ColEnabled:
			if v == "" {
				continue
			}
			b, ok := parseBool(v)
			if !ok {
				fail(i, "%q is not a boolean: use true/false, yes/no or 1/0", v)
				continue
			}
			switch p.cols[i].name {
			case ColInternetReceive:
				row.InternetReceive, row.Given.InternetReceive = b, true
			case ColInternetSend:
				row.InternetSend, row.Given.InternetSend = b, true
			case ColEnabled:
				row.Enabled, row.Given.Enabled = b, true
			}
		case ColQuotaBytes:
			if v == "" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				fail(i, "%q is not a number of bytes (a whole number, 0 for no quota)", v)
				continue
			}
			row.QuotaBytes, row.Given.QuotaBytes = n, true
		}
	}
	switch {
	case pwCol >= 0 && hashCol >= 0:
		fail(hashCol, "give password or password_hash, not both")
	case pwCol < 0 && hashCol < 0:
		// A file with only a password_hash column is an export: an empty
		// hash is a user without a password (who cannot log in until one
		// is set), as it was exported. Where a password column exists, an
		// empty one is a mistake.
		if col := p.columnIndex(ColPassword); col >= 0 {
			fail(col, "required: give password or password_hash")
		}
	}
	// Addresses: each once in the row and in the file.
	inRow := map[string]bool{}
	for _, a := range addrs {
		if inRow[a.addr] {
			fail(a.col, "address %q given twice on this line", a.addr)
			continue
		}
		inRow[a.addr] = true
		if first, dup := p.addresses[a.addr]; dup {
			fail(a.col, "address %q is also on line %d", a.addr, first)
			continue
		}
		p.addresses[a.addr] = start
	}
	return row, errs
}

func (p *parser) columnIndex(name string) int {
	for i, c := range p.cols {
		if c.name == name {
			return i
		}
	}
	return -1
}

// parseBool accepts true/false, yes/no and 1/0 in any case.
func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "true", "yes", "1":
		return true, true
	case "false", "no", "0":
		return false, true
	}
	return false, false
}

// splitList splits a ';'-separated list, trimming items and dropping
// empty ones. A ';' inside double quotes (a quoted local part such as
// "a;b"@example.org, with backslash escapes) does not separate.
func splitList(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped := false, false
	flush := func() {
		if item := strings.TrimSpace(cur.String()); item != "" {
			out = append(out, item)
		}
		cur.Reset()
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == ';':
			flush()
			continue
		}
		cur.WriteByte(c)
	}
	flush()
	return out
}

// ExportUser is one user as exported: the import columns, with the
// password as its stored hash.
type ExportUser struct {
	Username        string   `json:"username"`
	Description     string   `json:"description"`
	Email           string   `json:"email"`
	Aliases         []string `json:"aliases"`
	Site            string   `json:"site"`
	Groups          []string `json:"groups"`
	InternetReceive bool     `json:"internet_receive"`
	InternetSend    bool     `json:"internet_send"`
	Enabled         bool     `json:"enabled"`
	QuotaBytes      int64    `json:"quota_bytes"`
	PasswordHash    string   `json:"password_hash"`
}

// FromUser is the export form of a directory user.
func FromUser(u *directory.User) ExportUser {
	return ExportUser{
		Username:        u.Username,
		Description:     u.DisplayName,
		Email:           u.PrimaryAddress,
		Aliases:         append([]string{}, u.Aliases...),
		Site:            u.Site,
		Groups:          append([]string{}, u.Groups...),
		InternetReceive: u.Permissions.InternetReceive,
		InternetSend:    u.Permissions.InternetSend,
		Enabled:         u.Enabled,
		QuotaBytes:      u.QuotaBytes,
		PasswordHash:    u.PasswordHash,
	}
}

// Write writes users as CSV with a header of ExportColumns, LF line ends
// and quotes only where needed; booleans are true/false, lists are joined
// with ';'. Parse reads it back to the same values, provided the values
// are what Parse produces (normalized users from the directory are): a
// CR LF inside a value comes back as LF, as encoding/csv reads it.
func Write(w io.Writer, users []ExportUser) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(ExportColumns); err != nil {
		return fmt.Errorf("export csv: %w", err)
	}
	rec := make([]string, len(ExportColumns))
	for _, u := range users {
		rec[0] = u.Username
		rec[1] = u.Description
		rec[2] = u.Email
		rec[3] = strings.Join(u.Aliases, ListSeparator)
		rec[4] = u.Site
		rec[5] = strings.Join(u.Groups, ListSeparator)
		rec[6] = strconv.FormatBool(u.InternetReceive)
		rec[7] = strconv.FormatBool(u.InternetSend)
		rec[8] = strconv.FormatBool(u.Enabled)
		rec[9] = strconv.FormatInt(u.QuotaBytes, 10)
		rec[10] = u.PasswordHash
		if err := cw.Write(rec); err != nil {
			return fmt.Errorf("export csv: %w", err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("export csv: %w", err)
	}
	return nil
}

// WriteJSON writes users as a JSON array, one user per line, lists as
// arrays (never null).
func WriteJSON(w io.Writer, users []ExportUser) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("[")
	for i, u := range users {
		if u.Aliases == nil {
			u.Aliases = []string{}
		}
		if u.Groups == nil {
			u.Groups = []string{}
		}
		b, err := json.Marshal(u)
		if err != nil {
			return fmt.Errorf("export json: %w", err)
		}
		if i > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n")
		bw.Write(b)
	}
	if len(users) > 0 {
		bw.WriteString("\n")
	}
	bw.WriteString("]\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export json: %w", err)
	}
	return nil
}

// User builds the directory user a row describes, taking every value the
// row does not give from defaults (a template, or the importer's defaults
// when none is named). PasswordHash is the row's imported hash; a row
// with a plain Password needs it hashed (directory.HashPassword) by the
// caller. The result is not normalized: call Normalize and report its
// errors with LineErrorsFrom(r.Line, err).
func (r *Row) User(defaults directory.Template) directory.User {
	u := directory.User{
		Username:       r.Username,
		DisplayName:    r.Description,
		PrimaryAddress: r.Email,
		Aliases:        []string{},
		Site:           defaults.Site,
		Groups:         append([]string{}, defaults.Groups...),
		Enabled:        defaults.Enabled,
		Permissions:    defaults.Permissions,
		QuotaBytes:     defaults.QuotaBytes,
		PasswordHash:   r.PasswordHash,
	}
	if r.Given.Aliases {
		u.Aliases = append(u.Aliases, r.Aliases...)
	}
	if r.Given.Site {
		u.Site = r.Site
	}
	if r.Given.Groups {
		u.Groups = append([]string{}, r.Groups...)
	}
	if r.Given.Enabled {
		u.Enabled = r.Enabled
	}
	if r.Given.InternetReceive {
		u.Permissions.InternetReceive = r.InternetReceive
	}
	if r.Given.InternetSend {
		u.Permissions.InternetSend = r.InternetSend
	}
	if r.Given.QuotaBytes {
		u.QuotaBytes = r.QuotaBytes
	}
	return u
}

// userFieldColumns maps directory.User fields (as in FieldError.Field,
// without an index) to import columns.
var userFieldColumns = map[string]string{
	"username":                     ColUsername,
	"display_name":                 ColDescription,
	"primary_address":              ColEmail,
	"aliases":                      ColAliases,
	"site":                         ColSite,
	"groups":                       ColGroups,
	"enabled":                      ColEnabled,
	"permissions.internet_receive": ColInternetReceive,
	"permissions.internet_send":    ColInternetSend,
	"quota_bytes":                  ColQuotaBytes,
	"password":                     ColPassword,
	"password_hash":                ColPasswordHash,
}

// LineErrorsFrom reports an error about the user of the row on line as
// line errors: each field of a *directory.ValidationError under its
// import column (display_name under description, primary_address under
// email, aliases[2] under aliases, ...); any other error as one error of
// the whole line.
func LineErrorsFrom(line int, err error) []LineError {
	if err == nil {
		return nil
	}
	var ve *directory.ValidationError
	if !errors.As(err, &ve) {
		return []LineError{{Line: line, Reason: err.Error()}}
	}
	out := make([]LineError, 0, len(ve.Errors))
	for _, fe := range ve.Errors {
		field := fe.Field
		if i := strings.IndexByte(field, '['); i >= 0 {
			field = field[:i]
		}
		col, ok := userFieldColumns[field]
		if !ok {
			col = fe.Field
		}
		reason := fe.Reason
		if col != fe.Field && strings.Contains(fe.Field, "[") {
			reason = fe.Field + ": " + reason
		}
		out = append(out, LineError{Line: line, Column: col, Reason: reason})
	}
	return out
}
