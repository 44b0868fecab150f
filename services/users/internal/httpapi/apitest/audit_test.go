package apitest

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	uc "github.com/postern/postern/api/usersclient"
)

func testAudit(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	start := e.auditAll(t, nil)
	e.mkSites(t)

	// writes by the bootstrap admin and by a second admin
	ops, opsTok := e.mkToken(t, "ops", uc.TokenRoleAdmin, "")
	pw := e.userPassword()
	u := e.mkUser(t, uc.UserCreate{Username: "alice", DisplayName: ptr("Alice"), Site: ptr("hq"), Password: ptr(pw)})
	up, err := c.UpdateUserWithResponse(ctx, u.ID, nil, uc.UserPatch{DisplayName: ptr("Alice Martin")})
	wantStatus(t, "update user", up, err, http.StatusOK)
	mv, err := ops.MoveUserWithResponse(ctx, u.ID, nil, uc.UserMove{Site: "branch"})
	wantStatus(t, "move user", mv, err, http.StatusOK)
	pw2 := e.userPassword()
	sp, err := c.SetUserPasswordWithResponse(ctx, u.ID, uc.PasswordSet{Password: ptr(pw2)})
	wantStatus(t, "reset password", sp, err, http.StatusNoContent)
	keeper := e.mkUserAt(t, "keeper", "hq")
	p1 := e.pop3Password()
	acct := e.mkPOP3(t, singlePOP3("isp-keeper", "hq", keeper.ID, p1))
	p2 := e.pop3Password()
	ua, err := c.UpdatePOP3AccountWithResponse(ctx, acct.ID, nil, uc.POP3AccountPatch{Password: ptr(p2)})
	wantStatus(t, "update POP3 password", ua, err, http.StatusOK)
	del, err := ops.DeleteUserWithResponse(ctx, u.ID, nil)
	wantStatus(t, "delete user", del, err, http.StatusNoContent)

	all := e.auditAll(t, nil)
	if len(all) <= len(start) {
		t.Fatalf("audit: %d entries after the writes, %d before", len(all), len(start))
	}
	// newest first, every entry complete
	for i, a := range all {
		if i > 0 && a.ID >= all[i-1].ID {
			t.Errorf("audit not newest first: id %d after %d", a.ID, all[i-1].ID)
		}
		if a.Actor == "" || a.Action == "" || a.TargetKind == "" || a.At.IsZero() || len(a.Diff) == 0 || a.Diff[0] != '{' {
			t.Errorf("audit entry incomplete: %s", js(a))
		}
	}

	// the user's history, with actors
	bootActor := "token:" + e.adminID + " (" + bootstrap + ")"
	opsActor := "token:" + opsTok.ID + " (ops)"
	hist := e.auditAll(t, &uc.ListAuditEntriesParams{TargetID: ptr(u.ID)})
	var actions, actors []string
	for _, a := range hist {
		actions = append(actions, a.Action)
		actors = append(actors, a.Actor)
		if a.TargetKind != "user" || a.TargetID != u.ID {
			t.Errorf("audit of alice: entry about %s %s", a.TargetKind, a.TargetID)
		}
	}
	wantActions := []string{"user.delete", "user.password", "user.move", "user.update", "user.create"}
	wantActors := []string{opsActor, bootActor, opsActor, bootActor, bootActor}
	if !slices.Equal(actions, wantActions) || !slices.Equal(actors, wantActors) {
		t.Errorf("audit of alice: actions %v by %v,\nwant %v by %v", actions, actors, wantActions, wantActors)
	}
	if len(hist) == len(wantActions) {
		var create, update map[string]map[string]any
		_ = json.Unmarshal(hist[4].Diff, &create)
		_ = json.Unmarshal(hist[3].Diff, &update)
		if create["username"]["to"] != "alice" {
			t.Errorf("audit user.create: diff %s, want username to alice", hist[4].Diff)
		}
		if update["display_name"]["from"] != "Alice" || update["display_name"]["to"] != "Alice Martin" {
			t.Errorf("audit user.update: diff %s, want display_name from Alice to Alice Martin", hist[3].Diff)
		}
		if _, ok := update["username"]; ok {
			t.Errorf("audit user.update: the diff lists an unchanged member: %s", hist[3].Diff)
		}
	}

	// filters
	for _, tc := range []struct {
		what string
		p    uc.ListAuditEntriesParams
		n    int
		pred func(uc.AuditEntry) bool
	}{
		{"action=user.move", uc.ListAuditEntriesParams{Action: ptr("user.move")}, 1,
			func(a uc.AuditEntry) bool { return a.Action == "user.move" }},
		{"actor=ops", uc.ListAuditEntriesParams{Actor: ptr(opsActor)}, 2,
			func(a uc.AuditEntry) bool { return a.Actor == opsActor }},
		{"target_kind=pop3_account", uc.ListAuditEntriesParams{TargetKind: ptr("pop3_account")}, 2,
			func(a uc.AuditEntry) bool { return a.TargetKind == "pop3_account" && a.TargetID == acct.ID }},
		{"target_kind=site", uc.ListAuditEntriesParams{TargetKind: ptr("site")}, 2,
			func(a uc.AuditEntry) bool { return a.TargetKind == "site" }},
		{"target_kind=token&actor=bootstrap", uc.ListAuditEntriesParams{TargetKind: ptr("token"), Actor: ptr(bootActor)}, 1,
			func(a uc.AuditEntry) bool { return a.TargetID == opsTok.ID }},
		{"action=user.move&actor=bootstrap", uc.ListAuditEntriesParams{Action: ptr("user.move"), Actor: ptr(bootActor)}, 0, nil},
	} {
		got := e.auditAll(t, &tc.p)
		if len(got) != tc.n {
			t.Errorf("audit %s: %d entries, want %d: %s", tc.what, len(got), tc.n, js(got))
			continue
		}
		for _, a := range got {
			if !tc.pred(a) {
				t.Errorf("audit %s: unexpected entry %s", tc.what, js(a))
			}
		}
	}
	r, err := c.ListAuditEntriesWithResponse(ctx, &uc.ListAuditEntriesParams{Action: ptr("user.move"), Limit: ptr(10)})
	wantStatus(t, "list audit action=user.move", r, err, http.StatusOK)
	if r.JSON200.Total != 1 {
		t.Errorf("audit action=user.move: total %d, want 1", r.JSON200.Total)
	}

	// since / until, on the entries' own times
	mid := hist[2].At // the move
	since := e.auditAll(t, &uc.ListAuditEntriesParams{TargetID: ptr(u.ID), Since: ptr(mid)})
	until := e.auditAll(t, &uc.ListAuditEntriesParams{TargetID: ptr(u.ID), Until: ptr(mid)})
	if len(since)+len(until) != len(hist) || len(since) < 3 {
		t.Errorf("audit since/until the move (%s): %d and %d entries, want 3+ and the rest of %d", mid, len(since), len(until), len(hist))
	}
	future := e.auditAll(t, &uc.ListAuditEntriesParams{Since: ptr(time.Now().Add(time.Hour))})
	past := e.auditAll(t, &uc.ListAuditEntriesParams{Until: ptr(time.Now().Add(-time.Hour))})
	if len(future) != 0 || len(past) != 0 {
		t.Errorf("audit since an hour from now: %d entries, until an hour ago: %d", len(future), len(past))
	}

	// pages: every entry once
	var seen []int64
	var cursor *string
	for range 100 {
		r, err := c.ListAuditEntriesWithResponse(ctx, &uc.ListAuditEntriesParams{Limit: ptr(3), Cursor: cursor})
		wantStatus(t, "list audit entries by 3", r, err, http.StatusOK)
		if r.JSON200.Total != int64(len(all)) {
			t.Errorf("audit pages: total %d, want %d", r.JSON200.Total, len(all))
		}
		for _, a := range r.JSON200.Items {
			seen = append(seen, a.ID)
		}
		if r.JSON200.NextCursor == "" {
			break
		}
		cursor = ptr(r.JSON200.NextCursor)
	}
	var ids []int64
	for _, a := range all {
		ids = append(ids, a.ID)
	}
	// paging started after all was read; the audit reads themselves are not writes
	if !slices.Equal(seen, ids) {
		t.Errorf("audit pages of 3: ids %v, want %v", seen, ids)
	}
}
