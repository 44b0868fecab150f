package apitest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	uc "github.com/postern/postern/api/usersclient"
)

// world is a small directory that the role tests act on.
type world struct {
	alice, bob, mgr, staff uc.User // alice, mgr and staff at hq; bob at branch
	group                  uc.Group
	pop3                   uc.POP3Account // downloaded by hq, for alice
	shared                 uc.SharedMailbox
	tpl                    uc.Template
}

func (e *env) world(t *testing.T) *world {
	t.Helper()
	e.mkSites(t)
	w := &world{}
	w.alice = e.mkUser(t, uc.UserCreate{Username: "alice", Site: ptr("hq"), PasswordHash: ptr(e.hashed(t, 0).hash)})
	w.bob = e.mkUser(t, uc.UserCreate{Username: "bob", Site: ptr("branch"), PasswordHash: ptr(e.hashed(t, 1).hash)})
	w.mgr = e.mkUserAt(t, "manager", "hq")
	w.staff = e.mkUserAt(t, "staff", "hq")
	w.group = e.mkGroup(t, uc.GroupCreate{Name: "team", Members: &[]uc.Member{{Type: uc.MemberTypeUser, ID: w.alice.ID}}})
	w.pop3 = e.mkPOP3(t, singlePOP3("isp-hq", "hq", w.alice.ID, e.pop3Password("agent-hq")))
	w.shared = e.mkShared(t, uc.SharedMailboxCreate{Address: "sales@hq.example.org", Manager: w.mgr.ID, Staff: &[]string{w.staff.ID}})
	w.tpl = e.mkTemplate(t, uc.TemplateCreate{Name: "staff", Site: ptr("hq")})
	return w
}

// op is one call of the API.
type op struct {
	name string
	call func(c *client) (response, error)
}

// writeOps are one write of every kind (none of them may succeed in the
// tests that use them).
func (e *env) writeOps(t *testing.T, w *world) []op {
	ctx := t.Context()
	h := e.hashed(t, 2).hash
	csv := "username,description,password_hash,site\nnewbie,New,\"" + h + "\",hq\n"
	return []op{
		{"create site", func(c *client) (response, error) {
			return c.CreateSiteWithResponse(ctx, uc.SiteCreate{Name: "newsite"})
		}},
		{"update site", func(c *client) (response, error) {
			return c.UpdateSiteWithResponse(ctx, "hq", nil, uc.SitePatch{Description: ptr("x")})
		}},
		{"delete site", func(c *client) (response, error) { return c.DeleteSiteWithResponse(ctx, "branch", nil) }},
		{"create user", func(c *client) (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "newbie", Site: ptr("hq")})
		}},
		{"update user", func(c *client) (response, error) {
			return c.UpdateUserWithResponse(ctx, w.alice.ID, nil, uc.UserPatch{DisplayName: ptr("x")})
		}},
		{"delete user", func(c *client) (response, error) { return c.DeleteUserWithResponse(ctx, w.bob.ID, nil) }},
		{"move user", func(c *client) (response, error) {
			return c.MoveUserWithResponse(ctx, w.alice.ID, nil, uc.UserMove{Site: "branch"})
		}},
		{"reset password", func(c *client) (response, error) {
			return c.SetUserPasswordWithResponse(ctx, w.alice.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
		}},
		{"import users", func(c *client) (response, error) {
			return c.ImportUsersWithBodyWithResponse(ctx, nil, "text/csv", strings.NewReader(csv))
		}},
		{"create group", func(c *client) (response, error) {
			return c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "newgroup"})
		}},
		{"update group", func(c *client) (response, error) {
			return c.UpdateGroupWithResponse(ctx, w.group.ID, nil, uc.GroupPatch{Description: ptr("x")})
		}},
		{"delete group", func(c *client) (response, error) { return c.DeleteGroupWithResponse(ctx, w.group.ID, nil) }},
		{"create POP3 account", func(c *client) (response, error) {
			return c.CreatePOP3AccountWithResponse(ctx, singlePOP3("isp-new", "hq", w.alice.ID, e.pop3Password()))
		}},
		{"update POP3 account", func(c *client) (response, error) {
			return c.UpdatePOP3AccountWithResponse(ctx, w.pop3.ID, nil, uc.POP3AccountPatch{Password: ptr(e.pop3Password())})
		}},
		{"delete POP3 account", func(c *client) (response, error) { return c.DeletePOP3AccountWithResponse(ctx, w.pop3.ID, nil) }},
		{"create shared mailbox", func(c *client) (response, error) {
			return c.CreateSharedMailboxWithResponse(ctx, uc.SharedMailboxCreate{Address: "new@hq.example.org", Manager: w.mgr.ID, Staff: &[]string{w.alice.ID}})
		}},
		{"update shared mailbox", func(c *client) (response, error) {
			return c.UpdateSharedMailboxWithResponse(ctx, w.shared.ID, nil, uc.SharedMailboxPatch{DisplayName: ptr("x")})
		}},
		{"delete shared mailbox", func(c *client) (response, error) {
			return c.DeleteSharedMailboxWithResponse(ctx, w.shared.ID, nil)
		}},
		{"create template", func(c *client) (response, error) {
			return c.CreateTemplateWithResponse(ctx, uc.TemplateCreate{Name: "newtpl"})
		}},
		{"update template", func(c *client) (response, error) {
			return c.UpdateTemplateWithResponse(ctx, w.tpl.ID, nil, uc.TemplatePatch{QuotaBytes: ptr(int64(1))})
		}},
		{"delete template", func(c *client) (response, error) { return c.DeleteTemplateWithResponse(ctx, w.tpl.ID, nil) }},
		{"create token", func(c *client) (response, error) {
			return c.CreateTokenWithResponse(ctx, uc.TokenCreate{Name: "sneaky", Role: uc.TokenRoleAdmin})
		}},
		{"revoke another token", func(c *client) (response, error) { return c.DeleteTokenWithResponse(ctx, e.adminID, nil) }},
	}
}

