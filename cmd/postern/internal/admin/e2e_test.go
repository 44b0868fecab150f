package admin

// The CLI against the real users service (services/users, on SQLite in a
// temporary directory, without a bus): the session of the README, end to end.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/users"

	"github.com/postern/postern/api/usersclient"
)

const bootstrapToken = "pst_bootstrap_Y2xpLWVuZC10by1lbmQtdGVzdC10b2tlbi0wMTIzNDU"

// startUsers runs the users service and returns a CLI pointed at it with
// its bootstrap admin token.
func startUsers(t *testing.T) *cli {
	t.Helper()
	dir := t.TempDir()
	cfg := users.DefaultConfig()
	cfg.API.Listen = "127.0.0.1:0"
	cfg.Store.SQLitePath = filepath.Join(dir, "users.db")
	cfg.SecretKeyFile = filepath.Join(dir, "secret.key")
	cfg.BootstrapToken = config.Secret(bootstrapToken)
	cfg.API.ImportWorkers = 2
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt := &app.Runtime{Common: app.DefaultCommon(), Out: io.Discard, Logger: slog.New(slog.DiscardHandler)}
	svc, err := users.New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("users service: %v", err)
		}
	})
	return &cli{t: t, url: "http://" + svc.APIAddr(), token: bootstrapToken}
}

func mustContain(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q not in\n%s", what, w, got)
		}
	}
}

