package aum

// The AUM client against the real users service (services/users on SQLite
// in a temporary directory, without a bus, on 127.0.0.1:0) and a real
// SQLite site state.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/telemetry"
	"github.com/postern/postern/services/users"
)

const adminToken = "pst_bootstrap_YWF1bS1jbGllbnQtdGVzdC1ib290c3RyYXAtdG9rZW4"

// usersService is one run of the users service on a data directory.
type usersService struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// startUsers runs the users service on dir, listening on listen.
func startUsers(t *testing.T, dir, listen string) *usersService {
	t.Helper()
	cfg := users.DefaultConfig()
	cfg.API.Listen = listen
	cfg.Store.SQLitePath = filepath.Join(dir, "users.db")
	cfg.SecretKeyFile = filepath.Join(dir, "secret.key")
	cfg.BootstrapToken = config.Secret(adminToken)
	cfg.Sync.MaxWait = 10 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt := &app.Runtime{Common: app.DefaultCommon(), Out: io.Discard, Logger: slog.New(slog.DiscardHandler)}
	rt.Common.ShutdownTimeout = 5 * time.Second
	svc, err := users.New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &usersService{addr: svc.APIAddr(), cancel: cancel, done: make(chan error, 1)}
	go func() { u.done <- svc.Run(ctx) }()
	t.Cleanup(u.stop)
	return u
}

// stop stops the service (again: a no-op).
func (u *usersService) stop() {
	if u.cancel == nil {
		return
	}
	u.cancel()
	u.cancel = nil
	select {
	case <-u.done:
	case <-time.After(30 * time.Second):
		panic("users service did not stop")
	}
}

