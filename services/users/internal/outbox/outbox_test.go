package outbox

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// The outbox publishes every change, in order per object, without secrets,
// and resumes after the last acknowledged change.
func TestOutboxPublishesChangesOnceAndWithoutSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "users.db")
	st, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bus := testenv.Bus(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	hash, err := directory.HashPassword("correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	user := directory.User{Username: "john", DisplayName: "John Doe", PrimaryAddress: "john@example.com", Aliases: []string{}, Groups: []string{}, Site: "hq", Enabled: true, PasswordHash: hash}
	acct := directory.POP3Account{Name: "isp", Host: "pop.isp.example", Port: 995, TLS: directory.TLSImplicit, Auth: directory.AuthUser, Username: "org", Site: "hq",
		Mode: directory.ModeMulti, EnvelopeHeaders: directory.DefaultEnvelopeHeaders, LocalDomains: []string{}, Keep: directory.KeepPolicy{Policy: directory.KeepDelete}, PollIntervalSeconds: 300, Enabled: true,
		PasswordEnc: "v1:k1:c2VhbGVkLXNlY3JldC12YWx1ZS1ub3QtaW4tY2xlYXI="}
	err = st.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateSite(ctx, &directory.Site{Meta: directory.Meta{ID: "hq"}, Name: "hq", Domains: []string{"example.com"}}); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, &user); err != nil {
			return err
		}
		acct.Postmaster = user.ID
		if err := tx.CreatePOP3Account(ctx, &acct); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "test", Action: "setup", TargetKind: directory.KindSite, TargetID: "hq"})
	})
	if err != nil {
		t.Fatal(err)
	}

	ob := &Outbox{Log: st, Bus: bus, Logger: log}
	n, err := ob.Flush(ctx)
	if err != nil || n != 3 {
		t.Fatalf("first flush: %d changes, %v; want 3", n, err)
	}
	if n, err := ob.Flush(ctx); err != nil || n != 0 {
		t.Fatalf("second flush published %d again (err %v)", n, err)
	}

	// A later write: only it goes out, and a new outbox (a restart) resumes
	// after the stored position.
	user.DisplayName = "John Q. Doe"
	err = st.Update(ctx, func(tx store.Tx) error {
		if err := tx.UpdateUser(ctx, &user, user.Version); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "test", Action: "user.update", TargetKind: directory.KindUser, TargetID: user.ID})
	})
	if err != nil {
		t.Fatal(err)
	}
	restarted := &Outbox{Log: st, Bus: bus, Logger: log}
	if n, err := restarted.Flush(ctx); err != nil || n != 1 {
		t.Fatalf("after restart: %d changes, %v; want 1", n, err)
	}

	recs := testenv.Collect(t, bus, events.TopicDirectoryChanges, 4, time.Minute)
	if len(recs) != 4 {
		t.Fatalf("directory.changes holds %d records, want 4", len(recs))
	}
	var userSeqs []int64
	seen := map[int64]bool{}
	for _, r := range recs {
		c, err := events.DecodeDirectoryChange(r.Event())
		if err != nil {
			t.Fatalf("record %d/%d: %v", r.Partition, r.Offset, err)
		}
		if seen[c.Seq] {
			t.Errorf("change %d published twice", c.Seq)
		}
		seen[c.Seq] = true
		body := string(r.Value)
		if strings.Contains(body, "argon2id") || strings.Contains(body, "password_hash") || strings.Contains(body, "c2VhbGVk") || strings.Contains(body, "password_enc") {
			t.Errorf("change %d carries a secret: %s", c.Seq, body)
		}
		if c.Kind == directory.KindUser {
			userSeqs = append(userSeqs, c.Seq)
		}
	}
	if len(userSeqs) != 2 || userSeqs[0] > userSeqs[1] {
		t.Errorf("the user's changes arrive as %v, want two in order", userSeqs)
	}
}
