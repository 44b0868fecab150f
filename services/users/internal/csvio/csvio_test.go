package csvio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/postern/postern/services/users/internal/directory"
)

const (
	argonHash  = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sAmO+jWqaGoqBDeuwIpJQg$Y4pRDf2Sr/6b34dOOMd/tPIb5eJ1N/HAbXAh/VhVZxE"
	bcryptHash = "{BLF-CRYPT}$2y$05$YTYusCNVo7P1PFKohbFbuOrUC9/hHazwR3qTdpQN1.t4mYWOkAAI6"
)

func parseString(t *testing.T, s string) ([]Row, []LineError) {
	t.Helper()
	return Parse(strings.NewReader(s))
}

func mustParse(t *testing.T, s string) []Row {
	t.Helper()
	rows, errs := parseString(t, s)
	if len(errs) > 0 {
		t.Fatalf("Parse: %v", errs)
	}
	return rows
}

func TestParseSeedExample(t *testing.T) {
	// Seed 002's example, with a password long enough for the policy.
	rows := mustParse(t, "\"username\",\"description\",\"password\"\n\"john\",\"John Doe\",\"abcdefgh\"\n")
	want := []Row{{Line: 2, Username: "john", Description: "John Doe", Password: "abcdefgh"}}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows = %+v\nwant %+v", rows, want)
	}
	// The seed's own "abcd" is below the policy: the error says so without the password.
	_, errs := parseString(t, "\"username\",\"description\",\"password\"\n\"john\",\"John Doe\",\"abcd\"\n")
	if len(errs) != 1 || errs[0].Line != 2 || errs[0].Column != "password" || strings.Contains(errs[0].Reason, "abcd") {
		t.Errorf("errors = %v", errs)
	}
}

func TestParseHeaderOrderCaseBOMAndCRLF(t *testing.T) {
	in := "\uFEFF Password ,DESCRIPTION,UserName, Email\r\n" +
		"secret-one,Ann,Ann,Ann@Example.org\r\n" +
		"\r\n" + // empty lines are skipped, but lines still count
		"secret-two,  Bob , bob ,\r\n"
	rows := mustParse(t, in)
	want := []Row{
		{Line: 2, Username: "ann", Description: "Ann", Password: "secret-one", Email: "ann@example.org", Given: Given{Email: true}},
		{Line: 4, Username: "bob", Description: "Bob ", Password: "secret-two"},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows = %+v\nwant %+v", rows, want)
	}
}

func TestParseAllColumns(t *testing.T) {
	in := "username,description,password_hash,email,aliases,site,groups,internet_receive,internet_send,enabled,quota_bytes\n" +
		`zhang,"Zhang, San",` + bcryptHash + `,zhang@example.org," zs@example.org ; San@Bücher.de ;",HQ,Sales;support,YES,no,1,1073741824` + "\n" +
		`li,Li Si,"` + argonHash + `",,,,,,,,` + "\n"
	rows := mustParse(t, in)
	want := []Row{
		{Line: 2, Username: "zhang", Description: "Zhang, San", PasswordHash: bcryptHash, Email: "zhang@example.org",
			Aliases: []string{"zs@example.org", "san@xn--bcher-kva.de"}, Site: "hq", Groups: []string{"sales", "support"},
			InternetReceive: true, InternetSend: false, Enabled: true, QuotaBytes: 1 << 30,
			Given: Given{Email: true, Aliases: true, Site: true, Groups: true, InternetReceive: true, InternetSend: true, Enabled: true, QuotaBytes: true}},
		{Line: 3, Username: "li", Description: "Li Si", PasswordHash: argonHash},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows = %+v\nwant %+v", rows, want)
	}
}

func TestParseBooleans(t *testing.T) {
	for in, want := range map[string]bool{"true": true, "TRUE": true, "Yes": true, "1": true, "false": false, "No": false, "0": false, " fAlSe ": false} {
		rows, errs := parseString(t, "username,description,password,enabled\nu,d,password1,"+in+"\n")
		if len(errs) > 0 || len(rows) != 1 || rows[0].Enabled != want || !rows[0].Given.Enabled {
			t.Errorf("enabled %q: rows %+v errs %v", in, rows, errs)
		}
	}
	for _, in := range []string{"y", "n", "on", "off", "2", "-1", "truee"} {
		_, errs := parseString(t, "username,description,password,enabled\nu,d,password1,"+in+"\n")
		if len(errs) != 1 || errs[0].Column != "enabled" {
			t.Errorf("enabled %q: errs %v", in, errs)
		}
	}
}

