package users

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// localAgentActor is the audit actor of what LocalSiteAgent writes.
const localAgentActor = "postern serve (single box)"

// LocalSiteAgent gives the fetcher running in the same process (single-box
// mode) a site_agent token for site, so that the site's directory replica
// syncs without an operator creating and pasting a token.
//
// It creates the site (no domains yet) when the directory has none of that
// name, so that a fresh single box works from its first start. The token's
// secret is kept in tokenFile (mode 0600; the directory stores only its
// hash, as for every token) and reused on later starts; a missing or
// unusable file, or a token since revoked or changed, gives a new token
// and a new file. Both writes are audited.
func (s *Service) LocalSiteAgent(ctx context.Context, site, tokenFile string) (config.Secret, error) {
	if err := s.ensureSite(ctx, site); err != nil {
		return "", err
	}
	if secret, ok := s.usableAgentSecret(ctx, site, tokenFile); ok {
		return secret, nil
	}
	id := uuid.Must(uuid.NewV7()).String()
	secret, hash, err := auth.NewSecret(id)
	if err != nil {
		return "", err
	}
	tok := directory.Token{Meta: directory.Meta{ID: id}, Name: site + " fetcher (single box)", Role: directory.RoleSiteAgent, Site: site, SecretHash: hash}
	// The file first: a token whose secret was not kept would be useless.
	if err := os.MkdirAll(filepath.Dir(tokenFile), 0o700); err != nil {
		return "", fmt.Errorf("site agent token file: %w", err)
	}
	if err := atomicfile.WriteFile(tokenFile, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("site agent token file: %w", err)
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateToken(ctx, &tok); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: localAgentActor, Action: "token.create", TargetKind: directory.KindToken, TargetID: tok.ID, Diff: directory.Diff(nil, tok)})
	})
	if err != nil {
		return "", fmt.Errorf("site agent token: %w", err)
	}
	s.log.Info("created the site_agent token of the fetcher in this process", "site", site, "token_id", id, "token_file", tokenFile)
	return config.Secret(secret), nil
}

// ensureSite creates site when the directory does not have it.
func (s *Service) ensureSite(ctx context.Context, name string) error {
	_, err := s.store.GetSite(ctx, name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("site %s: %w", name, err)
	}
	site := directory.Site{Name: name, Description: "created by postern serve on its first start", Domains: []string{}}
	if err := site.Normalize(); err != nil {
		return fmt.Errorf("site %s: %w", name, err)
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateSite(ctx, &site); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: localAgentActor, Action: "site.create", TargetKind: directory.KindSite, TargetID: site.ID, Diff: directory.Diff(nil, site)})
	})
	if err != nil {
		return fmt.Errorf("site %s: %w", name, err)
	}
	s.log.Info("created the site of this single box in the directory; give it its mail domains with `postern sites update`", "site", name)
	return nil
}

// usableAgentSecret reads the secret in tokenFile and reports whether it is
// a live site_agent token for site.
func (s *Service) usableAgentSecret(ctx context.Context, site, tokenFile string) (config.Secret, bool) {
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("cannot read the site agent token file; creating a new token", "token_file", tokenFile, "error", err)
		}
		return "", false
	}
	secret := strings.TrimSpace(string(b))
	id, ok := auth.TokenID(secret)
	if !ok {
		s.log.Warn("the site agent token file does not hold a token; creating a new one", "token_file", tokenFile)
		return "", false
	}
	tok, err := s.store.GetToken(ctx, id)
	switch {
	case err != nil:
		s.log.Info("the site agent token in the file is gone (revoked?); creating a new one", "token_file", tokenFile, "token_id", id)
		return "", false
	case tok.SecretHash != auth.HashSecret(secret), tok.Role != directory.RoleSiteAgent, tok.Site != site,
		tok.ExpiresAt != nil && !tok.ExpiresAt.After(time.Now()):
		s.log.Info("the site agent token in the file no longer fits this site; creating a new one", "token_file", tokenFile, "token_id", id)
		return "", false
	}
	return config.Secret(secret), true
}
