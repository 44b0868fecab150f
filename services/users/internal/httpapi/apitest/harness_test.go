package apitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/httpapi"
	"github.com/postern/postern/services/users/internal/store"
)

// The suite: every test gets a server of its own on a fresh store.
var suite = []struct {
	name string
	run  func(t *testing.T, e *env)
}{
	{"Sites", testSites},
	{"Users", testUsers},
	{"UserListPaginationAndFilters", testUserList},
	{"Groups", testGroups},
	{"POP3Accounts", testPOP3Accounts},
	{"SharedMailboxes", testSharedMailboxes},
	{"Templates", testTemplates},
	{"Tokens", testTokens},
	{"Validation", testValidation},
	{"Conflicts", testConflicts},
	{"MoveAndPassword", testMoveAndPassword},
	{"RoleReader", testRoleReader},
	{"RoleSiteAdmin", testRoleSiteAdmin},
	{"RoleSiteAgent", testRoleSiteAgent},
	{"Unauthenticated", testUnauthenticated},
	{"Audit", testAudit},
	{"ImportSeedExample", testImportSeedExample},
	{"ImportDryRun", testImportDryRun},
	{"ImportBadLines", testImportBadLines},
	{"ImportTemplateDefaults", testImportTemplateDefaults},
	{"ImportTooLarge", testImportTooLarge},
	{"ExportImportRoundTrip", testExportImportRoundTrip},
	{"ExportImportPasswordless", testExportImportPasswordless},
	{"Sync", testSync},
	{"SyncLongPoll", testSyncLongPoll},
	{"SyncAfterCompaction", testSyncAfterCompaction},
	{"SyncMore", testSyncMore},
	{"Secrets", testSecrets},
}

// TestAPI runs the suite against both stores.
func TestAPI(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) store.Store
	}{
		{"sqlite", openSQLite},
		{"postgres", openPostgres},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			if st.name == "postgres" {
				testenv.PostgresDSN(t) // skip (or fail in CI) once, not per test
			}
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					e := newEnv(t, st.open(t))
					defer e.finish(t)
					tc.run(t, e)
				})
			}
		})
	}
}