func TestAgainstTheUsersService(t *testing.T) {
	c := startUsers(t)

	c.ok("sites", "add", "headquarters", "--domain", "example.org", "--smtp-endpoint", "mail.hq.example.org:25", "--description", "Head office")
	c.ok("sites", "add", "branch-lyon", "--domain", "lyon.example.org")
	r := c.ok("sites", "list")
	mustContain(t, "sites list", r.stdout, "branch-lyon   lyon.example.org", "headquarters  example.org")

	r = c.run("correct horse battery\n", "users", "add", "zhangsan", "--name", "Zhang San", "--site", "headquarters",
		"--internet-send", "--quota", "1G", "--password-stdin")
	if r.code != 0 {
		t.Fatalf("users add: exit %d %s", r.code, r.stderr)
	}
	mustContain(t, "users add", r.stdout, "email:            zhangsan@example.org\n", "internet send:    yes\n", "quota:            1 GiB\n", "version:          1\n")
	c.ok("users", "add", "lisi", "--name", "Li Si", "--site", "headquarters", "--no-password")

	r = c.ok("users", "list")
	mustContain(t, "users list", r.stdout, "USERNAME  NAME", "lisi      Li Si      lisi@example.org", "zhangsan  Zhang San  zhangsan@example.org")

	// Merge patch with If-Match, then a stale one.
	r = c.ok("users", "edit", "zhangsan", "--alias", "zs@example.org", "--if-match", "1")
	mustContain(t, "users edit", r.stdout, "aliases:          zs@example.org\n", "name:             Zhang San\n", "version:          2\n")
	r = c.run("", "users", "edit", "zhangsan", "--name", "Someone", "--if-match", "1")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "postern: ") {
		t.Errorf("stale If-Match: exit %d %q", r.code, r.stderr)
	}

	// A validation error, with its members.
	r = c.run("", "users", "add", "bad", "--site", "headquarters", "--email", "not-an-address", "--no-password")
	if r.code != 1 || !strings.Contains(r.stderr, "\n  primary_address: ") {
		t.Errorf("bad address: exit %d %q", r.code, r.stderr)
	}

	r = c.ok("users", "move", "lisi", "--site", "branch-lyon")
	mustContain(t, "users move", r.stdout, "site:             branch-lyon\n")
	r = c.run("another good password\n", "users", "passwd", "lisi", "--password-stdin")
	if r.code != 0 {
		t.Errorf("passwd: exit %d %q", r.code, r.stderr)
	}

	r = c.ok("groups", "add", "sales", "--address", "sales-team@example.org", "--member", "user:zhangsan,user:lisi")
	mustContain(t, "groups add", r.stdout, "members:     user:zhangsan, user:lisi\n")

	r = c.run("s3cret-at-the-isp\n", "pop3-accounts", "add", "isp-sales", "--host", "pop.isp.example.net",
		"--username", "sales@isp.example.net", "--site", "headquarters", "--mode", "multi", "--postmaster", "zhangsan",
		"--keep", "keep_days:7", "--poll-interval", "5m", "--password-stdin")
	if r.code != 0 {
		t.Fatalf("pop3-accounts add: exit %d %s", r.code, r.stderr)
	}
	mustContain(t, "pop3-accounts add", r.stdout, "postmaster:          zhangsan\n", "keep:                keep_days:7\n", "poll interval:       5m0s\n")
	r = c.ok("pop3-accounts", "edit", "isp-sales", "--poll-interval", "2m", "--json")
	var acct usersclient.POP3Account
	if err := json.Unmarshal([]byte(r.stdout), &acct); err != nil || acct.PollIntervalSeconds != 120 || acct.Keep.Days != 7 {
		t.Errorf("pop3-accounts edit --json: %v %s", err, r.stdout)
	}
	if strings.Contains(r.stdout, "s3cret") {
		t.Error("the POP3 password came back")
	}

	r = c.ok("shared-mailboxes", "add", "sales@example.org", "--name", "Sales", "--manager", "zhangsan", "--staff", "lisi", "--forward-to-staff")
	mustContain(t, "shared-mailboxes add", r.stdout, "manager:                  zhangsan\n", "staff:                    lisi\n", "forward to staff:         yes\n")

	// lisi is the only staff member of sales@: the delete is refused, with the reason.
	r = c.run("", "users", "delete", "lisi")
	if r.code != 1 || !strings.Contains(r.stderr, "sales@example.org") {
		t.Errorf("delete of the only staff member: exit %d %q", r.code, r.stderr)
	}

	r = c.ok("tokens", "add", "lyon-helpdesk", "--role", "site_admin", "--site", "branch-lyon")
	i := strings.Index(r.stdout, "secret: ")
	if i < 0 {
		t.Fatalf("no secret:\n%s", r.stdout)
	}
	secret := strings.TrimSpace(r.stdout[i+len("secret: "):])
	helpdesk := &cli{t: t, url: c.url, token: secret}
	r = helpdesk.ok("users", "list")
	if strings.Contains(r.stdout, "zhangsan") || !strings.Contains(r.stdout, "lisi") {
		t.Errorf("a site_admin of branch-lyon sees:\n%s", r.stdout)
	}
	r = helpdesk.run("", "sites", "add", "elsewhere")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "postern: ") {
		t.Errorf("site_admin creating a site: exit %d %q", r.code, r.stderr)
	}
	r = c.ok("tokens", "list")
	mustContain(t, "tokens list", r.stdout, "lyon-helpdesk", "site_admin  branch-lyon")
	if strings.Contains(r.stdout, secret) {
		t.Error("tokens list shows a secret")
	}

	r = c.ok("audit", "--target-kind", "user", "--limit", "3")
	mustContain(t, "audit", r.stdout, "ACTION", "user.")

	// Export, then import: a bad file is refused line by line; a good one
	// (the export itself) updates every user.
	r = c.ok("export")
	mustContain(t, "export", r.stdout, "username,description,email", "zhangsan,Zhang San,zhangsan@example.org")
	dir := t.TempDir()
	good := filepath.Join(dir, "export.csv")
	if err := os.WriteFile(good, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	// The export as it is changes nothing; after an edit of each user it
	// would put both back.
	r = c.ok("import", good, "--dry-run")
	mustContain(t, "import --dry-run of an unchanged export", r.stdout, "dry run, nothing written: would create 0 users and update 0 users, 2 users unchanged\n")
	c.ok("users", "edit", "zhangsan", "--name", "Zhang S.")
	c.ok("users", "edit", "lisi", "--quota", "2G")
	r = c.ok("import", good, "--dry-run")
	mustContain(t, "import --dry-run", r.stdout, "dry run, nothing written: would create 0 users and update 2 users")

	bad := filepath.Join(dir, "bad.csv")
	if err := os.WriteFile(bad, []byte("username,description,password,email\nann,Ann,abcd1234efgh,ann@example.org\n,Nobody,abcd1234efgh,nobody@example.org\nbob,Bob,abcd1234efgh,bob-at-example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = c.run("", "import", bad)
	if r.code != 1 || !strings.Contains(r.stderr, bad+":3: column username: ") || !strings.Contains(r.stderr, bad+":4: column email: ") {
		t.Errorf("bad import: exit %d\n%s", r.code, r.stderr)
	}
	if r := c.ok("users", "list", "--q", "ann"); strings.Contains(r.stdout, "ann@") {
		t.Error("a refused import wrote a user")
	}
}
