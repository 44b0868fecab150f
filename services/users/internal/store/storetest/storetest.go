// Package storetest is the contract every store.Store implementation runs,
// so that the PostgreSQL and SQLite stores mean the same thing.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// Run runs the contract against the stores open returns. open is called once
// per subtest and must return a new, empty store that no other subtest sees
// (subtests run in parallel); it arranges for the store to be closed with
// t.Cleanup. Close must tolerate a second call.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Sites/CRUD", testSites},
		{"Users/CRUD", testUsers},
		{"Groups/CRUD", testGroups},
		{"POP3Accounts/CRUD", testPOP3Accounts},
		{"POP3Accounts/SealedPasswords", testSealedPOP3Passwords},
		{"SharedMailboxes/CRUD", testSharedMailboxes},
		{"Templates/CRUD", testTemplates},
		{"Tokens/CRUDAndTouch", testTokens},
		{"Uniqueness/NamesAndAddresses", testUniqueness},
		{"Uniqueness/BatchAndUsableAfterConflict", testUniquenessBatch},
		{"Lists/PaginationAndFilters", testPagination},
		{"Lists/Search", testSearch},
		{"Groups/MembershipBothWays", testMembership},
		{"Groups/CyclesRefused", testCycles},
		{"Delete/RefusalsAndCascades", testDeleteRules},
		{"ChangeLog/ContentsAndOrder", testChangeLog},
		{"ChangeLog/GapFreeUnderConcurrentWriters", testConcurrentWriters},
		{"ChangeLog/SnapshotConsistent", testSnapshot},
		{"ChangeLog/Compaction", testCompaction},
		{"ChangeLog/OutboxPosition", testOutbox},
		{"ChangeLog/WaitForChange", testWait},
		{"Audit/FiltersAndPagination", testAudit},
		{"Tx/RollbackLeavesNothing", testRollback},
		{"PingAndClose", testPingClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// ---------------------------------------------------------------------------
// helpers

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func must1[T any](t testing.TB) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// write runs fn in a transaction that also records an audit entry.
func write(t testing.TB, s store.Store, fn func(ctx context.Context, tx store.Tx) error) error {
	t.Helper()
	ctx := ctxFor(t)
	return s.Update(ctx, func(tx store.Tx) error {
		if err := fn(ctx, tx); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "test", Action: "test"})
	})
}

func mustWrite(t testing.TB, s store.Store, fn func(ctx context.Context, tx store.Tx) error) {
	t.Helper()
	if err := write(t, s, fn); err != nil {
		t.Fatal(err)
	}
}

// wantErr checks that err is an E and returns it.
func wantErr[E error](t testing.TB, err error) E {
	t.Helper()
	var e E
	if !errors.As(err, &e) {
		t.Fatalf("error %v: want a %T", err, e)
	}
	return e
}

func wantIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v: want one matching %v", err, target)
	}
}

// sameJSON compares got and want by their JSON.
func sameJSON(t testing.TB, got, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(canonical(t, g), canonical(t, w)) {
		t.Fatalf("got  %s\nwant %s", g, w)
	}
}

// canonical re-encodes JSON with sorted keys.
func canonical(t testing.TB, b []byte) []byte {
	t.Helper()
	if len(b) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("bad JSON %s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return out
}

const testHash = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"

func newSite(name string) *directory.Site {
	return &directory.Site{Name: name, Description: "site " + name, Domains: []string{name + ".example.org"}, SMTPEndpoint: "mx." + name + ".example.org:25"}
}

func newUser(username, site string, aliases ...string) *directory.User {
	return &directory.User{
		Username:       username,
		DisplayName:    strings.ToUpper(username[:1]) + username[1:] + " Example",
		PrimaryAddress: username + "@example.org",
		Aliases:        aliases,
		Site:           site,
		Enabled:        true,
		Permissions:    directory.Permissions{InternetReceive: true, InternetSend: true},
		QuotaBytes:     1 << 30,
		PasswordHash:   testHash,
	}
}

func createSite(t testing.TB, s store.Store, name string) directory.Site {
	t.Helper()
	site := newSite(name)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSite(ctx, site) })
	return *site
}

func createUser(t testing.TB, s store.Store, u *directory.User) directory.User {
	t.Helper()
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, u) })
	return *u
}

func createGroup(t testing.TB, s store.Store, g *directory.Group) directory.Group {
	t.Helper()
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateGroup(ctx, g) })
	return *g
}

func userMember(id string) directory.Member {
	return directory.Member{Type: directory.MemberUser, ID: id}
}
func groupMember(id string) directory.Member {
	return directory.Member{Type: directory.MemberGroup, ID: id}
}

func allChanges(t testing.TB, s store.Store) []directory.Change {
	t.Helper()
	return must1[[]directory.Change](t)(s.ChangesSince(ctxFor(t), 0, store.MaxChangesLimit))
}

// ---------------------------------------------------------------------------
// CRUD per kind

func testSites(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	a := createSite(t, s, "ams")
	if a.ID != "ams" || a.Version != 1 || a.CreatedAt.IsZero() || !a.CreatedAt.Equal(a.UpdatedAt) {
		t.Fatalf("created site %+v: want ID = name, version 1, times set", a)
	}
	got := must1[directory.Site](t)(s.GetSite(ctx, "ams"))
	sameJSON(t, got, a)

	err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSite(ctx, newSite("ams")) })
	if c := wantErr[*store.ConflictError](t, err); c.Field != "name" || c.OwnerID != "ams" {
		t.Fatalf("conflict %+v", c)
	}

	b := got
	b.Description = "Amsterdam"
	b.Domains = append(b.Domains, "ams2.example.org")
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateSite(ctx, &b, 1) })
	if b.Version != 2 || !b.CreatedAt.Equal(a.CreatedAt) || b.UpdatedAt.Before(a.UpdatedAt) {
		t.Fatalf("updated site %+v", b)
	}
	sameJSON(t, must1[directory.Site](t)(s.GetSite(ctx, "ams")), b)

	stale := got
	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateSite(ctx, &stale, 1) })
	if e := wantErr[*store.StaleError](t, err); e.Expected != 1 || e.Actual != 2 {
		t.Fatalf("stale error %+v", e)
	}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ams", 1) }), store.ErrStale)
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.UpdateSite(ctx, newSite("zzz"), store.AnyVersion)
	}), store.ErrNotFound)

	createSite(t, s, "cdg")
	createSite(t, s, "ber")
	sites, next, total := listSites(t, s, store.Page{})
	if names := siteNames(sites); !slices.Equal(names, []string{"ams", "ber", "cdg"}) || next != "" || total != 3 {
		t.Fatalf("list: %v next %q total %d", names, next, total)
	}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ber", store.AnyVersion) })
	_, err = s.GetSite(ctx, "ber")
	wantIs(t, err, store.ErrNotFound)
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ber", store.AnyVersion) }), store.ErrNotFound)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ams", 2) })
}

func listSites(t *testing.T, s store.Store, p store.Page) ([]directory.Site, string, int) {
	t.Helper()
	items, next, total, err := s.ListSites(ctxFor(t), p)
	must(t, err)
	return items, next, total
}

func siteNames(ss []directory.Site) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