func openSQLite(t *testing.T) store.Store {
	t.Helper()
	s, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "users.db"))
	if err != nil {
		t.Fatalf("open sqlite store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openPostgres(t *testing.T) store.Store {
	t.Helper()
	s, err := store.OpenPostgres(t.Context(), testenv.PostgresDB(t))
	if err != nil {
		t.Fatalf("open postgres store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Server settings of the suite.
const (
	secretKeyID  = "apitest-key-1"
	maxBodyBytes = 512 << 10
	syncMaxWait  = 40 * time.Second
	bootstrap    = "bootstrap" // the bootstrap admin token's name
)

// env is one server on one fresh store, with a bootstrap admin client.
type env struct {
	store store.Store
	box   *directory.SecretBox
	logs  *lockedBuffer
	clock *clock
	srv   *httptest.Server

	admin   *client // the bootstrap admin token
	adminID string

	mu        sync.Mutex
	exchanges []exchange
	secrets   []secretRule
}

// exchange is one response the suite received.
type exchange struct {
	who    string // the client's label
	method string
	path   string
	query  string
	status int
	header http.Header
	body   []byte
}

func (x exchange) String() string {
	s := x.method + " " + x.path
	if x.query != "" {
		s += "?" + x.query
	}
	return fmt.Sprintf("%s (as %s, status %d)", s, x.who, x.status)
}

// secretRule is a value that may appear only in the responses allowed
// says (nil: in none), and never in the server's log.
type secretRule struct {
	what, value string
	allowed     func(exchange) bool
}

func newEnv(t *testing.T, st store.Store) *env {
	t.Helper()
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	box, err := directory.NewSecretBox([]directory.SecretKey{{ID: secretKeyID, Key: key}})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: st, box: box, logs: &lockedBuffer{}, clock: &clock{}}
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := httpapi.New(httpapi.Options{
		Store:         st,
		Box:           box,
		Logger:        logger,
		Now:           e.clock.Now,
		SyncMaxWait:   syncMaxWait,
		MaxBodyBytes:  maxBodyBytes,
		ImportWorkers: 2,
	})
	if err != nil {
		t.Fatalf("httpapi.New: %v", err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)

	// The bootstrap admin token, written straight into the store as the
	// service's first start does.
	id := newTokenID()
	secret, _, err := auth.NewSecret(id)
	if err != nil {
		t.Fatal(err)
	}
	tok := &directory.Token{Meta: directory.Meta{ID: id}, Name: bootstrap, Role: directory.RoleAdmin, SecretHash: auth.HashSecret(secret)}
	err = st.Update(t.Context(), func(tx store.Tx) error {
		if err := tx.CreateToken(t.Context(), tok); err != nil {
			return err
		}
		return tx.Audit(t.Context(), &directory.AuditEntry{Actor: "apitest", Action: "token.create",
			TargetKind: directory.KindToken, TargetID: id, Diff: directory.Diff(nil, tok)})
	})
	if err != nil {
		t.Fatalf("create the bootstrap token: %v", err)
	}
	e.adminID = id
	e.admin = e.client("admin", secret)
	e.secret("the bootstrap token's secret", secret, nil)
	e.secret("the bootstrap token's secret hash", auth.HashSecret(secret), nil)
	return e
}

// newTokenID returns a UUID-shaped random id.
func newTokenID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// client is the generated client with a bearer token and a label.
type client struct {
	*usersclient.ClientWithResponses
	who    string
	secret string
}

// client returns a client that authenticates with the token secret (none
// when empty).
func (e *env) client(who, secret string) *client {
	authorization := ""
	if secret != "" {
		authorization = "Bearer " + secret
	}
	return e.clientWithAuth(who, authorization, secret)
}

// clientWithAuth returns a client that sends authorization as the
// Authorization header (none when empty).
func (e *env) clientWithAuth(who, authorization, secret string) *client {
	doer := &recordingDoer{e: e, who: who, hc: e.srv.Client()}
	opts := []usersclient.ClientOption{usersclient.WithHTTPClient(doer)}
	if authorization != "" {
		opts = append(opts, usersclient.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", authorization)
			return nil
		}))
	}
	c, err := usersclient.NewClientWithResponses(e.srv.URL, opts...)
	if err != nil {
		panic(err)
	}
	return &client{ClientWithResponses: c, who: who, secret: secret}
}

// recordingDoer keeps every response for the secret scan.
type recordingDoer struct {
	e   *env
	who string
	hc  *http.Client
}

func (d *recordingDoer) Do(req *http.Request) (*http.Response, error) {
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	d.e.mu.Lock()
	d.e.exchanges = append(d.e.exchanges, exchange{who: d.who, method: req.Method, path: req.URL.Path,
		query: req.URL.RawQuery, status: resp.StatusCode, header: resp.Header.Clone(), body: body})
	d.e.mu.Unlock()
	return resp, nil
}

// secret registers a value that must appear only where allowed says.
func (e *env) secret(what, value string, allowed func(exchange) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = append(e.secrets, secretRule{what: what, value: value, allowed: allowed})
}

// userPassword returns a fresh user password, registered as a secret that
// no response may ever contain.
func (e *env) userPassword() string {
	pw := "UserPw-" + rand.Text()
	e.secret("a user password", pw, nil)
	return pw
}

// pop3Password returns a fresh POP3 password that only the sync
// responses of the given agents may contain.
func (e *env) pop3Password(agents ...string) string {
	pw := "Pop3Pw-" + rand.Text()
	e.secret("a POP3 password", pw, syncOf(agents...))
	return pw
}

// syncOf allows the sync responses of the given client labels.
func syncOf(who ...string) func(exchange) bool {
	return func(x exchange) bool {
		return x.method == http.MethodGet && x.path == "/v1/sync" && slices.Contains(who, x.who)
	}
}

// isTokenCreation allows the response that creates a token.
func isTokenCreation(x exchange) bool {
	return x.method == http.MethodPost && x.path == "/v1/tokens"
}

// mayCarryHashes says which responses may hold password hashes: the
// export and the sync feed.
func mayCarryHashes(x exchange) bool {
	return x.method == http.MethodGet && (x.path == "/v1/users/export" || x.path == "/v1/sync")
}

// hashPattern finds a password hash: argon2id (PHC string) or bcrypt
// (modular crypt). Scheme names alone ("{ARGON2ID}" in an error message)
// are not hashes.
var hashPattern = regexp.MustCompile(`\$argon2id\$v=\d+\$|\$2[aby]\$\d\d\$[./A-Za-z0-9]{10}`)

// finish fetches the whole audit log and checks that no secret appears
// where it must not: in a response, the audit log, or the server's log.
func (e *env) finish(t *testing.T) {
	t.Helper()
	entries := e.auditAll(t, nil) // its responses are scanned with the others
	checkAuditMasked(t, entries)

	e.mu.Lock()
	exchanges := slices.Clone(e.exchanges)
	secrets := slices.Clone(e.secrets)
	e.mu.Unlock()

	sealed := "v1:" + secretKeyID + ":"
	for _, x := range exchanges {
		text := string(x.body) + "\n" + headerText(x.header)
		for _, s := range secrets {
			if strings.Contains(text, s.value) && (s.allowed == nil || !s.allowed(x)) {
				t.Errorf("secret leak: %s appears in the response to %s:\n%s", s.what, x, clipAround(text, s.value))
			}
		}
		if !mayCarryHashes(x) {
			if m := hashPattern.FindString(text); m != "" {
				t.Errorf("secret leak: a password hash (%q…) appears in the response to %s:\n%s", m, x, clipAround(text, m))
			}
		}
		if strings.Contains(text, sealed) {
			t.Errorf("secret leak: a sealed POP3 password (%q…) appears in the response to %s:\n%s", sealed, x, clipAround(text, sealed))
		}
		if x.path != "/v1/audit" { // audit diffs name masked secret members
			for _, m := range []string{`"password_enc"`, `"secret_hash"`} {
				if strings.Contains(text, m) {
					t.Errorf("secret leak: %s appears in the response to %s:\n%s", m, x, clipAround(text, m))
				}
			}
		}
	}

	logs := e.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s.value) {
			t.Errorf("secret leak: %s appears in the server's log:\n%s", s.what, clipAround(logs, s.value))
		}
	}
	if m := hashPattern.FindString(logs); m != "" {
		t.Errorf("secret leak: a password hash (%q…) appears in the server's log:\n%s", m, clipAround(logs, m))
	}
	if strings.Contains(logs, sealed) {
		t.Errorf("secret leak: a sealed POP3 password appears in the server's log:\n%s", clipAround(logs, sealed))
	}
}

