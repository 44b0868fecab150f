package apitest

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	uc "github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/services/users/internal/directory"
)

// exportColumns is the header of a CSV export.
const exportColumns = "username,description,email,aliases,site,groups,internet_receive,internet_send,enabled,quota_bytes,password_hash"

// csvLine quotes fields as needed.
func csvLine(fields ...string) string {
	var b strings.Builder
	w := csv.NewWriter(&b)
	_ = w.Write(fields)
	w.Flush()
	return b.String()
}

func checkImported(t *testing.T, what string, r *uc.ImportUsersResponse, dryRun bool, created, updated []string) {
	t.Helper()
	if !checkStatus(t, what, r, nil, http.StatusOK) {
		return
	}
	res := r.JSON200
	if res.DryRun != dryRun || !sameSet(res.Created, created) || !sameSet(res.Updated, updated) || len(res.Errors) != 0 ||
		res.Created == nil || res.Updated == nil || res.Errors == nil {
		t.Errorf("%s: %s, want dry_run %v, created %v, updated %v, errors []", what, clip(r.Body), dryRun, created, updated)
	}
}

func (e *env) userByName(t *testing.T, username string) (uc.User, bool) {
	t.Helper()
	for _, u := range e.listAllUsers(t, e.admin, uc.ListUsersParams{Q: ptr(username)}) {
		if u.Username == username {
			return u, true
		}
	}
	return uc.User{}, false
}

func testImportSeedExample(t *testing.T, e *env) {
	e.mkSites(t)
	e.mkTemplate(t, uc.TemplateCreate{Name: "staff", Site: ptr("hq")})
	tpl := &uc.ImportUsersParams{Template: ptr("staff")}

	// the seed's own example: "abcd" is shorter than the policy allows
	seed := `"username","description","password"` + "\n" + `"john","John Doe","abcd"` + "\n"
	r := e.importCSV(t, e.admin, seed, tpl)
	p := wantProblem(t, "import the seed's example", r, nil, http.StatusUnprocessableEntity, typeValidation)
	if len(p.Errors) != 1 || p.Errors[0].Line != 2 || p.Errors[0].Field != "password" || p.Errors[0].Column != 3 ||
		!strings.Contains(p.Errors[0].Reason, "8") {
		t.Errorf("import the seed's example: errors %s, want one on line 2, column 3 (password), saying at least 8 characters", js(p.Errors))
	}
	if r.ApplicationProblemJSON422 == nil {
		t.Errorf("import the seed's example: the client did not decode the 422 problem")
	}
	if n := e.userCount(t); n != 0 {
		t.Fatalf("a refused import wrote %d users", n)
	}

	// the same shape with passwords the policy accepts, CRLF line ends
	pwJohn, pwLisi := e.userPassword(), e.userPassword()
	seed = `"username","description","password"` + "\r\n" + `"john","John Doe","` + pwJohn + `"` + "\r\n" +
		`"lisi","Li Si","` + pwLisi + `"` + "\r\n"
	r = e.importCSV(t, e.admin, seed, tpl)
	checkImported(t, "import the seed's example with longer passwords", r, false, []string{"john", "lisi"}, []string{})
	john, ok := e.userByName(t, "john")
	if !ok || john.DisplayName != "John Doe" || john.Site != "hq" || john.PrimaryAddress != "john@hq.example.org" || !john.Enabled {
		t.Errorf("imported john: %s", js(john))
	}
	exp := e.exportJSON(t, e.admin, "")
	if ok, err := directory.VerifyPassword(exp["john"].PasswordHash, pwJohn); !ok || err != nil {
		t.Errorf("john's exported hash does not verify his imported password (%v)", err)
	}
	if ok, err := directory.VerifyPassword(exp["lisi"].PasswordHash, pwLisi); !ok || err != nil {
		t.Errorf("lisi's exported hash does not verify her imported password (%v)", err)
	}

	// column order and case are free; an existing username is updated
	pwNew := e.userPassword()
	r = e.importCSV(t, e.admin, "\uFEFFPassword,USERNAME,Description\n"+pwNew+",john,John Q. Doe\n\n"+e.userPassword()+",wang,Wang Wu\n", tpl)
	checkImported(t, "import with columns in another order", r, false, []string{"wang"}, []string{"john"})
	if j, _ := e.userByName(t, "john"); j.DisplayName != "John Q. Doe" || j.ID != john.ID {
		t.Errorf("updated john: %s", js(j))
	}
	exp = e.exportJSON(t, e.admin, "")
	if ok, _ := directory.VerifyPassword(exp["john"].PasswordHash, pwNew); !ok {
		t.Errorf("john's password was not updated by the import")
	}

	if got := e.auditAll(t, &uc.ListAuditEntriesParams{Action: ptr("import")}); len(got) == 0 {
		t.Errorf("no audit entry with action import after two imports")
	}
}