func testUsers(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	createSite(t, s, "ber")
	staff := createGroup(t, s, &directory.Group{Name: "staff"})

	u := newUser("john", "ams", "j@example.org", "johnny@example.org")
	u.Groups = []string{"staff"}
	created := createUser(t, s, u)
	if created.ID == "" || created.Version != 1 || created.CreatedAt.IsZero() || !slices.Equal(created.Groups, []string{"staff"}) {
		t.Fatalf("created %+v", created)
	}
	got := must1[directory.User](t)(s.GetUser(ctx, created.ID))
	sameJSON(t, got, created)
	if got.PasswordHash != testHash {
		t.Fatalf("password hash %q not stored", got.PasswordHash)
	}
	sameJSON(t, must1[directory.User](t)(s.GetUserByUsername(ctx, "john")), created)
	if o := must1[store.Owner](t)(s.LookupAddress(ctx, "johnny@example.org")); o != (store.Owner{Kind: directory.KindUser, ID: created.ID}) {
		t.Fatalf("owner %+v", o)
	}
	if g := must1[directory.Group](t)(s.GetGroup(ctx, staff.ID)); !slices.Equal(g.Members, []directory.Member{userMember(created.ID)}) {
		t.Fatalf("group members %v", g.Members)
	}

	// Move, change aliases, leave the group.
	v := got
	v.Site = "ber"
	v.DisplayName = "John Moved"
	v.Aliases = []string{"johnny@example.org", "x@example.org"}
	v.Groups = nil
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateUser(ctx, &v, got.Version) })
	if v.Version != 2 || !v.CreatedAt.Equal(created.CreatedAt) || len(v.Groups) != 0 {
		t.Fatalf("updated %+v", v)
	}
	sameJSON(t, must1[directory.User](t)(s.GetUser(ctx, v.ID)), v)
	_, err := s.LookupAddress(ctx, "j@example.org")
	wantIs(t, err, store.ErrNotFound)
	if o := must1[store.Owner](t)(s.LookupAddress(ctx, "x@example.org")); o.ID != v.ID {
		t.Fatalf("x@ owner %+v", o)
	}
	if g := must1[directory.Group](t)(s.GetGroup(ctx, staff.ID)); len(g.Members) != 0 {
		t.Fatalf("group members %v after the user left", g.Members)
	}

	// The freed address is free for someone else.
	createUser(t, s, newUser("jay", "ams", "j@example.org"))

	stale := got
	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateUser(ctx, &stale, 1) })
	wantIs(t, err, store.ErrStale)

	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, newUser("ann", "nowhere")) })
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "site" || r.Value != "nowhere" {
		t.Fatalf("reference error %+v", r)
	}
	bad := newUser("ann", "ams")
	bad.Groups = []string{"nope"}
	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, bad) })
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "groups" || r.RefKind != directory.KindGroup || r.Value != "nope" {
		t.Fatalf("reference error %+v", r)
	}
	moved := v
	moved.Site = "nowhere"
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateUser(ctx, &moved, store.AnyVersion) }), store.ErrReference)

	users, next, total, err := s.ListUsers(ctx, store.UserFilter{})
	must(t, err)
	if len(users) != 2 || users[0].Username != "jay" || users[1].Username != "john" || next != "" || total != 2 {
		t.Fatalf("list %d users, next %q, total %d", len(users), next, total)
	}

	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, v.ID, 1) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, v.ID, 2) })
	_, err = s.GetUser(ctx, v.ID)
	wantIs(t, err, store.ErrNotFound)
	_, err = s.LookupAddress(ctx, "johnny@example.org")
	wantIs(t, err, store.ErrNotFound)
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, v.ID, store.AnyVersion) }), store.ErrNotFound)
}

func testGroups(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	alice := createUser(t, s, newUser("alice", "ams"))
	bob := createUser(t, s, newUser("bob", "ams"))
	sub := createGroup(t, s, &directory.Group{Name: "sub"})

	g := &directory.Group{Name: "sales", Address: "sales-list@example.org", Description: "Sales",
		Members: []directory.Member{userMember(bob.ID), groupMember(sub.ID), userMember(alice.ID)}}
	created := createGroup(t, s, g)
	if created.ID == "" || created.Version != 1 || created.Members[0].ID != bob.ID {
		t.Fatalf("created %+v", created)
	}
	got := must1[directory.Group](t)(s.GetGroup(ctx, created.ID))
	sameJSON(t, got, created) // members keep their order
	sameJSON(t, must1[directory.Group](t)(s.GetGroupByName(ctx, "sales")), created)
	if o := must1[store.Owner](t)(s.LookupAddress(ctx, "sales-list@example.org")); o != (store.Owner{Kind: directory.KindGroup, ID: created.ID}) {
		t.Fatalf("owner %+v", o)
	}
	if a := must1[directory.User](t)(s.GetUser(ctx, alice.ID)); !slices.Equal(a.Groups, []string{"sales"}) || a.Version != 2 {
		t.Fatalf("alice after joining: groups %v version %d", a.Groups, a.Version)
	}

	// Rename, new address, bob leaves.
	u := got
	u.Name = "sales-team"
	u.Address = "team@example.org"
	u.Members = []directory.Member{userMember(alice.ID)}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateGroup(ctx, &u, 1) })
	if u.Version != 2 || !u.CreatedAt.Equal(created.CreatedAt) {
		t.Fatalf("updated %+v", u)
	}
	sameJSON(t, must1[directory.Group](t)(s.GetGroup(ctx, u.ID)), u)
	if a := must1[directory.User](t)(s.GetUser(ctx, alice.ID)); !slices.Equal(a.Groups, []string{"sales-team"}) || a.Version != 3 {
		t.Fatalf("alice after the rename: groups %v version %d", a.Groups, a.Version)
	}
	if b := must1[directory.User](t)(s.GetUser(ctx, bob.ID)); len(b.Groups) != 0 || b.Version != 3 {
		t.Fatalf("bob after leaving: groups %v version %d", b.Groups, b.Version)
	}
	_, err := s.LookupAddress(ctx, "sales-list@example.org")
	wantIs(t, err, store.ErrNotFound)

	stale := got
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateGroup(ctx, &stale, 1) }), store.ErrStale)
	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateGroup(ctx, &directory.Group{Name: "other", Members: []directory.Member{userMember("no-such-user")}})
	})
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "members" || r.RefKind != directory.KindUser {
		t.Fatalf("reference error %+v", r)
	}

	groups, next, total, err := s.ListGroups(ctx, store.Page{})
	must(t, err)
	if len(groups) != 2 || groups[0].Name != "sales-team" || groups[1].Name != "sub" || next != "" || total != 2 {
		t.Fatalf("list %+v next %q total %d", groups, next, total)
	}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteGroup(ctx, u.ID, 1) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteGroup(ctx, u.ID, 2) })
	_, err = s.GetGroup(ctx, u.ID)
	wantIs(t, err, store.ErrNotFound)
	if a := must1[directory.User](t)(s.GetUser(ctx, alice.ID)); len(a.Groups) != 0 {
		t.Fatalf("alice still in %v", a.Groups)
	}
}

func newPOP3(name, site, target string) *directory.POP3Account {
	return &directory.POP3Account{
		Name: name, Host: "pop.isp.example", Port: 995, TLS: directory.TLSImplicit, Auth: directory.AuthUser,
		Username: name, Site: site, Mode: directory.ModeSingle, TargetUser: target,
		Keep: directory.KeepPolicy{Policy: directory.KeepDays, Days: 7}, PollIntervalSeconds: 60, Enabled: true,
		PasswordEnc: "v1:k1:c2VjcmV0",
	}
}

// SealedPOP3Passwords lists the stored passwords by account, and only
// those of accounts that have one.
func testSealedPOP3Passwords(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	if got := must1[map[string]string](t)(s.SealedPOP3Passwords(ctx)); len(got) != 0 {
		t.Fatalf("an empty directory has sealed passwords %v", got)
	}
	createSite(t, s, "ams")
	john := createUser(t, s, newUser("john", "ams"))
	with, without, other := newPOP3("isp-a", "ams", john.ID), newPOP3("isp-b", "ams", john.ID), newPOP3("isp-c", "ams", john.ID)
	without.PasswordEnc = ""
	other.PasswordEnc = "v1:k2:b3RoZXI="
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreatePOP3Account(ctx, with), tx.CreatePOP3Account(ctx, without), tx.CreatePOP3Account(ctx, other))
	})
	got := must1[map[string]string](t)(s.SealedPOP3Passwords(ctx))
	if want := map[string]string{with.ID: "v1:k1:c2VjcmV0", other.ID: "v1:k2:b3RoZXI="}; !maps.Equal(got, want) {
		t.Fatalf("sealed passwords %v, want %v", got, want)
	}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.DeletePOP3Account(ctx, other.ID, other.Version)
	})
	if got := must1[map[string]string](t)(s.SealedPOP3Passwords(ctx)); len(got) != 1 || got[with.ID] == "" {
		t.Fatalf("after a delete: sealed passwords %v", got)
	}
}