// checkAuditMasked checks that every member of an audit diff that names a
// secret (password, secret) shows only a mask or null.
func checkAuditMasked(t *testing.T, entries []usersclient.AuditEntry) {
	t.Helper()
	for _, a := range entries {
		var diff map[string]map[string]any
		if err := json.Unmarshal(a.Diff, &diff); err != nil {
			continue // not a {member: {from, to}} diff; the scan still covers it
		}
		for member, ft := range diff {
			m := strings.ToLower(member)
			if !strings.Contains(m, "password") && !strings.Contains(m, "secret") {
				continue
			}
			for side, v := range ft {
				if s, ok := v.(string); v != nil && (!ok || strings.Trim(s, "*") != "") {
					t.Errorf("audit %d (%s): diff member %s.%s is not masked: %v", a.ID, a.Action, member, side, v)
				}
			}
		}
	}
}

func headerText(h http.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// auditAll lists the whole audit log (newest first) through the bootstrap
// admin token, with the filters of p.
func (e *env) auditAll(t *testing.T, p *usersclient.ListAuditEntriesParams) []usersclient.AuditEntry {
	t.Helper()
	var q usersclient.ListAuditEntriesParams
	if p != nil {
		q = *p
	}
	q.Limit = ptr(1000)
	var out []usersclient.AuditEntry
	for range 100 {
		r, err := e.admin.ListAuditEntriesWithResponse(context.Background(), &q)
		if !checkStatus(t, "list audit entries", r, err, http.StatusOK) {
			return out
		}
		out = append(out, r.JSON200.Items...)
		if r.JSON200.NextCursor == "" {
			return out
		}
		q.Cursor = ptr(r.JSON200.NextCursor)
	}
	t.Errorf("list audit entries: more than 100 pages")
	return out
}

// lockedBuffer is the server's log.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// clock is the server's clock: the real time plus an offset a test can
// move forward.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// ---------------------------------------------------------------- checks

// response is what every generated *XxxResponse has.
type response interface {
	StatusCode() int
	GetBody() []byte
	ContentType() string
}

// wantStatus stops the test unless the call succeeded with status want.
func wantStatus(t *testing.T, what string, r response, err error, want int) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got := r.StatusCode(); got != want {
		t.Fatalf("%s: status %d, want %d; body: %s", what, got, want, clip(r.GetBody()))
	}
}

