package harness

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/api/usersclient"
)

// Users is the users service (the directory, "AUM server") running alone
// in a `postern serve` process on SQLite, with a known admin token.
type Users struct {
	*Process
	// Token is the admin token (users.bootstrap_token).
	Token string
	// Client is the generated REST client, authenticated with Token.
	Client *usersclient.ClientWithResponses
}

// StartUsers starts the users service in a process of its own, in a new
// temporary directory.
func StartUsers(t testing.TB) *Users {
	t.Helper()
	return startUsers(t, nil)
}

// startUsers starts the users service with the further keys extra.
func startUsers(t testing.TB, extra map[string]any) *Users {
	t.Helper()
	dir := TempDir(t, "users")
	token := bootstrapToken()
	cfg := Config{}
	cfg.Merge(map[string]any{
		"site":             "central",
		"services":         []string{"users"},
		"log.format":       "json",
		"shutdown_timeout": "10s",
		"broker.listen":    "127.0.0.1:0",
		"broker.data_dir":  filepath.Join(dir, "broker"),
	})
	cfg.Merge(usersConfig(dir, token))
	cfg.Merge(extra)
	return newUsers(t, StartProcess(t, "users", dir, cfg), token)
}

// bootstrapToken is a fresh users.bootstrap_token.
func bootstrapToken() string {
	var secret [32]byte
	_, _ = rand.Read(secret[:])
	return "pst_bootstrap_" + base64.RawURLEncoding.EncodeToString(secret[:])
}

// usersConfig is the users service's section, its data under dir.
func usersConfig(dir, token string) map[string]any {
	return map[string]any{
		"users.http.listen":       "127.0.0.1:0",
		"users.api.listen":        "127.0.0.1:0",
		"users.store.sqlite_path": filepath.Join(dir, "users.db"),
		"users.secret_key_file":   filepath.Join(dir, "secret.key"),
		"users.bootstrap_token":   token,
		"users.sync.outbox_poll":  "200ms",
	}
}

// newUsers is the users service running in p, with a client that uses token.
func newUsers(t testing.TB, p *Process, token string) *Users {
	t.Helper()
	u := &Users{Process: p, Token: token}
	c, err := usersclient.NewClientWithResponses(u.URL(),
		usersclient.WithHTTPClient(&http.Client{Timeout: 30 * time.Second}),
		usersclient.WithRequestEditorFn(func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
	if err != nil {
		t.Fatalf("harness: users client: %v", err)
	}
	u.Client = c
	return u
}

// URL is the base URL of the REST API (the generated client and the
// fetcher's fetcher.aum.url add /v1/...).
func (u *Users) URL() string { return "http://" + u.Addr("api") }

// User is a user to create in the directory.
type User struct {
	Username string
	Password string
	// Address is the primary address; it must be in a domain of the site.
	Address         string
	DisplayName     string
	InternetSend    bool
	InternetReceive bool
}

func ctx30() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// CreateSite creates a site receiving mail for domains.
func (u *Users) CreateSite(t testing.TB, name string, domains ...string) {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.CreateSiteWithResponse(ctx, usersclient.SiteCreate{Name: name, Domains: &domains})
	if err != nil {
		t.Fatalf("harness: create site %s: %v", name, err)
	}
	if resp.JSON201 == nil {
		t.Fatalf("harness: create site %s: %d %s", name, resp.StatusCode(), resp.Body)
	}
}

// CreateUser creates a user at site and returns its id.
func (u *Users) CreateUser(t testing.TB, site string, usr User) string {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	enabled := true
	body := usersclient.UserCreate{
		Username:       usr.Username,
		Password:       &usr.Password,
		PrimaryAddress: &usr.Address,
		Site:           &site,
		Enabled:        &enabled,
		Permissions:    &usersclient.PermissionsPatch{InternetSend: &usr.InternetSend, InternetReceive: &usr.InternetReceive},
	}
	if usr.DisplayName != "" {
		body.DisplayName = &usr.DisplayName
	}
	resp, err := u.Client.CreateUserWithResponse(ctx, body)
	if err != nil {
		t.Fatalf("harness: create user %s: %v", usr.Username, err)
	}
	if resp.JSON201 == nil {
		t.Fatalf("harness: create user %s: %d %s", usr.Username, resp.StatusCode(), resp.Body)
	}
	return resp.JSON201.ID
}

// SiteAgentToken creates a site_agent token for site (what the site's
// fetcher syncs the directory replica with) and returns its secret.
func (u *Users) SiteAgentToken(t testing.TB, site string) string {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.CreateTokenWithResponse(ctx, usersclient.TokenCreate{Name: site + "-agent", Role: usersclient.TokenRoleSiteAgent, Site: &site})
	if err != nil {
		t.Fatalf("harness: create token for %s: %v", site, err)
	}
	if resp.JSON201 == nil {
		t.Fatalf("harness: create token for %s: %d %s", site, resp.StatusCode(), resp.Body)
	}
	return resp.JSON201.Secret
}

// CreatePOP3Account creates a POP3 account (see ISP.Account for one that
// downloads a mailbox of a test ISP) and returns it as the service stored
// it.
func (u *Users) CreatePOP3Account(t testing.TB, a usersclient.POP3AccountCreate) usersclient.POP3Account {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.CreatePOP3AccountWithResponse(ctx, a)
	if err != nil {
		t.Fatalf("harness: create pop3 account %s: %v", a.Name, err)
	}
	if resp.JSON201 == nil {
		t.Fatalf("harness: create pop3 account %s: %d %s", a.Name, resp.StatusCode(), resp.Body)
	}
	return *resp.JSON201
}

// UpdatePOP3Account changes the POP3 account id (a merge patch, without
// If-Match) and returns it as the service stored it.
func (u *Users) UpdatePOP3Account(t testing.TB, id string, p usersclient.POP3AccountPatch) usersclient.POP3Account {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.UpdatePOP3AccountWithResponse(ctx, id, nil, p)
	if err != nil {
		t.Fatalf("harness: update pop3 account %s: %v", id, err)
	}
	if resp.JSON200 == nil {
		t.Fatalf("harness: update pop3 account %s: %d %s", id, resp.StatusCode(), resp.Body)
	}
	return *resp.JSON200
}