func TestParseQuotedFields(t *testing.T) {
	in := "username,description,password\n" +
		`a,"Doe, John ""JD""",password1` + "\n" +
		`b,"two` + "\n" + `lines, and ""quotes""",password2` + "\n" +
		`c,"Ünïcödé 名前",password3` + "\n" +
		`d, "  leading spaces kept inside quotes",password4` + "\n"
	rows := mustParse(t, in)
	want := []struct {
		line int
		desc string
	}{{2, `Doe, John "JD"`}, {3, "two\nlines, and \"quotes\""}, {5, "Ünïcödé 名前"}, {6, "  leading spaces kept inside quotes"}}
	if len(rows) != len(want) {
		t.Fatalf("rows = %+v", rows)
	}
	for i, w := range want {
		if rows[i].Line != w.line || rows[i].Description != w.desc {
			t.Errorf("row %d = line %d %q, want line %d %q", i, rows[i].Line, rows[i].Description, w.line, w.desc)
		}
	}
}

func TestParseHeaderErrors(t *testing.T) {
	tests := []struct {
		in   string
		want []LineError
	}{
		{"", []LineError{{Line: 1, Reason: "empty file: want a header line naming the columns, like username,description,password"}}},
		{"username,description,password,Colour,shoe size\nu,d,p,x,y\n", []LineError{
			{Line: 1, Column: "Colour", Reason: "unknown column"},
			{Line: 1, Column: "shoe size", Reason: "unknown column"},
			{Line: 1, Reason: `unknown columns ["Colour" "shoe size"]; the columns are username, description, password, password_hash, email, aliases, site, groups, internet_receive, internet_send, enabled, quota_bytes`},
		}},
		{"username,description\nu,d\n", []LineError{{Line: 1, Column: "password", Reason: "required column missing: give password or password_hash"}}},
		{"password,email\n", []LineError{
			{Line: 1, Column: "username", Reason: "required column missing"},
			{Line: 1, Column: "description", Reason: "required column missing"},
		}},
		{"username,description,password,Username,\n", []LineError{
			{Line: 1, Column: "Username", Reason: "column given twice"},
			{Line: 1, Reason: "column 5 has no name"},
		}},
		{"\n\nusername,description,pass\n", []LineError{
			{Line: 3, Column: "pass", Reason: "unknown column"},
			{Line: 3, Column: "password", Reason: "required column missing: give password or password_hash"},
			{Line: 3, Reason: `unknown columns ["pass"]; the columns are username, description, password, password_hash, email, aliases, site, groups, internet_receive, internet_send, enabled, quota_bytes`},
		}},
		{`username,"desc"ription,password` + "\n", []LineError{{Line: 1, Reason: `malformed quoted field: a quoted field must end with " followed by a comma or the end of the line`}}},
	}
	for _, tt := range tests {
		rows, errs := parseString(t, tt.in)
		if rows != nil || !reflect.DeepEqual(errs, tt.want) {
			t.Errorf("Parse(%q) = %v,\n%#v\nwant %#v", tt.in, rows, errs, tt.want)
		}
	}
}

