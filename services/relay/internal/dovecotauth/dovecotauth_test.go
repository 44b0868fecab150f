package dovecotauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// hashes caches passwd.Hash (about 60 ms and 64 MiB each).
var hashes sync.Map

func hashOf(t *testing.T, pw string) string {
	t.Helper()
	if h, ok := hashes.Load(pw); ok {
		return h.(string)
	}
	h, err := passwd.Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	hashes.Store(pw, h)
	return h
}

type replicaEnv struct {
	store  sitestate.Store
	cursor int
}

func newReplica(t *testing.T) *replicaEnv {
	t.Helper()
	st, err := sitestate.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &replicaEnv{store: st}
}

func (r *replicaEnv) put(t *testing.T, us ...replica.User) {
	t.Helper()
	var cs sitestate.ChangeSet
	for _, u := range us {
		data, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		cs.Put = append(cs.Put, sitestate.Entry{Kind: replica.KindUser, ID: u.ID, Version: u.Version, Data: data,
			Keys: []string{strings.ToLower(u.Username), strings.ToLower(u.PrimaryAddress)}})
	}
	r.apply(t, cs)
}

func (r *replicaEnv) del(t *testing.T, ids ...string) {
	t.Helper()
	var cs sitestate.ChangeSet
	for _, id := range ids {
		cs.Delete = append(cs.Delete, sitestate.Ref{Kind: replica.KindUser, ID: id})
	}
	r.apply(t, cs)
}