// checkStatus reports (without stopping) unless the call succeeded with
// status want.
func checkStatus(t *testing.T, what string, r response, err error, want int) bool {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	if got := r.StatusCode(); got != want {
		t.Errorf("%s: status %d, want %d; body: %s", what, got, want, clip(r.GetBody()))
		return false
	}
	return true
}

// problemOf decodes an RFC 9457 problem response and checks its media
// type and status member.
func problemOf(t *testing.T, what string, r response) usersclient.Problem {
	t.Helper()
	var p usersclient.Problem
	if ct := r.ContentType(); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	if err := json.Unmarshal(r.GetBody(), &p); err != nil {
		t.Errorf("%s: the body is not a problem document: %v: %s", what, err, clip(r.GetBody()))
		return p
	}
	if p.Status != r.StatusCode() {
		t.Errorf("%s: problem status %d, response status %d", what, p.Status, r.StatusCode())
	}
	if p.Title == "" || p.Type == "" {
		t.Errorf("%s: problem without type or title: %s", what, clip(r.GetBody()))
	}
	return p
}

// wantProblem checks the status, the problem type and that every field
// in fields is named in errors.
func wantProblem(t *testing.T, what string, r response, err error, status int, typ string, fields ...string) usersclient.Problem {
	t.Helper()
	if !checkStatus(t, what, r, err, status) {
		return usersclient.Problem{}
	}
	p := problemOf(t, what, r)
	if typ != "" && p.Type != typ {
		t.Errorf("%s: problem type %q, want %q", what, p.Type, typ)
	}
	named := errorFields(p)
	for _, f := range fields {
		if !slices.Contains(named, f) {
			t.Errorf("%s: errors do not name %q; they name %q (%s)", what, f, named, clip(r.GetBody()))
		}
	}
	return p
}

func errorFields(p usersclient.Problem) []string {
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Field)
	}
	return out
}

// Problem types.
const (
	typeBadRequest   = "urn:postern:problem:bad-request"
	typeUnauthorized = "urn:postern:problem:unauthorized"
	typeForbidden    = "urn:postern:problem:forbidden"
	typeNotFound     = "urn:postern:problem:not-found"
	typeConflict     = "urn:postern:problem:conflict"
	typeInUse        = "urn:postern:problem:in-use"
	typePrecondition = "urn:postern:problem:precondition-failed"
	typeTooLarge     = "urn:postern:problem:too-large"
	typeValidation   = "urn:postern:problem:validation"
)

// headers401 is what the generated XxxResponse401Headers types share.
type headers401 interface {
	~struct{ WWWAuthenticate string }
}

// checkWWWAuthenticate checks the WWW-Authenticate header of a 401.
func checkWWWAuthenticate[H headers401](t *testing.T, what string, h *H) {
	t.Helper()
	if h == nil {
		t.Errorf("%s: no 401 headers", what)
		return
	}
	v := struct{ WWWAuthenticate string }(*h).WWWAuthenticate
	if !strings.HasPrefix(strings.ToLower(v), "bearer") {
		t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", what, v)
	}
}

// etag is the ETag of an object at version v.
func etag(v int64) string { return `"` + strconv.FormatInt(v, 10) + `"` }

func checkETag(t *testing.T, what, got string, version int64) {
	t.Helper()
	if got != etag(version) {
		t.Errorf("%s: ETag %q, want %q", what, got, etag(version))
	}
}

func checkLocation(t *testing.T, what, got, path string) {
	t.Helper()
	if got != path && !strings.HasSuffix(got, path) {
		t.Errorf("%s: Location %q, want %q", what, got, path)
	}
}

// noMembers checks that a JSON object (the body) has none of the members.
func noMembers(t *testing.T, what string, body []byte, members ...string) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: body is not a JSON object: %v", what, err)
		return
	}
	for _, k := range members {
		if _, ok := m[k]; ok {
			t.Errorf("%s: the response has a %q member: %s", what, k, clip(body))
		}
	}
}

// sameJSON reports whether a and b marshal to the same JSON.
func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

func sameSet(a, b []string) bool { return slices.Equal(sorted(a), sorted(b)) }

