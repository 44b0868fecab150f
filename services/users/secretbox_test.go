package users

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func openTestStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// addSealedAccount stores a POP3 account whose password box sealed.
func addSealedAccount(t *testing.T, st store.Store, box *directory.SecretBox, name string) string {
	t.Helper()
	sealed, err := box.Seal("pop3-secret-" + name)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var id string
	err = st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.GetSite(ctx, "hq"); err != nil {
			s := directory.Site{Name: "hq", Domains: []string{"hq.example.org"}}
			u := directory.User{Username: "alice", PrimaryAddress: "alice@hq.example.org", Site: "hq", Enabled: true}
			if err := errors.Join(s.Normalize(), u.Normalize()); err != nil {
				return err
			}
			if err := tx.CreateSite(ctx, &s); err != nil {
				return err
			}
			if err := tx.CreateUser(ctx, &u); err != nil {
				return err
			}
		}
		alice, err := tx.GetUserByUsername(ctx, "alice")
		if err != nil {
			return err
		}
		a := directory.POP3Account{Name: name, Host: "pop.isp.example.net", Username: name, Site: "hq", Mode: directory.ModeSingle,
			TargetUser: alice.ID, PasswordEnc: sealed}
		if err := a.Normalize(); err != nil {
			return err
		}
		if err := tx.CreatePOP3Account(ctx, &a); err != nil {
			return err
		}
		id = a.ID
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "test", Action: "pop3_account.create"})
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func testBox(t *testing.T, ids ...string) *directory.SecretBox {
	t.Helper()
	var keys []directory.SecretKey
	for i, id := range ids {
		k := directory.SecretKey{ID: id}
		k.Key[0] = byte(i + 1)
		keys = append(keys, k)
	}
	box, err := directory.NewSecretBox(keys)
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// The first start writes a key file (0600) and later starts read it.
func TestSecretKeyFileGeneratedOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SecretKeyFile = filepath.Join(t.TempDir(), "keys", "secret.key")
	st := openTestStore(t)
	box, err := secretBox(context.Background(), cfg, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.SecretKeyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", fi, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(cfg.SecretKeyFile)); len(entries) != 1 {
		t.Errorf("the key file's directory holds %d entries, want only the key file", len(entries))
	}
	sealed, err := box.Seal("x")
	if err != nil {
		t.Fatal(err)
	}
	again, err := secretBox(context.Background(), cfg, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := again.Open(sealed); err != nil || got != "x" {
		t.Errorf("the second start does not use the first start's key: %q %v", got, err)
	}
}

// A missing key file while the directory holds sealed passwords is an
// error that says what to do; no new key replaces the lost one.
func TestSecretKeyFileMissingWithSealedPasswords(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SecretKeyFile = filepath.Join(t.TempDir(), "secret.key")
	st := openTestStore(t)
	addSealedAccount(t, st, testBox(t, "k-lost"), "isp-hq")
	_, err := secretBox(context.Background(), cfg, st, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "restore") || !strings.Contains(err.Error(), "k-lost") ||
		!strings.Contains(err.Error(), "secret_key_file") {
		t.Fatalf("start without the key file of sealed passwords: %v", err)
	}
	if _, err := os.Stat(cfg.SecretKeyFile); !os.IsNotExist(err) {
		t.Errorf("a key file was written anyway: %v", err)
	}
}

// A key file is never replaced by a new key.
func TestNewKeyFileIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(path, []byte("k1:already-here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newKeyFile(path); err == nil || !strings.Contains(err.Error(), "appeared") {
		t.Errorf("newKeyFile over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "k1:already-here\n" {
		t.Errorf("the existing key file was replaced: %q", b)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("a temporary file was left behind: %d entries", len(entries))
	}
}

// The start reports the passwords NeedsRotation finds: those an older key
// opens and those no key opens, by account and key id, never the value.
func TestRotationReport(t *testing.T) {
	st := openTestStore(t)
	current := addSealedAccount(t, st, testBox(t, "k-new"), "isp-current")
	older := addSealedAccount(t, st, testBox(t, "k-old"), "isp-older")
	lost := addSealedAccount(t, st, testBox(t, "k-gone"), "isp-lost")
	var logs bytes.Buffer
	cfg := DefaultConfig()
	cfg.SecretKeys = config.Secret("k-new:" + keyB64(1) + ",k-old:" + keyB64(1))
	// testBox gives its first key byte 1: k-new and k-old here are the
	// keys of the boxes that sealed isp-current and isp-older.
	if _, err := secretBox(context.Background(), cfg, st, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "older key") || !strings.Contains(out, older) {
		t.Errorf("no report of the password sealed with the older key:\n%s", out)
	}
	if !strings.Contains(out, "no configured key opens") || !strings.Contains(out, lost) || !strings.Contains(out, "k-gone") {
		t.Errorf("no warning about the password no key opens:\n%s", out)
	}
	if strings.Contains(out, current) || strings.Contains(out, "pop3-secret") {
		t.Errorf("the report names the current password or a value:\n%s", out)
	}
}

func keyB64(first byte) string {
	var k [32]byte
	k[0] = first
	return base64.StdEncoding.EncodeToString(k[:])
}