func (r *replicaEnv) apply(t *testing.T, cs sitestate.ChangeSet) {
	t.Helper()
	r.cursor++
	cs.Cursor = fmt.Sprint(r.cursor)
	if err := r.store.Directory().Apply(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
}

func dirUser(id, name, site string, enabled bool, hash string) replica.User {
	return replica.User{ID: id, Version: 1, Username: name, PrimaryAddress: strings.ToLower(name) + "@example.test",
		Site: site, Enabled: enabled, PasswordHash: hash}
}

func newWriter(t *testing.T, r *replicaEnv, cfg Config) *Writer {
	t.Helper()
	if cfg.PasswdFile == "" {
		cfg.PasswdFile = filepath.Join(t.TempDir(), "dovecot", "passwd")
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Millisecond
	}
	w, err := New(cfg, r.store.Directory(), "hq", Options{})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestFileContent: exactly this site's enabled users with usable hashes,
// lower-cased, sorted, then the address logins; written 0640; rewritten
// only when the content changes.
func TestFileContent(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	argon := hashOf(t, "alice-secret-1")
	bcrypt := "{BLF-CRYPT}$2y$05$.Hne5fNVrEBvXdeSOptm5u7I.Zr.Jcfp6gEo7pB.FwrUpSD8ZNtki" // doveadm pw -s BLF-CRYPT -r 5 -p frank-pass-1
	if err := passwd.CheckHash(bcrypt); err != nil {
		t.Fatalf("test hash: %v", err)
	}
	clash := dirUser("u-clash", "clash", "hq", true, argon)
	clash.PrimaryAddress = "alice" // an address equal to another user's name gets no login line
	r.put(t,
		dirUser("u-alice", "alice", "hq", true, argon),
		dirUser("u-frank", "Frank", "hq", true, bcrypt),  // lower-cased
		dirUser("u-bob", "bob", "hq", false, argon),      // disabled
		dirUser("u-carol", "carol", "branch", true, ""),  // other site (no hash reaches us anyway)
		dirUser("u-carl", "carl", "branch", true, argon), // other site, even with a hash
		dirUser("u-dave", "dave", "hq", true, ""),        // no password
		dirUser("u-eve", "eve", "hq", true, "{PLAIN}secret"),
		dirUser("u-mallory", "mal:lory", "hq", true, argon),
		dirUser("u-dot", ".dot", "hq", true, argon),
		clash,
	)
	w := newWriter(t, r, Config{LoginByAddress: true})
	changed, err := w.Sync(ctx)
	if err != nil || !changed {
		t.Fatalf("Sync = %v, %v; want written", changed, err)
	}
	got, err := os.ReadFile(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := "# Dovecot passwd-file of site hq, written by Postern's relay from the directory replica.\n" +
		"# Do not edit: it is replaced whenever the directory changes.\n" +
		"alice:" + argon + "::::::\n" +
		"clash:" + argon + "::::::\n" +
		"frank:" + bcrypt + "::::::\n" +
		"alice@example.test:" + argon + "::::::user=alice\n" +
		"frank@example.test:" + bcrypt + "::::::user=frank\n"
	if string(got) != want {
		t.Errorf("passwd-file:\n%s\nwant:\n%s", got, want)
	}
	fi, _ := os.Stat(w.Path())
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	before := stamp(w.Path())
	if changed, err := w.Sync(ctx); err != nil || changed {
		t.Errorf("second Sync = %v, %v; want unchanged", changed, err)
	}
	if stamp(w.Path()) != before {
		t.Error("unchanged content was rewritten")
	}
	if entries, _ := os.ReadDir(filepath.Dir(w.Path())); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the file (no temporary left)", len(entries))
	}

	// Without address logins: only the user name lines.
	w2 := newWriter(t, r, Config{LoginByAddress: false})
	if _, err := w2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got2, _ := os.ReadFile(w2.Path())
	if strings.Contains(string(got2), "@") {
		t.Errorf("address logins written with LoginByAddress off:\n%s", got2)
	}
}

// TestModTimeAdvances: every new version gets a later modification time
// (in whole seconds, what Dovecot compares) than the one it replaces, even
// at the same size within one second.
func TestModTimeAdvances(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	now := time.Now()
	w := newWriter(t, r, Config{})
	w.now = func() time.Time { return now } // a frozen clock
	var last time.Time
	for i, name := range []string{"anna", "bert", "cleo"} { // same length: same size
		r.del(t, "u-1")
		r.put(t, dirUser("u-1", name, "hq", true, hashOf(t, "pw-same-length")))
		if changed, err := w.Sync(ctx); err != nil || !changed {
			t.Fatalf("Sync %d = %v, %v", i, changed, err)
		}
		fi, _ := os.Stat(w.Path())
		mt := fi.ModTime().Truncate(time.Second)
		if i > 0 && !mt.After(last) {
			t.Errorf("version %d: modification time %v not after %v", i, mt, last)
		}
		last = mt
	}
}

// TestUnsyncedReplicaKeepsFile: a replica that never synced does not
// empty an existing file; a missing file is created.
func TestUnsyncedReplicaKeepsFile(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t) // cursor ""
	path := filepath.Join(t.TempDir(), "passwd")
	old := "alice:{BLF-CRYPT}x::::::\n"
	os.WriteFile(path, []byte(old), 0o640)
	w := newWriter(t, r, Config{PasswdFile: path})
	if changed, err := w.Sync(ctx); err != nil || changed {
		t.Fatalf("Sync = %v, %v; want the file left alone", changed, err)
	}
	if got, _ := os.ReadFile(path); string(got) != old {
		t.Errorf("file changed to %q", got)
	}
	w2 := newWriter(t, r, Config{})
	if changed, err := w2.Sync(ctx); err != nil || !changed {
		t.Fatalf("Sync without a file = %v, %v; want it created", changed, err)
	}
}

// TestRunFollowsReplica: Run rewrites the file when the replica changes and
// when the file is removed, and returns when its context ends.
func TestRunFollowsReplica(t *testing.T) {
	r := newReplica(t)
	r.put(t, dirUser("u-a", "anna", "hq", true, hashOf(t, "anna-pw-123")))
	w := newWriter(t, r, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor := func(what string, ok func(string) bool) {
		t.Helper()
		for range 500 { // 5 s at most
			if b, err := os.ReadFile(w.Path()); err == nil && ok(string(b)) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("passwd-file never %s", what)
	}
	waitFor("listed anna", func(s string) bool { return strings.Contains(s, "\nanna:") })
	r.put(t, dirUser("u-b", "bert", "hq", true, hashOf(t, "bert-pw-123")))
	waitFor("listed bert", func(s string) bool { return strings.Contains(s, "\nbert:") })
	os.Remove(w.Path())
	waitFor("came back", func(s string) bool { return strings.Contains(s, "\nbert:") })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

// TestConfig: defaults are valid; errors name the key.
func TestConfig(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for key, mutate := range map[string]func(*Config){
		"passwd_file":   func(c *Config) { c.PasswdFile = "" },
		"group":         func(c *Config) { c.Group = "no-such-group-here" },
		"poll_interval": func(c *Config) { c.PollInterval = 0 },
	} {
		c := DefaultConfig()
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), key+":") {
			t.Errorf("Validate = %v, want an error about %s", err, key)
		}
	}
	c := DefaultConfig()
	c.PasswdFile = "/a path/passwd"
	if err := c.Validate(); err == nil {
		t.Error("a path with a space accepted")
	}
	if _, err := New(DefaultConfig(), nil, "hq", Options{}); err == nil {
		t.Error("New without a replica succeeded")
	}
}

// loginRefusedSoon waits (boundedly) until Dovecot refuses the login:
// Dovecot re-reads a changed passwd-file at the first login at least a
// second after its previous check.
func loginRefusedSoon(t *testing.T, d *testenv.DovecotServer, login, pw string) {
	t.Helper()
	var err error
	for range 40 { // 4 s at most
		if _, err = d.IMAPMessages(login, pw); errors.Is(err, testenv.ErrLoginRefused) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("IMAP login of %s still not refused: %v", login, err)
}

func loginWorksSoon(t *testing.T, d *testenv.DovecotServer, login, pw string) {
	t.Helper()
	var err error
	for range 40 {
		if _, err = d.IMAPMessages(login, pw); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("IMAP login of %s still refused: %v", login, err)
}

// TestDovecotFollowsReplica: a real Dovecot using the written passwd-file
// lets users in with their directory passwords (by name and by address,
// over IMAP and POP3), refuses wrong passwords, and follows the replica:
// disabled, deleted, re-passworded and new users.
func TestDovecotFollowsReplica(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	r.put(t,
		dirUser("u-alice", "alice", "hq", true, hashOf(t, "alice-secret-1")),
		dirUser("u-bob", "bob", "hq", true, hashOf(t, "bob-secret-22")),
	)
	w := newWriter(t, r, Config{LoginByAddress: true})
	if _, err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	d := testenv.StartDovecot(t, testenv.DovecotOptions{PasswdFile: w.Path()})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dovecot log:\n%s", d.Log())
		}
	})

	for _, login := range []string{"alice", "ALICE", "alice@example.test"} {
		if _, err := d.IMAPMessages(login, "alice-secret-1"); err != nil {
			t.Errorf("IMAP login as %s: %v", login, err)
		}
	}
	if _, err := d.POP3Messages("alice", "alice-secret-1"); err != nil {
		t.Errorf("POP3 login: %v", err)
	}
	for _, bad := range [][2]string{{"alice", "wrong"}, {"alice", "bob-secret-22"}, {"nobody", "x"}} {
		if _, err := d.IMAPMessages(bad[0], bad[1]); !errors.Is(err, testenv.ErrLoginRefused) {
			t.Errorf("IMAP login %s/%s: %v, want refused", bad[0], bad[1], err)
		}
	}

	// Disabled: refused (by name and by address).
	r.put(t, replica.User{ID: "u-alice", Version: 2, Username: "alice", PrimaryAddress: "alice@example.test", Site: "hq", Enabled: false, PasswordHash: hashOf(t, "alice-secret-1")})
	if changed, err := w.Sync(ctx); err != nil || !changed {
		t.Fatalf("Sync = %v, %v", changed, err)
	}
	loginRefusedSoon(t, d, "alice", "alice-secret-1")
	loginRefusedSoon(t, d, "alice@example.test", "alice-secret-1")

	// Re-enabled with a new password: the new one works, the old not.
	r.put(t, replica.User{ID: "u-alice", Version: 3, Username: "alice", PrimaryAddress: "alice@example.test", Site: "hq", Enabled: true, PasswordHash: hashOf(t, "alice-new-pass")})
	// Deleted, and a new user.
	r.del(t, "u-bob")
	r.put(t, dirUser("u-carol", "carol", "hq", true, hashOf(t, "carol-secret-3")))
	if _, err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	loginWorksSoon(t, d, "alice", "alice-new-pass")
	if _, err := d.IMAPMessages("alice", "alice-secret-1"); !errors.Is(err, testenv.ErrLoginRefused) {
		t.Errorf("old password: %v, want refused", err)
	}
	if _, err := d.IMAPMessages("bob", "bob-secret-22"); !errors.Is(err, testenv.ErrLoginRefused) {
		t.Errorf("deleted user: %v, want refused", err)
	}
	if _, err := d.POP3Messages("carol", "carol-secret-3"); err != nil {
		t.Errorf("new user over POP3: %v", err)
	}

	// Moved to another site: refused here.
	r.put(t, replica.User{ID: "u-carol", Version: 2, Username: "carol", PrimaryAddress: "carol@example.test", Site: "branch", Enabled: true})
	if _, err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	loginRefusedSoon(t, d, "carol", "carol-secret-3")
}