func testPOP3Accounts(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	createSite(t, s, "ber")
	john := createUser(t, s, newUser("john", "ams"))

	a := newPOP3("isp-sales", "ams", john.ID)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreatePOP3Account(ctx, a) })
	if a.ID == "" || a.Version != 1 {
		t.Fatalf("created %+v", a)
	}
	got := must1[directory.POP3Account](t)(s.GetPOP3Account(ctx, a.ID))
	sameJSON(t, got, a)
	if got.PasswordEnc == "" {
		t.Fatal("password_enc not stored")
	}

	err := write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreatePOP3Account(ctx, newPOP3("isp-sales", "ams", ""))
	})
	if c := wantErr[*store.ConflictError](t, err); c.Field != "name" || c.OwnerID != a.ID {
		t.Fatalf("conflict %+v", c)
	}
	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreatePOP3Account(ctx, newPOP3("x", "nowhere", ""))
	})
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "site" {
		t.Fatalf("reference error %+v", r)
	}
	multi := newPOP3("x", "ams", "")
	multi.Mode, multi.Postmaster = directory.ModeMulti, "no-such-user"
	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreatePOP3Account(ctx, multi) })
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "postmaster" {
		t.Fatalf("reference error %+v", r)
	}

	u := got
	u.Host = "pop2.isp.example"
	u.Site = "ber"
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdatePOP3Account(ctx, &u, 1) })
	if u.Version != 2 {
		t.Fatalf("updated %+v", u)
	}
	sameJSON(t, must1[directory.POP3Account](t)(s.GetPOP3Account(ctx, u.ID)), u)
	stale := got
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdatePOP3Account(ctx, &stale, 1) }), store.ErrStale)

	for _, c := range []struct {
		site string
		want int
	}{{"", 1}, {"ber", 1}, {"ams", 0}} {
		items, _, total, err := s.ListPOP3Accounts(ctx, store.POP3AccountFilter{Site: c.site})
		must(t, err)
		if len(items) != c.want || total != c.want {
			t.Fatalf("site %q: %d items, total %d, want %d", c.site, len(items), total, c.want)
		}
	}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeletePOP3Account(ctx, u.ID, 1) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeletePOP3Account(ctx, u.ID, 2) })
	_, err = s.GetPOP3Account(ctx, u.ID)
	wantIs(t, err, store.ErrNotFound)
}

func testSharedMailboxes(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	mgr := createUser(t, s, newUser("mgr", "ams"))
	zs := createUser(t, s, newUser("zhangsan", "ams"))
	ls := createUser(t, s, newUser("lisi", "ams"))

	m := &directory.SharedMailbox{Address: "sales@example.org", DisplayName: "Sales", Manager: mgr.ID,
		Staff: []string{zs.ID, ls.ID}, ForwardToStaff: true, RewriteSender: true, CopyOutboundToManager: true}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSharedMailbox(ctx, m) })
	got := must1[directory.SharedMailbox](t)(s.GetSharedMailbox(ctx, m.ID))
	sameJSON(t, got, m)
	if !slices.Equal(got.Staff, []string{zs.ID, ls.ID}) {
		t.Fatalf("staff %v: want the given order", got.Staff)
	}
	if o := must1[store.Owner](t)(s.LookupAddress(ctx, "sales@example.org")); o != (store.Owner{Kind: directory.KindSharedMailbox, ID: m.ID}) {
		t.Fatalf("owner %+v", o)
	}

	bad := &directory.SharedMailbox{Address: "x@example.org", Manager: mgr.ID, Staff: []string{"no-such-user"}}
	err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSharedMailbox(ctx, bad) })
	if r := wantErr[*store.ReferenceError](t, err); r.Field != "staff" {
		t.Fatalf("reference error %+v", r)
	}

	u := got
	u.Address = "sales2@example.org"
	u.Staff = []string{ls.ID}
	u.ForwardToStaff = false
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateSharedMailbox(ctx, &u, 1) })
	sameJSON(t, must1[directory.SharedMailbox](t)(s.GetSharedMailbox(ctx, u.ID)), u)
	_, err = s.LookupAddress(ctx, "sales@example.org")
	wantIs(t, err, store.ErrNotFound)
	stale := got
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateSharedMailbox(ctx, &stale, 1) }), store.ErrStale)

	items, next, total, err := s.ListSharedMailboxes(ctx, store.Page{})
	must(t, err)
	if len(items) != 1 || next != "" || total != 1 || !slices.Equal(items[0].Staff, []string{ls.ID}) {
		t.Fatalf("list %+v", items)
	}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSharedMailbox(ctx, u.ID, 1) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSharedMailbox(ctx, u.ID, 2) })
	_, err = s.GetSharedMailbox(ctx, u.ID)
	wantIs(t, err, store.ErrNotFound)
	_, err = s.LookupAddress(ctx, "sales2@example.org")
	wantIs(t, err, store.ErrNotFound)
}

func testTemplates(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	tp := &directory.Template{Name: "office", Site: "ams", Groups: []string{"staff"}, Enabled: true,
		Permissions: directory.Permissions{InternetReceive: true}, QuotaBytes: 5 << 30}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateTemplate(ctx, tp) })
	got := must1[directory.Template](t)(s.GetTemplate(ctx, tp.ID))
	sameJSON(t, got, tp)
	sameJSON(t, must1[directory.Template](t)(s.GetTemplateByName(ctx, "office")), tp)

	err := write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateTemplate(ctx, &directory.Template{Name: "office"})
	})
	if c := wantErr[*store.ConflictError](t, err); c.Field != "name" {
		t.Fatalf("conflict %+v", c)
	}
	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateTemplate(ctx, &directory.Template{Name: "remote", Site: "nowhere"})
	})
	wantIs(t, err, store.ErrReference)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateTemplate(ctx, &directory.Template{Name: "bare"})
	})

	u := got
	u.QuotaBytes = 0
	u.Site = ""
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateTemplate(ctx, &u, 1) })
	sameJSON(t, must1[directory.Template](t)(s.GetTemplate(ctx, u.ID)), u)
	stale := got
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateTemplate(ctx, &stale, 1) }), store.ErrStale)

	items, _, total, err := s.ListTemplates(ctx, store.Page{})
	must(t, err)
	if len(items) != 2 || total != 2 || items[0].Name != "bare" || items[1].Name != "office" {
		t.Fatalf("list %+v", items)
	}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTemplate(ctx, u.ID, 1) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTemplate(ctx, u.ID, 2) })
	_, err = s.GetTemplateByName(ctx, "office")
	wantIs(t, err, store.ErrNotFound)
}

func testTokens(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	expires := time.Date(2040, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := &directory.Token{Name: "agent-ams", Role: directory.RoleSiteAgent, Site: "ams", ExpiresAt: &expires, SecretHash: "hash-of-the-agent-secret"}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateToken(ctx, tok) })
	got := must1[directory.Token](t)(s.GetToken(ctx, tok.ID))
	sameJSON(t, got, tok)
	if got.SecretHash != "hash-of-the-agent-secret" || got.LastUsedAt != nil || got.Version != 1 {
		t.Fatalf("token %+v", got)
	}
	_, err := s.GetToken(ctx, "no-such-token")
	wantIs(t, err, store.ErrNotFound)

	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateToken(ctx, &directory.Token{Name: "dup", Role: directory.RoleReader, SecretHash: "hash-of-the-agent-secret"})
	})
	if c := wantErr[*store.ConflictError](t, err); c.Field != "secret_hash" || c.OwnerID != tok.ID || strings.Contains(c.Error(), "hash-of") {
		t.Fatalf("conflict %+v (%v)", c, c)
	}
	if err := write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateToken(ctx, &directory.Token{Name: "nohash", Role: directory.RoleReader})
	}); err == nil {
		t.Fatal("a token without a secret hash was stored")
	}
	admin := &directory.Token{Name: "admin", Role: directory.RoleAdmin, SecretHash: "admin-hash"}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateToken(ctx, admin) })

	// Touch: bookkeeping only, at most once per TouchGranularity.
	seq := must1[int64](t)(s.LastSeq(ctx))
	t0 := time.Date(2030, 5, 6, 7, 8, 9, 123456000, time.UTC)
	for _, c := range []struct{ at, want time.Time }{
		{t0, t0},
		{t0.Add(10 * time.Second), t0},
		{t0.Add(store.TouchGranularity + time.Second), t0.Add(store.TouchGranularity + time.Second)},
	} {
		must(t, s.TouchToken(ctx, tok.ID, c.at))
		got := must1[directory.Token](t)(s.GetToken(ctx, tok.ID))
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(c.want) || got.Version != 1 {
			t.Fatalf("touch at %v: last used %v (version %d), want %v", c.at, got.LastUsedAt, got.Version, c.want)
		}
	}
	if after := must1[int64](t)(s.LastSeq(ctx)); after != seq {
		t.Fatalf("touch logged changes: seq %d -> %d", seq, after)
	}

	for _, c := range []struct {
		f    store.TokenFilter
		want []string
	}{
		{store.TokenFilter{}, []string{"admin", "agent-ams"}},
		{store.TokenFilter{Site: "ams"}, []string{"agent-ams"}},
		{store.TokenFilter{Role: directory.RoleAdmin}, []string{"admin"}},
		{store.TokenFilter{Page: store.Page{Limit: 1}}, []string{"admin"}},
	} {
		items, _, total, err := s.ListTokens(ctx, c.f)
		must(t, err)
		var names []string
		for _, it := range items {
			names = append(names, it.Name)
		}
		if !slices.Equal(names, c.want) || (c.f.Limit == 0 && total != len(c.want)) {
			t.Fatalf("filter %+v: %v (total %d), want %v", c.f, names, total, c.want)
		}
	}

	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteToken(ctx, tok.ID, 2) }), store.ErrStale)
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteToken(ctx, tok.ID, 1) })
	_, err = s.GetToken(ctx, tok.ID)
	wantIs(t, err, store.ErrNotFound)
	for _, c := range allChanges(t, s) {
		if bytes.Contains(c.Data, []byte("hash-of")) || bytes.Contains(c.Data, []byte("admin-hash")) {
			t.Fatalf("change %d carries a token's secret hash: %s", c.Seq, c.Data)
		}
	}
}

