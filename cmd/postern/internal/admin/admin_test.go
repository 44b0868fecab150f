package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/api/usersclient"
)

// jsonEqual compares a request body with the JSON expected, member by member.
func jsonEqual(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v: %s", what, err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: the test's JSON: %v", what, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n got %s\nwant %s", what, got, want)
	}
}

func TestUsersListTable(t *testing.T) {
	f, c := newCLI(t)
	f.addUser("zhangsan", "Zhang San", "headquarters", "sales")
	f.addUser("lisi", "Li Si", "branch-lyon")

	r := c.ok("users", "list")
	want := "" +
		"USERNAME  NAME       EMAIL                 SITE          GROUPS  ENABLED\n" +
		"lisi      Li Si      lisi@example.org      branch-lyon   -       yes\n" +
		"zhangsan  Zhang San  zhangsan@example.org  headquarters  sales   yes\n"
	if r.stdout != want {
		t.Errorf("table:\n%s\nwant:\n%s", r.stdout, want)
	}
	if r.stderr != "" {
		t.Errorf("stderr: %q", r.stderr)
	}
	if q := f.last(t, "GET", "/v1/users").Query; len(q) != 0 {
		t.Errorf("a list without flags sent the query %v", q)
	}
}

func TestUsersListJSONAndFilters(t *testing.T) {
	f, c := newCLI(t)
	f.addUser("zhangsan", "Zhang San", "headquarters", "sales")
	f.addUser("lisi", "Li Si", "branch-lyon")

	r := c.ok("users", "list", "--site", "headquarters", "--enabled", "--q", "zhang", "--json")
	var got usersclient.UserList
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json output is not a UserList: %v\n%s", err, r.stdout)
	}
	if got.Total != 1 || len(got.Items) != 1 || got.Items[0].Username != "zhangsan" || got.Items[0].Site != "headquarters" ||
		got.Items[0].ID != userID(1) || !reflect.DeepEqual(got.Items[0].Groups, []string{"sales"}) {
		t.Errorf("--json: %+v", got)
	}
	q := f.last(t, "GET", "/v1/users").Query
	if want := map[string][]string{"site": {"headquarters"}, "enabled": {"true"}, "q": {"zhang"}}; !reflect.DeepEqual(q, want) {
		t.Errorf("query %v, want %v", q, want)
	}

	c.ok("users", "list", "--enabled=false")
	if q := f.last(t, "GET", "/v1/users").Query; !reflect.DeepEqual(q, map[string][]string{"enabled": {"false"}}) {
		t.Errorf("--enabled=false: query %v", q)
	}
}

func TestListPagesAndAll(t *testing.T) {
	f, c := newCLI(t)
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
		f.addUser(name, strings.ToUpper(name[:1])+name[1:], "headquarters")
	}

	r := c.ok("users", "list", "--limit", "2")
	if n := strings.Count(r.stdout, "\n"); n != 3 {
		t.Errorf("one page of 2: %d lines\n%s", n, r.stdout)
	}
	if r.stderr != "2 of 5 shown; --all shows every one, --cursor 2 the next page\n" {
		t.Errorf("footer: %q", r.stderr)
	}

	r = c.ok("users", "list", "--limit", "2", "--cursor", "2")
	if !strings.Contains(r.stdout, "carol") || strings.Contains(r.stdout, "alice") {
		t.Errorf("--cursor 2:\n%s", r.stdout)
	}

	before := f.count("GET", "/v1/users")
	r = c.ok("users", "list", "--limit", "2", "--all", "--json")
	if n := f.count("GET", "/v1/users") - before; n != 3 {
		t.Errorf("--all with pages of 2 made %d requests, want 3", n)
	}
	var got usersclient.UserList
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 5 || got.Total != 5 || got.NextCursor != "" {
		t.Errorf("--all: %d items, total %d, next %q", len(got.Items), got.Total, got.NextCursor)
	}
}