func testImportDryRun(t *testing.T, e *env) {
	e.mkSites(t)
	exists := e.mkUser(t, uc.UserCreate{Username: "exists", DisplayName: ptr("Old Name"), Site: ptr("hq")})
	h := e.hashed(t, 0).hash
	body := "username,description,password_hash,site\n" +
		csvLine("exists", "New Name", h, "hq") + csvLine("new1", "New One", h, "hq") + csvLine("new2", "New Two", h, "branch")
	auditBefore := len(e.auditAll(t, nil))

	r := e.importCSV(t, e.admin, body, &uc.ImportUsersParams{DryRun: ptr(true)})
	checkImported(t, "dry run", r, true, []string{"new1", "new2"}, []string{"exists"})
	users := e.listAllUsers(t, e.admin, uc.ListUsersParams{})
	if len(users) != 1 || !sameJSON(users[0], exists) {
		t.Errorf("a dry run wrote: users %s", js(users))
	}
	if n := len(e.auditAll(t, nil)); n != auditBefore {
		t.Errorf("a dry run wrote %d audit entries", n-auditBefore)
	}

	// a dry run with problems answers 200 and lists them
	bad := body + csvLine("new3", "Bad Site", h, "atlantis")
	r = e.importCSV(t, e.admin, bad, &uc.ImportUsersParams{DryRun: ptr(true)})
	if checkStatus(t, "dry run with a bad line", r, nil, http.StatusOK) {
		res := r.JSON200
		if !res.DryRun || len(res.Errors) != 1 || res.Errors[0].Line != 5 || res.Errors[0].Field != "site" || res.Errors[0].Column != 4 {
			t.Errorf("dry run with a bad line: %s, want one error on line 5, column 4 (site)", clip(r.Body))
		}
	}
	if n := e.userCount(t); n != 1 {
		t.Errorf("a dry run wrote: %d users", n)
	}

	// the real import does what the dry run said
	r = e.importCSV(t, e.admin, body, nil)
	checkImported(t, "import after the dry run", r, false, []string{"new1", "new2"}, []string{"exists"})
	if n := e.userCount(t); n != 3 {
		t.Errorf("after the import: %d users, want 3", n)
	}
	if u := e.getUser(t, exists.ID); u.DisplayName != "New Name" {
		t.Errorf("the import did not update exists: %s", js(u))
	}
}

func testImportBadLines(t *testing.T, e *env) {
	e.mkSites(t)
	e.mkUserAt(t, "already", "hq")
	h := e.hashed(t, 0).hash
	pw := e.userPassword() // on a bad line: must not be echoed

	body := "username,description,password_hash,email,site,enabled,password\n" + // line 1
		csvLine("good1", "Good One", h, "good1@hq.example.org", "hq", "true", "") + // 2
		csvLine("bademail", "Bad Email", h, "not-an-address", "hq", "true", "") + // 3: email, column 4
		csvLine("good1", "Duplicate", h, "dup@hq.example.org", "hq", "true", "") + // 4: username, column 1
		csvLine("badbool", "Bad Bool", h, "badbool@hq.example.org", "hq", "maybe", "") + // 5: enabled, column 6
		csvLine("short", "Too Few", h, "short@hq.example.org", "hq") + // 6: whole line
		csvLine("nosite", "No Site", h, "nosite@hq.example.org", "atlantis", "true", "") + // 7: site, column 5
		csvLine("taken", "Taken Address", "", "already@hq.example.org", "hq", "", pw) + // 8: email, column 4 (directory)
		csvLine("good2", "Good Two", h, "good2@hq.example.org", "branch", "no", "") // 9
	before := e.listAllUsers(t, e.admin, uc.ListUsersParams{})
	auditBefore := len(e.auditAll(t, nil))

	r := e.importCSV(t, e.admin, body, nil)
	p := wantProblem(t, "import a file with bad lines", r, nil, http.StatusUnprocessableEntity, typeValidation)
	want := []struct {
		line   int
		field  string
		column int
	}{
		{3, "email", 4}, {4, "username", 1}, {5, "enabled", 6}, {6, "", 0}, {7, "site", 5}, {8, "email", 4},
	}
	for _, w := range want {
		found := false
		for _, fe := range p.Errors {
			if fe.Line == w.line && fe.Field == w.field && fe.Column == w.column && fe.Reason != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("import with bad lines: no error for line %d, field %q, column %d; errors: %s", w.line, w.field, w.column, js(p.Errors))
		}
	}
	for _, fe := range p.Errors {
		if fe.Line == 2 || fe.Line == 9 || fe.Line < 1 {
			t.Errorf("import with bad lines: error on a good line: %s", js(fe))
		}
	}
	after := e.listAllUsers(t, e.admin, uc.ListUsersParams{})
	if !sameJSON(after, before) {
		t.Errorf("a refused import wrote: users before %s, after %s", js(before), js(after))
	}
	if n := len(e.auditAll(t, nil)); n != auditBefore {
		t.Errorf("a refused import wrote %d audit entries", n-auditBefore)
	}

	// a header problem: an unknown column, named
	r = e.importCSV(t, e.admin, "username,description,password,nickname\nx,X,"+e.userPassword()+",xx\n", nil)
	p = wantProblem(t, "import with an unknown column", r, nil, http.StatusUnprocessableEntity, typeValidation)
	found := false
	for _, fe := range p.Errors {
		found = found || (fe.Line == 1 && fe.Field == "nickname")
	}
	if !found {
		t.Errorf("import with an unknown column: errors %s do not name nickname on line 1", js(p.Errors))
	}
	// an empty file
	r = e.importCSV(t, e.admin, "", nil)
	if r.StatusCode() != http.StatusUnprocessableEntity && r.StatusCode() != http.StatusBadRequest {
		t.Errorf("import an empty file: status %d, want 422 (or 400)", r.StatusCode())
	}
	if n := e.userCount(t); n != int64(len(before)) {
		t.Errorf("refused imports wrote users: %d", n)
	}
}