// ---------------------------------------------------------------------------
// Uniqueness

func testUniqueness(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	john := createUser(t, s, newUser("john", "ams", "j@example.org"))
	team := createGroup(t, s, &directory.Group{Name: "team", Address: "team@example.org"})
	sales := &directory.SharedMailbox{Address: "sales@example.org", DisplayName: "Sales", Manager: john.ID}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSharedMailbox(ctx, sales) })

	type conflict struct{ field, value, ownerKind, ownerID, ownerName string }
	withAlias := func(a string) *directory.User { return newUser("ann", "ams", a) }
	withPrimary := func(a string) *directory.User { u := newUser("ann", "ams"); u.PrimaryAddress = a; return u }
	cases := []struct {
		name  string
		write func(ctx context.Context, tx store.Tx) error
		want  conflict
	}{
		{"primary taken by another user's alias", func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, withPrimary("j@example.org")) },
			conflict{"primary_address", "j@example.org", directory.KindUser, john.ID, "john"}},
		{"alias taken by another user's primary", func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, withAlias("john@example.org")) },
			conflict{"aliases", "john@example.org", directory.KindUser, john.ID, "john"}},
		{"alias taken by a group", func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, withAlias("team@example.org")) },
			conflict{"aliases", "team@example.org", directory.KindGroup, team.ID, "team"}},
		{"alias taken by a shared mailbox", func(ctx context.Context, tx store.Tx) error {
			return tx.CreateUser(ctx, withAlias("sales@example.org"))
		},
			conflict{"aliases", "sales@example.org", directory.KindSharedMailbox, sales.ID, "sales@example.org"}},
		{"alias repeats the primary", func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, withAlias("ann@example.org")) },
			conflict{"aliases", "ann@example.org", directory.KindUser, "", "ann"}},
		{"username taken", func(ctx context.Context, tx store.Tx) error {
			u := newUser("john", "ams")
			u.PrimaryAddress = "other@example.org"
			return tx.CreateUser(ctx, u)
		}, conflict{"username", "john", directory.KindUser, john.ID, "john"}},
		{"group address taken by a user", func(ctx context.Context, tx store.Tx) error {
			return tx.CreateGroup(ctx, &directory.Group{Name: "g2", Address: "john@example.org"})
		}, conflict{"address", "john@example.org", directory.KindUser, john.ID, "john"}},
		{"group name taken", func(ctx context.Context, tx store.Tx) error {
			return tx.CreateGroup(ctx, &directory.Group{Name: "team"})
		},
			conflict{"name", "team", directory.KindGroup, team.ID, "team"}},
		{"shared mailbox address taken by a group", func(ctx context.Context, tx store.Tx) error {
			return tx.CreateSharedMailbox(ctx, &directory.SharedMailbox{Address: "team@example.org", Manager: john.ID})
		}, conflict{"address", "team@example.org", directory.KindGroup, team.ID, "team"}},
		{"shared mailbox address taken by a user's alias", func(ctx context.Context, tx store.Tx) error {
			return tx.CreateSharedMailbox(ctx, &directory.SharedMailbox{Address: "j@example.org", Manager: john.ID})
		}, conflict{"address", "j@example.org", directory.KindUser, john.ID, "john"}},
		{"update takes a group's address", func(ctx context.Context, tx store.Tx) error {
			u := must1[directory.User](t)(tx.GetUser(ctx, john.ID))
			u.Aliases = append(u.Aliases, "team@example.org")
			return tx.UpdateUser(ctx, &u, store.AnyVersion)
		}, conflict{"aliases", "team@example.org", directory.KindGroup, team.ID, "team"}},
	}
	for _, c := range cases {
		err := write(t, s, c.write)
		got := wantErr[*store.ConflictError](t, err)
		wantIs(t, err, store.ErrConflict)
		if got.Field != c.want.field || got.Value != c.want.value || got.OwnerKind != c.want.ownerKind ||
			(c.want.ownerID != "" && got.OwnerID != c.want.ownerID) || got.OwnerName != c.want.ownerName {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
	err := write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateUser(ctx, withAlias("sales@example.org"))
	})
	if msg := err.Error(); !strings.Contains(msg, "sales@example.org") || !strings.Contains(msg, "shared mailbox") {
		t.Errorf("message %q should name the address and the shared mailbox", msg)
	}
	// Names of the other kinds.
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreatePOP3Account(ctx, newPOP3("isp", "ams", john.ID))
	})
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreatePOP3Account(ctx, newPOP3("isp", "ams", john.ID))
	}), store.ErrConflict)
	// Nothing was written by the refused writes.
	if _, err := s.GetUserByUsername(ctx, "ann"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ann exists after refused writes: %v", err)
	}
	if j := must1[directory.User](t)(s.GetUser(ctx, john.ID)); j.Version != 1 {
		t.Fatalf("john changed by a refused update: version %d", j.Version)
	}
}

func testUniquenessBatch(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	createUser(t, s, newUser("john", "ams"))
	seq := must1[int64](t)(s.LastSeq(ctx))

	// Every problem of a batch is reported, with its index; nothing is written.
	batch := []*directory.User{
		newUser("ann", "ams"),
		newUser("bob", "ams", "ann@example.org"),   // another user of the batch has it
		newUser("carl", "ams", "john@example.org"), // a stored user has it
		newUser("dora", "nowhere"),
	}
	err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUsers(ctx, batch) })
	var items []int
	for _, e := range unwrapAll(err) {
		var ie *store.ItemError
		if errors.As(e, &ie) {
			items = append(items, ie.Index)
		}
	}
	if !slices.Equal(items, []int{1, 2, 3}) {
		t.Fatalf("batch errors for items %v (%v), want 1, 2, 3", items, err)
	}
	if after := must1[int64](t)(s.LastSeq(ctx)); after != seq {
		t.Fatalf("a refused batch logged changes")
	}

	// A typed error leaves the transaction usable: go on and commit.
	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateUser(ctx, newUser("john", "ams")); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("want a conflict, got %v", err)
		}
		return tx.CreateUsers(ctx, []*directory.User{newUser("ann", "ams"), newUser("bob", "ams")})
	})
	must(t, err)
	_, _, total, err := s.ListUsers(ctx, store.UserFilter{})
	must(t, err)
	if total != 3 {
		t.Fatalf("%d users, want 3", total)
	}
}

func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// ---------------------------------------------------------------------------
// Lists

// seedPaged creates n users u000… in shuffled order: odd ones at ber and in
// group odd, every third disabled.
func seedPaged(t *testing.T, s store.Store, n int) {
	createSite(t, s, "ams")
	createSite(t, s, "ber")
	createGroup(t, s, &directory.Group{Name: "odd"})
	var us []*directory.User
	for i := range n {
		j := (i * 97) % n // a permutation when n is not a multiple of 97
		u := newUser(fmt.Sprintf("u%03d", j), "ams")
		if j%2 == 1 {
			u.Site = "ber"
			u.Groups = []string{"odd"}
		}
		u.Enabled = j%3 != 0
		us = append(us, u)
	}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUsers(ctx, us) })
}