// TestParseReportsEveryBadLine is the import's promise: every bad line is
// named, with its physical line, column and reason, and only good lines
// become rows.
func TestParseReportsEveryBadLine(t *testing.T) {
	lines := []string{
		/* 1 */ "username,description,password,password_hash,email,aliases,site,groups,enabled,quota_bytes",
		/* 2 */ "good,Good One,password1,,good@example.org,g1@example.org,hq,sales,true,0",
		/* 3 */ "toofew,x",
		/* 4 */ `multi,"a description`,
		/* 5 */ `over two lines",password2,,,,,,,`,
		/* 6 */ ",no name,password3,,,,,,,",
		/* 7 */ "Good,duplicate of line 2,password4,,,,,,,",
		/* 8 */ "bad user,x,password5,,,,,,,",
		/* 9 */ "both,x,password6," + bcryptHash + ",,,,,,",
		/* 10 */ "neither,x,,,,,,,,",
		/* 11 */ "shortpw,x,tiny7,,,,,,,",
		/* 12 */ "badhash,x,,{PLAIN}secret,,,,,,",
		/* 13 */ "bademail,x,password8,,John Doe <jd@example.org>,,,,,",
		/* 14 */ "badalias,x,password9,,ba@example.org,ok@example.org;nodomain@;ba@example.org,,,,",
		/* 15 */ "dupaddr,x,password10,,G1@example.org,,,,,",
		/* 16 */ "badsite,x,password11,,,,Head Office,,,",
		/* 17 */ "badgroups,x,password12,,,,,sales;bad group;Sales,,",
		/* 18 */ "badbool,x,password13,,,,,,maybe,",
		/* 19 */ "badquota,x,password14,,,,,,,-5",
		/* 20 */ "badquota2,x,password15,,,,,,,10GB",
		/* 21 */ `bare"quote,x,password16,,,,,,,`,
		/* 22 */ "latin1,caf\xe9,password17,,,,,,,",
		/* 23 */ "many,x,,,bad,bad,BAD SITE,,nope,x",
		/* 24 */ "last,Last One,password18,,,,,,,",
	}
	rows, errs := parseString(t, strings.Join(lines, "\n")+"\n")
	want := []LineError{
		{3, "", "2 fields, but the header has 10 columns"},
		{6, "username", "empty username"},
		{7, "username", `duplicate username "good" (first on line 2)`},
		{8, "username", `character ' ' is not allowed: use lower-case letters, digits, '.', '_' and '-'`},
		{9, "password_hash", "give password or password_hash, not both"},
		{10, "password", "required: give password or password_hash"},
		{11, "password", "shorter than 8 characters"},
		{12, "password_hash", "unsupported password scheme {PLAIN}: use {ARGON2ID} or {BLF-CRYPT}"},
		{13, "email", "angle brackets or a display name are not allowed: give the bare address, like name@example.org"},
		{14, "aliases", `alias "nodomain@": missing domain after @`},
		{14, "aliases", `address "ba@example.org" given twice on this line`},
		{15, "email", `address "g1@example.org" is also on line 2`},
		{16, "site", `site "Head Office": character ' ' is not allowed: use lower-case letters, digits and '-'`},
		{17, "groups", `group "bad group": character ' ' is not allowed: use lower-case letters, digits and '-'`},
		{17, "groups", `group "sales" given twice`},
		{18, "enabled", `"maybe" is not a boolean: use true/false, yes/no or 1/0`},
		{19, "quota_bytes", `"-5" is not a number of bytes (a whole number, 0 for no quota)`},
		{20, "quota_bytes", `"10GB" is not a number of bytes (a whole number, 0 for no quota)`},
		{21, "", `a " in a field that is not quoted: quote the whole field and double the quotes inside, like "John ""JD"" Doe"`},
		{22, "description", "not valid UTF-8 (save the file as UTF-8)"},
		{23, "email", "missing @domain"},
		{23, "aliases", `alias "bad": missing @domain`},
		{23, "site", `site "BAD SITE": character ' ' is not allowed: use lower-case letters, digits and '-'`},
		{23, "enabled", `"nope" is not a boolean: use true/false, yes/no or 1/0`},
		{23, "quota_bytes", `"x" is not a number of bytes (a whole number, 0 for no quota)`},
		{23, "password", "required: give password or password_hash"},
	}
	if !reflect.DeepEqual(errs, want) {
		var b strings.Builder
		for _, e := range errs {
			fmt.Fprintf(&b, "\t%#v\n", e)
		}
		t.Errorf("errors:\n%s", b.String())
		for i := range max(len(errs), len(want)) {
			if i >= len(errs) || i >= len(want) || errs[i] != want[i] {
				t.Errorf("first difference at %d", i)
				break
			}
		}
	}
	var names []string
	for _, r := range rows {
		names = append(names, fmt.Sprintf("%s@%d", r.Username, r.Line))
	}
	if got, want := strings.Join(names, " "), "good@2 multi@4 last@24"; got != want {
		t.Errorf("accepted rows %s, want %s", got, want)
	}
	for _, e := range errs {
		if strings.Contains(e.Reason, "tiny7") || strings.Contains(e.Error(), "tiny7") {
			t.Errorf("an error shows a password: %v", e)
		}
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"a;b":                         {"a", "b"},
		" a ; ;b;":                    {"a", "b"},
		";;":                          nil,
		`"x;y"@example.org;z@x.org`:   {`"x;y"@example.org`, "z@x.org"},
		`"x\";y"@example.org;z@x.org`: {`"x\";y"@example.org`, "z@x.org"},
	} {
		if got := splitList(in); !reflect.DeepEqual(got, want) {
			t.Errorf("splitList(%q) = %q, want %q", in, got, want)
		}
	}
}