func clip(b []byte) string {
	const max = 2000
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}

func clipAround(s, sub string) string {
	i := strings.Index(s, sub)
	if i < 0 {
		return ""
	}
	lo, hi := max(0, i-300), min(len(s), i+len(sub)+300)
	return s[lo:hi]
}

func ptr[T any](v T) *T { return &v }

// ---------------------------------------------------------------- fixtures

// Pre-computed password hashes for fast imports (argon2id costs ~100 ms).
type knownHash struct{ password, hash string }

var (
	hashesOnce sync.Once
	argonHash  [3]knownHash
	bcryptHash knownHash
	hashesErr  error
)

func hashes(t *testing.T) {
	t.Helper()
	hashesOnce.Do(func() {
		for i := range argonHash {
			pw := fmt.Sprintf("Hashed-%d-%s", i, rand.Text())
			h, err := directory.HashPassword(pw)
			if err != nil {
				hashesErr = err
				return
			}
			argonHash[i] = knownHash{pw, h}
		}
		pw := "Bcrypted-" + rand.Text()
		b, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			hashesErr = err
			return
		}
		bcryptHash = knownHash{pw, "{BLF-CRYPT}" + string(b)}
	})
	if hashesErr != nil {
		t.Fatalf("pre-compute password hashes: %v", hashesErr)
	}
}

// hashed returns the i-th pre-computed argon2id hash, registering its
// password as a secret.
func (e *env) hashed(t *testing.T, i int) knownHash {
	t.Helper()
	hashes(t)
	e.secret("a user password (pre-hashed)", argonHash[i].password, nil)
	e.secret("a user's password hash", argonHash[i].hash, mayCarryHashes)
	return argonHash[i]
}

func (e *env) bcrypted(t *testing.T) knownHash {
	t.Helper()
	hashes(t)
	e.secret("a user password (bcrypt)", bcryptHash.password, nil)
	e.secret("a user's password hash (bcrypt)", bcryptHash.hash, mayCarryHashes)
	return bcryptHash
}

func (e *env) mkSite(t *testing.T, name string, domains ...string) usersclient.Site {
	t.Helper()
	r, err := e.admin.CreateSiteWithResponse(t.Context(), usersclient.SiteCreate{Name: name, Domains: &domains,
		SMTPEndpoint: ptr("mail." + name + ".example.org:25")})
	wantStatus(t, "create site "+name, r, err, http.StatusCreated)
	return *r.JSON201
}

// mkSites creates the two sites most tests use: hq (hq.example.org) and
// branch (branch.example.org).
func (e *env) mkSites(t *testing.T) {
	t.Helper()
	e.mkSite(t, "hq", "hq.example.org")
	e.mkSite(t, "branch", "branch.example.org")
}

func (e *env) mkUser(t *testing.T, u usersclient.UserCreate) usersclient.User {
	t.Helper()
	if u.Password != nil {
		e.secret("a user password", *u.Password, nil)
	}
	r, err := e.admin.CreateUserWithResponse(t.Context(), u)
	wantStatus(t, "create user "+u.Username, r, err, http.StatusCreated)
	return *r.JSON201
}

// mkUserAt creates a user of site with the default address and no password.
func (e *env) mkUserAt(t *testing.T, username, site string) usersclient.User {
	t.Helper()
	return e.mkUser(t, usersclient.UserCreate{Username: username, Site: ptr(site)})
}

func (e *env) getUser(t *testing.T, id string) usersclient.User {
	t.Helper()
	r, err := e.admin.GetUserWithResponse(t.Context(), id, nil)
	wantStatus(t, "get user", r, err, http.StatusOK)
	return *r.JSON200
}

func (e *env) mkGroup(t *testing.T, g usersclient.GroupCreate) usersclient.Group {
	t.Helper()
	r, err := e.admin.CreateGroupWithResponse(t.Context(), g)
	wantStatus(t, "create group "+g.Name, r, err, http.StatusCreated)
	return *r.JSON201
}

func (e *env) getGroup(t *testing.T, id string) usersclient.Group {
	t.Helper()
	r, err := e.admin.GetGroupWithResponse(t.Context(), id, nil)
	wantStatus(t, "get group", r, err, http.StatusOK)
	return *r.JSON200
}