func testImportTemplateDefaults(t *testing.T, e *env) {
	e.mkSites(t)
	e.mkGroup(t, uc.GroupCreate{Name: "everyone"})
	e.mkGroup(t, uc.GroupCreate{Name: "sales"})
	e.mkTemplate(t, uc.TemplateCreate{Name: "staff", Site: ptr("hq"), Groups: &[]string{"everyone"}, Enabled: ptr(true),
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(true), InternetSend: ptr(false)}, QuotaBytes: ptr(int64(1 << 30))})
	h := e.hashed(t, 1).hash
	body := "username,description,password_hash,internet_send,site,groups,enabled\n" +
		csvLine("t1", "T One", h, "", "", "", "") +
		csvLine("t2", "T Two", h, "yes", "branch", "sales", "0")
	r := e.importCSV(t, e.admin, body, &uc.ImportUsersParams{Template: ptr("staff")})
	checkImported(t, "import with a template", r, false, []string{"t1", "t2"}, []string{})

	t1, _ := e.userByName(t, "t1")
	if t1.Site != "hq" || t1.PrimaryAddress != "t1@hq.example.org" || !slices.Equal(t1.Groups, []string{"everyone"}) ||
		t1.Permissions != (uc.Permissions{InternetReceive: true}) || t1.QuotaBytes != 1<<30 || !t1.Enabled || t1.DisplayName != "T One" {
		t.Errorf("t1, all from the template: %s", js(t1))
	}
	t2, _ := e.userByName(t, "t2")
	if t2.Site != "branch" || t2.PrimaryAddress != "t2@branch.example.org" || !slices.Equal(t2.Groups, []string{"sales"}) ||
		t2.Permissions != (uc.Permissions{InternetReceive: true, InternetSend: true}) || t2.QuotaBytes != 1<<30 || t2.Enabled {
		t.Errorf("t2, the template overridden: %s", js(t2))
	}

	// without a template, a line without a site has no home
	r = e.importCSV(t, e.admin, "username,description,password_hash\n"+csvLine("t3", "T Three", h), nil)
	p := wantProblem(t, "import a line without a site and no template", r, nil, http.StatusUnprocessableEntity, typeValidation)
	if len(p.Errors) == 0 || p.Errors[0].Line != 2 {
		t.Errorf("import a line without a site: errors %s, want line 2 named", js(p.Errors))
	}
}

