package apitest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	uc "github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/services/users/internal/directory"
)

func testValidation(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	before := e.userCount(t)

	for _, tc := range []struct {
		what   string
		call   func() (response, error)
		status int
		typ    string
		fields []string
	}{
		{"user with four bad members", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "bad name!", PrimaryAddress: ptr("not-an-address"),
				Aliases: &[]string{"also bad"}, Site: ptr("hq"), Password: ptr("short")})
		}, 422, typeValidation, []string{"username", "primary_address", "aliases[0]", "password"}},
		{"user of a site that does not exist", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "carol", Site: ptr("atlantis")})
		}, 422, typeValidation, []string{"site"}},
		{"user with an unsupported password_hash", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "carol", Site: ptr("hq"), PasswordHash: ptr("{PLAIN}secret")})
		}, 422, typeValidation, []string{"password_hash"}},
		{"user with a duplicate alias and a display name with a line break", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "carol", Site: ptr("hq"), DisplayName: ptr("Carol\nInjected: header"),
				Aliases: &[]string{"c@hq.example.org", "C@hq.example.org"}})
		}, 422, typeValidation, []string{"display_name", "aliases[1]"}},
		{"site with a bad name and a bad domain", func() (response, error) {
			return c.CreateSiteWithResponse(ctx, uc.SiteCreate{Name: "bad_name", Domains: &[]string{"ok.example.org", "not a domain"}})
		}, 422, typeValidation, []string{"name", "domains[1]"}},
		{"group with a bad name and a bad address", func() (response, error) {
			return c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "-bad-", Address: ptr("nope")})
		}, 422, typeValidation, []string{"name", "address"}},
		{"template with a bad name", func() (response, error) {
			return c.CreateTemplateWithResponse(ctx, uc.TemplateCreate{Name: "Bad Name"})
		}, 422, typeValidation, []string{"name"}},
		// requests that do not match the document
		{"user with an unknown member", func() (response, error) {
			return c.CreateUserWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"username":"x","site":"hq","nickname":"y"}`))
		}, 400, typeBadRequest, []string{"nickname"}},
		{"user with a wrong type", func() (response, error) {
			return c.CreateUserWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"username":"x","site":"hq","quota_bytes":"lots"}`))
		}, 400, typeBadRequest, []string{"quota_bytes"}},
		{"user with a negative quota", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "x", Site: ptr("hq"), QuotaBytes: ptr(int64(-1))})
		}, 400, typeBadRequest, []string{"quota_bytes"}},
		{"user without a username", func() (response, error) {
			return c.CreateUserWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"site":"hq"}`))
		}, 400, typeBadRequest, []string{"username"}},
		{"malformed JSON", func() (response, error) {
			return c.CreateUserWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"username":`))
		}, 400, typeBadRequest, nil},
		{"POP3 account with a port out of range", func() (response, error) {
			a := singlePOP3("isp-x", "hq", "someone", e.pop3Password())
			a.Port = ptr(70000)
			return c.CreatePOP3AccountWithResponse(ctx, a)
		}, 400, typeBadRequest, []string{"port"}},
	} {
		r, err := tc.call()
		p := wantProblem(t, tc.what, r, err, tc.status, tc.typ, tc.fields...)
		for _, fe := range p.Errors {
			if fe.Reason == "" {
				t.Errorf("%s: error for %q without a reason", tc.what, fe.Field)
			}
		}
	}
	if n := e.userCount(t); n != before {
		t.Errorf("refused creations wrote users: %d, was %d", n, before)
	}

	// a user with both password and password_hash
	h := e.hashed(t, 0)
	r, err := c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "both", Site: ptr("hq"), Password: ptr(e.userPassword()), PasswordHash: ptr(h.hash)})
	p := wantProblem(t, "user with both password and password_hash", r, err, http.StatusUnprocessableEntity, typeValidation)
	if named := strings.Join(errorFields(p), " "); !strings.Contains(named, "password") {
		t.Errorf("user with both password and password_hash: errors name %q, not the password", named)
	}

	// IDNA domains are stored as A-labels; addresses lower-cased
	s := e.mkSite(t, "munich", "münchen.example")
	if len(s.Domains) != 1 || s.Domains[0] != "xn--mnchen-3ya.example" {
		t.Errorf("IDNA domain stored as %v, want [xn--mnchen-3ya.example]", s.Domains)
	}
	u := e.mkUser(t, uc.UserCreate{Username: "Hans.Muller", Site: ptr("munich"), PrimaryAddress: ptr("Hans@München.example")})
	if u.Username != "hans.muller" || u.PrimaryAddress != "hans@xn--mnchen-3ya.example" {
		t.Errorf("user with an IDNA address: username %q, address %q", u.Username, u.PrimaryAddress)
	}
}

