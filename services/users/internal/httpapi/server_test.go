package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// testServer is the API on a fresh SQLite store with an admin token.
type testServer struct {
	t     testing.TB
	store store.Store
	box   *directory.SecretBox
	logs  *syncBuffer
	clock *testClock
	srv   *httptest.Server
	admin string // the admin token's secret
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

func newTestServer(t testing.TB, options ...func(*Options)) *testServer {
	t.Helper()
	st, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var key [32]byte
	_, _ = rand.Read(key[:])
	box, err := directory.NewSecretBox([]directory.SecretKey{{ID: "k1", Key: key}})
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, store: st, box: box, logs: &syncBuffer{}, clock: &testClock{}}
	o := Options{
		Store: st, Box: box, Now: s.clock.Now, MaxBodyBytes: 64 << 10, SyncMaxWait: 5 * time.Second, ImportWorkers: 2,
		Logger: slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range options {
		f(&o)
	}
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewServer(h)
	t.Cleanup(s.srv.Close)
	s.admin = s.mkToken(directory.RoleAdmin, "", nil)
	return s
}

// mkToken writes a token straight into the store and returns its secret.
func (s *testServer) mkToken(role, site string, expires *time.Time) string {
	s.t.Helper()
	id := uuid.Must(uuid.NewV7()).String()
	secret, hash, err := auth.NewSecret(id)
	if err != nil {
		s.t.Fatal(err)
	}
	tok := &directory.Token{Meta: directory.Meta{ID: id}, Name: role + "-token", Role: role, Site: site, ExpiresAt: expires, SecretHash: hash}
	err = s.store.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.CreateToken(context.Background(), tok); err != nil {
			return err
		}
		return tx.Audit(context.Background(), &directory.AuditEntry{Actor: "test", Action: "token.create"})
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return secret
}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) problem(t *testing.T) usersapi.Problem {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json; body %s", ct, r.body)
	}
	var p usersapi.Problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("not a problem: %v: %s", err, r.body)
	}
	if p.Status != r.status || p.Type == "" || p.Title == "" {
		t.Errorf("problem %+v for status %d", p, r.status)
	}
	return p
}