func exportUsers() []ExportUser {
	return []ExportUser{
		{Username: "john", Description: "Doe, John \"JD\"", Email: "john@example.org",
			Aliases: []string{"jd@example.org", `"j;d, jr"@example.org`, "john@xn--bcher-kva.de"}, Site: "hq",
			Groups: []string{"sales", "support"}, InternetReceive: true, InternetSend: true, Enabled: true, QuotaBytes: 1 << 40, PasswordHash: argonHash},
		{Username: "zhang.san", Description: "张三\nSales desk, 2nd floor", Email: "zhang@example.org", Aliases: []string{},
			Site: "branch-1", Groups: []string{}, Enabled: false, QuotaBytes: 0, PasswordHash: bcryptHash},
		{Username: "x", Description: "  leading and trailing  ", Email: "x@example.org", Aliases: []string{}, Groups: []string{}, PasswordHash: bcryptHash},
		{Username: "y", Description: "", Email: "y@example.org", Aliases: []string{}, Groups: []string{}, PasswordHash: argonHash},
		{Username: "z", Description: `\.`, Email: "z@example.org", Aliases: []string{}, Groups: []string{}, PasswordHash: argonHash},
		{Username: "w", Description: "carriage\rreturn \"quoted\"\n", Email: "w@example.org", Aliases: []string{}, Groups: []string{}, PasswordHash: argonHash},
	}
}

// toExport is the export form of a parsed row (lists never nil).
func toExport(r Row) ExportUser {
	return ExportUser{Username: r.Username, Description: r.Description, Email: r.Email,
		Aliases: append([]string{}, r.Aliases...), Site: r.Site, Groups: append([]string{}, r.Groups...),
		InternetReceive: r.InternetReceive, InternetSend: r.InternetSend, Enabled: r.Enabled, QuotaBytes: r.QuotaBytes, PasswordHash: r.PasswordHash}
}

func TestWriteParseRoundTrip(t *testing.T) {
	users := exportUsers()
	var buf bytes.Buffer
	if err := Write(&buf, users); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), strings.Join(ExportColumns, ",")+"\n") {
		t.Errorf("header = %q", strings.SplitN(buf.String(), "\n", 2)[0])
	}
	rows, errs := Parse(&buf)
	if len(errs) > 0 {
		t.Fatalf("Parse(Write(users)): %v", errs)
	}
	var got []ExportUser
	for _, r := range rows {
		got = append(got, toExport(r))
	}
	if !reflect.DeepEqual(got, users) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, users)
	}
	// Every exported row gives every value.
	for _, r := range rows {
		if !r.Given.InternetReceive || !r.Given.InternetSend || !r.Given.Enabled || !r.Given.QuotaBytes || !r.Given.Email {
			t.Errorf("row %d: given = %+v", r.Line, r.Given)
		}
	}
}