// listAll iterates f's pages of limit and checks that every page reports
// the same total.
func listAll(t *testing.T, s store.Store, f store.UserFilter) (names []string, pages []int, total int) {
	t.Helper()
	ctx := ctxFor(t)
	total = -1
	for {
		items, next, tot, err := s.ListUsers(ctx, f)
		must(t, err)
		if total >= 0 && tot != total {
			t.Fatalf("total changed from %d to %d between pages", total, tot)
		}
		total = tot
		pages = append(pages, len(items))
		for _, u := range items {
			names = append(names, u.Username)
		}
		if next == "" {
			return names, pages, total
		}
		if len(pages) > 1000 {
			t.Fatal("pagination does not end")
		}
		f.Cursor = next
	}
}

func testPagination(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	const n = 250
	seedPaged(t, s, n)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("u%03d", i))
	}
	names, pages, total := listAll(t, s, store.UserFilter{Page: store.Page{Limit: 100}})
	if !slices.Equal(pages, []int{100, 100, 50}) || total != n || !slices.Equal(names, want) {
		t.Fatalf("pages %v total %d; names in order and once each: %v", pages, total, slices.Equal(names, want))
	}

	enabled, disabled := true, false
	filter := func(keep func(i int) bool) []string {
		var out []string
		for i := range n {
			if keep(i) {
				out = append(out, fmt.Sprintf("u%03d", i))
			}
		}
		return out
	}
	for _, c := range []struct {
		name string
		f    store.UserFilter
		want []string
	}{
		{"site", store.UserFilter{Site: "ber"}, filter(func(i int) bool { return i%2 == 1 })},
		{"disabled", store.UserFilter{Enabled: &disabled}, filter(func(i int) bool { return i%3 == 0 })},
		{"group", store.UserFilter{Group: "odd"}, filter(func(i int) bool { return i%2 == 1 })},
		{"site and enabled", store.UserFilter{Site: "ams", Enabled: &enabled}, filter(func(i int) bool { return i%2 == 0 && i%3 != 0 })},
		{"unknown group", store.UserFilter{Group: "none"}, nil},
	} {
		c.f.Limit = 40
		names, _, total := listAll(t, s, c.f)
		if !slices.Equal(names, c.want) || total != len(c.want) {
			t.Errorf("%s: %d names (total %d), want %d", c.name, len(names), total, len(c.want))
		}
	}

	// Changes between pages: what exists throughout comes once and in order.
	first, next, _, err := s.ListUsers(ctx, store.UserFilter{Page: store.Page{Limit: 100}})
	must(t, err)
	createUser(t, s, newUser("a-before", "ams"))
	createUser(t, s, newUser("zz-after", "ams"))
	rest, _, _ := listAll(t, s, store.UserFilter{Page: store.Page{Limit: 100, Cursor: next}})
	got := append(usernames(first), rest...)
	if !slices.Equal(got, append(slices.Clone(want), "zz-after")) {
		t.Fatalf("iteration across writes: %d names", len(got))
	}

	for _, bad := range []string{"garbage!", "e30"} {
		_, _, _, err = s.ListUsers(ctx, store.UserFilter{Page: store.Page{Cursor: bad}})
		wantIs(t, err, store.ErrBadCursor)
	}
	createGroup(t, s, &directory.Group{Name: "g1"})
	createGroup(t, s, &directory.Group{Name: "g2"})
	_, gnext, _, err := s.ListGroups(ctx, store.Page{Limit: 1})
	must(t, err)
	_, _, _, err = s.ListUsers(ctx, store.UserFilter{Page: store.Page{Cursor: gnext}})
	wantIs(t, err, store.ErrBadCursor) // a cursor of another list
}

func usernames(us []directory.User) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.Username)
	}
	return out
}

func testSearch(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	createSite(t, s, "ber")
	john := newUser("john", "ams", "sales.rep@example.org")
	john.DisplayName = "John Doe"
	mary := newUser("mary", "ber")
	mary.DisplayName = "Mary Ümlaut"
	createUser(t, s, john)
	createUser(t, s, mary)
	createUser(t, s, newUser("x_y", "ams"))
	createUser(t, s, newUser("xay", "ams"))
	createUser(t, s, newUser("pct", "ams", "100%off@example.org"))

	for _, c := range []struct {
		q, site string
		want    []string
	}{
		{"DOE", "", []string{"john"}},
		{"sales.REP", "", []string{"john"}},
		{"ohn", "", []string{"john"}},
		{"ümlaut", "", []string{"mary"}},
		{"ÜMLAUT", "", []string{"mary"}},
		{"x_y", "", []string{"x_y"}}, // _ is not a wildcard
		{"%", "", []string{"pct"}},   // nor is %
		{"@example.org", "", []string{"john", "mary", "pct", "x_y", "xay"}},
		{"@example.org", "ber", []string{"mary"}},
		{"nobody", "", nil},
		{"john\x1fjohn", "", nil},
	} {
		names, _, total := listAll(t, s, store.UserFilter{Q: c.q, Site: c.site, Page: store.Page{Limit: 2}})
		if !slices.Equal(names, c.want) || total != len(c.want) {
			t.Errorf("q %q site %q: %v (total %d), want %v", c.q, c.site, names, total, c.want)
		}
	}
	_ = ctx
}

// ---------------------------------------------------------------------------
// Groups

func testMembership(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	a := createUser(t, s, newUser("alice", "ams"))
	g := createGroup(t, s, &directory.Group{Name: "g"})
	h := createGroup(t, s, &directory.Group{Name: "h"})

	// User side: a new user names its groups.
	c := newUser("carl", "ams")
	c.Groups = []string{"h", "g"}
	createUser(t, s, c)
	if !slices.Equal(c.Groups, []string{"g", "h"}) {
		t.Fatalf("carl's groups %v: want sorted names", c.Groups)
	}
	gg := must1[directory.Group](t)(s.GetGroup(ctx, g.ID))
	if !slices.Equal(gg.Members, []directory.Member{userMember(c.ID)}) || gg.Version != 2 {
		t.Fatalf("g after carl joined: %+v", gg)
	}

	// Group side: alice joins g.
	gg.Members = append(gg.Members, userMember(a.ID))
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateGroup(ctx, &gg, store.AnyVersion) })
	aa := must1[directory.User](t)(s.GetUser(ctx, a.ID))
	if !slices.Equal(aa.Groups, []string{"g"}) || aa.Version != 2 {
		t.Fatalf("alice after joining g: %v version %d", aa.Groups, aa.Version)
	}
	if cc := must1[directory.User](t)(s.GetUser(ctx, c.ID)); cc.Version != 1 {
		t.Fatalf("carl changed (version %d) though his groups did not", cc.Version)
	}

	// User side again: alice leaves g and joins h; members keep their order.
	aa.Groups = []string{"h"}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateUser(ctx, &aa, store.AnyVersion) })
	if g2 := must1[directory.Group](t)(s.GetGroup(ctx, g.ID)); !slices.Equal(g2.Members, []directory.Member{userMember(c.ID)}) {
		t.Fatalf("g members %v", g2.Members)
	}
	if h2 := must1[directory.Group](t)(s.GetGroup(ctx, h.ID)); !slices.Equal(h2.Members, []directory.Member{userMember(c.ID), userMember(a.ID)}) {
		t.Fatalf("h members %v", h2.Members)
	}
	names, _, _ := listAll(t, s, store.UserFilter{Group: "h"})
	if !slices.Equal(names, []string{"alice", "carl"}) {
		t.Fatalf("users in h: %v", names)
	}

	// Deleting a group removes it from its members' groups.
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteGroup(ctx, h.ID, store.AnyVersion) })
	if cc := must1[directory.User](t)(s.GetUser(ctx, c.ID)); !slices.Equal(cc.Groups, []string{"g"}) {
		t.Fatalf("carl's groups %v after h was deleted", cc.Groups)
	}
}