// readOps are the reads of every kind but tokens and sync.
func (e *env) readOps(t *testing.T, w *world) []op {
	ctx := t.Context()
	return []op{
		{"list sites", func(c *client) (response, error) { return c.ListSitesWithResponse(ctx, nil) }},
		{"get site", func(c *client) (response, error) { return c.GetSiteWithResponse(ctx, "hq", nil) }},
		{"list users", func(c *client) (response, error) { return c.ListUsersWithResponse(ctx, nil) }},
		{"get user", func(c *client) (response, error) { return c.GetUserWithResponse(ctx, w.bob.ID, nil) }},
		{"list groups", func(c *client) (response, error) { return c.ListGroupsWithResponse(ctx, nil) }},
		{"get group", func(c *client) (response, error) { return c.GetGroupWithResponse(ctx, w.group.ID, nil) }},
		{"list POP3 accounts", func(c *client) (response, error) { return c.ListPOP3AccountsWithResponse(ctx, nil) }},
		{"get POP3 account", func(c *client) (response, error) { return c.GetPOP3AccountWithResponse(ctx, w.pop3.ID, nil) }},
		{"list shared mailboxes", func(c *client) (response, error) { return c.ListSharedMailboxesWithResponse(ctx, nil) }},
		{"get shared mailbox", func(c *client) (response, error) {
			return c.GetSharedMailboxWithResponse(ctx, w.shared.ID, nil)
		}},
		{"list templates", func(c *client) (response, error) { return c.ListTemplatesWithResponse(ctx, nil) }},
		{"get template", func(c *client) (response, error) { return c.GetTemplateWithResponse(ctx, w.tpl.ID, nil) }},
		{"list audit entries", func(c *client) (response, error) { return c.ListAuditEntriesWithResponse(ctx, nil) }},
		{"export users", func(c *client) (response, error) {
			return c.ExportUsersWithResponse(ctx, &uc.ExportUsersParams{Format: ptr(uc.ExportFormatJSON)})
		}},
	}
}

func (e *env) tokenAndSyncOps(t *testing.T) []op {
	ctx := t.Context()
	return []op{
		{"list tokens", func(c *client) (response, error) { return c.ListTokensWithResponse(ctx, nil) }},
		{"get token", func(c *client) (response, error) { return c.GetTokenWithResponse(ctx, e.adminID, nil) }},
		{"sync", func(c *client) (response, error) { return c.GetSyncWithResponse(ctx, nil) }},
	}
}