func TestWriteFromDirectoryUsers(t *testing.T) {
	u := directory.User{Username: " John ", DisplayName: "Doe, John", PrimaryAddress: "John@Bücher.de",
		Aliases: []string{`"A;B"@example.org`}, Site: "HQ", Groups: []string{"Sales"}, Enabled: true,
		Permissions: directory.Permissions{InternetReceive: true}, QuotaBytes: 42, PasswordHash: argonHash}
	if err := u.Normalize(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, []ExportUser{FromUser(&u)}); err != nil {
		t.Fatal(err)
	}
	rows := mustParse(t, buf.String())
	back := rows[0].User(directory.Template{})
	if err := back.Normalize(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, u) {
		t.Errorf("export/import:\n got %+v\nwant %+v", back, u)
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, nil); err != nil || buf.String() != "[]\n" {
		t.Errorf("WriteJSON(nil) = %q, %v", buf.String(), err)
	}
	buf.Reset()
	users := exportUsers()
	users[1].Aliases, users[1].Groups = nil, nil
	if err := WriteJSON(&buf, users); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "null") {
		t.Errorf("JSON export has null lists:\n%s", buf.String())
	}
	var got []ExportUser
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	want := exportUsers()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("JSON round trip:\n got %+v\nwant %+v", got, want)
	}
	if n := strings.Count(buf.String(), "\n"); n != len(users)+2 {
		t.Errorf("want one user per line, got %d lines:\n%s", n, buf.String())
	}
}

func TestRowUserAppliesTemplate(t *testing.T) {
	tmpl := directory.Template{Name: "staff", Site: "hq", Groups: []string{"all"}, Enabled: true,
		Permissions: directory.Permissions{InternetReceive: true, InternetSend: true}, QuotaBytes: 100}
	rows := mustParse(t, "username,description,password_hash,site,groups,internet_send,enabled,quota_bytes\n"+
		"a,A,\""+argonHash+"\",,,,,\n"+
		"b,B,\""+argonHash+"\",branch,x;y,no,false,0\n")
	a := rows[0].User(tmpl)
	wantA := directory.User{Username: "a", DisplayName: "A", Aliases: []string{}, Site: "hq", Groups: []string{"all"}, Enabled: true,
		Permissions: directory.Permissions{InternetReceive: true, InternetSend: true}, QuotaBytes: 100, PasswordHash: argonHash}
	if !reflect.DeepEqual(a, wantA) {
		t.Errorf("defaults:\n got %+v\nwant %+v", a, wantA)
	}
	b := rows[1].User(tmpl)
	wantB := directory.User{Username: "b", DisplayName: "B", Aliases: []string{}, Site: "branch", Groups: []string{"x", "y"}, Enabled: false,
		Permissions: directory.Permissions{InternetReceive: true, InternetSend: false}, QuotaBytes: 0, PasswordHash: argonHash}
	if !reflect.DeepEqual(b, wantB) {
		t.Errorf("given values:\n got %+v\nwant %+v", b, wantB)
	}
	a.Groups[0] = "changed"
	if tmpl.Groups[0] != "all" {
		t.Error("the template's groups were aliased")
	}
}

func TestLineErrorsFrom(t *testing.T) {
	u := directory.User{Username: "ok", DisplayName: "bad\nname", PrimaryAddress: "x", Site: "hq", Aliases: []string{"a@example.org", "nope"}, QuotaBytes: -1}
	got := LineErrorsFrom(7, u.Normalize())
	want := []LineError{
		{7, "description", "control characters (line breaks included) are not allowed"},
		{7, "email", "missing @domain"},
		{7, "aliases", "aliases[1]: missing @domain"},
		{7, "quota_bytes", "may not be negative (0 means no quota)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LineErrorsFrom = %#v\nwant %#v", got, want)
	}
	if got := LineErrorsFrom(3, errors.New(`site "x" does not exist`)); !reflect.DeepEqual(got, []LineError{{3, "", `site "x" does not exist`}}) {
		t.Errorf("plain error: %#v", got)
	}
	if LineErrorsFrom(3, nil) != nil {
		t.Error("nil error gives line errors")
	}
}

func TestLineErrorString(t *testing.T) {
	if got := (LineError{Line: 4, Column: "email", Reason: "missing @domain"}).Error(); got != "line 4, column email: missing @domain" {
		t.Error(got)
	}
	if got := (LineError{Line: 4, Reason: "2 fields"}).Error(); got != "line 4: 2 fields" {
		t.Error(got)
	}
}