// do sends a request; secret "" sends no Authorization header.
func (s *testServer) do(method, path, secret, contentType, body string, header ...string) result {
	s.t.Helper()
	req, err := http.NewRequest(method, s.srv.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if body == "" {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

func (s *testServer) json(method, path, secret, body string, header ...string) result {
	return s.do(method, path, secret, "application/json", body, header...)
}

func TestAuthentication(t *testing.T) {
	s := newTestServer(t)
	id := uuid.Must(uuid.NewV7()).String()
	wrongRandom := s.admin[:len(s.admin)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(s.admin, "A")]
	past := s.clock.Now().Add(time.Hour)
	expiring := s.mkToken(directory.RoleReader, "", &past)
	if r := s.do("GET", "/v1/sites", expiring, "", ""); r.status != http.StatusOK {
		t.Fatalf("a token before its expiry: %d %s", r.status, r.body)
	}
	s.clock.Advance(2 * time.Hour)

	for _, tt := range []struct {
		name, authorization string
		extra               []string
		detail              string
	}{
		{"no header", "", nil, "needs a bearer token"},
		{"basic scheme", "Basic YWRtaW46YWRtaW4=", nil, "Bearer scheme"},
		{"empty bearer", "Bearer ", nil, "Bearer scheme"},
		{"not a Postern token", "Bearer abcdef", nil, "malformed"},
		{"unknown id", "Bearer pst_" + id + "_" + strings.Repeat("x", 43), nil, "unknown or revoked"},
		{"known id, wrong secret", "Bearer " + wrongRandom, nil, "unknown or revoked"},
		{"expired", "Bearer " + expiring, nil, "expired"},
		{"two headers", "Bearer " + s.admin, []string{"Authorization", "Bearer " + s.admin}, "one Authorization header"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", s.srv.URL+"/v1/sites", nil)
			if tt.authorization != "" {
				req.Header.Set("Authorization", tt.authorization)
			}
			for i := 0; i+1 < len(tt.extra); i += 2 {
				req.Header.Add(tt.extra[i], tt.extra[i+1])
			}
			resp, err := s.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := result{status: resp.StatusCode, header: resp.Header, body: b}
			if r.status != http.StatusUnauthorized {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			p := r.problem(t)
			if p.Type != typeUnauthorized || !strings.Contains(p.Detail, tt.detail) {
				t.Errorf("problem %+v, want detail with %q", p, tt.detail)
			}
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}

	// The scheme is case-insensitive; the use is recorded.
	r := s.do("GET", "/v1/sites", "", "", "", "Authorization", "bearer "+s.admin)
	if r.status != http.StatusOK {
		t.Fatalf("lower-case scheme: %d %s", r.status, r.body)
	}
	adminID, _ := auth.TokenID(s.admin)
	tok, err := s.store.GetToken(t.Context(), adminID)
	if err != nil || tok.LastUsedAt == nil {
		t.Errorf("last use not recorded: %+v %v", tok, err)
	}
	if logs := s.logs.String(); strings.Contains(logs, s.admin) || strings.Contains(logs, expiring) {
		t.Errorf("a token secret is in the log:\n%s", logs)
	}
}

func TestEchoAnswersAreProblems(t *testing.T) {
	s := newTestServer(t)
	big := `{"name":"` + strings.Repeat("a", 70<<10) + `"}`
	for _, tt := range []struct {
		name         string
		method, path string
		secret       string
		ct, body     string
		status       int
		typ          string
		field        string
	}{
		{"unknown route", "GET", "/v1/nothing", s.admin, "", "", 404, typeNotFound, ""},
		{"unknown route without a token", "GET", "/v1/nothing", "", "", "", 401, typeUnauthorized, ""},
		{"method not allowed", "PUT", "/v1/sites", s.admin, "application/json", "{}", 405, typeMethodNotAllowed, ""},
		{"body too large", "POST", "/v1/sites", s.admin, "application/json", big, 413, typeTooLarge, ""},
		{"bad JSON", "POST", "/v1/sites", s.admin, "application/json", `{"name":`, 400, typeBadRequest, ""},
		{"unknown member", "POST", "/v1/sites", s.admin, "application/json", `{"name":"hq","nickname":"x"}`, 400, typeBadRequest, "nickname"},
		{"null member", "POST", "/v1/sites", s.admin, "application/json", `{"name":"hq","description":null}`, 400, typeBadRequest, "description"},
		{"missing member", "POST", "/v1/sites", s.admin, "application/json", `{}`, 400, typeBadRequest, "name"},
		{"wrong type in a list", "POST", "/v1/sites", s.admin, "application/json", `{"name":"hq","domains":["a.org",3]}`, 400, typeBadRequest, "domains[1]"},
		{"wrong content type", "POST", "/v1/sites", s.admin, "text/plain", `{"name":"hq"}`, 400, typeBadRequest, "Content-Type"},
		{"bad limit", "GET", "/v1/sites?limit=0", s.admin, "", "", 400, typeBadRequest, "limit"},
		{"limit not a number", "GET", "/v1/sites?limit=ten", s.admin, "", "", 400, typeBadRequest, "limit"},
		{"bad cursor", "GET", "/v1/sites?cursor=garbage", s.admin, "", "", 400, typeBadRequest, "cursor"},
		{"bad enum", "GET", "/v1/tokens?role=king", s.admin, "", "", 400, typeBadRequest, "role"},
		{"import without text/csv", "POST", "/v1/users/import", s.admin, "application/json", `{}`, 400, typeBadRequest, "Content-Type"},
		{"malformed If-Match", "DELETE", "/v1/sites/hq", s.admin, "", "", 400, typeBadRequest, "If-Match"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var extra []string
			if tt.field == "If-Match" {
				extra = []string{"If-Match", "3"}
			}
			r := s.do(tt.method, tt.path, tt.secret, tt.ct, tt.body, extra...)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			p := r.problem(t)
			if p.Type != tt.typ {
				t.Errorf("type %s, want %s", p.Type, tt.typ)
			}
			if tt.field != "" {
				found := false
				for _, f := range p.Errors {
					found = found || f.Field == tt.field
				}
				if !found {
					t.Errorf("errors %+v do not name %q", p.Errors, tt.field)
				}
			}
			if tt.status == 405 && !strings.Contains(r.header.Get("Allow"), "GET") {
				t.Errorf("Allow %q", r.header.Get("Allow"))
			}
		})
	}
}

func TestRequestLog(t *testing.T) {
	s := newTestServer(t)
	r := s.do("GET", "/v1/sites", s.admin, "", "", "X-Request-Id", "abc-123")
	if r.status != 200 || r.header.Get("X-Request-Id") != "abc-123" {
		t.Fatalf("%d, request id %q", r.status, r.header.Get("X-Request-Id"))
	}
	r = s.do("GET", "/v1/sites", s.admin, "", "", "X-Request-Id", "bad id\twith junk")
	if id := r.header.Get("X-Request-Id"); id == "" || strings.ContainsAny(id, " \t") {
		t.Errorf("an unsafe request id was kept: %q", id)
	}
	s.json("POST", "/v1/users", s.admin, `{"username":"john","site":"nowhere","password":"Sup3r-secret-pw"}`)
	adminID, _ := auth.TokenID(s.admin)
	var found bool
	for line := range strings.SplitSeq(strings.TrimSpace(s.logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == "http request" && rec["request_id"] == "abc-123" {
			found = true
			if rec["route"] != "/v1/sites" || rec["method"] != "GET" || rec["status"] != float64(200) || rec["token_id"] != adminID {
				t.Errorf("request line %v", rec)
			}
		}
	}
	if !found {
		t.Errorf("no request line:\n%s", s.logs.String())
	}
	if logs := s.logs.String(); strings.Contains(logs, "Sup3r-secret-pw") || strings.Contains(logs, s.admin) {
		t.Errorf("a secret is in the log:\n%s", logs)
	}
}

func TestPanicIsAGeneric500(t *testing.T) {
	var logs syncBuffer
	h, err := newHandlers(Options{Store: nopStore{}, Box: &directory.SecretBox{}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HTTPErrorHandler = h.errorHandler
	e.Use(requestID, h.logRequests, h.recoverPanics)
	e.GET("/boom", func(echo.Context) error { panic("secret internals") })
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/boom", nil))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "secret internals") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	var p usersapi.Problem
	_ = json.Unmarshal(rec.Body.Bytes(), &p)
	if p.Type != typeInternal || !strings.Contains(p.Detail, rec.Header().Get("X-Request-Id")) {
		t.Errorf("problem %+v", p)
	}
	if !strings.Contains(logs.String(), "secret internals") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("the panic is not logged with its stack:\n%s", logs.String())
	}
}

// nopStore is a store.Store for tests that never reach it.
type nopStore struct{ store.Store }