func testImportTooLarge(t *testing.T, e *env) {
	e.mkSites(t)
	var b strings.Builder
	b.WriteString("username,description,password,site\n")
	for i := 0; b.Len() <= maxBodyBytes+1024; i++ {
		b.WriteString(csvLine(fmt.Sprintf("user%06d", i), strings.Repeat("x", 100), "Password-"+strconv.Itoa(i), "hq"))
	}
	r := e.importCSV(t, e.admin, b.String(), nil)
	wantProblem(t, "import a file larger than the limit", r, nil, http.StatusRequestEntityTooLarge, typeTooLarge)
	if r.ApplicationProblemJSON413 == nil {
		t.Errorf("import too large: the client did not decode the 413 problem")
	}
	if n := e.userCount(t); n != 0 {
		t.Errorf("a refused import wrote %d users", n)
	}
}

// roundTripWorld creates users of every shape; passwords maps usernames
// to the passwords their hashes verify.
func (e *env) roundTripWorld(t *testing.T) (passwords map[string]string) {
	t.Helper()
	e.mkSites(t)
	e.mkGroup(t, uc.GroupCreate{Name: "sales", Address: ptr("sales@hq.example.org")})
	e.mkGroup(t, uc.GroupCreate{Name: "support"})
	argon, bc := e.hashed(t, 0), e.bcrypted(t)
	pwDave := e.userPassword()
	e.mkUser(t, uc.UserCreate{Username: "alice", DisplayName: ptr("Alice Martin"), Site: ptr("hq"),
		Aliases: &[]string{"a.martin@hq.example.org", "am@hq.example.org"}, Groups: &[]string{"sales"},
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(true), InternetSend: ptr(true)},
		QuotaBytes:  ptr(int64(5 << 30)), PasswordHash: ptr(argon.hash)})
	e.mkUser(t, uc.UserCreate{Username: "bob", DisplayName: ptr(`Bob "the builder", Jr.`), Site: ptr("branch"),
		PrimaryAddress: ptr("robert@branch.example.org"), Groups: &[]string{"sales", "support"}, Enabled: ptr(false),
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(false), InternetSend: ptr(false)}, PasswordHash: ptr(bc.hash)})
	e.mkUser(t, uc.UserCreate{Username: "dave", DisplayName: ptr("Dave Ünïcødé"), Site: ptr("branch"),
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(true), InternetSend: ptr(false)}, Password: ptr(pwDave)})
	return map[string]string{"alice": argon.password, "bob": bc.password, "dave": pwDave}
}

// stripMeta is a user without what an import cannot keep (id, version,
// times), with its groups sorted.
func stripMeta(u uc.User) uc.User {
	u.ID, u.Version = "", 0
	u.CreatedAt, u.UpdatedAt = time.Time{}, time.Time{}
	u.Groups = sorted(u.Groups)
	return u
}

func (e *env) deleteAllUsers(t *testing.T) {
	t.Helper()
	for _, u := range e.listAllUsers(t, e.admin, uc.ListUsersParams{}) {
		d, err := e.admin.DeleteUserWithResponse(t.Context(), u.ID, nil)
		wantStatus(t, "delete user "+u.Username, d, err, http.StatusNoContent)
	}
	if n := e.userCount(t); n != 0 {
		t.Fatalf("after deleting every user, %d are left", n)
	}
}

func (e *env) exportCSV(t *testing.T) string {
	t.Helper()
	r, err := e.admin.ExportUsersWithResponse(t.Context(), &uc.ExportUsersParams{Format: ptr(uc.ExportFormatCsv)})
	wantStatus(t, "export users as CSV", r, err, http.StatusOK)
	if ct := r.ContentType(); !strings.HasPrefix(ct, "text/csv") {
		t.Errorf("export CSV: Content-Type %q, want text/csv", ct)
	}
	return string(r.Body)
}