func testConflicts(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	alice := e.mkUser(t, uc.UserCreate{Username: "alice", Site: ptr("hq"), Aliases: &[]string{"a.m@hq.example.org"}})
	group := e.mkGroup(t, uc.GroupCreate{Name: "sales", Address: ptr("sales@hq.example.org")})
	mgr := e.mkUserAt(t, "manager", "hq")
	staff := e.mkUserAt(t, "staff", "hq")
	shared := e.mkShared(t, uc.SharedMailboxCreate{Address: "info@hq.example.org", Manager: mgr.ID, Staff: &[]string{staff.ID}})
	bob := e.mkUserAt(t, "bob", "hq")

	for _, tc := range []struct {
		what  string
		call  func() (response, error)
		field string
	}{
		{"a user whose alias is another user's primary address", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "carol", Site: ptr("hq"), Aliases: &[]string{"x@hq.example.org", "ALICE@hq.example.org"}})
		}, "aliases[1]"},
		{"a user whose primary address is another user's alias", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "carol", Site: ptr("hq"), PrimaryAddress: ptr("a.m@hq.example.org")})
		}, "primary_address"},
		{"a user whose username is taken", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "Alice", Site: ptr("hq"), PrimaryAddress: ptr("alice2@hq.example.org")})
		}, "username"},
		{"a user alias that is a group's address", func() (response, error) {
			return c.UpdateUserWithResponse(ctx, bob.ID, nil, uc.UserPatch{Aliases: &[]string{"sales@hq.example.org"}})
		}, "aliases[0]"},
		{"a user alias that is a shared mailbox's address", func() (response, error) {
			return c.UpdateUserWithResponse(ctx, bob.ID, nil, uc.UserPatch{Aliases: &[]string{"info@hq.example.org"}})
		}, "aliases[0]"},
		{"a shared mailbox at a group's address", func() (response, error) {
			return c.CreateSharedMailboxWithResponse(ctx, uc.SharedMailboxCreate{Address: "Sales@hq.example.org", Manager: mgr.ID, Staff: &[]string{staff.ID}})
		}, "address"},
		{"a group at a shared mailbox's address", func() (response, error) {
			return c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "info", Address: ptr("info@hq.example.org")})
		}, "address"},
		{"a group at a user's address", func() (response, error) {
			return c.UpdateGroupWithResponse(ctx, group.ID, nil, uc.GroupPatch{Address: ptr("alice@hq.example.org")})
		}, "address"},
		{"a group whose name is taken", func() (response, error) {
			return c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "sales"})
		}, "name"},
	} {
		r, err := tc.call()
		p := wantProblem(t, tc.what, r, err, http.StatusConflict, typeConflict, tc.field)
		if p.Detail == "" {
			t.Errorf("%s: no detail", tc.what)
		}
	}
	if now := e.getUser(t, bob.ID); now.Version != bob.Version {
		t.Errorf("refused updates wrote: %s", js(now))
	}

	// deletes refused with a reason
	d, err := c.DeleteUserWithResponse(ctx, mgr.ID, nil)
	p := wantProblem(t, "delete the manager of a shared mailbox", d, err, http.StatusConflict, typeInUse)
	if !mentions(p, "shared mailbox", shared.Address) {
		t.Errorf("delete the manager of a shared mailbox: the reason does not name the shared mailbox: %s", clip(d.Body))
	}
	if now := e.getUser(t, mgr.ID); now.Version != mgr.Version {
		t.Errorf("a refused delete wrote: %s", js(now))
	}
	ds, err := c.DeleteSiteWithResponse(ctx, "hq", nil)
	wantProblem(t, "delete a site with users", ds, err, http.StatusConflict, typeInUse)

	// after the conflicts, the objects are as they were
	if now := e.getUser(t, alice.ID); now.Version != alice.Version {
		t.Errorf("alice changed: %s", js(now))
	}
}