// forbidden checks that every op answers 403 with a problem.
func forbidden(t *testing.T, who string, c *client, ops []op) {
	t.Helper()
	for _, o := range ops {
		r, err := o.call(c)
		wantProblem(t, fmt.Sprintf("%s: %s", who, o.name), r, err, http.StatusForbidden, typeForbidden)
	}
}

// snapshotOf is the admin's view of the directory, to check that refused
// writes wrote nothing.
func (e *env) snapshotOf(t *testing.T) string {
	t.Helper()
	ctx := t.Context()
	var b strings.Builder
	for _, f := range []func() (response, error){
		func() (response, error) { return e.admin.ListSitesWithResponse(ctx, nil) },
		func() (response, error) { return e.admin.ListUsersWithResponse(ctx, nil) },
		func() (response, error) { return e.admin.ListGroupsWithResponse(ctx, nil) },
		func() (response, error) { return e.admin.ListPOP3AccountsWithResponse(ctx, nil) },
		func() (response, error) { return e.admin.ListSharedMailboxesWithResponse(ctx, nil) },
		func() (response, error) { return e.admin.ListTemplatesWithResponse(ctx, nil) },
	} {
		r, err := f()
		wantStatus(t, "snapshot the directory", r, err, http.StatusOK)
		b.Write(r.GetBody())
		b.WriteByte('\n')
	}
	// tokens, without the bookkeeping of their last use
	r, err := e.admin.ListTokensWithResponse(ctx, nil)
	wantStatus(t, "snapshot the directory", r, err, http.StatusOK)
	for _, tok := range r.JSON200.Items {
		tok.LastUsedAt = nil
		b.WriteString(js(tok))
	}
	return b.String()
}

func testRoleReader(t *testing.T, e *env) {
	w := e.world(t)
	reader, _ := e.mkToken(t, "reader", uc.TokenRoleReader, "")
	before := e.snapshotOf(t)

	forbidden(t, "reader", reader, e.writeOps(t, w))
	forbidden(t, "reader", reader, e.tokenAndSyncOps(t))
	for _, o := range e.readOps(t, w) {
		r, err := o.call(reader)
		checkStatus(t, "reader: "+o.name, r, err, http.StatusOK)
	}
	// the reader's export has no password hashes
	for name, u := range e.exportJSON(t, reader, "") {
		if u.PasswordHash != "" {
			t.Errorf("reader's export: %s has a password_hash", name)
		}
	}
	if after := e.snapshotOf(t); after != before {
		t.Errorf("a reader's refused writes changed the directory:\nbefore %s\nafter  %s", before, after)
	}
}