func (e *env) mkPOP3(t *testing.T, a usersclient.POP3AccountCreate) usersclient.POP3Account {
	t.Helper()
	r, err := e.admin.CreatePOP3AccountWithResponse(t.Context(), a)
	wantStatus(t, "create POP3 account "+a.Name, r, err, http.StatusCreated)
	return *r.JSON201
}

// singlePOP3 is a single-drop account of site for target.
func singlePOP3(name, site, target, password string) usersclient.POP3AccountCreate {
	return usersclient.POP3AccountCreate{
		Name: name, Host: "pop.isp.example.net", Username: name + "@isp.example.net", Password: ptr(password),
		Site: site, Mode: ptr(usersclient.POP3ModeSingle), TargetUser: ptr(target),
	}
}

func (e *env) mkShared(t *testing.T, m usersclient.SharedMailboxCreate) usersclient.SharedMailbox {
	t.Helper()
	r, err := e.admin.CreateSharedMailboxWithResponse(t.Context(), m)
	wantStatus(t, "create shared mailbox "+m.Address, r, err, http.StatusCreated)
	return *r.JSON201
}

func (e *env) mkTemplate(t *testing.T, tpl usersclient.TemplateCreate) usersclient.Template {
	t.Helper()
	r, err := e.admin.CreateTemplateWithResponse(t.Context(), tpl)
	wantStatus(t, "create template "+tpl.Name, r, err, http.StatusCreated)
	return *r.JSON201
}

// mkToken creates a token through the API and returns a client using it,
// labelled who.
func (e *env) mkToken(t *testing.T, who string, role usersclient.TokenRole, site string) (*client, usersclient.CreatedToken) {
	t.Helper()
	body := usersclient.TokenCreate{Name: who, Role: role}
	if site != "" {
		body.Site = ptr(site)
	}
	r, err := e.admin.CreateTokenWithResponse(t.Context(), body)
	wantStatus(t, "create token "+who, r, err, http.StatusCreated)
	tok := *r.JSON201
	e.secret("the secret of token "+who, tok.Secret, isTokenCreation)
	e.secret("the secret hash of token "+who, auth.HashSecret(tok.Secret), nil)
	return e.client(who, tok.Secret), tok
}

// listAllUsers pages through GET /v1/users with the filters of p.
func (e *env) listAllUsers(t *testing.T, c *client, p usersclient.ListUsersParams) []usersclient.User {
	t.Helper()
	var out []usersclient.User
	for range 1000 {
		r, err := c.ListUsersWithResponse(t.Context(), &p)
		wantStatus(t, "list users", r, err, http.StatusOK)
		out = append(out, r.JSON200.Items...)
		if r.JSON200.NextCursor == "" {
			return out
		}
		p.Cursor = ptr(r.JSON200.NextCursor)
	}
	t.Fatal("list users: too many pages")
	return nil
}

func (e *env) userCount(t *testing.T) int64 {
	t.Helper()
	r, err := e.admin.ListUsersWithResponse(t.Context(), &usersclient.ListUsersParams{Limit: ptr(1)})
	wantStatus(t, "count users", r, err, http.StatusOK)
	return r.JSON200.Total
}

// exportJSON returns the JSON export as c sees it, by username.
func (e *env) exportJSON(t *testing.T, c *client, site string) map[string]usersclient.ExportedUser {
	t.Helper()
	p := &usersclient.ExportUsersParams{Format: ptr(usersclient.ExportFormatJSON)}
	if site != "" {
		p.Site = ptr(site)
	}
	r, err := c.ExportUsersWithResponse(t.Context(), p)
	wantStatus(t, "export users as JSON", r, err, http.StatusOK)
	if r.JSON200 == nil {
		t.Fatalf("export users as JSON: Content-Type %q, body %s", r.ContentType(), clip(r.Body))
	}
	out := map[string]usersclient.ExportedUser{}
	for _, u := range *r.JSON200 {
		out[u.Username] = u
	}
	return out
}

// importCSV posts a CSV file.
func (e *env) importCSV(t *testing.T, c *client, csv string, p *usersclient.ImportUsersParams) *usersclient.ImportUsersResponse {
	t.Helper()
	if p == nil {
		p = &usersclient.ImportUsersParams{}
	}
	r, err := c.ImportUsersWithBodyWithResponse(t.Context(), p, "text/csv", strings.NewReader(csv))
	if err != nil {
		t.Fatalf("import users: %v", err)
	}
	return r
}