func testMoveAndPassword(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	pw1 := e.userPassword()
	alice := e.mkUser(t, uc.UserCreate{Username: "alice", Site: ptr("hq"), Password: ptr(pw1)})

	// move
	m, err := c.MoveUserWithResponse(ctx, alice.ID, &uc.MoveUserParams{IfMatch: ptr(etag(alice.Version))}, uc.UserMove{Site: "branch"})
	wantStatus(t, "move user", m, err, http.StatusOK)
	moved := *m.JSON200
	if moved.Site != "branch" || moved.Version != alice.Version+1 || moved.PrimaryAddress != alice.PrimaryAddress || moved.Username != "alice" {
		t.Errorf("move user: %s", js(moved))
	}
	checkETag(t, "move user", m.Headers200.ETag, moved.Version)
	noMembers(t, "move user", m.Body, "password", "password_hash")
	if g := e.getUser(t, alice.ID); g.Site != "branch" {
		t.Errorf("after a move, get user says site %q", g.Site)
	}
	l, err := c.ListUsersWithResponse(ctx, &uc.ListUsersParams{Site: ptr("branch")})
	wantStatus(t, "list users of branch", l, err, http.StatusOK)
	if l.JSON200.Total != 1 || l.JSON200.Items[0].ID != alice.ID {
		t.Errorf("list users of branch after the move: %s", js(l.JSON200))
	}

	m, err = c.MoveUserWithResponse(ctx, alice.ID, nil, uc.UserMove{Site: "atlantis"})
	wantProblem(t, "move user to a site that does not exist", m, err, http.StatusUnprocessableEntity, typeValidation, "site")
	m, err = c.MoveUserWithResponse(ctx, alice.ID, &uc.MoveUserParams{IfMatch: ptr(etag(alice.Version))}, uc.UserMove{Site: "hq"})
	wantProblem(t, "move user with a stale If-Match", m, err, http.StatusPreconditionFailed, typePrecondition)
	m, err = c.MoveUserWithResponse(ctx, "no-such-user", nil, uc.UserMove{Site: "hq"})
	wantProblem(t, "move a user that does not exist", m, err, http.StatusNotFound, typeNotFound)
	if g := e.getUser(t, alice.ID); !sameJSON(g, moved) {
		t.Errorf("refused moves wrote: %s", js(g))
	}

	// password reset
	pw2 := e.userPassword()
	p, err := c.SetUserPasswordWithResponse(ctx, alice.ID, uc.PasswordSet{Password: ptr(pw2)})
	wantStatus(t, "reset password", p, err, http.StatusNoContent)
	if len(p.Body) != 0 {
		t.Errorf("reset password: 204 with a body: %s", clip(p.Body))
	}
	p, err = c.SetUserPasswordWithResponse(ctx, alice.ID, uc.PasswordSet{Password: ptr("tiny")})
	wantProblem(t, "reset password to one too short", p, err, http.StatusUnprocessableEntity, typeValidation, "password")
	p, err = c.SetUserPasswordWithResponse(ctx, "no-such-user", uc.PasswordSet{Password: ptr(e.userPassword())})
	wantProblem(t, "reset the password of a user that does not exist", p, err, http.StatusNotFound, typeNotFound)

	// the new password is the one stored (seen through the admin export)
	exp := e.exportJSON(t, e.admin, "")
	h := exp["alice"].PasswordHash
	if ok, err := directory.VerifyPassword(h, pw2); err != nil || !ok {
		t.Errorf("after a reset, the exported hash %q does not verify the new password (%v)", h, err)
	}
	if ok, _ := directory.VerifyPassword(h, pw1); ok {
		t.Errorf("after a reset, the old password still verifies")
	}

	// audit: the move and the reset, without the password
	actor := "token:" + e.adminID + " (" + bootstrap + ")"
	for _, tc := range []struct{ action string }{{"user.move"}, {"user.password"}} {
		entries := e.auditAll(t, &uc.ListAuditEntriesParams{Action: ptr(tc.action), TargetID: ptr(alice.ID)})
		if len(entries) != 1 {
			t.Errorf("audit %s of alice: %d entries, want 1: %s", tc.action, len(entries), js(entries))
			continue
		}
		a := entries[0]
		if a.Actor != actor || a.TargetKind != "user" || a.TargetID != alice.ID || a.At.IsZero() {
			t.Errorf("audit %s: %s", tc.action, js(a))
		}
		if strings.Contains(string(a.Diff), pw2) || strings.Contains(string(a.Diff), pw1) {
			t.Errorf("audit %s: the diff holds the password: %s", tc.action, a.Diff)
		}
		if tc.action == "user.move" {
			var diff map[string]struct{ From, To any }
			if err := json.Unmarshal(a.Diff, &diff); err != nil || diff["site"].From != "hq" || diff["site"].To != "branch" {
				t.Errorf("audit user.move: diff %s, want site from hq to branch", a.Diff)
			}
		}
	}
}