// fixture is a directory with two sites, their users and POP3 accounts,
// and a site_agent token of site hq.
type fixture struct {
	t     *testing.T
	dir   string
	users *usersService
	url   string
	admin *usersclient.ClientWithResponses
	agent string            // hq's site_agent token
	ids   map[string]string // user and account names → ids
	state sitestate.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), ids: map[string]string{}}
	f.users = startUsers(t, f.dir, "127.0.0.1:0")
	f.url = "http://" + f.users.addr
	var err error
	f.admin, err = usersclient.NewClientWithResponses(f.url, usersclient.WithRequestEditorFn(bearer(adminToken)))
	if err != nil {
		t.Fatal(err)
	}
	f.site("hq", "example.org")
	f.site("branch", "branch.example.org")
	f.user("john", "hq", "john-password-1")
	f.user("lisi", "hq", "")
	f.user("wangwu", "branch", "wangwu-password-1")
	f.user("leaver", "hq", "")
	f.account("isp-hq", "hq", "john", "isp-hq-secret")
	f.account("isp-branch", "branch", "wangwu", "isp-branch-secret")
	f.agent = f.token("hq-agent", usersclient.TokenRoleSiteAgent, "hq")

	f.state, err = sitestate.OpenSQLite(context.Background(), filepath.Join(f.dir, "state", "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.state.Close() })
	return f
}

func bearer(token string) usersclient.RequestEditorFn {
	return func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
}

func ptr[T any](v T) *T { return &v }

func (f *fixture) check(what string, code int, want int, body []byte) {
	f.t.Helper()
	if code != want {
		if len(body) > 500 {
			body = append(body[:500:500], "..."...)
		}
		f.t.Fatalf("%s: HTTP %d, want %d: %s", what, code, want, body)
	}
}

func (f *fixture) site(name, domain string) {
	f.t.Helper()
	r, err := f.admin.CreateSiteWithResponse(context.Background(), usersclient.SiteCreate{Name: name, Domains: &[]string{domain}})
	if err != nil {
		f.t.Fatal(err)
	}
	f.check("create site "+name, r.StatusCode(), http.StatusCreated, r.Body)
}

func (f *fixture) domain(site string) string {
	if site == "hq" {
		return "example.org"
	}
	return site + ".example.org"
}

func (f *fixture) user(name, site, password string) {
	f.t.Helper()
	body := usersclient.UserCreate{Username: name, Site: &site, PrimaryAddress: ptr(name + "@" + f.domain(site))}
	if password != "" {
		body.Password = &password
	}
	r, err := f.admin.CreateUserWithResponse(context.Background(), body)
	if err != nil {
		f.t.Fatal(err)
	}
	f.check("create user "+name, r.StatusCode(), http.StatusCreated, r.Body)
	f.ids[name] = r.JSON201.ID
}

func (f *fixture) account(name, site, target, password string) {
	f.t.Helper()
	body := usersclient.POP3AccountCreate{
		Name: name, Host: "pop." + name + ".example.net", Username: name + "@isp.example.net", Site: site,
		Mode: ptr(usersclient.POP3ModeSingle), TargetUser: ptr(f.ids[target]), Password: &password,
	}
	r, err := f.admin.CreatePOP3AccountWithResponse(context.Background(), body)
	if err != nil {
		f.t.Fatal(err)
	}
	f.check("create POP3 account "+name, r.StatusCode(), http.StatusCreated, r.Body)
	f.ids[name] = r.JSON201.ID
}

func (f *fixture) token(name string, role usersclient.TokenRole, site string) string {
	f.t.Helper()
	body := usersclient.TokenCreate{Name: name, Role: role}
	if site != "" {
		body.Site = &site
	}
	r, err := f.admin.CreateTokenWithResponse(context.Background(), body)
	if err != nil {
		f.t.Fatal(err)
	}
	f.check("create token "+name, r.StatusCode(), http.StatusCreated, r.Body)
	return r.JSON201.Secret
}

// config is a client configuration for site hq with short timeouts.
func (f *fixture) config() Config {
	cfg := DefaultConfig()
	cfg.URL = f.url
	cfg.Token = config.Secret(f.agent)
	cfg.Timeout = 5 * time.Second
	cfg.Wait = 2 * time.Second
	return cfg
}

func (f *fixture) client(cfg Config, opts Options) *Client {
	f.t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Meter == nil {
		opts.Meter = noop.NewMeterProvider() // not the global one, which outlives the test
	}
	c, err := New(cfg, f.state.Directory(), opts)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func (f *fixture) reader() replica.Reader { return replica.Reader{D: f.state.Directory()} }

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustUser(t *testing.T, r replica.Reader, key string) *replica.User {
	t.Helper()
	u, err := r.UserByKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if u == nil {
		t.Fatalf("user %q is not in the replica", key)
	}
	return u
}

func TestSnapshotFillsTheReplica(t *testing.T) {
	f := newFixture(t)
	ctx := ctxTimeout(t, 60*time.Second)
	clk := newClock()
	c := f.client(f.config(), Options{Now: clk.Now})
	n, err := c.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 2 sites, 4 users, hq's POP3 account.
	if n != 7 {
		t.Errorf("Sync applied %d objects, want 7", n)
	}
	r := f.reader()

	john := mustUser(t, r, "John@Example.org")
	if john.ID != f.ids["john"] || john.Site != "hq" {
		t.Errorf("john = %+v", john)
	}
	if ok, err := passwd.Verify(john.PasswordHash, "john-password-1"); err != nil || !ok {
		t.Errorf("john's password hash in the replica does not verify his password: %v %v", ok, err)
	}
	if u := mustUser(t, r, "john"); u.ID != john.ID {
		t.Errorf("john by user name = %s, want %s", u.ID, john.ID)
	}
	wangwu := mustUser(t, r, "wangwu@branch.example.org")
	if wangwu.Site != "branch" || wangwu.PasswordHash != "" {
		t.Errorf("another site's user: site %q, password hash %q (want branch, none)", wangwu.Site, wangwu.PasswordHash)
	}
	if s, err := r.SiteOfDomain(ctx, "BRANCH.example.org"); err != nil || s == nil || s.Name != "branch" {
		t.Errorf("site of branch.example.org = %+v, %v", s, err)
	}

	accts, err := r.POP3Accounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(accts) != 1 || accts[0].Name != "isp-hq" {
		t.Fatalf("POP3 accounts in hq's replica = %+v, want isp-hq only", accts)
	}
	if a := accts[0]; a.Password != "isp-hq-secret" || a.TargetUser != john.ID || a.Host != "pop.isp-hq.example.net" {
		t.Errorf("isp-hq = %+v", a)
	}
	if a, err := r.POP3Account(ctx, f.ids["isp-branch"]); err != nil || a != nil {
		t.Errorf("another site's POP3 account is in the replica: %+v %v", a, err)
	}

	st, err := f.state.Directory().SyncState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseCursor(st.Cursor); err != nil || !st.SyncedAt.Equal(clk.Now()) {
		t.Errorf("sync state = %+v, want a cursor and SyncedAt %v", st, clk.Now())
	}
	if age, err := c.Age(ctx); err != nil || age != 0 {
		t.Errorf("Age = %v, %v; want 0", age, err)
	}
	clk.Advance(90 * time.Second)
	if age, err := c.Age(ctx); err != nil || age != 90*time.Second {
		t.Errorf("Age = %v, %v; want 1m30s", age, err)
	}

	// Nothing new: a second Sync applies nothing and is still a sync.
	if n, err := c.Sync(ctx); err != nil || n != 0 {
		t.Errorf("second Sync = %d, %v; want 0 changes", n, err)
	}
	if age, _ := c.Age(ctx); age != 0 {
		t.Errorf("Age after a sync without changes = %v, want 0", age)
	}
}

func TestEditsAreInTheReplicaAtTheNextCycle(t *testing.T) {
	f := newFixture(t)
	ctx := ctxTimeout(t, 60*time.Second)
	c := f.client(f.config(), Options{})
	if err := c.BeforeCycle(ctx); err != nil {
		t.Fatal(err)
	}
	r := f.reader()
	mustUser(t, r, "lisi@example.org")
	mustUser(t, r, "leaver@example.org")

	// New user, moved user, new POP3 account, deleted user.
	f.user("zhangsan", "hq", "")
	mv, err := f.admin.MoveUserWithResponse(ctx, f.ids["lisi"], &usersclient.MoveUserParams{}, usersclient.UserMove{Site: "branch"})
	if err != nil {
		t.Fatal(err)
	}
	f.check("move lisi", mv.StatusCode(), http.StatusOK, mv.Body)
	f.account("isp-hq-2", "hq", "zhangsan", "second-secret")
	del, err := f.admin.DeleteUserWithResponse(ctx, f.ids["leaver"], &usersclient.DeleteUserParams{})
	if err != nil {
		t.Fatal(err)
	}
	if del.StatusCode() != http.StatusNoContent && del.StatusCode() != http.StatusOK {
		t.Fatalf("delete leaver: HTTP %d %s", del.StatusCode(), del.Body)
	}

	if err := c.BeforeCycle(ctx); err != nil {
		t.Fatal(err)
	}
	if u := mustUser(t, r, "zhangsan@example.org"); u.ID != f.ids["zhangsan"] {
		t.Errorf("zhangsan = %+v", u)
	}
	if u := mustUser(t, r, "lisi@example.org"); u.Site != "branch" {
		t.Errorf("lisi's site in the replica = %q, want branch", u.Site)
	}
	if a, err := r.POP3Account(ctx, f.ids["isp-hq-2"]); err != nil || a == nil || a.Password != "second-secret" || a.TargetUser != f.ids["zhangsan"] {
		t.Errorf("new POP3 account = %+v, %v", a, err)
	}
	if u, err := r.UserByKey(ctx, "leaver@example.org"); err != nil || u != nil {
		t.Errorf("deleted user by address = %+v, %v; want gone", u, err)
	}
	if u, err := r.User(ctx, f.ids["leaver"]); err != nil || u != nil {
		t.Errorf("deleted user by id = %+v, %v; want gone", u, err)
	}
	users, err := r.Users(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 4 { // john, lisi, wangwu, zhangsan
		t.Errorf("%d users in the replica, want 4", len(users))
	}
}

func TestRunKeepsTheReplicaCurrent(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 60*time.Second))
	c := f.client(f.config(), Options{})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	r := f.reader()

	eventually(t, 20*time.Second, "the snapshot from Run", func() bool {
		u, err := r.UserByKey(ctx, "john@example.org")
		return err == nil && u != nil
	})
	f.user("zhangsan", "hq", "")
	// Syncs from the download loop run concurrently with Run's long poll.
	for range 3 {
		if _, err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	f.user("wangfang", "hq", "")
	eventually(t, 20*time.Second, "the new user through Run's long poll", func() bool {
		u, err := r.UserByKey(ctx, "wangfang@example.org")
		return err == nil && u != nil
	})
	mustUser(t, r, "zhangsan@example.org")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUsersServiceDown(t *testing.T) {
	f := newFixture(t)
	ctx := ctxTimeout(t, 60*time.Second)
	tel, err := telemetry.Setup(ctx, telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "fetcher", Site: "hq"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	clk := newClock()
	var logs logBuffer
	c := f.client(f.config(), Options{Now: clk.Now, Meter: tel.MeterProvider(), Logger: logs.logger()})

	m := scrape(t, tel)
	if strings.Contains(m, "postern_directory_replica_age_seconds{") {
		t.Errorf("an age before the first sync:\n%s", grep(m, "postern_directory"))
	}
	if err := c.BeforeCycle(ctx); err != nil {
		t.Fatal(err)
	}
	m = scrape(t, tel)
	for _, typ := range []string{
		"# TYPE postern_directory_replica_age_seconds gauge",
		"# TYPE postern_directory_syncs_total counter",
		"# TYPE postern_directory_changes_applied_total counter",
	} {
		if !strings.Contains(m, typ) {
			t.Errorf("/metrics lacks %q:\n%s", typ, grep(m, "postern_directory"))
		}
	}
	if v := value(t, m, "postern_directory_replica_age_seconds{"); v != 0 {
		t.Errorf("replica age right after a sync = %v, want 0", v)
	}
	if v := value(t, m, `postern_directory_syncs_total{otel_scope_name="`+instrumentationName+`",otel_scope_schema_url="",otel_scope_version="",result="ok"}`); v != 1 {
		t.Errorf("syncs ok = %v, want 1\n%s", v, grep(m, "postern_directory"))
	}
	if v := value(t, m, "postern_directory_changes_applied_total{"); v != 7 {
		t.Errorf("changes applied = %v, want 7", v)
	}

	addr := f.users.addr
	f.users.stop()
	clk.Advance(5 * time.Minute)
	for range 3 {
		if err := c.BeforeCycle(ctx); err != nil {
			t.Fatalf("BeforeCycle with the users service down = %v, want nil (go on with the last replica)", err)
		}
	}
	r := f.reader()
	if u := mustUser(t, r, "john@example.org"); u.PasswordHash == "" {
		t.Error("john lost his password hash")
	}
	if a, err := r.POP3Accounts(ctx); err != nil || len(a) != 1 {
		t.Errorf("POP3 accounts with the users service down = %d, %v", len(a), err)
	}
	m = scrape(t, tel)
	if v := value(t, m, "postern_directory_replica_age_seconds{"); v != 300 {
		t.Errorf("replica age = %v, want 300", v)
	}
	if v := value(t, m, `postern_directory_syncs_total{otel_scope_name="`+instrumentationName+`",otel_scope_schema_url="",otel_scope_version="",result="error"}`); v != 3 {
		t.Errorf("failed syncs = %v, want 3\n%s", v, grep(m, "postern_directory"))
	}
	clk.Advance(5 * time.Minute)
	if v := value(t, scrape(t, tel), "postern_directory_replica_age_seconds{"); v != 600 {
		t.Errorf("replica age = %v, want 600", v)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings for one outage, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "directory sync failed") || !strings.Contains(logs.String(), addr) {
		t.Errorf("the warning does not say what failed:\n%s", logs.String())
	}

	// Refusing a stale replica: 10 minutes old.
	stale := f.config()
	stale.RefuseStale, stale.MaxAge = true, time.Minute
	err = f.client(stale, Options{Now: clk.Now}).BeforeCycle(ctx)
	if !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "10m0s ago") {
		t.Errorf("BeforeCycle with refuse_stale on a 10-minute-old replica = %v, want ErrStale", err)
	}
	stale.MaxAge = time.Hour
	if err := f.client(stale, Options{Now: clk.Now}).BeforeCycle(ctx); err != nil {
		t.Errorf("BeforeCycle with refuse_stale within max_age = %v, want nil", err)
	}

	// The service comes back on the same address: the outage ends, once.
	f.users = startUsers(t, f.dir, addr)
	if err := c.BeforeCycle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "directory sync works again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, logs.String())
	}
	if v := value(t, scrape(t, tel), "postern_directory_replica_age_seconds{"); v != 0 {
		t.Errorf("replica age after recovery = %v, want 0", v)
	}
	if strings.Contains(logs.String(), f.agent) {
		t.Error("the log shows the token")
	}
}

func scrape(t *testing.T, tel *telemetry.Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: HTTP %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// value is the value of the one series whose line starts with prefix.
func value(t *testing.T, metrics, prefix string) float64 {
	t.Helper()
	for line := range strings.Lines(metrics) {
		if strings.HasPrefix(line, prefix) {
			fields := strings.Fields(line)
			v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s in:\n%s", prefix, grep(metrics, "postern_directory"))
	return 0
}

func grep(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestNeverSynced(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx := ctxTimeout(t, 30*time.Second)
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	cfg := DefaultConfig()
	cfg.URL = "http://" + addr
	cfg.Token = "pst_0194aaaa-0000-7000-8000-000000000001_" + config.Secret(strings.Repeat("A", 43))
	cfg.Timeout = 2 * time.Second
	c, err := New(cfg, st.Directory(), Options{Logger: slog.New(slog.DiscardHandler), Meter: noop.NewMeterProvider()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sync(ctx); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("Sync with nothing listening = %v, want an error naming %s", err, addr)
	}
	if err := c.BeforeCycle(ctx); err != nil {
		t.Errorf("BeforeCycle without refuse_stale = %v, want nil", err)
	}
	if _, err := c.Age(ctx); !errors.Is(err, ErrNeverSynced) {
		t.Errorf("Age = %v, want ErrNeverSynced", err)
	}
	cfg.RefuseStale = true
	c, err = New(cfg, st.Directory(), Options{Logger: slog.New(slog.DiscardHandler), Meter: noop.NewMeterProvider()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.BeforeCycle(ctx); !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "never synced") {
		t.Errorf("BeforeCycle with refuse_stale, never synced = %v, want ErrStale", err)
	}

	// Run backs off and returns nil on cancel.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestTokenRefused(t *testing.T) {
	f := newFixture(t)
	ctx := ctxTimeout(t, 60*time.Second)
	wrong := "pst_0194aaaa-0000-7000-8000-000000000001_" + strings.Repeat("x", 43)
	for _, tc := range []struct {
		name, token, want string
	}{
		{"unknown token", wrong, "401"},
		{"admin token", adminToken, "site_agent"},
		{"another role", f.token("hq-admin", usersclient.TokenRoleSiteAdmin, "hq"), "403"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config()
			cfg.Token = config.Secret(tc.token)
			var logs logBuffer
			c := f.client(cfg, Options{Logger: logs.logger()})
			_, err := c.Sync(ctx)
			if !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "token") {
				t.Errorf("Sync = %v, want ErrToken mentioning %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), tc.token) {
				t.Errorf("the error shows the token: %v", err)
			}
			if err := c.BeforeCycle(ctx); err != nil {
				t.Errorf("BeforeCycle = %v, want nil (logged, go on)", err)
			}
			if !strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), tc.token) {
				t.Errorf("log: want one warning without the token:\n%s", logs.String())
			}
		})
	}
}

// countingDirectory counts Apply calls and remembers how many users the
// replica holds after each.
type countingDirectory struct {
	sitestate.Directory
	mu     sync.Mutex
	sets   []sitestate.ChangeSet
	counts []int
}

func (d *countingDirectory) Apply(ctx context.Context, cs sitestate.ChangeSet) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.Directory.Apply(ctx, cs); err != nil {
		return err
	}
	es, err := d.Directory.List(ctx, replica.KindUser)
	if err != nil {
		return err
	}
	d.sets = append(d.sets, cs)
	d.counts = append(d.counts, len(es))
	return nil
}

// countingTransport counts the requests to /v1/sync.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == "/v1/sync" {
		c.n.Add(1)
	}
	return http.DefaultTransport.RoundTrip(req)
}

// TestChangeSetsAreAtomic imports many users and checks that a reader
// polling the replica during syncs only ever sees it between two whole
// /v1/sync responses: the snapshot in one step, then pages of changes.
func TestChangeSetsAreAtomic(t *testing.T) {
	f := newFixture(t)
	ctx := ctxTimeout(t, 60*time.Second)
	hash, err := passwd.Hash("imported-password")
	if err != nil {
		t.Fatal(err)
	}
	importUsers := func(prefix string, n int) {
		t.Helper()
		var csv strings.Builder
		csv.WriteString("username,description,password_hash,site\n")
		for i := range n {
			fmt.Fprintf(&csv, "%s%04d,Imported %d,%q,hq\n", prefix, i, i, hash)
		}
		r, err := f.admin.ImportUsersWithBodyWithResponse(ctx, &usersclient.ImportUsersParams{}, "text/csv", strings.NewReader(csv.String()))
		if err != nil {
			t.Fatal(err)
		}
		f.check("import", r.StatusCode(), http.StatusOK, r.Body)
		if r.JSON200 == nil || len(r.JSON200.Created) != n {
			t.Fatalf("import created %v", r.JSON200)
		}
	}
	importUsers("a", 600)

	dir := &countingDirectory{Directory: f.state.Directory()}
	tr := &countingTransport{}
	cfg := f.config()
	cfg.Timeout = 30 * time.Second // pages of 1000 changes, under the race detector too
	c, err := New(cfg, dir, Options{Logger: slog.New(slog.DiscardHandler), Meter: noop.NewMeterProvider(), HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}

	// A reader polls the replica while the client syncs.
	seen := map[int]bool{}
	watchedSync := func() int {
		t.Helper()
		stop := make(chan struct{})
		readerDone := make(chan error, 1)
		go func() {
			for {
				es, err := f.state.Directory().List(ctx, replica.KindUser)
				if err != nil {
					readerDone <- err
					return
				}
				seen[len(es)] = true
				select {
				case <-stop:
					readerDone <- nil
					return
				case <-time.After(time.Millisecond):
				}
			}
		}()
		n, err := c.Sync(ctx)
		close(stop)
		if rerr := <-readerDone; rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	n := watchedSync()
	if n != 2+604+1 || len(dir.sets) != 1 || !dir.sets[0].Snapshot || dir.counts[0] != 604 {
		t.Errorf("first Sync: %d objects in %d change sets (user counts %v), want 607 in one snapshot", n, len(dir.sets), dir.counts)
	}
	if tr.n.Load() != 1 {
		t.Errorf("%d requests for the snapshot, want 1", tr.n.Load())
	}

	// More than one page (the users service sends at most 1000 changes per response).
	importUsers("b", 1100)
	n = watchedSync()
	if n != 1100 {
		t.Errorf("second Sync applied %d objects, want 1100", n)
	}
	if got := tr.n.Load() - 1; got < 2 || int(got) != len(dir.sets)-1 {
		t.Errorf("second Sync: %d requests and %d change sets; want one change set per response, at least 2", got, len(dir.sets)-1)
	}
	allowed := append([]int{0}, dir.counts...)
	for count := range seen {
		if !slices.Contains(allowed, count) {
			t.Errorf("a reader saw %d users: not the replica before or after a whole change set (%v)", count, allowed)
		}
	}
	if last := dir.counts[len(dir.counts)-1]; last != 1704 {
		t.Errorf("%d users in the replica, want 1704", last)
	}
}