func testCycles(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	c := createGroup(t, s, &directory.Group{Name: "c"})
	b := createGroup(t, s, &directory.Group{Name: "b", Members: []directory.Member{groupMember(c.ID)}})
	a := createGroup(t, s, &directory.Group{Name: "a", Members: []directory.Member{groupMember(b.ID), groupMember(c.ID)}}) // a diamond is fine

	cc := must1[directory.Group](t)(s.GetGroup(ctx, c.ID))
	cc.Members = []directory.Member{groupMember(a.ID)}
	err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateGroup(ctx, &cc, store.AnyVersion) })
	cyc := wantErr[*store.CycleError](t, err)
	wantIs(t, err, store.ErrCycle)
	if cyc.Group != c.ID || len(cyc.Path) < 3 || cyc.Path[0] != c.ID || cyc.Path[len(cyc.Path)-1] != c.ID {
		t.Fatalf("cycle %+v", cyc)
	}
	aa := must1[directory.Group](t)(s.GetGroup(ctx, a.ID))
	aa.Members = append(aa.Members, groupMember(a.ID))
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateGroup(ctx, &aa, store.AnyVersion) }), store.ErrCycle)
	self := &directory.Group{Meta: directory.Meta{ID: "0190f3c4-0000-7000-8000-000000000001"}, Name: "self"}
	self.Members = []directory.Member{groupMember(self.ID)}
	wantIs(t, write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateGroup(ctx, self) }), store.ErrCycle)
	err = write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateGroup(ctx, &directory.Group{Name: "d", Members: []directory.Member{groupMember("no-such-group")}})
	})
	if r := wantErr[*store.ReferenceError](t, err); r.RefKind != directory.KindGroup {
		t.Fatalf("reference error %+v", r)
	}
	if got := must1[directory.Group](t)(s.GetGroup(ctx, c.ID)); len(got.Members) != 0 || got.Version != 1 {
		t.Fatalf("c changed by refused updates: %+v", got)
	}
	// Deleting b removes it from a.
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteGroup(ctx, b.ID, store.AnyVersion) })
	if got := must1[directory.Group](t)(s.GetGroup(ctx, a.ID)); !slices.Equal(got.Members, []directory.Member{groupMember(c.ID)}) || got.Version != 2 {
		t.Fatalf("a after b was deleted: %+v", got)
	}
}

// ---------------------------------------------------------------------------
// Delete rules

func testDeleteRules(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	createSite(t, s, "ber")
	mgr := createUser(t, s, newUser("mgr", "ams"))
	s1 := createUser(t, s, newUser("s1", "ams"))
	s2 := createUser(t, s, newUser("s2", "ams"))
	lone := createUser(t, s, newUser("lone", "ams"))
	target := createUser(t, s, newUser("target", "ams"))
	pm := createUser(t, s, newUser("pm", "ams"))
	g := createGroup(t, s, &directory.Group{Name: "g", Members: []directory.Member{userMember(s1.ID), userMember(lone.ID)}})
	m1 := &directory.SharedMailbox{Address: "sales@example.org", Manager: mgr.ID, Staff: []string{s1.ID, s2.ID}}
	m2 := &directory.SharedMailbox{Address: "support@example.org", Manager: s2.ID, Staff: []string{lone.ID}}
	p1 := newPOP3("single", "ams", target.ID)
	p2 := newPOP3("multi", "ams", "")
	p2.Mode, p2.Postmaster = directory.ModeMulti, pm.ID
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateSharedMailbox(ctx, m1), tx.CreateSharedMailbox(ctx, m2),
			tx.CreatePOP3Account(ctx, p1), tx.CreatePOP3Account(ctx, p2))
	})

	for _, c := range []struct {
		user         directory.User
		role, byID   string
		msgFragments []string
	}{
		{mgr, store.RoleManager, m1.ID, []string{"manager", "sales@example.org"}},
		{s2, store.RoleManager, m2.ID, []string{"manager", "support@example.org"}},
		{lone, store.RoleOnlyStaff, m2.ID, []string{"only staff", "support@example.org"}},
		{target, store.RoleTargetUser, p1.ID, []string{"single"}},
		{pm, store.RolePostmaster, p2.ID, []string{"postmaster", "multi"}},
	} {
		err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, c.user.ID, store.AnyVersion) })
		e := wantErr[*store.InUseError](t, err)
		wantIs(t, err, store.ErrInUse)
		if e.Role != c.role || e.ByID != c.byID {
			t.Errorf("delete %s: %+v, want role %s by %s", c.user.Username, e, c.role, c.byID)
		}
		for _, f := range c.msgFragments {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("delete %s: message %q lacks %q", c.user.Username, err, f)
			}
		}
	}

	// s1 is one of two staff: deleting it removes it from m1 and from g.
	seq := must1[int64](t)(s.LastSeq(ctx))
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, s1.ID, store.AnyVersion) })
	got1 := must1[directory.SharedMailbox](t)(s.GetSharedMailbox(ctx, m1.ID))
	if !slices.Equal(got1.Staff, []string{s2.ID}) || got1.Version != 2 {
		t.Fatalf("m1 after s1 was deleted: %+v", got1)
	}
	gg := must1[directory.Group](t)(s.GetGroup(ctx, g.ID))
	if !slices.Equal(gg.Members, []directory.Member{userMember(lone.ID)}) || gg.Version != 2 {
		t.Fatalf("g after s1 was deleted: %+v", gg)
	}
	cs := must1[[]directory.Change](t)(s.ChangesSince(ctx, seq, 0))
	var got []string
	for _, c := range cs {
		got = append(got, c.Kind+"/"+c.Op)
	}
	if want := []string{"group/upsert", "shared_mailbox/upsert", "user/delete"}; !slices.Equal(got, want) {
		t.Fatalf("changes of the delete: %v, want %v", got, want)
	}
	sameJSON(t, json.RawMessage(cs[0].Data), gg)
	sameJSON(t, json.RawMessage(cs[1].Data), got1)

	// A site with users, accounts, templates or tokens stays.
	err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ams", store.AnyVersion) })
	e := wantErr[*store.InUseError](t, err)
	if e.Kind != directory.KindSite || e.ByKind != directory.KindUser || e.Count != 5 {
		t.Fatalf("delete site: %+v", e)
	}
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateToken(ctx, &directory.Token{Name: "agent", Role: directory.RoleSiteAgent, Site: "ber", SecretHash: "h"})
	})
	err = write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "ber", store.AnyVersion) })
	if e := wantErr[*store.InUseError](t, err); e.ByKind != directory.KindToken {
		t.Fatalf("delete site ber: %+v", e)
	}
	createSite(t, s, "empty")
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteSite(ctx, "empty", store.AnyVersion) })
}

// ---------------------------------------------------------------------------
// Change log

