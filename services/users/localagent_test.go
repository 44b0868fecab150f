package users

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// The site a single box makes for itself has no domains; the log says
// how to give it some, with the verb the CLI has.
func TestEnsureSiteNamesTheEditCommand(t *testing.T) {
	var logs bytes.Buffer
	s := &Service{store: openTestStore(t), log: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := s.ensureSite(t.Context(), "main"); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !bytes.Contains(logs.Bytes(), []byte("postern sites edit NAME --domain DOMAIN")) || bytes.Contains(logs.Bytes(), []byte("sites update")) {
		t.Errorf("the log does not name `postern sites edit`:\n%s", out)
	}
}

// agentTokens lists the site_agent tokens of the directory.
func agentTokens(t *testing.T, s *Service) []directory.Token {
	t.Helper()
	toks, _, _, err := s.store.ListTokens(t.Context(), store.TokenFilter{Page: store.Page{Limit: 100}, Role: directory.RoleSiteAgent})
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// The token is made once, its secret kept 0600, and reused at the next
// start: one site_agent token in the directory.
func TestLocalSiteAgentReusesItsToken(t *testing.T) {
	s := &Service{store: openTestStore(t), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	file := filepath.Join(t.TempDir(), "users", "site-agent-main.token")
	first, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v, want mode 0600", fi, err)
	}
	second, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	if second.Reveal() != first.Reveal() {
		t.Error("the second start made a new token instead of reusing the kept one")
	}
	if toks := agentTokens(t, s); len(toks) != 1 || toks[0].Site != "main" {
		t.Errorf("site_agent tokens: %+v, want one for main", toks)
	}
}

// A file whose secret no longer matches its token (another secret for the
// same id) gets a new token, and the stale one is revoked with it: no live
// site_agent token is left whose secret nobody has.
func TestLocalSiteAgentRevokesTheTokenItReplaces(t *testing.T) {
	s := &Service{store: openTestStore(t), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	file := filepath.Join(t.TempDir(), "site-agent-main.token")
	old, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := auth.TokenID(old.Reveal())
	other, _, err := auth.NewSecret(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(other+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	toks := agentTokens(t, s)
	if len(toks) != 1 || toks[0].ID == id {
		t.Fatalf("site_agent tokens after the replacement: %+v, want only the new one", toks)
	}
	if kept, _ := os.ReadFile(file); strings.TrimSpace(string(kept)) != fresh.Reveal() {
		t.Error("the file does not hold the new token's secret")
	}
}

// A secret written beside the file (a stop between the token's commit and
// the rename) is found and moved into place, not replaced by yet another
// token.
func TestLocalSiteAgentFinishesAnInterruptedReplacement(t *testing.T) {
	s := &Service{store: openTestStore(t), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	file := filepath.Join(t.TempDir(), "site-agent-main.token")
	secret, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file, file+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("not a token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := s.LocalSiteAgent(t.Context(), "main", file)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reveal() != secret.Reveal() {
		t.Error("the pending secret was not used")
	}
	if _, err := os.Stat(file + ".new"); !os.IsNotExist(err) {
		t.Errorf("the pending file is still there (stat: %v)", err)
	}
	if n := len(agentTokens(t, s)); n != 1 {
		t.Errorf("%d site_agent tokens, want 1", n)
	}
}
