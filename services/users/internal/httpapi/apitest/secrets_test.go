package apitest

import (
	"net/http"
	"strings"
	"testing"

	uc "github.com/postern/postern/api/usersclient"
)

// testSecrets puts POP3 and user passwords through every way in (create,
// update, reset, import, refused requests of every kind) and reads
// everything back through every way out. The scan that ends every test
// (env.finish) then checks that only hq's agent's sync holds hq's POP3
// passwords, that no response holds a user password, and that neither the
// audit log nor the server's log holds any.
func testSecrets(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	w := e.syncWorld(t) // POP3 passwords at create: isp-hq (hq), isp-branch, isp-mover
	sa, _ := e.mkToken(t, "hq-admin", uc.TokenRoleSiteAdmin, "hq")
	reader, _ := e.mkToken(t, "reader", uc.TokenRoleReader, "")

	// a POP3 password set by an update
	pwUpdated := e.pop3Password("agent-hq")
	r, err := c.UpdatePOP3AccountWithResponse(ctx, w.ispHQ.ID, nil, uc.POP3AccountPatch{Password: ptr(pwUpdated), PollIntervalSeconds: ptr(60)})
	wantStatus(t, "update a POP3 password", r, err, http.StatusOK)

	// user passwords: create, reset, import
	created := e.mkUser(t, uc.UserCreate{Username: "pat", Site: ptr("hq"), Password: ptr(e.userPassword())})
	sp, err := c.SetUserPasswordWithResponse(ctx, created.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
	wantStatus(t, "reset a password", sp, err, http.StatusNoContent)
	sp, err = sa.SetUserPasswordWithResponse(ctx, created.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
	wantStatus(t, "reset a password as site_admin", sp, err, http.StatusNoContent)
	im := e.importCSV(t, c, "username,description,password,site\n"+csvLine("imp", "Imported", e.userPassword(), "hq"), nil)
	checkStatus(t, "import a clear password", im, nil, http.StatusOK)
	im = e.importCSV(t, c, "username,description,password,site\n"+csvLine("imp2", "Dry", e.userPassword(), "hq"), &uc.ImportUsersParams{DryRun: ptr(true)})
	checkStatus(t, "dry-run import of a clear password", im, nil, http.StatusOK)

	// refused requests that carry secrets: nothing may echo them
	refused := []struct {
		what   string
		call   func() (response, error)
		status int
	}{
		{"POP3 account with an unknown member", func() (response, error) {
			return c.CreatePOP3AccountWithBodyWithResponse(ctx, "application/json", strings.NewReader(
				`{"name":"isp-x","host":"pop.example.net","username":"x","password":"`+e.pop3Password()+`","site":"hq","mode":"single","target_user":"`+w.alice.ID+`","nickname":"x"}`))
		}, 400},
		{"POP3 account with a wrong type", func() (response, error) {
			return c.CreatePOP3AccountWithBodyWithResponse(ctx, "application/json", strings.NewReader(
				`{"name":"isp-x","host":"pop.example.net","username":"x","password":"`+e.pop3Password()+`","site":"hq","port":"pop"}`))
		}, 400},
		{"POP3 account with invalid members", func() (response, error) {
			return c.CreatePOP3AccountWithResponse(ctx, uc.POP3AccountCreate{Name: "Bad Name", Host: "pop.example.net", Username: "x",
				Password: ptr(e.pop3Password()), Site: "atlantis", Mode: ptr(uc.POP3ModeSingle), TargetUser: ptr("nobody")})
		}, 422},
		{"POP3 password update with a stale If-Match", func() (response, error) {
			return c.UpdatePOP3AccountWithResponse(ctx, w.ispHQ.ID, &uc.UpdatePOP3AccountParams{IfMatch: ptr(etag(1))}, uc.POP3AccountPatch{Password: ptr(e.pop3Password())})
		}, 412},
		{"POP3 password update by a reader", func() (response, error) {
			return reader.UpdatePOP3AccountWithResponse(ctx, w.ispHQ.ID, nil, uc.POP3AccountPatch{Password: ptr(e.pop3Password())})
		}, 403},
		{"user with an unknown member", func() (response, error) {
			return c.CreateUserWithBodyWithResponse(ctx, "application/json", strings.NewReader(
				`{"username":"x","site":"hq","password":"`+e.userPassword()+`","nickname":"x"}`))
		}, 400},
		{"user with a taken username", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "alice", Site: ptr("hq"), Password: ptr(e.userPassword())})
		}, 409},
		{"user with invalid members", func() (response, error) {
			return c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "Bad Name", Site: ptr("hq"), Password: ptr(e.userPassword())})
		}, 422},
		{"password with control characters", func() (response, error) {
			return c.SetUserPasswordWithResponse(ctx, w.alice.ID, uc.PasswordSet{Password: ptr(e.userPassword() + "\x01")})
		}, 422},
		{"password reset with an unknown member", func() (response, error) {
			return c.SetUserPasswordWithBodyWithResponse(ctx, w.alice.ID, "application/json", strings.NewReader(
				`{"password":"`+e.userPassword()+`","nickname":"x"}`))
		}, 400},
		{"password reset of another site's user", func() (response, error) {
			return sa.SetUserPasswordWithResponse(ctx, w.bob.ID, uc.PasswordSet{Password: ptr(e.userPassword())})
		}, 403},
		{"import with a bad line", func() (response, error) {
			return e.importCSV(t, c, "username,description,password,email,site\n"+csvLine("x", "X", e.userPassword(), "not-an-address", "hq"), nil), nil
		}, 422},
		{"dry-run import with a bad line", func() (response, error) {
			return e.importCSV(t, c, "username,description,password,email,site\n"+csvLine("x", "X", e.userPassword(), "not-an-address", "hq"),
				&uc.ImportUsersParams{DryRun: ptr(true)}), nil
		}, 200},
	}
	for _, tc := range refused {
		r, err := tc.call()
		checkStatus(t, tc.what, r, err, tc.status)
	}

	// read everything back, as everyone who may
	readers := []*client{c, reader}
	for _, cl := range readers {
		for _, o := range e.readOps(t, &world{alice: w.alice, bob: w.bob, group: w.group, pop3: w.ispHQ, shared: w.shared, tpl: w.tpl}) {
			r, err := o.call(cl)
			checkStatus(t, cl.who+": "+o.name, r, err, http.StatusOK)
		}
	}
	for _, id := range []string{w.ispHQ.ID, w.ispBranch.ID, w.ispMover.ID} {
		g, err := c.GetPOP3AccountWithResponse(ctx, id, nil)
		wantStatus(t, "get POP3 account", g, err, http.StatusOK)
		noMembers(t, "get POP3 account", g.Body, "password", "password_enc")
	}
	l, err := c.ListPOP3AccountsWithResponse(ctx, &uc.ListPOP3AccountsParams{Site: ptr("hq")})
	wantStatus(t, "list POP3 accounts", l, err, http.StatusOK)
	e.exportCSV(t)
	e.exportJSON(t, c, "")
	e.exportJSON(t, sa, "hq")
	lt, err := c.ListTokensWithResponse(ctx, nil)
	wantStatus(t, "list tokens", lt, err, http.StatusOK)
	e.auditAll(t, &uc.ListAuditEntriesParams{TargetKind: ptr("pop3_account")})
	e.auditAll(t, &uc.ListAuditEntriesParams{TargetKind: ptr("user")})

	// the feeds: hq's holds hq's POP3 passwords (the current one), branch's does not
	hq, _, _ := syncAll(t, w.agentHQ, "0")
	if p := dataOf(t, byID(hq)[w.ispHQ.ID]); p["password"] != pwUpdated {
		t.Errorf("agent-hq's snapshot: isp-hq's password is not the updated one")
	}
	branch, _, _ := syncAll(t, w.agentBranch, "0")
	for _, ch := range branch {
		if strings.Contains(string(ch.Data), pwUpdated) || strings.Contains(string(ch.Data), w.pwHQ) {
			t.Errorf("agent-branch's snapshot holds hq's POP3 password in %s %s", ch.Kind, ch.ID)
		}
	}

	// the audit log's diffs: the POP3 account's history has its entries, masked
	entries := e.auditAll(t, &uc.ListAuditEntriesParams{TargetID: ptr(w.ispHQ.ID)})
	if len(entries) < 2 {
		t.Errorf("audit of isp-hq: %d entries, want its creation and its update", len(entries))
	}
	for _, a := range entries {
		for _, pw := range []string{w.pwHQ, pwUpdated} {
			if strings.Contains(string(a.Diff), pw) {
				t.Errorf("audit %s of isp-hq: the diff holds the password: %s", a.Action, a.Diff)
			}
		}
	}
	if e.logs.String() == "" {
		t.Logf("note: the server logged nothing, so the log check is vacuous here")
	}
}
