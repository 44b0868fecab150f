package replica_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

func entry(t *testing.T, kind, id string, v any, keys ...string) sitestate.Entry {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return sitestate.Entry{Kind: kind, ID: id, Version: 1, Data: b, Keys: keys}
}

func TestReader(t *testing.T) {
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// Data as the users service's sync feed writes it, with fields the
	// replica types do not declare.
	err = st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "7", Put: []sitestate.Entry{
		entry(t, replica.KindSite, "hq", map[string]any{"id": "hq", "name": "hq", "domains": []string{"example.com"}, "smtp_endpoint": "hq:25", "description": "x"}, "example.com"),
		entry(t, replica.KindUser, "u1", map[string]any{"id": "u1", "username": "alice", "display_name": "", "primary_address": "Alice@example.com",
			"aliases": []string{"a@example.com"}, "site": "hq", "enabled": true, "password_hash": "{ARGON2ID}x", "created_at": "2026-01-01T00:00:00Z",
			"permissions": map[string]bool{"internet_send": true}}, "alice", "alice@example.com", "a@example.com"),
		entry(t, replica.KindSharedMailbox, "m1", map[string]any{"address": "sales@example.com", "manager": "u1", "staff": []string{"u2"}}, "sales@example.com"),
		entry(t, replica.KindPOP3Account, "p1", map[string]any{"name": "isp", "host": "pop.example.net", "port": 995, "password": "s3cret",
			"keep": map[string]any{"policy": "keep_days", "days": 3}}, "isp"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := replica.Reader{D: st.Directory()}

	u, err := r.UserByKey(ctx, " A@Example.COM ")
	if err != nil || u == nil {
		t.Fatalf("UserByKey(alias) = %v, %v", u, err)
	}
	if u.ID != "u1" || u.Username != "alice" || u.PasswordHash != "{ARGON2ID}x" || !u.Permissions.InternetSend || u.Permissions.InternetReceive {
		t.Errorf("user = %+v", u)
	}
	if u.Name() != "alice" || !u.HasAddress("ALICE@example.com") || u.HasAddress("bob@example.com") {
		t.Errorf("Name/HasAddress wrong for %+v", u)
	}
	if u, err := r.UserByKey(ctx, "nobody@example.com"); u != nil || err != nil {
		t.Errorf("unknown user = %v, %v; want nil, nil", u, err)
	}
	if in, err := r.InOrganisation(ctx, "EXAMPLE.com"); !in || err != nil {
		t.Errorf("InOrganisation(example.com) = %v, %v", in, err)
	}
	if in, err := r.InOrganisation(ctx, "example.net"); in || err != nil {
		t.Errorf("InOrganisation(example.net) = %v, %v", in, err)
	}
	m, err := r.SharedMailboxByAddress(ctx, "sales@example.com")
	if err != nil || m == nil || m.ID != "m1" || !m.HasStaff("u2") || m.HasStaff("u1") {
		t.Errorf("shared mailbox = %+v, %v", m, err)
	}
	as, err := r.POP3Accounts(ctx)
	if err != nil || len(as) != 1 || as[0].ID != "p1" || as[0].Password != "s3cret" || as[0].Keep.Days != 3 {
		t.Errorf("POP3Accounts = %+v, %v", as, err)
	}
	s, err := r.Site(ctx, "hq")
	if err != nil || s == nil || s.SMTPEndpoint != "hq:25" {
		t.Errorf("Site = %+v, %v", s, err)
	}

	// A corrupt entry is an error, not a missing object.
	if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{{Kind: replica.KindUser, ID: "u9", Version: 1, Data: json.RawMessage(`[1]`), Keys: []string{"bad"}}}}); err != nil {
		t.Fatal(err)
	}
	if u, err := r.UserByKey(ctx, "bad"); err == nil {
		t.Errorf("corrupt entry read as %+v", u)
	}
}