func testExportImportRoundTrip(t *testing.T, e *env) {
	passwords := e.roundTripWorld(t)
	before := e.listAllUsers(t, e.admin, uc.ListUsersParams{})

	csvBody := e.exportCSV(t)
	exp := e.exportJSON(t, e.admin, "")

	// the CSV: the documented header, one record per user, the same as the JSON
	recs, err := csv.NewReader(strings.NewReader(csvBody)).ReadAll()
	if err != nil {
		t.Fatalf("the CSV export does not parse: %v\n%s", err, csvBody)
	}
	if len(recs) == 0 || strings.Join(recs[0], ",") != exportColumns {
		t.Fatalf("CSV export header %v, want %s", recs[0], exportColumns)
	}
	var names []string
	for _, rec := range recs[1:] {
		names = append(names, rec[0])
		j, ok := exp[rec[0]]
		if !ok {
			t.Errorf("CSV export has %s, the JSON export does not", rec[0])
			continue
		}
		fromJSON := []string{j.Username, j.Description, j.Email, strings.Join(j.Aliases, ";"), j.Site, strings.Join(j.Groups, ";"),
			strconv.FormatBool(j.InternetReceive), strconv.FormatBool(j.InternetSend), strconv.FormatBool(j.Enabled),
			strconv.FormatInt(j.QuotaBytes, 10), j.PasswordHash}
		if !slices.Equal(normBools(rec), fromJSON) {
			t.Errorf("CSV and JSON exports differ for %s:\nCSV  %q\nJSON %q", rec[0], rec, fromJSON)
		}
	}
	if !slices.Equal(names, []string{"alice", "bob", "dave"}) {
		t.Errorf("CSV export users %v, want alice, bob, dave in order", names)
	}
	for name, pw := range passwords {
		if ok, err := directory.VerifyPassword(exp[name].PasswordHash, pw); !ok || err != nil {
			t.Errorf("%s's exported hash %q does not verify the password (%v)", name, exp[name].PasswordHash, err)
		}
	}

	// delete everyone, import the export: the same directory
	e.deleteAllUsers(t)
	r := e.importCSV(t, e.admin, csvBody, nil)
	checkImported(t, "import the CSV export", r, false, []string{"alice", "bob", "dave"}, []string{})
	after := e.listAllUsers(t, e.admin, uc.ListUsersParams{})
	if len(after) != len(before) {
		t.Fatalf("after the round trip: %d users, want %d", len(after), len(before))
	}
	for i := range before {
		if b, a := stripMeta(before[i]), stripMeta(after[i]); !sameJSON(a, b) {
			t.Errorf("user %s after the round trip:\n got %s\nwant %s", before[i].Username, js(a), js(b))
		}
	}
	if csv2 := e.exportCSV(t); csv2 != csvBody {
		t.Errorf("the CSV export after the round trip differs:\nbefore %s\nafter  %s", csvBody, csv2)
	}
	exp2 := e.exportJSON(t, e.admin, "")
	if !sameJSON(exp2, exp) {
		t.Errorf("the JSON export after the round trip differs:\nbefore %s\nafter  %s", js(exp), js(exp2))
	}
	for name, pw := range passwords {
		if ok, _ := directory.VerifyPassword(exp2[name].PasswordHash, pw); !ok {
			t.Errorf("after the round trip, %s's password no longer verifies", name)
		}
	}
	// the groups have their members back
	l, err := e.admin.ListGroupsWithResponse(t.Context(), nil)
	wantStatus(t, "list groups", l, err, http.StatusOK)
	for _, g := range l.JSON200.Items {
		want := map[string]int{"sales": 2, "support": 1}[g.Name]
		if len(g.Members) != want {
			t.Errorf("group %s after the round trip: %d members, want %d", g.Name, len(g.Members), want)
		}
	}

	// the export of one site
	hq := e.exportJSON(t, e.admin, "hq")
	if len(hq) != 1 || hq["alice"].Site != "hq" {
		t.Errorf("export site=hq: %s", js(hq))
	}
}

// normBools spells the boolean columns of an export record as Go does, so
// that "TRUE" or "yes" would not count as a difference.
func normBools(rec []string) []string {
	out := slices.Clone(rec)
	for _, i := range []int{6, 7, 8} {
		if i < len(out) {
			switch strings.ToLower(out[i]) {
			case "true", "yes", "1":
				out[i] = "true"
			case "false", "no", "0":
				out[i] = "false"
			}
		}
	}
	return out
}

func testExportImportPasswordless(t *testing.T, e *env) {
	// A user without a password is exported with an empty password_hash
	// (exportUsers); the document promises that importing an export gives
	// the same users back, but also that every import line needs a
	// password or a password_hash (importUsers).
	e.mkSites(t)
	before := e.mkUser(t, uc.UserCreate{Username: "kiosk", DisplayName: ptr("Lobby kiosk"), Site: ptr("hq")})
	csvBody := e.exportCSV(t)
	e.deleteAllUsers(t)
	r := e.importCSV(t, e.admin, csvBody, nil)
	if r.StatusCode() != http.StatusOK {
		t.Fatalf("the export of a user without a password does not import back (the round trip exportUsers promises): "+
			"status %d: %s\nexport: %s", r.StatusCode(), clip(r.Body), csvBody)
	}
	checkImported(t, "import the export of a user without a password", r, false, []string{"kiosk"}, []string{})
	if after, ok := e.userByName(t, "kiosk"); !ok || !sameJSON(stripMeta(after), stripMeta(before)) {
		t.Errorf("kiosk after the round trip: %s, want %s", js(after), js(before))
	}
}