// FuzzParse: Parse never panics, reports problems with sane line numbers,
// and every accepted row comes back unchanged through Write and Parse.
func FuzzParse(f *testing.F) {
	var buf bytes.Buffer
	Write(&buf, exportUsers())
	f.Add(buf.String())
	f.Add("username,description,password\njohn,John Doe,abcdefgh\n")
	f.Add("\uFEFFUserName, Description ,PASSWORD,aliases,groups\r\n\"j\",\"a\nb\",\"pw  pw  pw\",\"a@b.cd;\"\"x;y\"\"@e.fg\",x;y\r\n")
	f.Add("username,description,password_hash,email,enabled,quota_bytes,site,internet_receive,internet_send\nA,b," + bcryptHash + ",A@B.CD,YES,007,HQ,0,1\n")
	f.Add("username,description,password\n\"a\"b,c,d\n")
	f.Add("username,description,password\n\"a,b,c\n")
	f.Fuzz(func(t *testing.T, in string) {
		lines := strings.Count(in, "\n") + 1
		rows, errs := Parse(strings.NewReader(in))
		for _, e := range errs {
			if e.Line < 1 || e.Line > lines {
				t.Fatalf("error on line %d of a %d-line input: %v", e.Line, lines, e)
			}
		}
		if len(rows) == 0 {
			return
		}
		users := make([]ExportUser, len(rows))
		for i, r := range rows {
			if r.Username == "" || (r.Password == "") == (r.PasswordHash == "") {
				t.Fatalf("accepted row %+v", r)
			}
			users[i] = toExport(r)
			if users[i].PasswordHash == "" {
				users[i].PasswordHash = argonHash // plain passwords are exported as their hash
			}
		}
		var out bytes.Buffer
		if err := Write(&out, users); err != nil {
			t.Fatal(err)
		}
		back, errs := Parse(&out)
		if len(errs) > 0 {
			t.Fatalf("Parse(Write(rows)) errors: %v\ninput %q\nwritten %q", errs, in, out.String())
		}
		if len(back) != len(users) {
			t.Fatalf("%d rows back, want %d", len(back), len(users))
		}
		for i := range back {
			if got := toExport(back[i]); !reflect.DeepEqual(got, users[i]) {
				t.Fatalf("row %d:\n got %+v\nwant %+v\ninput %q\nwritten %q", i, got, users[i], in, out.String())
			}
		}
	})
}

func TestParseTooManyFields(t *testing.T) {
	_, errs := parseString(t, "username,description,password\njohn,Doe, John,password1\n")
	want := []LineError{{2, "", "4 fields, but the header has 3 columns (quote fields that contain commas)"}}
	if !reflect.DeepEqual(errs, want) {
		t.Errorf("errors = %#v", errs)
	}
}

// BenchmarkParse10k parses an import of 10,000 users (the README's import
// benchmark, without the store).
func BenchmarkParse10k(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString("username,description,password,email,aliases,site,groups,enabled\n")
	for i := range 10000 {
		fmt.Fprintf(&buf, "user%d,\"User %d, Example\",password-%d,user%d@example.org,u%d@example.org;u%d@bücher.de,hq,sales;support,yes\n", i, i, i, i, i, i)
	}
	in := buf.Bytes()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		rows, errs := Parse(bytes.NewReader(in))
		if len(errs) > 0 || len(rows) != 10000 {
			b.Fatalf("%d rows, errors %v", len(rows), errs)
		}
	}
}

func TestParseExportWithoutPasswordHash(t *testing.T) {
	// An export of a user without a password has an empty password_hash:
	// importing it back creates the user without a password.
	rows, errs := parseString(t, "username,description,password_hash\nkiosk,Lobby kiosk,\n")
	if len(errs) != 0 || len(rows) != 1 {
		t.Fatalf("rows %d, errors %v", len(rows), errs)
	}
	if rows[0].PasswordHash != "" || rows[0].Password != "" {
		t.Errorf("a password is set: %+v", rows[0])
	}
	// With a password column, an empty one is still an error.
	_, errs = parseString(t, "username,description,password\nkiosk,Lobby kiosk,\n")
	if len(errs) != 1 || errs[0].Column != "password" {
		t.Errorf("errors = %v, want one about the empty password", errs)
	}
}