func testRoleSiteAdmin(t *testing.T, e *env) {
	ctx := t.Context()
	w := e.world(t)
	sa, _ := e.mkToken(t, "hq-admin", uc.TokenRoleSiteAdmin, "hq")

	// its own site's users: everything
	users := e.listAllUsers(t, sa, uc.ListUsersParams{})
	for _, u := range users {
		if u.Site != "hq" {
			t.Errorf("site_admin of hq lists %s of site %s", u.Username, u.Site)
		}
	}
	if len(users) != 3 {
		t.Errorf("site_admin of hq lists %d users, want 3 (alice, manager, staff)", len(users))
	}
	g, err := sa.GetUserWithResponse(ctx, w.alice.ID, nil)
	checkStatus(t, "site_admin: get a user of its site", g, err, http.StatusOK)
	cr, err := sa.CreateUserWithResponse(ctx, uc.UserCreate{Username: "newbie", Site: ptr("hq"), Password: ptr(e.userPassword())})
	wantStatus(t, "site_admin: create a user at its site", cr, err, http.StatusCreated)
	newbie := *cr.JSON201
	up, err := sa.UpdateUserWithResponse(ctx, newbie.ID, nil, uc.UserPatch{DisplayName: ptr("New Bie")})
	checkStatus(t, "site_admin: edit a user of its site", up, err, http.StatusOK)
	pw, err := sa.SetUserPasswordWithResponse(ctx, newbie.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
	checkStatus(t, "site_admin: reset a password at its site", pw, err, http.StatusNoContent)
	im := e.importCSV(t, sa, "username,description,password_hash,site\nimported,Imported,\""+e.hashed(t, 2).hash+"\",hq\n", nil)
	checkStatus(t, "site_admin: import users of its site", im, nil, http.StatusOK)
	exp := e.exportJSON(t, sa, "hq")
	if exp["alice"].PasswordHash == "" || len(exp) != 5 {
		t.Errorf("site_admin's export of its site: %d users, alice's hash %q", len(exp), exp["alice"].PasswordHash)
	}
	d, err := sa.DeleteUserWithResponse(ctx, newbie.ID, nil)
	checkStatus(t, "site_admin: delete a user of its site", d, err, http.StatusNoContent)

	// another site's users: nothing
	before := e.getUser(t, w.bob.ID)
	forbidden(t, "site_admin of hq", sa, []op{
		{"get a user of branch", func(c *client) (response, error) { return c.GetUserWithResponse(ctx, w.bob.ID, nil) }},
		{"edit a user of branch", func(c *client) (response, error) {
			return c.UpdateUserWithResponse(ctx, w.bob.ID, nil, uc.UserPatch{DisplayName: ptr("x")})
		}},
		{"delete a user of branch", func(c *client) (response, error) { return c.DeleteUserWithResponse(ctx, w.bob.ID, nil) }},
		{"reset a password at branch", func(c *client) (response, error) {
			return c.SetUserPasswordWithResponse(ctx, w.bob.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
		}},
		{"create a user at branch", func(c *client) (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "intruder", Site: ptr("branch")})
		}},
		{"move a user of hq to branch", func(c *client) (response, error) {
			return c.MoveUserWithResponse(ctx, w.alice.ID, nil, uc.UserMove{Site: "branch"})
		}},
		{"move a user of branch to hq", func(c *client) (response, error) {
			return c.MoveUserWithResponse(ctx, w.bob.ID, nil, uc.UserMove{Site: "hq"})
		}},
	})
	if after := e.getUser(t, w.bob.ID); !sameJSON(after, before) {
		t.Errorf("refused writes changed bob: %s", js(after))
	}
	if a := e.getUser(t, w.alice.ID); a.Site != "hq" {
		t.Errorf("a refused move moved alice to %s", a.Site)
	}

	// listing or exporting another site: refused, or nothing of it shown
	l, err := sa.ListUsersWithResponse(ctx, &uc.ListUsersParams{Site: ptr("branch")})
	if err != nil {
		t.Fatal(err)
	}
	switch l.StatusCode() {
	case http.StatusForbidden:
	case http.StatusOK:
		if len(l.JSON200.Items) != 0 || l.JSON200.Total != 0 {
			t.Errorf("site_admin of hq lists users of branch: %s", clip(l.Body))
		}
	default:
		t.Errorf("site_admin of hq lists site=branch: status %d, want 403 or an empty list", l.StatusCode())
	}
	for _, site := range []string{"branch", ""} {
		p := &uc.ExportUsersParams{Format: ptr(uc.ExportFormatJSON)}
		if site != "" {
			p.Site = ptr(site)
		}
		r, err := sa.ExportUsersWithResponse(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		switch r.StatusCode() {
		case http.StatusForbidden:
		case http.StatusOK:
			for _, u := range *r.JSON200 {
				if u.Site != "hq" {
					t.Errorf("site_admin of hq exports (site=%q) %s of site %s", site, u.Username, u.Site)
				}
			}
		default:
			t.Errorf("site_admin of hq exports site=%q: status %d, want 403 or users of hq only", site, r.StatusCode())
		}
	}

	// importing a line for another site is a bad line; nothing is written
	n := e.userCount(t)
	im = e.importCSV(t, sa, "username,description,password_hash,site\nok-line,OK,\""+e.hashed(t, 2).hash+"\",hq\nintruder,Intruder,\""+e.hashed(t, 2).hash+"\",branch\n", nil)
	p := wantProblem(t, "site_admin: import a line for another site", im, nil, http.StatusUnprocessableEntity, typeValidation)
	if len(p.Errors) == 0 || p.Errors[0].Line != 3 {
		t.Errorf("site_admin: import a line for another site: errors %s, want line 3 named", js(p.Errors))
	}
	if m := e.userCount(t); m != n {
		t.Errorf("a refused import wrote users: %d, was %d", m, n)
	}

	// and nothing but users
	before2 := e.snapshotOf(t)
	var others []op
	for _, o := range e.writeOps(t, w) {
		if !strings.Contains(o.name, "user") && o.name != "reset password" {
			others = append(others, o)
		}
	}
	others = append(others, e.tokenAndSyncOps(t)...)
	for _, o := range e.readOps(t, w) {
		if !strings.Contains(o.name, "user") {
			others = append(others, o)
		}
	}
	forbidden(t, "site_admin of hq", sa, others)
	if after := e.snapshotOf(t); after != before2 {
		t.Errorf("a site_admin's refused writes changed the directory:\nbefore %s\nafter  %s", before2, after)
	}
}

func testRoleSiteAgent(t *testing.T, e *env) {
	w := e.world(t)
	agent, _ := e.mkToken(t, "agent-hq", uc.TokenRoleSiteAgent, "hq")
	before := e.snapshotOf(t)

	r, err := agent.GetSyncWithResponse(t.Context(), nil)
	checkStatus(t, "site_agent: sync", r, err, http.StatusOK)

	forbidden(t, "site_agent", agent, e.writeOps(t, w))
	forbidden(t, "site_agent", agent, e.readOps(t, w))
	forbidden(t, "site_agent", agent, e.tokenAndSyncOps(t)[:2])
	if after := e.snapshotOf(t); after != before {
		t.Errorf("a site_agent's refused writes changed the directory:\nbefore %s\nafter  %s", before, after)
	}
}

func testUnauthenticated(t *testing.T, e *env) {
	ctx := t.Context()
	e.mkSites(t)
	revoked, tok := e.mkToken(t, "revoked", uc.TokenRoleAdmin, "")
	d, err := e.admin.DeleteTokenWithResponse(ctx, tok.ID, nil)
	wantStatus(t, "revoke token", d, err, http.StatusNoContent)

	// a well-formed secret of a token that does not exist
	unknown := "pst_" + newTokenID() + "_" + strings.Repeat("A", 43)
	// the right id with a wrong secret
	wrong := "pst_" + e.adminID + "_" + strings.Repeat("B", 43)
	e.secret("a made-up token secret", unknown, nil)
	clients := []*client{
		e.client("nobody", ""),
		e.clientWithAuth("garbage", "Bearer garbage", ""),
		e.clientWithAuth("unknown-token", "Bearer "+unknown, ""),
		e.clientWithAuth("wrong-secret", "Bearer "+wrong, ""),
		e.clientWithAuth("basic", "Basic YWRtaW46YWRtaW4=", ""),
		e.clientWithAuth("empty-bearer", "Bearer ", ""),
		revoked,
	}
	for _, c := range clients {
		lu, err := c.ListUsersWithResponse(ctx, nil)
		if checkStatus(t, c.who+": list users", lu, err, http.StatusUnauthorized) {
			checkWWWAuthenticate(t, c.who+": list users", lu.Headers401)
			if p := problemOf(t, c.who+": list users", lu); p.Type != typeUnauthorized {
				t.Errorf("%s: problem type %q", c.who, p.Type)
			}
		}
		cu, err := c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "x", Site: ptr("hq")})
		if checkStatus(t, c.who+": create user", cu, err, http.StatusUnauthorized) {
			checkWWWAuthenticate(t, c.who+": create user", cu.Headers401)
		}
		s, err := c.GetSyncWithResponse(ctx, nil)
		if checkStatus(t, c.who+": sync", s, err, http.StatusUnauthorized) {
			checkWWWAuthenticate(t, c.who+": sync", s.Headers401)
		}
		im := e.importCSV(t, c, "username,description,password\n", nil)
		checkStatus(t, c.who+": import", im, nil, http.StatusUnauthorized)
	}
	if n := e.userCount(t); n != 0 {
		t.Errorf("unauthenticated requests created %d users", n)
	}
}