func TestShowByUsernameOrID(t *testing.T) {
	f, c := newCLI(t)
	u := f.addUser("zhangsan", "Zhang San", "headquarters", "sales")
	f.addUser("zhangsan2", "Zhang San II", "headquarters")

	want := "" +
		"id:               " + u.ID + "\n" +
		"username:         zhangsan\n" +
		"name:             Zhang San\n" +
		"email:            zhangsan@example.org\n" +
		"aliases:          -\n" +
		"site:             headquarters\n" +
		"groups:           sales\n" +
		"enabled:          yes\n" +
		"internet receive: yes\n" +
		"internet send:    no\n" +
		"quota:            none\n" +
		"version:          1\n" +
		"created:          2026-01-15T09:30:00Z\n" +
		"updated:          2026-01-15T09:30:00Z\n"
	for _, ref := range []string{"zhangsan", "ZhangSan", u.ID} {
		r := c.ok("users", "show", ref)
		if r.stdout != want {
			t.Errorf("users show %s:\n%s\nwant:\n%s", ref, r.stdout, want)
		}
	}
	if q := f.last(t, "GET", "/v1/users").Query["q"]; !reflect.DeepEqual(q, []string{strings.ToLower(u.ID)}) {
		t.Errorf("the id was looked up as a username with q=%v", q)
	}

	r := c.ok("users", "show", "zhangsan", "--json")
	var got usersclient.User
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.ID != u.ID || got.Version != 1 {
		t.Errorf("--json: %v %+v", err, got)
	}

	r = c.run("", "users", "show", "nobody")
	if r.code != 1 || r.stderr != "postern: Not found: No user has id nobody.\n" {
		t.Errorf("unknown user: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestUsersAddSendsTheFlags(t *testing.T) {
	f, c := newCLI(t)
	r := c.run("correct horse battery\n", "users", "add", "lisi",
		"--name", "Li Si", "--email", "lisi@example.org", "--alias", "li.si@example.org,ls@example.org",
		"--site", "headquarters", "--group", "sales", "--group", "staff", "--internet-send", "--quota", "2G",
		"--template", "staff", "--password-stdin")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	req := f.last(t, "POST", "/v1/users")
	jsonEqual(t, "users add", req.Body, `{
		"username": "lisi", "display_name": "Li Si", "primary_address": "lisi@example.org",
		"aliases": ["li.si@example.org", "ls@example.org"], "site": "headquarters", "groups": ["sales", "staff"],
		"permissions": {"internet_send": true}, "quota_bytes": 2147483648, "template": "staff",
		"password": "correct horse battery"}`)
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.Contains(r.stdout, "username:         lisi\n") || !strings.Contains(r.stdout, "quota:            2 GiB\n") {
		t.Errorf("the created user is not shown:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, "correct horse") {
		t.Error("the password was printed")
	}

	// Only what is given is sent: the template and the server fill the rest.
	c.ok("users", "add", "john", "--no-password")
	jsonEqual(t, "users add --no-password", f.last(t, "POST", "/v1/users").Body, `{"username": "john"}`)
}

func TestUsersEditSendsOnlyTheFlagsGiven(t *testing.T) {
	f, c := newCLI(t)
	u := f.addUser("zhangsan", "Zhang San", "headquarters")

	r := c.ok("users", "edit", "zhangsan", "--name", "Zhang San (Sales)", "--internet-send=false", "--if-match", "1")
	req := f.last(t, "PATCH", "/v1/users/"+u.ID)
	jsonEqual(t, "users edit", req.Body, `{"display_name": "Zhang San (Sales)", "permissions": {"internet_send": false}}`)
	if got := req.Header.Get("If-Match"); got != `"1"` {
		t.Errorf("If-Match %q", got)
	}
	if !strings.Contains(r.stdout, "name:             Zhang San (Sales)\n") || !strings.Contains(r.stdout, "version:          2\n") {
		t.Errorf("the changed user is not shown:\n%s", r.stdout)
	}

	c.ok("users", "edit", u.ID, "--alias", "")
	req = f.last(t, "PATCH", "/v1/users/"+u.ID)
	jsonEqual(t, "--alias \"\"", req.Body, `{"aliases": []}`)
	if _, ok := req.Header["If-Match"]; ok {
		t.Error("If-Match sent without --if-match")
	}

	// A stale ETag: the server's 412 is printed and nothing changes.
	r = c.run("", "users", "edit", "zhangsan", "--name", "X", "--if-match", `"1"`)
	if r.code != 1 || r.stderr != "postern: The object changed: If-Match \"1\" does not match the current ETag \"3\".\n" {
		t.Errorf("stale ETag: exit %d, %q", r.code, r.stderr)
	}

	r = c.run("", "users", "edit", "zhangsan")
	if r.code != 2 || !strings.Contains(r.stderr, "nothing to change") {
		t.Errorf("edit without flags: exit %d, %q", r.code, r.stderr)
	}
}

func TestUsersMoveDeletePasswd(t *testing.T) {
	f, c := newCLI(t)
	u := f.addUser("zhangsan", "Zhang San", "headquarters")

	r := c.ok("users", "move", "zhangsan", "--site", "branch-lyon")
	jsonEqual(t, "users move", f.last(t, "POST", "/v1/users/"+u.ID+"/move").Body, `{"site": "branch-lyon"}`)
	if !strings.Contains(r.stdout, "site:             branch-lyon\n") {
		t.Errorf("move:\n%s", r.stdout)
	}

	r = c.run("new password 1\nignored second line\n", "users", "passwd", "zhangsan", "--password-stdin")
	if r.code != 0 || r.stdout != "password set for zhangsan\n" {
		t.Fatalf("passwd: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	jsonEqual(t, "users passwd", f.last(t, "POST", "/v1/users/"+u.ID+"/password").Body, `{"password": "new password 1"}`)

	r = c.ok("users", "delete", "zhangsan", "--if-match", "2")
	if r.stdout != "deleted user zhangsan\n" || f.last(t, "DELETE", "/v1/users/"+u.ID).Header.Get("If-Match") != `"2"` {
		t.Errorf("delete: %q", r.stdout)
	}
}

func TestPasswordPrompt(t *testing.T) {
	f, c := newCLI(t)
	u := f.addUser("zhangsan", "Zhang San", "headquarters")

	// No --password-stdin and no terminal: a usage error, nothing sent.
	r := c.run("", "users", "passwd", "zhangsan")
	if r.code != 2 || !strings.Contains(r.stderr, "--password-stdin") {
		t.Errorf("no terminal: exit %d %q", r.code, r.stderr)
	}
	if f.count("POST", "/v1/users/"+u.ID+"/password") != 0 {
		t.Error("a password was sent")
	}

	// On a terminal: asked twice, again when the two differ.
	answers := []string{"first try", "typo", "s3cret pass", "s3cret pass"}
	c.env.StdinTerminal = true
	c.env.ReadPassword = func() (string, error) {
		if len(answers) == 0 {
			return "", errors.New("no more answers")
		}
		a := answers[0]
		answers = answers[1:]
		return a, nil
	}
	r = c.run("", "users", "passwd", "zhangsan")
	if r.code != 0 {
		t.Fatalf("prompt: exit %d %q", r.code, r.stderr)
	}
	jsonEqual(t, "prompted password", f.last(t, "POST", "/v1/users/"+u.ID+"/password").Body, `{"password": "s3cret pass"}`)
	if strings.Count(r.stderr, "Password for zhangsan: ") != 2 || !strings.Contains(r.stderr, "The passwords differ") || strings.Contains(r.stderr, "s3cret") {
		t.Errorf("prompts: %q", r.stderr)
	}

	// users add on a terminal: an empty answer means no password.
	answers = []string{""}
	c.ok("users", "add", "john", "--site", "headquarters")
	jsonEqual(t, "add without password", f.last(t, "POST", "/v1/users").Body, `{"username": "john", "site": "headquarters"}`)
}

func TestProblemWithFieldErrors(t *testing.T) {
	f, c := newCLI(t)
	f.failNext(422, problem(422, "Invalid request", "2 members are invalid.",
		usersapi.FieldError{Field: "domains[0]", Reason: "not a domain name"},
		usersapi.FieldError{Field: "smtp_endpoint", Reason: "want host:port"}))
	r := c.run("", "sites", "add", "branch-nice", "--domain", "-nice-", "--smtp-endpoint", "nice")
	want := "postern: Invalid request: 2 members are invalid.\n" +
		"  domains[0]: not a domain name\n" +
		"  smtp_endpoint: want host:port\n"
	if r.code != 1 || r.stderr != want || r.stdout != "" {
		t.Errorf("exit %d\nstderr:\n%s\nwant:\n%s\nstdout: %q", r.code, r.stderr, want, r.stdout)
	}

	// Not a problem document at all (a proxy in the way): the status is said.
	f.mu.Lock()
	f.fail = &failure{status: 502, raw: "<html>bad gateway</html>", ctype: "text/html"}
	f.mu.Unlock()
	r = c.run("", "sites", "list")
	if r.code != 1 || r.stderr != "postern: HTTP 502 Bad Gateway\n" {
		t.Errorf("502: exit %d %q", r.code, r.stderr)
	}
}

func TestSites(t *testing.T) {
	f, c := newCLI(t)
	r := c.ok("sites", "list")
	want := "" +
		"NAME          DOMAINS                  SMTP ENDPOINT             DESCRIPTION\n" +
		"branch-lyon   lyon.example.org         mail.lyon.example.org:25  Lyon branch office\n" +
		"headquarters  example.org, example.fr  mail.hq.example.org:25    Head office, Paris\n"
	if r.stdout != want {
		t.Errorf("sites list:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = c.ok("sites", "add", "branch-nice", "--domain", "nice.example.org", "--description", "Nice", "--json")
	jsonEqual(t, "sites add", f.last(t, "POST", "/v1/sites").Body, `{"name": "branch-nice", "domains": ["nice.example.org"], "description": "Nice"}`)
	var s usersclient.Site
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.Name != "branch-nice" || s.SMTPEndpoint != "" {
		t.Errorf("sites add --json: %v %s", err, r.stdout)
	}

	r = c.ok("sites", "show", "headquarters")
	if !strings.HasPrefix(r.stdout, "name:          headquarters\ndescription:   Head office, Paris\ndomains:       example.org, example.fr\n") {
		t.Errorf("sites show:\n%s", r.stdout)
	}
}

func TestImportReportsEveryBadLine(t *testing.T) {
	f, c := newCLI(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "people.csv")
	csvText := "username,description,password,email\njohn,John Doe,abcd1234,john@example.org\n,Nobody,abcd1234,x\nlisi,Li Si,abcd1234,lisi-at-example.org\n"
	if err := os.WriteFile(file, []byte(csvText), 0o600); err != nil {
		t.Fatal(err)
	}
	p := problem(422, "Invalid CSV file", "2 lines are invalid; nothing was imported.",
		usersapi.FieldError{Line: 3, Column: 1, Field: "username", Reason: "required"},
		usersapi.FieldError{Line: 4, Column: 4, Field: "email", Reason: `not an address: missing "@"`},
		usersapi.FieldError{Line: 5, Reason: "wrong number of fields (expected 4, got 3)"})
	f.importProblem = &p

	r := c.run("", "import", file, "--template", "staff")
	want := "postern: Invalid CSV file: 2 lines are invalid; nothing was imported.\n" +
		file + ":3: column username: required\n" +
		file + `:4: column email: not an address: missing "@"` + "\n" +
		file + ":5: wrong number of fields (expected 4, got 3)\n"
	if r.code != 1 || r.stderr != want {
		t.Errorf("exit %d\nstderr:\n%s\nwant:\n%s", r.code, r.stderr, want)
	}
	req := f.last(t, "POST", "/v1/users/import")
	if string(req.Body) != csvText || req.Header.Get("Content-Type") != "text/csv" ||
		req.Header.Get("Content-Length") != strconv.Itoa(len(csvText)) || !reflect.DeepEqual(req.Query, map[string][]string{"template": {"staff"}}) {
		t.Errorf("upload: %q %q %q %v", req.Body, req.Header.Get("Content-Type"), req.Header.Get("Content-Length"), req.Query)
	}
}

func TestImportCountsAndDryRun(t *testing.T) {
	f, c := newCLI(t)
	file := filepath.Join(t.TempDir(), "people.csv")
	if err := os.WriteFile(file, []byte("username,description,password\njohn,John Doe,abcd1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.importResult = &usersapi.ImportResult{Created: []string{"john", "lisi"}, Updated: []string{"zhangsan"}, Errors: []usersapi.FieldError{}}

	r := c.ok("import", file)
	if r.stdout != "created 2 users, updated 1 user\n" || r.stderr != "" {
		t.Errorf("import: %q %q", r.stdout, r.stderr)
	}

	f.importResult.Errors = []usersapi.FieldError{{Line: 2, Column: 3, Field: "password", Reason: "at least 8 characters"}}
	r = c.run("", "import", "--dry-run", file)
	if r.code != 1 || r.stdout != "dry run, nothing written: would create 2 users and update 1 user\n" ||
		r.stderr != file+":2: column password: at least 8 characters\n" {
		t.Errorf("dry run: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if q := f.last(t, "POST", "/v1/users/import").Query; !reflect.DeepEqual(q, map[string][]string{"dry_run": {"true"}}) {
		t.Errorf("dry run query %v", q)
	}

	// Standard input, and --json.
	f.importResult.Errors = []usersapi.FieldError{}
	r = c.run("username,description,password\nann,Ann,abcd1234\n", "import", "-", "--json")
	var res usersclient.ImportResult
	if err := json.Unmarshal([]byte(r.stdout), &res); r.code != 0 || err != nil || len(res.Created) != 2 {
		t.Errorf("import - --json: exit %d %v %s", r.code, err, r.stdout)
	}
	if got := string(f.last(t, "POST", "/v1/users/import").Body); got != "username,description,password\nann,Ann,abcd1234\n" {
		t.Errorf("stdin upload: %q", got)
	}
}

func TestImportProgressBarOnlyOnATerminal(t *testing.T) {
	f, c := newCLI(t)
	file := filepath.Join(t.TempDir(), "people.csv")
	if err := os.WriteFile(file, bytes.Repeat([]byte("username,description,password\n"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	f.importResult = &usersapi.ImportResult{Created: []string{}, Updated: []string{}, Errors: []usersapi.FieldError{}}

	r := c.ok("import", file)
	if r.stderr != "" {
		t.Errorf("a progress bar without a terminal: %q", r.stderr)
	}
	c.env.StderrTerminal = true
	r = c.ok("import", file)
	if !strings.Contains(r.stderr, "uploading people.csv") || !strings.Contains(r.stderr, "100%") || !strings.Contains(r.stderr, "30 kB") {
		t.Errorf("no progress bar on a terminal: %q", r.stderr)
	}
	if r.stdout != "created 0 users, updated 0 users\n" {
		t.Errorf("stdout: %q", r.stdout)
	}
}

func TestExport(t *testing.T) {
	f, c := newCLI(t)
	f.exportCSV = "username,description,email,aliases,site,groups,internet_receive,internet_send,enabled,quota_bytes,password_hash\n" +
		"john,John Doe,john@example.org,,headquarters,,true,false,true,0,{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA\n"
	f.exportJSON = usersapi.UserExport{{Username: "john", Description: "John Doe", Email: "john@example.org", Aliases: []string{}, Site: "headquarters", Groups: []string{}, Enabled: true}}

	r := c.ok("export", "--site", "headquarters")
	if r.stdout != f.exportCSV {
		t.Errorf("CSV export: %q", r.stdout)
	}
	if q := f.last(t, "GET", "/v1/users/export").Query; !reflect.DeepEqual(q, map[string][]string{"format": {"csv"}, "site": {"headquarters"}}) {
		t.Errorf("query %v", q)
	}

	r = c.ok("export", "--json")
	var got []usersclient.ExportedUser
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 || got[0].Username != "john" {
		t.Errorf("JSON export: %v %q", err, r.stdout)
	}

	out := filepath.Join(t.TempDir(), "users.csv")
	r = c.ok("export", "-o", out)
	data, err := os.ReadFile(out)
	if err != nil || string(data) != f.exportCSV || r.stdout != "" {
		t.Fatalf("-o: %v %q %q", err, data, r.stdout)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("the export, with password hashes, is readable by others: %v", fi.Mode())
	}

	if r := c.run("", "export", "--format", "xml"); r.code != 2 || !strings.Contains(r.stderr, "csv, json") {
		t.Errorf("--format xml: exit %d %q", r.code, r.stderr)
	}
}

func TestTokenIsNeverPrinted(t *testing.T) {
	f, c := newCLI(t)

	// A server that echoes what it was sent, token included.
	f.failNext(401, problem(401, "Authentication required", "Bearer "+testToken+" is revoked."))
	r := c.run("", "users", "list")
	if r.code != 1 || r.stderr != "postern: Authentication required: Bearer *** is revoked.\n  (check --token or $POSTERN_TOKEN)\n" {
		t.Errorf("401: exit %d %q", r.code, r.stderr)
	}

	// A network error, with the token on the command line.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	var out, errb bytes.Buffer
	code := Run(context.Background(), Env{Stdout: &out, Stderr: &errb}, []string{"users", "list", "--server", dead, "--token", testToken})
	if code != 1 || !strings.Contains(errb.String(), "connect") || strings.Contains(errb.String(), testToken) {
		t.Errorf("network error: exit %d %q", code, errb.String())
	}

	// The token in a URL by mistake, and -h with the token in the environment.
	r = c.run("", "users", "list", "--server", "http://"+testToken+"@example.org")
	if r.code != 2 {
		t.Errorf("user info in --server: exit %d %q", r.code, r.stderr)
	}
	r = c.run("", "users", "list", "-h")
	if r.code != 0 || !strings.Contains(r.stderr, "-token token") {
		t.Errorf("-h: exit %d %q", r.code, r.stderr)
	}

	// No token at all.
	errb.Reset()
	code = Run(context.Background(), Env{Stdout: &out, Stderr: &errb}, []string{"users", "list", "--server", c.url})
	if code != 2 || errb.String() != "postern: no API token: give --token or set POSTERN_TOKEN\n" {
		t.Errorf("no token: exit %d %q", code, errb.String())
	}
}

func TestTokensAddShowsTheSecretOnce(t *testing.T) {
	f, c := newCLI(t)
	r := c.ok("tokens", "add", "lyon-gateway", "--role", "site_agent", "--site", "branch-lyon", "--expires", "2027-01-15")
	jsonEqual(t, "tokens add", f.last(t, "POST", "/v1/tokens").Body,
		`{"name": "lyon-gateway", "role": "site_agent", "site": "branch-lyon", "expires_at": "2027-01-15T00:00:00Z"}`)
	if !strings.HasSuffix(r.stdout, "\nsecret: pst_01936d3e-0000-7000-8000-00000000a002_bmV3LXNlY3JldA\n") ||
		!strings.Contains(r.stdout, "expires:   2027-01-15T00:00:00Z\n") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "will not be shown again") {
		t.Errorf("no warning: %q", r.stderr)
	}
	if r := c.run("", "tokens", "add", "x", "--role", "root"); r.code != 2 || !strings.Contains(r.stderr, "admin, site_admin, site_agent, reader") {
		t.Errorf("bad role: exit %d %q", r.code, r.stderr)
	}
}

func TestGroupsAddResolvesMembers(t *testing.T) {
	f, c := newCLI(t)
	u := f.addUser("zhangsan", "Zhang San", "headquarters")
	c.ok("groups", "add", "staff")
	staff := f.groups[0].ID

	r := c.ok("groups", "add", "sales", "--address", "sales-team@example.org", "--member", "user:zhangsan,group:staff")
	jsonEqual(t, "groups add", f.last(t, "POST", "/v1/groups").Body,
		`{"name": "sales", "address": "sales-team@example.org", "members": [{"type": "user", "id": "`+u.ID+`"}, {"type": "group", "id": "`+staff+`"}]}`)
	if !strings.Contains(r.stdout, "members:     user:zhangsan, group:staff\n") {
		t.Errorf("members are not shown by name:\n%s", r.stdout)
	}
	r = c.ok("groups", "list")
	if !strings.Contains(r.stdout, "sales  sales-team@example.org  2        -\n") {
		t.Errorf("groups list:\n%s", r.stdout)
	}
	if r := c.run("", "groups", "add", "x", "--member", "zhangsan"); r.code != 2 {
		t.Errorf("a member without user: or group:: exit %d", r.code)
	}
}

func TestPOP3AccountsAdd(t *testing.T) {
	f, c := newCLI(t)
	pm := f.addUser("postmaster", "Postmaster", "headquarters")
	r := c.run("s3cret-at-the-isp\n", "pop3-accounts", "add", "isp-sales", "--host", "pop.isp.example.net", "--tls", "tls",
		"--username", "sales@isp.example.net", "--site", "headquarters", "--mode", "multi", "--postmaster", "postmaster",
		"--envelope-header", "Delivered-To", "--envelope-header", "X-Original-To", "--keep", "keep_days:7",
		"--poll-interval", "5m", "--password-stdin")
	if r.code != 0 {
		t.Fatalf("exit %d %s", r.code, r.stderr)
	}
	jsonEqual(t, "pop3-accounts add", f.last(t, "POST", "/v1/pop3-accounts").Body, `{
		"name": "isp-sales", "host": "pop.isp.example.net", "tls": "tls", "username": "sales@isp.example.net",
		"site": "headquarters", "mode": "multi", "postmaster": "`+pm.ID+`",
		"envelope_headers": ["Delivered-To", "X-Original-To"], "keep": {"policy": "keep_days", "days": 7},
		"poll_interval_seconds": 300, "password": "s3cret-at-the-isp"}`)
	for _, want := range []string{"postmaster:          postmaster\n", "keep:                keep_days:7\n", "poll interval:       5m0s\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q in\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "s3cret") {
		t.Error("the POP3 password was printed")
	}

	for _, bad := range [][]string{
		{"--keep", "forever"}, {"--tls", "ssl"}, {"--poll-interval", "1500ms"}, {"--keep", "keep_days:0"},
	} {
		args := append([]string{"pop3-accounts", "add", "x", "--host", "h", "--username", "u", "--site", "s", "--password-stdin"}, bad...)
		if r := c.run("pw\n", args...); r.code != 2 {
			t.Errorf("%v: exit %d %q", bad, r.code, r.stderr)
		}
	}
}

func TestAudit(t *testing.T) {
	f, c := newCLI(t)
	f.audit = []usersapi.AuditEntry{{ID: 7, At: created, Actor: "token:a000 (bootstrap)", Action: "user.move", TargetKind: "user", TargetID: userID(1),
		Diff: json.RawMessage(`{"site": {"from": "headquarters", "to": "branch-lyon"}}`)}}
	r := c.ok("audit", "--action", "user.move", "--since", "2026-01-01", "--until", "2026-02-01T00:00:00Z")
	want := "ID  AT                    ACTOR                   ACTION     TARGET                                     DIFF\n" +
		"7   2026-01-15T09:30:00Z  token:a000 (bootstrap)  user.move  user:" + userID(1) + `  {"site":{"from":"headquarters","to":"branch-lyon"}}` + "\n"
	if r.stdout != want {
		t.Errorf("audit:\n%s\nwant:\n%s", r.stdout, want)
	}
	q := f.last(t, "GET", "/v1/audit").Query
	if want := map[string][]string{"action": {"user.move"}, "since": {"2026-01-01T00:00:00Z"}, "until": {"2026-02-01T00:00:00Z"}}; !reflect.DeepEqual(q, want) {
		t.Errorf("query %v, want %v", q, want)
	}
}

func TestUsage(t *testing.T) {
	_, c := newCLI(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"users"}, 2, "usage: postern users <command>"},
		{[]string{"users", "help"}, 0, "passwd"},
		{[]string{"users", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"users", "show"}, 2, "want 1 argument, got 0"},
		{[]string{"users", "show", "a", "b"}, 2, "want 1 argument, got 2"},
		{[]string{"users", "list", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"users", "add", "x", "--quota", "lots"}, 2, "not a size"},
		{[]string{"users", "move", "x"}, 2, "--site is required"},
		{[]string{"sites", "list", "--server", "ftp://x"}, 2, "not an http:// or https:// URL"},
		{[]string{"audit", "--since", "last week"}, 2, "--since"},
		{[]string{"import"}, 2, "usage: postern import FILE.csv"},
		{[]string{"import", "/nonexistent/x.csv"}, 1, "no such file"},
	} {
		r := c.run("", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("postern %s: exit %d (want %d), stderr %q (want %q)", strings.Join(tc.args, " "), r.code, tc.code, r.stderr, tc.want)
		}
	}
}

// Flags and arguments mix in any order; -- ends the flags.
func TestArgumentOrder(t *testing.T) {
	f, c := newCLI(t)
	c.ok("sites", "add", "--description", "A", "branch-a", "--domain", "a.example.org")
	jsonEqual(t, "flags around the argument", f.last(t, "POST", "/v1/sites").Body, `{"name": "branch-a", "description": "A", "domains": ["a.example.org"]}`)
	r := c.run("", "sites", "show", "--", "--json")
	if r.code != 1 || !strings.Contains(r.stderr, "No site is named --json") {
		t.Errorf("--: exit %d %q", r.code, r.stderr)
	}
}

// The users a file leaves as they are are counted apart.
func TestImportCountsUnchanged(t *testing.T) {
	f, c := newCLI(t)
	file := filepath.Join(t.TempDir(), "people.csv")
	if err := os.WriteFile(file, []byte("username,description,password_hash\njohn,,\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.importResult = &usersapi.ImportResult{Created: []string{}, Updated: []string{"zhangsan"}, Unchanged: &[]string{"john", "lisi"}, Errors: []usersapi.FieldError{}}
	if r := c.ok("import", file); r.stdout != "created 0 users, updated 1 user, 2 users unchanged\n" {
		t.Errorf("import: %q", r.stdout)
	}
	f.importResult.DryRun = true
	if r := c.ok("import", "--dry-run", file); r.stdout != "dry run, nothing written: would create 0 users and update 1 user, 2 users unchanged\n" {
		t.Errorf("dry run: %q", r.stdout)
	}
}

// The help of import, export and users add says what the server does.
func TestHelpTextsMatchTheServer(t *testing.T) {
	_, c := newCLI(t)
	for _, tt := range []struct {
		args      []string
		want, not []string
	}{
		{[]string{"import", "-h"},
			[]string{"and so is one of password (in clear) or password_hash on every line", "an empty hash stands for a user without a password", "counted as unchanged"},
			[]string{"password or password_hash, email, aliases (;-separated), site, groups (;-separated), internet_receive, internet_send, enabled and quota_bytes are optional"}},
		{[]string{"export", "-h"},
			[]string{"for an admin token, and for a site_admin token (which exports its own site's users only), it holds the password hashes"},
			[]string{"for an admin token it holds"}},
		{[]string{"users", "add", "-h"},
			[]string{"else a site_admin token's own site, else the only site of a one-site directory", "with a site_admin token, of its own site"},
			[]string{"required unless the template gives one"}},
	} {
		r := c.run("", tt.args...)
		help := strings.Join(strings.Fields(r.stderr), " ")
		if r.code != 0 {
			t.Errorf("%v: exit %d", tt.args, r.code)
		}
		for _, w := range tt.want {
			if !strings.Contains(help, w) {
				t.Errorf("%v: %q not in\n%s", tt.args, w, r.stderr)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(help, n) {
				t.Errorf("%v: still says %q", tt.args, n)
			}
		}
	}
}