func testChangeLog(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	var john, mary directory.User
	var g directory.Group
	var m directory.SharedMailbox
	steps := []func(ctx context.Context, tx store.Tx) error{
		func(ctx context.Context, tx store.Tx) error { return tx.CreateSite(ctx, newSite("ams")) },
		func(ctx context.Context, tx store.Tx) error {
			g = directory.Group{Name: "g", Address: "g@example.org"}
			return tx.CreateGroup(ctx, &g)
		},
		func(ctx context.Context, tx store.Tx) error {
			john = *newUser("john", "ams")
			john.Groups = []string{"g"}
			return tx.CreateUser(ctx, &john)
		},
		func(ctx context.Context, tx store.Tx) error {
			john.DisplayName = "John Renamed"
			return tx.UpdateUser(ctx, &john, john.Version)
		},
		func(ctx context.Context, tx store.Tx) error {
			mary = *newUser("mary", "ams")
			if err := tx.CreateUser(ctx, &mary); err != nil {
				return err
			}
			m = directory.SharedMailbox{Address: "sales@example.org", Manager: mary.ID, Staff: []string{john.ID, mary.ID}}
			return tx.CreateSharedMailbox(ctx, &m)
		},
		func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, john.ID, store.AnyVersion) },
	}
	for _, step := range steps {
		must(t, s.Update(ctx, func(tx store.Tx) error {
			if err := step(ctx, tx); err != nil {
				return err
			}
			return tx.Audit(ctx, &directory.AuditEntry{Actor: "token:t1 (admin)", Action: "test"})
		}))
	}
	type entry struct{ kind, id, op string }
	want := []entry{
		{"site", "ams", "upsert"},
		{"group", g.ID, "upsert"},
		{"user", john.ID, "upsert"},
		{"group", g.ID, "upsert"}, // john joined
		{"user", john.ID, "upsert"},
		{"user", mary.ID, "upsert"},
		{"shared_mailbox", m.ID, "upsert"},
		{"group", g.ID, "upsert"},          // john left, before his deletion
		{"shared_mailbox", m.ID, "upsert"}, // likewise
		{"user", john.ID, "delete"},
	}
	cs := allChanges(t, s)
	if len(cs) != len(want) {
		t.Fatalf("%d changes, want %d: %+v", len(cs), len(want), cs)
	}
	for i, c := range cs {
		if c.Seq != int64(i+1) || (entry{c.Kind, c.ID, c.Op}) != want[i] || c.At.IsZero() || c.Actor != "token:t1 (admin)" {
			t.Errorf("change %d: %+v, want seq %d %+v", i, c, i+1, want[i])
		}
		ev := events.DirectoryChange{Seq: c.Seq, At: c.At, Kind: c.Kind, ID: c.ID, Op: c.Op, Data: c.Data, Actor: c.Actor}
		if err := ev.Validate(); err != nil {
			t.Errorf("change %d is not a valid directory.changes record: %v", i, err)
		}
	}
	// Data is the full stored object, secrets in their stored form.
	var u directory.User
	must(t, json.Unmarshal(cs[2].Data, &u))
	if u.PasswordHash != testHash || !slices.Equal(u.Groups, []string{"g"}) || u.Version != 1 {
		t.Fatalf("user data %s", cs[2].Data)
	}
	var renamed directory.User
	must(t, json.Unmarshal(cs[4].Data, &renamed))
	if renamed.DisplayName != "John Renamed" || renamed.Version != 2 {
		t.Fatalf("update data %s", cs[4].Data)
	}
	var gAfter directory.Group
	must(t, json.Unmarshal(cs[7].Data, &gAfter))
	if len(gAfter.Members) != 0 {
		t.Fatalf("group data after the delete %s", cs[7].Data)
	}
	sameJSON(t, json.RawMessage(cs[8].Data), must1[directory.SharedMailbox](t)(s.GetSharedMailbox(ctx, m.ID)))
	if cs[9].Data != nil {
		t.Fatalf("delete carries data %s", cs[9].Data)
	}

	part := must1[[]directory.Change](t)(s.ChangesSince(ctx, 5, 2))
	if len(part) != 2 || part[0].Seq != 6 || part[1].Seq != 7 {
		t.Fatalf("ChangesSince(5, 2): %+v", part)
	}
	if last := must1[int64](t)(s.LastSeq(ctx)); last != 10 {
		t.Fatalf("LastSeq %d", last)
	}
	if oldest := must1[int64](t)(s.OldestSeq(ctx)); oldest != 1 {
		t.Fatalf("OldestSeq %d", oldest)
	}
}

func testConcurrentWriters(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	const writers, each = 8, 12
	const total = 1 + writers*each

	// A reader follows the log while the writers write: it must see every
	// seq, in order, never one after a gap.
	readerErr := make(chan error, 1)
	go func() {
		var cursor int64
		for cursor < total {
			cs, err := s.ChangesSince(ctx, cursor, 7)
			if err != nil {
				readerErr <- err
				return
			}
			for _, c := range cs {
				if c.Seq != cursor+1 {
					readerErr <- fmt.Errorf("after %d the reader got %d", cursor, c.Seq)
					return
				}
				cursor = c.Seq
			}
			if len(cs) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		readerErr <- nil
	}()

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				u := newUser(fmt.Sprintf("w%d-%02d", w, i), "ams")
				if err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, u) }); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	select {
	case err := <-readerErr:
		must(t, err)
	case <-ctx.Done():
		t.Fatal("the reader did not reach the end of the log")
	}
	cs := allChanges(t, s)
	if len(cs) != total {
		t.Fatalf("%d changes, want %d", len(cs), total)
	}
	for i, c := range cs {
		if c.Seq != int64(i+1) {
			t.Fatalf("change %d has seq %d", i, c.Seq)
		}
	}
	if last := must1[int64](t)(s.LastSeq(ctx)); last != total {
		t.Fatalf("LastSeq %d, want %d", last, total)
	}
}

// state is the directory as a map kind/id → canonical JSON.
type state map[string]string

func replay(t *testing.T, cs []directory.Change, upTo int64) state {
	st := state{}
	for _, c := range cs {
		if c.Seq > upTo {
			break
		}
		key := c.Kind + "/" + c.ID
		if c.Op == events.OpDelete {
			delete(st, key)
		} else {
			st[key] = string(canonical(t, c.Data))
		}
	}
	return st
}

func snapshotState(t *testing.T, snap *store.Snapshot) state {
	st := state{}
	add := func(kind, id string, v any) {
		b, _ := json.Marshal(v)
		st[kind+"/"+id] = string(canonical(t, b))
	}
	for _, v := range snap.Sites {
		add(directory.KindSite, v.ID, v)
	}
	for _, v := range snap.Users {
		add(directory.KindUser, v.ID, v)
	}
	for _, v := range snap.Groups {
		add(directory.KindGroup, v.ID, v)
	}
	for _, v := range snap.POP3Accounts {
		add(directory.KindPOP3Account, v.ID, v)
	}
	for _, v := range snap.SharedMailboxes {
		add(directory.KindSharedMailbox, v.ID, v)
	}
	for _, v := range snap.Templates {
		add(directory.KindTemplate, v.ID, v)
	}
	for _, v := range snap.Tokens {
		add(directory.KindToken, v.ID, v)
	}
	return st
}

func testSnapshot(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	g := createGroup(t, s, &directory.Group{Name: "all"})
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateTemplate(ctx, &directory.Template{Name: "tpl", Site: "ams"})
	})
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateToken(ctx, &directory.Token{Name: "tok", Role: directory.RoleReader, SecretHash: "h"})
	})

	// A writer creates, edits and deletes users (each a cascade on the
	// group) while snapshots are taken.
	done := make(chan error, 1)
	go func() {
		var ids []string
		for i := range 60 {
			err := write(t, s, func(ctx context.Context, tx store.Tx) error {
				u := newUser(fmt.Sprintf("user%02d", i), "ams")
				u.Groups = []string{"all"}
				if err := tx.CreateUser(ctx, u); err != nil {
					return err
				}
				ids = append(ids, u.ID)
				switch {
				case i%5 == 4:
					return tx.DeleteUser(ctx, ids[i-2], store.AnyVersion)
				case i%3 == 2:
					prev, err := tx.GetUser(ctx, ids[i-1])
					if err != nil {
						return err
					}
					prev.DisplayName += " (edited)"
					return tx.UpdateUser(ctx, &prev, store.AnyVersion)
				}
				return nil
			})
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var snaps []*store.Snapshot
	for writing := true; writing; {
		select {
		case err := <-done:
			must(t, err)
			writing = false
		default:
		}
		snap := must1[*store.Snapshot](t)(s.Snapshot(ctx))
		if len(snaps) == 0 || snaps[len(snaps)-1].Seq != snap.Seq {
			snaps = append(snaps, snap)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cs := allChanges(t, s)
	for _, snap := range snaps {
		got, want := snapshotState(t, snap), replay(t, cs, snap.Seq)
		if len(got) != len(want) {
			t.Fatalf("snapshot at %d has %d objects, the log up to it %d", snap.Seq, len(got), len(want))
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("snapshot at %d: %s is\n%s\nthe log says\n%s", snap.Seq, k, got[k], v)
			}
		}
	}
	last := snaps[len(snaps)-1]
	if last.Seq != must1[int64](t)(s.LastSeq(ctx)) || len(last.Groups) != 1 || last.Groups[0].ID != g.ID {
		t.Fatalf("final snapshot at %d", last.Seq)
	}
	t.Logf("%d snapshots checked against the log", len(snaps))
}

func testCompaction(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	for i := range 10 {
		createSite(t, s, fmt.Sprintf("s%d", i))
	}
	if n := must1[int64](t)(s.Compact(ctx, 5, time.Time{})); n != 5 {
		t.Fatalf("compact removed %d, want 5", n)
	}
	if o := must1[int64](t)(s.OldestSeq(ctx)); o != 6 {
		t.Fatalf("OldestSeq %d, want 6", o)
	}
	if cs := must1[[]directory.Change](t)(s.ChangesSince(ctx, 0, 0)); len(cs) != 5 || cs[0].Seq != 6 {
		t.Fatalf("after compaction: %d changes from %d", len(cs), cs[0].Seq)
	}
	cs := allChanges(t, s)
	if n := must1[int64](t)(s.Compact(ctx, 10, cs[0].At)); n != 0 {
		t.Fatalf("compact of entries before %v removed %d", cs[0].At, n)
	}
	if n := must1[int64](t)(s.Compact(ctx, 10, time.Now().Add(time.Hour))); n != 5 {
		t.Fatalf("compact removed %d, want 5", n)
	}
	if o, l := must1[int64](t)(s.OldestSeq(ctx)), must1[int64](t)(s.LastSeq(ctx)); o != 11 || l != 10 {
		t.Fatalf("empty log: oldest %d last %d, want 11 and 10", o, l)
	}
	createSite(t, s, "after")
	if cs := allChanges(t, s); len(cs) != 1 || cs[0].Seq != 11 {
		t.Fatalf("after compaction the next change is %+v, want seq 11", cs)
	}
}

func testOutbox(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	if p := must1[int64](t)(s.OutboxPosition(ctx, "kafka")); p != 0 {
		t.Fatalf("initial position %d", p)
	}
	must(t, s.SetOutboxPosition(ctx, "kafka", 5))
	must(t, s.SetOutboxPosition(ctx, "other", 2))
	must(t, s.SetOutboxPosition(ctx, "kafka", 7))
	if p := must1[int64](t)(s.OutboxPosition(ctx, "kafka")); p != 7 {
		t.Fatalf("position %d, want 7", p)
	}
	if p := must1[int64](t)(s.OutboxPosition(ctx, "other")); p != 2 {
		t.Fatalf("other position %d, want 2", p)
	}
	if err := s.SetOutboxPosition(ctx, "", 1); err == nil {
		t.Fatal("an outbox without a name was accepted")
	}
}

func testWait(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "a")
	// Already past: returns at once.
	if seq, err := s.WaitForChange(ctx, 0); err != nil || seq != 1 {
		t.Fatalf("WaitForChange(0) = %d, %v", seq, err)
	}
	// Wakes on a commit.
	go func() {
		time.Sleep(20 * time.Millisecond)
		if err := write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateSite(ctx, newSite("b")) }); err != nil {
			t.Error(err)
		}
	}()
	if seq, err := s.WaitForChange(ctx, 1); err != nil || seq != 2 {
		t.Fatalf("WaitForChange(1) = %d, %v", seq, err)
	}
	// Gives up with the context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	seq, err := s.WaitForChange(short, 2)
	if !errors.Is(err, context.DeadlineExceeded) || seq != 2 {
		t.Fatalf("WaitForChange with nothing new = %d, %v", seq, err)
	}
}

