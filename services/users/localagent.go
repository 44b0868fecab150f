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
	// A secret written but not yet moved into place (a stop between the
	// commit and the rename below) is the newest: try it first.
	pending := tokenFile + ".new"
	var stale string // a token of ours the file names that no longer fits
	for _, file := range []string{pending, tokenFile} {
		secret, old, err := s.agentSecret(ctx, site, file)
		if err != nil {
			return "", err
		}
		if secret != "" {
			if file == pending {
				if err := os.Rename(pending, tokenFile); err != nil {
					return "", fmt.Errorf("site agent token file: %w", err)
				}
			}
			return secret, nil
		}
		if stale == "" {
			stale = old
		}
	}

	id := uuid.Must(uuid.NewV7()).String()
	secret, hash, err := auth.NewSecret(id)
	if err != nil {
		return "", err
	}
	tok := directory.Token{Meta: directory.Meta{ID: id}, Name: site + " fetcher (single box)", Role: directory.RoleSiteAgent, Site: site, SecretHash: hash}
	if err := tok.Normalize(); err != nil {
		return "", fmt.Errorf("site agent token: %w", err)
	}
	// The secret is kept before the token exists (a token whose secret
	// is lost is useless), beside the file, and moved into place only
	// once the token is committed (the file never names a token that
	// does not exist).
	if err := os.MkdirAll(filepath.Dir(tokenFile), 0o700); err != nil {
		return "", fmt.Errorf("site agent token file: %w", err)
	}
	if err := atomicfile.WriteFile(pending, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("site agent token file: %w", err)
	}
	err = s.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateToken(ctx, &tok); err != nil {
			return err
		}
		if err := tx.Audit(ctx, &directory.AuditEntry{Actor: localAgentActor, Action: "token.create", TargetKind: directory.KindToken, TargetID: tok.ID, Diff: directory.Diff(nil, tok)}); err != nil {
			return err
		}
		if stale == "" {
			return nil
		}
		// The token the file named before is revoked with the change,
		// so that no live site_agent token is left without its secret.
		if err := tx.DeleteToken(ctx, stale, store.AnyVersion); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: localAgentActor, Action: "token.delete", TargetKind: directory.KindToken, TargetID: stale})
	})
	if err != nil {
		_ = os.Remove(pending)
		return "", fmt.Errorf("site agent token: %w", err)
	}
	if err := os.Rename(pending, tokenFile); err != nil {
		return "", fmt.Errorf("site agent token file: %w", err)
	}
	s.log.Info("created the site_agent token of the fetcher in this process", "site", site, "token_id", id, "token_file", tokenFile, "revoked", stale)
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
	s.log.Info("created the site of this single box in the directory; give it its mail domains with `postern sites edit NAME --domain DOMAIN`", "site", name)
	return nil
}

// agentSecret reads the secret in file and returns it when it is a live
// site_agent token for site. Otherwise it returns "" and, when the file
// names a site_agent token of site that no longer fits (another secret,
// expired), that token's id, to be revoked. A file that is missing or
// does not hold a token, or names a token that is gone, gives nothing; a
// directory that does not answer is an error (it must not lead to a new
// token beside a live one).
func (s *Service) agentSecret(ctx context.Context, site, file string) (config.Secret, string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("cannot read the site agent token file; creating a new token", "token_file", file, "error", err)
		}
		return "", "", nil
	}
	secret := strings.TrimSpace(string(b))
	id, ok := auth.TokenID(secret)
	if !ok {
		s.log.Warn("the site agent token file does not hold a token; creating a new one", "token_file", file)
		return "", "", nil
	}
	tok, err := s.store.GetToken(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.log.Info("the site agent token in the file is gone (revoked?); creating a new one", "token_file", file, "token_id", id)
		return "", "", nil
	case err != nil:
		return "", "", fmt.Errorf("site agent token %s: %w", id, err)
	case tok.Role != directory.RoleSiteAgent || tok.Site != site:
		s.log.Info("the token in the site agent token file is not this site's agent; creating a new one", "token_file", file, "token_id", id)
		return "", "", nil
	case tok.SecretHash != auth.HashSecret(secret), tok.ExpiresAt != nil && !tok.ExpiresAt.After(time.Now()):
		s.log.Info("the site agent token in the file no longer fits; replacing it", "token_file", file, "token_id", id)
		return "", id, nil
	}
	return config.Secret(secret), "", nil
}