// ---------------------------------------------------------------------------
// Audit

func testAudit(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	var all []directory.AuditEntry
	for i := range 25 {
		e := directory.AuditEntry{
			Actor:      []string{"token:a (admin)", "token:b (ops)"}[i%2],
			Action:     []string{"user.create", "user.update", "site.create"}[i%3],
			TargetKind: []string{"user", "user", "site"}[i%3],
			TargetID:   fmt.Sprintf("t%d", i%4),
			Diff:       json.RawMessage(fmt.Sprintf(`{"display_name":{"from":"x","to":"y%d"}}`, i)),
		}
		must(t, s.Update(ctx, func(tx store.Tx) error { return tx.Audit(ctx, &e) }))
		if e.ID == 0 || e.At.IsZero() {
			t.Fatalf("audit entry not given an ID and time: %+v", e)
		}
		all = append(all, e)
	}
	slices.Reverse(all) // newest first
	check := func(name string, f store.AuditFilter, keep func(e directory.AuditEntry) bool) {
		t.Helper()
		var want []int64
		for _, e := range all {
			if keep(e) {
				want = append(want, e.ID)
			}
		}
		var got []int64
		f.Limit = 4
		for {
			items, next, total, err := s.ListAudit(ctx, f)
			must(t, err)
			if total != len(want) {
				t.Fatalf("%s: total %d, want %d", name, total, len(want))
			}
			for _, e := range items {
				got = append(got, e.ID)
			}
			if next == "" {
				break
			}
			f.Cursor = next
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: ids %v, want %v", name, got, want)
		}
	}
	check("all", store.AuditFilter{}, func(directory.AuditEntry) bool { return true })
	check("actor", store.AuditFilter{Actor: "token:b (ops)"}, func(e directory.AuditEntry) bool { return e.Actor == "token:b (ops)" })
	check("action", store.AuditFilter{Action: "site.create"}, func(e directory.AuditEntry) bool { return e.Action == "site.create" })
	check("target", store.AuditFilter{TargetKind: "user", TargetID: "t1"}, func(e directory.AuditEntry) bool {
		return e.TargetKind == "user" && e.TargetID == "t1"
	})
	since, until := all[15].At, all[5].At
	check("since", store.AuditFilter{Since: since}, func(e directory.AuditEntry) bool { return !e.At.Before(since) })
	check("between", store.AuditFilter{Since: since, Until: until}, func(e directory.AuditEntry) bool {
		return !e.At.Before(since) && e.At.Before(until)
	})

	items, _, _, err := s.ListAudit(ctx, store.AuditFilter{Page: store.Page{Limit: 1}})
	must(t, err)
	got := items[0]
	if got.ID != all[0].ID || !got.At.Equal(all[0].At) || got.Actor != all[0].Actor || got.TargetID != all[0].TargetID {
		t.Fatalf("newest entry %+v, want %+v", got, all[0])
	}
	sameJSON(t, got.Diff, all[0].Diff)
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.Audit(ctx, &directory.AuditEntry{Action: "x"}) }); err == nil {
		t.Fatal("an audit entry without an actor was recorded")
	}
	_, _, _, err = s.ListAudit(ctx, store.AuditFilter{Page: store.Page{Cursor: "nope"}})
	wantIs(t, err, store.ErrBadCursor)
}

// ---------------------------------------------------------------------------
// Transactions

func testRollback(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	createSite(t, s, "ams")
	unchanged := func(what string) {
		t.Helper()
		if last := must1[int64](t)(s.LastSeq(ctx)); last != 1 {
			t.Fatalf("%s: LastSeq %d, want 1", what, last)
		}
		if cs := must1[[]directory.Change](t)(s.ChangesSince(ctx, 1, 0)); len(cs) != 0 {
			t.Fatalf("%s: changes %+v", what, cs)
		}
		if _, _, total, err := s.ListAudit(ctx, store.AuditFilter{}); err != nil || total != 1 {
			t.Fatalf("%s: %d audit entries (%v), want 1", what, total, err)
		}
		if _, _, total, err := s.ListUsers(ctx, store.UserFilter{}); err != nil || total != 0 {
			t.Fatalf("%s: %d users (%v), want 0", what, total, err)
		}
		if _, err := s.LookupAddress(ctx, "ann@example.org"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s: ann's address is taken: %v", what, err)
		}
	}
	twoWrites := func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateUser(ctx, newUser("ann", "ams")); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, newUser("bob", "ams")); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "test", Action: "test"})
	}

	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := twoWrites(ctx, tx); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	unchanged("error")

	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not propagate")
			}
		}()
		_ = s.Update(ctx, func(tx store.Tx) error {
			if err := twoWrites(ctx, tx); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	unchanged("panic")

	err = s.Update(ctx, func(tx store.Tx) error { return tx.CreateUser(ctx, newUser("ann", "ams")) })
	wantIs(t, err, store.ErrNoAudit)
	unchanged("no audit entry")

	// A failed write that fn ignores still prevents the commit.
	err = s.Update(ctx, func(tx store.Tx) error {
		if err := twoWrites(ctx, tx); err != nil {
			return err
		}
		_ = tx.CreateToken(ctx, &directory.Token{Name: "x"}) // no hash: an untyped error
		return nil
	})
	if err == nil {
		t.Fatal("a transaction with a failed write committed")
	}
	unchanged("ignored failure")

	var kept store.Tx
	mustWrite(t, s, func(ctx context.Context, tx store.Tx) error { kept = tx; return nil })
	wantIs(t, kept.CreateSite(ctx, newSite("late")), store.ErrTxDone)
}

func testPingClose(t *testing.T, s store.Store) {
	must(t, s.Ping(ctxFor(t)))
	must(t, s.Close())
	must(t, s.Close())
}
