package apitest

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	uc "github.com/postern/postern/api/usersclient"
)

func testSites(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin

	r, err := c.CreateSiteWithResponse(ctx, uc.SiteCreate{Name: "hq", Description: ptr("Head office"),
		Domains: &[]string{"HQ.Example.ORG"}, SMTPEndpoint: ptr("mail.hq.example.org:25")})
	wantStatus(t, "create site", r, err, http.StatusCreated)
	s := *r.JSON201
	if s.ID != "hq" || s.Name != "hq" || s.Version != 1 || s.Description != "Head office" ||
		!slices.Equal(s.Domains, []string{"hq.example.org"}) || s.SMTPEndpoint != "mail.hq.example.org:25" ||
		s.CreatedAt.IsZero() || s.UpdatedAt.IsZero() {
		t.Errorf("create site: got %s", js(s))
	}
	checkETag(t, "create site", r.Headers201.ETag, 1)
	checkLocation(t, "create site", r.Headers201.Location, "/v1/sites/hq")

	// get, conditional get
	g, err := c.GetSiteWithResponse(ctx, "hq", nil)
	wantStatus(t, "get site", g, err, http.StatusOK)
	if !sameJSON(*g.JSON200, s) {
		t.Errorf("get site: %s, want what create returned: %s", js(g.JSON200), js(s))
	}
	checkETag(t, "get site", g.Headers200.ETag, 1)
	g, err = c.GetSiteWithResponse(ctx, "hq", &uc.GetSiteParams{IfNoneMatch: ptr(etag(1))})
	if checkStatus(t, "get site If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get site 304", g.Headers304.ETag, 1)
		if len(g.Body) != 0 {
			t.Errorf("get site 304: body %q, want none", g.Body)
		}
	}
	g, err = c.GetSiteWithResponse(ctx, "hq", &uc.GetSiteParams{IfNoneMatch: ptr(etag(7))})
	checkStatus(t, "get site If-None-Match other", g, err, http.StatusOK)

	// merge patch: only the description changes
	u, err := c.UpdateSiteWithResponse(ctx, "hq", nil, uc.SitePatch{Description: ptr("Head office, Paris")})
	wantStatus(t, "patch site", u, err, http.StatusOK)
	if got := *u.JSON200; got.Version != 2 || got.Description != "Head office, Paris" ||
		!slices.Equal(got.Domains, []string{"hq.example.org"}) || got.SMTPEndpoint != "mail.hq.example.org:25" || !got.CreatedAt.Equal(s.CreatedAt) {
		t.Errorf("patch site description: got %s", js(got))
	}
	checkETag(t, "patch site", u.Headers200.ETag, 2)

	// stale If-Match: 412, nothing written
	u, err = c.UpdateSiteWithResponse(ctx, "hq", &uc.UpdateSiteParams{IfMatch: ptr(etag(1))}, uc.SitePatch{Description: ptr("stale")})
	wantProblem(t, "patch site with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)
	g, err = c.GetSiteWithResponse(ctx, "hq", nil)
	wantStatus(t, "get site", g, err, http.StatusOK)
	if g.JSON200.Version != 2 || g.JSON200.Description != "Head office, Paris" {
		t.Errorf("a 412 patch wrote: %s", js(g.JSON200))
	}

	// current If-Match; lists are replaced, "" clears a string
	u, err = c.UpdateSiteWithResponse(ctx, "hq", &uc.UpdateSiteParams{IfMatch: ptr(etag(2))},
		uc.SitePatch{Domains: &[]string{"hq.example.org", "example.org"}, SMTPEndpoint: ptr("")})
	wantStatus(t, "patch site with the current If-Match", u, err, http.StatusOK)
	if got := *u.JSON200; got.Version != 3 || got.Description != "Head office, Paris" ||
		!slices.Equal(got.Domains, []string{"hq.example.org", "example.org"}) || got.SMTPEndpoint != "" {
		t.Errorf("patch site domains: got %s", js(got))
	}

	// list: ordered by name, paginated, with a total
	e.mkSite(t, "branch", "branch.example.org")
	e.mkSite(t, "alpha", "alpha.example.org")
	l, err := c.ListSitesWithResponse(ctx, &uc.ListSitesParams{Limit: ptr(2)})
	wantStatus(t, "list sites", l, err, http.StatusOK)
	if names := siteNames(l.JSON200.Items); !slices.Equal(names, []string{"alpha", "branch"}) || l.JSON200.Total != 3 || l.JSON200.NextCursor == "" {
		t.Errorf("list sites page 1: %v, total %d, next %q", names, l.JSON200.Total, l.JSON200.NextCursor)
	}
	l, err = c.ListSitesWithResponse(ctx, &uc.ListSitesParams{Limit: ptr(2), Cursor: ptr(l.JSON200.NextCursor)})
	wantStatus(t, "list sites page 2", l, err, http.StatusOK)
	if names := siteNames(l.JSON200.Items); !slices.Equal(names, []string{"hq"}) || l.JSON200.Total != 3 || l.JSON200.NextCursor != "" {
		t.Errorf("list sites page 2: %v, total %d, next %q", names, l.JSON200.Total, l.JSON200.NextCursor)
	}

	// a name is taken once
	r, err = c.CreateSiteWithResponse(ctx, uc.SiteCreate{Name: "branch"})
	wantProblem(t, "create a site whose name is taken", r, err, http.StatusConflict, typeConflict)

	// a site with users cannot be deleted
	e.mkUserAt(t, "someone", "alpha")
	d, err := c.DeleteSiteWithResponse(ctx, "alpha", nil)
	p := wantProblem(t, "delete a site that has users", d, err, http.StatusConflict, "")
	if p.Detail == "" && len(p.Errors) == 0 {
		t.Errorf("delete a site that has users: no reason given: %s", clip(d.Body))
	}

	// delete: stale If-Match, then for real
	d, err = c.DeleteSiteWithResponse(ctx, "branch", &uc.DeleteSiteParams{IfMatch: ptr(etag(5))})
	wantProblem(t, "delete site with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeleteSiteWithResponse(ctx, "branch", &uc.DeleteSiteParams{IfMatch: ptr(etag(1))})
	wantStatus(t, "delete site", d, err, http.StatusNoContent)
	g, err = c.GetSiteWithResponse(ctx, "branch", nil)
	wantProblem(t, "get a deleted site", g, err, http.StatusNotFound, typeNotFound)
	d, err = c.DeleteSiteWithResponse(ctx, "branch", nil)
	wantProblem(t, "delete a deleted site", d, err, http.StatusNotFound, typeNotFound)
	u, err = c.UpdateSiteWithResponse(ctx, "branch", nil, uc.SitePatch{Description: ptr("x")})
	wantProblem(t, "patch a deleted site", u, err, http.StatusNotFound, typeNotFound)
}

func siteNames(ss []uc.Site) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

func testUsers(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)

	pw := e.userPassword()
	r, err := c.CreateUserWithResponse(ctx, uc.UserCreate{
		Username: "alice", DisplayName: ptr("Alice Martin"), PrimaryAddress: ptr("Alice@HQ.Example.org"),
		Aliases: &[]string{"a.martin@hq.example.org"}, Site: ptr("hq"),
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(true), InternetSend: ptr(false)},
		QuotaBytes:  ptr(int64(1 << 30)), Password: ptr(pw),
	})
	wantStatus(t, "create user", r, err, http.StatusCreated)
	a := *r.JSON201
	if a.ID == "" || a.Version != 1 || a.Username != "alice" || a.DisplayName != "Alice Martin" ||
		a.PrimaryAddress != "alice@hq.example.org" || !slices.Equal(a.Aliases, []string{"a.martin@hq.example.org"}) ||
		a.Site != "hq" || len(a.Groups) != 0 || a.Groups == nil || !a.Enabled ||
		a.Permissions != (uc.Permissions{InternetReceive: true, InternetSend: false}) || a.QuotaBytes != 1<<30 {
		t.Errorf("create user: got %s", js(a))
	}
	checkETag(t, "create user", r.Headers201.ETag, 1)
	checkLocation(t, "create user", r.Headers201.Location, "/v1/users/"+a.ID)
	noMembers(t, "create user", r.Body, "password", "password_hash")

	// defaults: the primary address is <username>@<the site's first domain>
	m := e.mkUser(t, uc.UserCreate{Username: "min", Site: ptr("branch")})
	if m.PrimaryAddress != "min@branch.example.org" || m.DisplayName != "" || m.Aliases == nil || len(m.Aliases) != 0 ||
		m.Groups == nil || len(m.Groups) != 0 || !m.Enabled || m.QuotaBytes != 0 || m.Site != "branch" {
		t.Errorf("create user with defaults: got %s", js(m))
	}

	// get, conditional get
	g, err := c.GetUserWithResponse(ctx, a.ID, nil)
	wantStatus(t, "get user", g, err, http.StatusOK)
	if !sameJSON(*g.JSON200, a) {
		t.Errorf("get user: %s, want %s", js(g.JSON200), js(a))
	}
	checkETag(t, "get user", g.Headers200.ETag, 1)
	noMembers(t, "get user", g.Body, "password", "password_hash")
	g, err = c.GetUserWithResponse(ctx, a.ID, &uc.GetUserParams{IfNoneMatch: ptr(etag(1))})
	if checkStatus(t, "get user If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get user 304", g.Headers304.ETag, 1)
	}

	// merge patches
	patch := func(what string, p uc.UserPatch, check func(before, after uc.User) bool) uc.User {
		t.Helper()
		before := e.getUser(t, a.ID)
		u, err := c.UpdateUserWithResponse(ctx, a.ID, nil, p)
		wantStatus(t, what, u, err, http.StatusOK)
		after := *u.JSON200
		if after.Version != before.Version+1 || !check(before, after) {
			t.Errorf("%s: before %s, after %s", what, js(before), js(after))
		}
		checkETag(t, what, u.Headers200.ETag, after.Version)
		noMembers(t, what, u.Body, "password", "password_hash")
		return after
	}
	unchangedBut := func(before, after uc.User, change func(*uc.User)) bool {
		change(&before)
		before.Version, before.UpdatedAt = after.Version, after.UpdatedAt
		return sameJSON(before, after)
	}
	patch("patch display_name", uc.UserPatch{DisplayName: ptr("Alice M.")}, func(b, a uc.User) bool {
		return unchangedBut(b, a, func(u *uc.User) { u.DisplayName = "Alice M." })
	})
	patch("patch permissions.internet_send", uc.UserPatch{Permissions: &uc.PermissionsPatch{InternetSend: ptr(true)}}, func(b, a uc.User) bool {
		return unchangedBut(b, a, func(u *uc.User) { u.Permissions = uc.Permissions{InternetReceive: true, InternetSend: true} })
	})
	patch("patch aliases (replaced whole)", uc.UserPatch{Aliases: &[]string{"am@hq.example.org", "alice.m@hq.example.org"}}, func(b, a uc.User) bool {
		return unchangedBut(b, a, func(u *uc.User) { u.Aliases = []string{"am@hq.example.org", "alice.m@hq.example.org"} })
	})
	patch("patch aliases to []", uc.UserPatch{Aliases: &[]string{}}, func(b, a uc.User) bool {
		return unchangedBut(b, a, func(u *uc.User) { u.Aliases = []string{} })
	})
	cur := patch("patch enabled and quota", uc.UserPatch{Enabled: ptr(false), QuotaBytes: ptr(int64(0))}, func(b, a uc.User) bool {
		return unchangedBut(b, a, func(u *uc.User) { u.Enabled, u.QuotaBytes = false, 0 })
	})

	// stale If-Match: 412 and nothing written
	u, err := c.UpdateUserWithResponse(ctx, a.ID, &uc.UpdateUserParams{IfMatch: ptr(etag(cur.Version - 1))}, uc.UserPatch{DisplayName: ptr("stale")})
	wantProblem(t, "patch user with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)
	if now := e.getUser(t, a.ID); !sameJSON(now, cur) {
		t.Errorf("a 412 patch wrote: %s, was %s", js(now), js(cur))
	}
	u, err = c.UpdateUserWithResponse(ctx, a.ID, &uc.UpdateUserParams{IfMatch: ptr(etag(cur.Version))}, uc.UserPatch{DisplayName: ptr("Alice")})
	wantStatus(t, "patch user with the current If-Match", u, err, http.StatusOK)
	cur = *u.JSON200

	// what the document refuses: null, identity members, the site
	for _, tc := range []struct{ body, field string }{
		{`{"display_name": null}`, "display_name"},
		{`{"site": "branch"}`, "site"},
		{`{"username": "zed"}`, "username"},
		{`{"password": "whatever-password"}`, "password"},
		{`{"quota_bytes": "big"}`, "quota_bytes"},
	} {
		u, err := c.UpdateUserWithBodyWithResponse(ctx, a.ID, nil, "application/json", strings.NewReader(tc.body))
		wantProblem(t, "patch user "+tc.body, u, err, http.StatusBadRequest, typeBadRequest, tc.field)
	}
	if now := e.getUser(t, a.ID); !sameJSON(now, cur) {
		t.Errorf("a 400 patch wrote: %s, was %s", js(now), js(cur))
	}

	// delete: stale If-Match, then for real
	d, err := c.DeleteUserWithResponse(ctx, a.ID, &uc.DeleteUserParams{IfMatch: ptr(etag(cur.Version - 1))})
	wantProblem(t, "delete user with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeleteUserWithResponse(ctx, a.ID, &uc.DeleteUserParams{IfMatch: ptr(etag(cur.Version))})
	wantStatus(t, "delete user", d, err, http.StatusNoContent)
	g, err = c.GetUserWithResponse(ctx, a.ID, nil)
	wantProblem(t, "get a deleted user", g, err, http.StatusNotFound, typeNotFound)
	d, err = c.DeleteUserWithResponse(ctx, a.ID, nil)
	wantProblem(t, "delete a deleted user", d, err, http.StatusNotFound, typeNotFound)
	u, err = c.UpdateUserWithResponse(ctx, a.ID, nil, uc.UserPatch{DisplayName: ptr("ghost")})
	wantProblem(t, "patch a deleted user", u, err, http.StatusNotFound, typeNotFound)
	// the address is free again
	e.mkUser(t, uc.UserCreate{Username: "alice2", Site: ptr("hq"), PrimaryAddress: ptr("alice@hq.example.org")})
}

func testUserList(t *testing.T, e *env) {
	ctx := t.Context()
	e.mkSites(t)
	e.mkGroup(t, uc.GroupCreate{Name: "sales"})

	// 25 users, created in random order: even ones at hq, odd ones at
	// branch, every fifth disabled, the first five in sales.
	const n = 25
	want := map[string]bool{}
	for _, i := range rand.Perm(n) {
		name := fmt.Sprintf("user%02d", i)
		u := uc.UserCreate{Username: name, DisplayName: ptr(fmt.Sprintf("User %02d", i)), Site: ptr([]string{"hq", "branch"}[i%2]),
			Enabled: ptr(i%5 != 0)}
		if i < 5 {
			u.Groups = &[]string{"sales"}
		}
		if i == 17 {
			u.Aliases = &[]string{"zed-special@branch.example.org"}
		}
		e.mkUser(t, u)
		want[name] = true
	}

	// pages of 10: every user exactly once, in order, total 25 on each
	var seen []string
	var cursor *string
	for page := 1; ; page++ {
		r, err := e.admin.ListUsersWithResponse(ctx, &uc.ListUsersParams{Limit: ptr(10), Cursor: cursor})
		wantStatus(t, fmt.Sprintf("list users page %d", page), r, err, http.StatusOK)
		l := r.JSON200
		if l.Total != n {
			t.Errorf("list users page %d: total %d, want %d", page, l.Total, n)
		}
		wantLen := min(10, n-len(seen))
		if len(l.Items) != wantLen {
			t.Errorf("list users page %d: %d items, want %d", page, len(l.Items), wantLen)
		}
		for _, u := range l.Items {
			seen = append(seen, u.Username)
		}
		if l.NextCursor == "" {
			break
		}
		if page > 5 {
			t.Fatalf("list users: more pages than expected (%d so far)", page)
		}
		cursor = ptr(l.NextCursor)
	}
	if len(seen) != n || !slices.IsSorted(seen) || len(slices.Compact(slices.Clone(seen))) != n {
		t.Errorf("paging through users gave %d usernames %v, want each of the %d once, in order", len(seen), seen, n)
	}
	for _, s := range seen {
		if !want[s] {
			t.Errorf("list users: unexpected %q", s)
		}
	}

	// filters
	users := func(p uc.ListUsersParams) ([]string, int64) {
		t.Helper()
		r, err := e.admin.ListUsersWithResponse(ctx, &p)
		wantStatus(t, "list users with filters", r, err, http.StatusOK)
		var names []string
		for _, u := range r.JSON200.Items {
			names = append(names, u.Username)
		}
		return names, r.JSON200.Total
	}
	expect := func(pred func(i int) bool) []string {
		var out []string
		for i := range n {
			if pred(i) {
				out = append(out, fmt.Sprintf("user%02d", i))
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		p    uc.ListUsersParams
		want []string
	}{
		{"site=branch", uc.ListUsersParams{Site: ptr("branch")}, expect(func(i int) bool { return i%2 == 1 })},
		{"group=sales", uc.ListUsersParams{Group: ptr("sales")}, expect(func(i int) bool { return i < 5 })},
		{"enabled=false", uc.ListUsersParams{Enabled: ptr(false)}, expect(func(i int) bool { return i%5 == 0 })},
		{"enabled=true", uc.ListUsersParams{Enabled: ptr(true)}, expect(func(i int) bool { return i%5 != 0 })},
		{"q=ZED-SPECIAL (an alias, any case)", uc.ListUsersParams{Q: ptr("ZED-SPECIAL")}, []string{"user17"}},
		{"q=user 1 (display name)", uc.ListUsersParams{Q: ptr("user 1")}, expect(func(i int) bool { return i >= 10 && i < 20 })},
		{"q=user03@hq (address)", uc.ListUsersParams{Q: ptr("user03@")}, []string{"user03"}},
		{"site=hq&enabled=false", uc.ListUsersParams{Site: ptr("hq"), Enabled: ptr(false)}, []string{"user00", "user10", "user20"}},
		{"q matches nothing", uc.ListUsersParams{Q: ptr("nobody-has-this")}, nil},
	} {
		got, total := users(tc.p)
		if !slices.Equal(got, tc.want) || total != int64(len(tc.want)) {
			t.Errorf("list users %s: %v (total %d), want %v (total %d)", tc.name, got, total, tc.want, len(tc.want))
		}
	}

	// a filter with pages
	all := e.listAllUsers(t, e.admin, uc.ListUsersParams{Site: ptr("branch"), Limit: ptr(5)})
	var names []string
	for _, u := range all {
		names = append(names, u.Username)
	}
	if want := expect(func(i int) bool { return i%2 == 1 }); !slices.Equal(names, want) {
		t.Errorf("paging through site=branch: %v, want %v", names, want)
	}

	// bad parameters
	r, err := e.admin.ListUsersWithResponse(ctx, &uc.ListUsersParams{Limit: ptr(0)})
	wantProblem(t, "list users limit=0", r, err, http.StatusBadRequest, typeBadRequest)
	r, err = e.admin.ListUsersWithResponse(ctx, &uc.ListUsersParams{Limit: ptr(1001)})
	wantProblem(t, "list users limit=1001", r, err, http.StatusBadRequest, typeBadRequest)
	r, err = e.admin.ListUsersWithResponse(ctx, &uc.ListUsersParams{Cursor: ptr("not-a-cursor!")})
	wantProblem(t, "list users with a forged cursor", r, err, http.StatusBadRequest, typeBadRequest)
}

func testGroups(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	alice := e.mkUserAt(t, "alice", "hq")
	bob := e.mkUserAt(t, "bob", "branch")

	r, err := c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "sales", Address: ptr("Sales-Team@hq.example.org"),
		Description: ptr("Everyone in sales"), Members: &[]uc.Member{{Type: uc.MemberTypeUser, ID: alice.ID}}})
	wantStatus(t, "create group", r, err, http.StatusCreated)
	sales := *r.JSON201
	if sales.Name != "sales" || sales.Address != "sales-team@hq.example.org" || sales.Description != "Everyone in sales" ||
		sales.Version != 1 || !sameJSON(sales.Members, []uc.Member{{Type: uc.MemberTypeUser, ID: alice.ID}}) {
		t.Errorf("create group: got %s", js(sales))
	}
	checkETag(t, "create group", r.Headers201.ETag, 1)
	checkLocation(t, "create group", r.Headers201.Location, "/v1/groups/"+sales.ID)
	if g := e.getUser(t, alice.ID).Groups; !slices.Equal(g, []string{"sales"}) {
		t.Errorf("a member's groups: %v, want [sales]", g)
	}

	everyone := e.mkGroup(t, uc.GroupCreate{Name: "everyone", Members: &[]uc.Member{
		{Type: uc.MemberTypeGroup, ID: sales.ID}, {Type: uc.MemberTypeUser, ID: bob.ID}}})
	if everyone.Address != "" || everyone.Description != "" {
		t.Errorf("create group with defaults: %s", js(everyone))
	}
	// a user created with groups becomes a member
	carol := e.mkUser(t, uc.UserCreate{Username: "carol", Site: ptr("hq"), Groups: &[]string{"everyone"}})
	if !slices.Contains(memberIDs(e.getGroup(t, everyone.ID)), carol.ID) {
		t.Errorf("a user created with groups [everyone] is not a member: %s", js(e.getGroup(t, everyone.ID)))
	}

	// cycles are refused, nothing written
	u, err := c.UpdateGroupWithResponse(ctx, sales.ID, nil, uc.GroupPatch{Members: &[]uc.Member{
		{Type: uc.MemberTypeUser, ID: alice.ID}, {Type: uc.MemberTypeGroup, ID: everyone.ID}}})
	wantProblem(t, "make a cycle of groups", u, err, http.StatusUnprocessableEntity, typeValidation)
	if g := e.getGroup(t, sales.ID); g.Version != 1 {
		t.Errorf("a refused cycle wrote: %s", js(g))
	}
	u, err = c.UpdateGroupWithResponse(ctx, everyone.ID, nil, uc.GroupPatch{Members: &[]uc.Member{{Type: uc.MemberTypeGroup, ID: everyone.ID}}})
	wantProblem(t, "make a group its own member", u, err, http.StatusUnprocessableEntity, typeValidation)
	r, err = c.CreateGroupWithResponse(ctx, uc.GroupCreate{Name: "ghosts", Members: &[]uc.Member{{Type: uc.MemberTypeUser, ID: "no-such-user"}}})
	wantProblem(t, "create a group with a member that does not exist", r, err, http.StatusUnprocessableEntity, typeValidation)

	// merge patch: members stay when not given
	u, err = c.UpdateGroupWithResponse(ctx, sales.ID, nil, uc.GroupPatch{Description: ptr("Sales, all sites")})
	wantStatus(t, "patch group description", u, err, http.StatusOK)
	if g := *u.JSON200; g.Description != "Sales, all sites" || g.Version != 2 || g.Address != "sales-team@hq.example.org" ||
		!sameJSON(g.Members, sales.Members) {
		t.Errorf("patch group description: %s", js(g))
	}
	checkETag(t, "patch group", u.Headers200.ETag, 2)

	// members replaced whole; users' groups follow
	u, err = c.UpdateGroupWithResponse(ctx, sales.ID, &uc.UpdateGroupParams{IfMatch: ptr(etag(2))},
		uc.GroupPatch{Members: &[]uc.Member{{Type: uc.MemberTypeUser, ID: bob.ID}}})
	wantStatus(t, "patch group members", u, err, http.StatusOK)
	if g := e.getUser(t, alice.ID).Groups; len(g) != 0 {
		t.Errorf("alice removed from sales: groups %v", g)
	}
	if g := e.getUser(t, bob.ID).Groups; !sameSet(g, []string{"everyone", "sales"}) {
		t.Errorf("bob added to sales: groups %v, want everyone and sales", g)
	}

	// conditional requests
	sales = e.getGroup(t, sales.ID)
	g, err := c.GetGroupWithResponse(ctx, sales.ID, &uc.GetGroupParams{IfNoneMatch: ptr(etag(sales.Version))})
	if checkStatus(t, "get group If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get group 304", g.Headers304.ETag, sales.Version)
	}
	u, err = c.UpdateGroupWithResponse(ctx, sales.ID, &uc.UpdateGroupParams{IfMatch: ptr(etag(1))}, uc.GroupPatch{Description: ptr("stale")})
	wantProblem(t, "patch group with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)
	if now := e.getGroup(t, sales.ID); !sameJSON(now, sales) {
		t.Errorf("a 412 patch wrote: %s", js(now))
	}

	// list, ordered by name
	l, err := c.ListGroupsWithResponse(ctx, nil)
	wantStatus(t, "list groups", l, err, http.StatusOK)
	var names []string
	for _, g := range l.JSON200.Items {
		names = append(names, g.Name)
	}
	if !slices.Equal(names, []string{"everyone", "sales"}) || l.JSON200.Total != 2 {
		t.Errorf("list groups: %v total %d", names, l.JSON200.Total)
	}

	// delete: removed from the groups that contain it and from users' groups
	d, err := c.DeleteGroupWithResponse(ctx, sales.ID, &uc.DeleteGroupParams{IfMatch: ptr(etag(1))})
	wantProblem(t, "delete group with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeleteGroupWithResponse(ctx, sales.ID, nil)
	wantStatus(t, "delete group", d, err, http.StatusNoContent)
	if m := memberIDs(e.getGroup(t, everyone.ID)); slices.Contains(m, sales.ID) {
		t.Errorf("a deleted group is still a member of everyone: %v", m)
	}
	if g := e.getUser(t, bob.ID).Groups; !slices.Equal(g, []string{"everyone"}) {
		t.Errorf("bob's groups after deleting sales: %v", g)
	}
	g, err = c.GetGroupWithResponse(ctx, sales.ID, nil)
	wantProblem(t, "get a deleted group", g, err, http.StatusNotFound, typeNotFound)
}

func memberIDs(g uc.Group) []string {
	var out []string
	for _, m := range g.Members {
		out = append(out, m.ID)
	}
	return out
}

func testPOP3Accounts(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	alice := e.mkUserAt(t, "alice", "hq")
	pm := e.mkUserAt(t, "postmaster", "branch")

	pw := e.pop3Password()
	r, err := c.CreatePOP3AccountWithResponse(ctx, singlePOP3("isp-alice", "hq", alice.ID, pw))
	wantStatus(t, "create POP3 account", r, err, http.StatusCreated)
	a := *r.JSON201
	if a.Name != "isp-alice" || a.Host != "pop.isp.example.net" || a.Port != 995 || a.TLS != uc.TLSModeTLS ||
		a.Auth != uc.POP3AuthUser || a.Username != "isp-alice@isp.example.net" || a.Site != "hq" ||
		a.Mode != uc.POP3ModeSingle || a.TargetUser != alice.ID || a.Postmaster != "" || len(a.EnvelopeHeaders) != 0 ||
		a.Keep.Policy != uc.KeepPolicyKindDeleteAfterDelivery || a.PollIntervalSeconds != 300 || !a.Enabled ||
		a.AllowInsecure || a.TLSSkipVerify || a.TLSFingerprint != "" || a.Version != 1 {
		t.Errorf("create POP3 account: got %s", js(a))
	}
	checkETag(t, "create POP3 account", r.Headers201.ETag, 1)
	checkLocation(t, "create POP3 account", r.Headers201.Location, "/v1/pop3-accounts/"+a.ID)
	noMembers(t, "create POP3 account", r.Body, "password", "password_enc")

	// multi-drop with its defaults
	m := e.mkPOP3(t, uc.POP3AccountCreate{Name: "isp-catchall", Host: "pop.isp.example.net", Port: ptr(110),
		TLS: ptr(uc.TLSModeStarttls), Username: "catchall", Password: ptr(e.pop3Password()), Site: "branch",
		Mode: ptr(uc.POP3ModeMulti), Postmaster: ptr(pm.ID), Keep: &uc.KeepPolicy{Policy: uc.KeepPolicyKindKeepDays, Days: 7}})
	if !slices.Equal(m.EnvelopeHeaders, []string{"Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received"}) ||
		m.Port != 110 || m.Keep != (uc.KeepPolicy{Policy: uc.KeepPolicyKindKeepDays, Days: 7}) || m.Postmaster != pm.ID {
		t.Errorf("create multi-drop POP3 account: %s", js(m))
	}

	// validation: several problems named at once
	r, err = c.CreatePOP3AccountWithResponse(ctx, uc.POP3AccountCreate{Name: "isp-bad", Host: "pop.isp.example.net",
		Username: "x", Password: ptr(e.pop3Password()), Site: "hq", TLS: ptr(uc.TLSModeNone), Mode: ptr(uc.POP3ModeMulti)})
	wantProblem(t, "create POP3 account with tls none and no postmaster", r, err, http.StatusUnprocessableEntity, typeValidation, "tls", "postmaster")
	r, err = c.CreatePOP3AccountWithResponse(ctx, singlePOP3("isp-ghost", "hq", "no-such-user", e.pop3Password()))
	wantProblem(t, "create POP3 account for a user that does not exist", r, err, http.StatusUnprocessableEntity, typeValidation, "target_user")
	r, err = c.CreatePOP3AccountWithResponse(ctx, singlePOP3("isp-alice", "hq", alice.ID, e.pop3Password()))
	wantProblem(t, "create POP3 account whose name is taken", r, err, http.StatusConflict, typeConflict)
	// tls none is fine when explicitly allowed
	insecure := singlePOP3("isp-lan", "hq", alice.ID, e.pop3Password())
	insecure.TLS, insecure.AllowInsecure = ptr(uc.TLSModeNone), ptr(true)
	if ins := e.mkPOP3(t, insecure); ins.Port != 110 || ins.TLS != uc.TLSModeNone {
		t.Errorf("create POP3 account with tls none: %s", js(ins))
	}

	// list with the site filter
	l, err := c.ListPOP3AccountsWithResponse(ctx, &uc.ListPOP3AccountsParams{Site: ptr("branch")})
	wantStatus(t, "list POP3 accounts of branch", l, err, http.StatusOK)
	if l.JSON200.Total != 1 || len(l.JSON200.Items) != 1 || l.JSON200.Items[0].Name != "isp-catchall" {
		t.Errorf("list POP3 accounts of branch: %s", js(l.JSON200))
	}
	l, err = c.ListPOP3AccountsWithResponse(ctx, nil)
	wantStatus(t, "list POP3 accounts", l, err, http.StatusOK)
	if l.JSON200.Total != 3 || len(l.JSON200.Items) != 3 || l.JSON200.Items[0].Name != "isp-alice" || l.JSON200.Items[2].Name != "isp-lan" {
		t.Errorf("list POP3 accounts: %s", js(l.JSON200))
	}

	// patches: the password, keep given in full, merge of the rest
	u, err := c.UpdatePOP3AccountWithResponse(ctx, a.ID, nil, uc.POP3AccountPatch{Password: ptr(e.pop3Password())})
	wantStatus(t, "patch POP3 password", u, err, http.StatusOK)
	if got := *u.JSON200; got.Version != 2 || got.Host != a.Host || got.TargetUser != a.TargetUser || got.Keep != a.Keep {
		t.Errorf("patch POP3 password: %s", js(got))
	}
	noMembers(t, "patch POP3 password", u.Body, "password", "password_enc")
	u, err = c.UpdatePOP3AccountWithResponse(ctx, m.ID, nil, uc.POP3AccountPatch{Keep: &uc.KeepPolicy{Policy: uc.KeepPolicyKindKeep}})
	wantStatus(t, "patch POP3 keep", u, err, http.StatusOK)
	if got := u.JSON200.Keep; got != (uc.KeepPolicy{Policy: uc.KeepPolicyKindKeep}) {
		t.Errorf("patch POP3 keep {policy: keep}: keep %s", js(got))
	}
	u, err = c.UpdatePOP3AccountWithResponse(ctx, a.ID, &uc.UpdatePOP3AccountParams{IfMatch: ptr(etag(2))}, uc.POP3AccountPatch{PollIntervalSeconds: ptr(120)})
	wantStatus(t, "patch POP3 poll interval", u, err, http.StatusOK)
	cur := *u.JSON200
	if cur.PollIntervalSeconds != 120 || cur.Port != 995 || cur.Version != 3 {
		t.Errorf("patch POP3 poll interval: %s", js(cur))
	}
	u, err = c.UpdatePOP3AccountWithResponse(ctx, a.ID, nil, uc.POP3AccountPatch{Keep: &uc.KeepPolicy{Policy: uc.KeepPolicyKindKeepDays}})
	wantProblem(t, "patch POP3 keep_days without days", u, err, http.StatusUnprocessableEntity, typeValidation)

	// conditional requests
	g, err := c.GetPOP3AccountWithResponse(ctx, a.ID, &uc.GetPOP3AccountParams{IfNoneMatch: ptr(etag(3))})
	if checkStatus(t, "get POP3 account If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get POP3 account 304", g.Headers304.ETag, 3)
	}
	g, err = c.GetPOP3AccountWithResponse(ctx, a.ID, nil)
	wantStatus(t, "get POP3 account", g, err, http.StatusOK)
	noMembers(t, "get POP3 account", g.Body, "password", "password_enc")
	if !sameJSON(*g.JSON200, cur) {
		t.Errorf("get POP3 account: %s, want %s", js(g.JSON200), js(cur))
	}
	u, err = c.UpdatePOP3AccountWithResponse(ctx, a.ID, &uc.UpdatePOP3AccountParams{IfMatch: ptr(etag(2))}, uc.POP3AccountPatch{Enabled: ptr(false)})
	wantProblem(t, "patch POP3 account with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)

	// the target user cannot be deleted while the account delivers to it
	du, err := c.DeleteUserWithResponse(ctx, alice.ID, nil)
	wantProblem(t, "delete the target user of a POP3 account", du, err, http.StatusConflict, "")

	d, err := c.DeletePOP3AccountWithResponse(ctx, a.ID, &uc.DeletePOP3AccountParams{IfMatch: ptr(etag(1))})
	wantProblem(t, "delete POP3 account with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeletePOP3AccountWithResponse(ctx, a.ID, nil)
	wantStatus(t, "delete POP3 account", d, err, http.StatusNoContent)
	g, err = c.GetPOP3AccountWithResponse(ctx, a.ID, nil)
	wantProblem(t, "get a deleted POP3 account", g, err, http.StatusNotFound, typeNotFound)
}

func testSharedMailboxes(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	mgr := e.mkUserAt(t, "sales-manager", "hq")
	zhang := e.mkUserAt(t, "zhangsan", "hq")
	lisi := e.mkUserAt(t, "lisi", "branch")

	r, err := c.CreateSharedMailboxWithResponse(ctx, uc.SharedMailboxCreate{Address: "Sales@HQ.example.org", DisplayName: ptr("Sales"),
		Manager: mgr.ID, Staff: &[]string{zhang.ID, lisi.ID}})
	wantStatus(t, "create shared mailbox", r, err, http.StatusCreated)
	m := *r.JSON201
	if m.Address != "sales@hq.example.org" || m.DisplayName != "Sales" || m.Manager != mgr.ID ||
		!slices.Equal(m.Staff, []string{zhang.ID, lisi.ID}) || m.ForwardToStaff || !m.RewriteSender || !m.CopyOutboundToManager || m.Version != 1 {
		t.Errorf("create shared mailbox: %s", js(m))
	}
	checkETag(t, "create shared mailbox", r.Headers201.ETag, 1)
	checkLocation(t, "create shared mailbox", r.Headers201.Location, "/v1/shared-mailboxes/"+m.ID)

	// validation
	r, err = c.CreateSharedMailboxWithResponse(ctx, uc.SharedMailboxCreate{Address: "info@hq.example.org", Manager: "no-such-user", Staff: &[]string{zhang.ID}})
	wantProblem(t, "create shared mailbox with a manager that does not exist", r, err, http.StatusUnprocessableEntity, typeValidation, "manager")
	r, err = c.CreateSharedMailboxWithResponse(ctx, uc.SharedMailboxCreate{Address: "not-an-address", Manager: mgr.ID, Staff: &[]string{mgr.ID}})
	wantProblem(t, "create shared mailbox with a bad address and the manager as staff", r, err, http.StatusUnprocessableEntity, typeValidation, "address", "staff[0]")

	// merge patches; staff replaced whole
	u, err := c.UpdateSharedMailboxWithResponse(ctx, m.ID, nil, uc.SharedMailboxPatch{ForwardToStaff: ptr(true)})
	wantStatus(t, "patch shared mailbox forward_to_staff", u, err, http.StatusOK)
	if got := *u.JSON200; !got.ForwardToStaff || !slices.Equal(got.Staff, m.Staff) || got.Address != m.Address || got.Version != 2 {
		t.Errorf("patch forward_to_staff: %s", js(got))
	}
	u, err = c.UpdateSharedMailboxWithResponse(ctx, m.ID, &uc.UpdateSharedMailboxParams{IfMatch: ptr(etag(2))}, uc.SharedMailboxPatch{Staff: &[]string{zhang.ID}})
	wantStatus(t, "patch shared mailbox staff", u, err, http.StatusOK)
	cur := *u.JSON200
	if !slices.Equal(cur.Staff, []string{zhang.ID}) || !cur.ForwardToStaff || cur.Manager != mgr.ID {
		t.Errorf("patch staff: %s", js(cur))
	}
	checkETag(t, "patch shared mailbox", u.Headers200.ETag, 3)

	// users it depends on cannot be deleted, with a reason
	for _, tc := range []struct{ what, id string }{{"its manager", mgr.ID}, {"its only staff member", zhang.ID}} {
		d, err := c.DeleteUserWithResponse(ctx, tc.id, nil)
		p := wantProblem(t, "delete "+tc.what, d, err, http.StatusConflict, typeInUse)
		if !mentions(p, "shared mailbox", "sales@hq.example.org") {
			t.Errorf("delete %s: the reason does not say it is the shared mailbox sales@hq.example.org: %s", tc.what, clip(d.Body))
		}
	}
	d, err := c.DeleteUserWithResponse(ctx, lisi.ID, nil)
	wantStatus(t, "delete a former staff member", d, err, http.StatusNoContent)

	// conditional requests
	g, err := c.GetSharedMailboxWithResponse(ctx, m.ID, &uc.GetSharedMailboxParams{IfNoneMatch: ptr(etag(3))})
	if checkStatus(t, "get shared mailbox If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get shared mailbox 304", g.Headers304.ETag, 3)
	}
	u, err = c.UpdateSharedMailboxWithResponse(ctx, m.ID, &uc.UpdateSharedMailboxParams{IfMatch: ptr(etag(2))}, uc.SharedMailboxPatch{DisplayName: ptr("stale")})
	wantProblem(t, "patch shared mailbox with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)
	g, err = c.GetSharedMailboxWithResponse(ctx, m.ID, nil)
	wantStatus(t, "get shared mailbox", g, err, http.StatusOK)
	if !sameJSON(*g.JSON200, cur) {
		t.Errorf("a 412 patch wrote: %s", js(g.JSON200))
	}

	// list, ordered by address
	e.mkShared(t, uc.SharedMailboxCreate{Address: "info@hq.example.org", Manager: mgr.ID, Staff: &[]string{zhang.ID}})
	l, err := c.ListSharedMailboxesWithResponse(ctx, &uc.ListSharedMailboxesParams{Limit: ptr(1)})
	wantStatus(t, "list shared mailboxes", l, err, http.StatusOK)
	if l.JSON200.Total != 2 || len(l.JSON200.Items) != 1 || l.JSON200.Items[0].Address != "info@hq.example.org" || l.JSON200.NextCursor == "" {
		t.Errorf("list shared mailboxes page 1: %s", js(l.JSON200))
	}
	l, err = c.ListSharedMailboxesWithResponse(ctx, &uc.ListSharedMailboxesParams{Limit: ptr(1), Cursor: ptr(l.JSON200.NextCursor)})
	wantStatus(t, "list shared mailboxes page 2", l, err, http.StatusOK)
	if len(l.JSON200.Items) != 1 || l.JSON200.Items[0].Address != "sales@hq.example.org" || l.JSON200.NextCursor != "" {
		t.Errorf("list shared mailboxes page 2: %s", js(l.JSON200))
	}

	dm, err := c.DeleteSharedMailboxWithResponse(ctx, m.ID, &uc.DeleteSharedMailboxParams{IfMatch: ptr(etag(1))})
	wantProblem(t, "delete shared mailbox with a stale If-Match", dm, err, http.StatusPreconditionFailed, typePrecondition)
	dm, err = c.DeleteSharedMailboxWithResponse(ctx, m.ID, &uc.DeleteSharedMailboxParams{IfMatch: ptr(etag(3))})
	wantStatus(t, "delete shared mailbox", dm, err, http.StatusNoContent)
	g, err = c.GetSharedMailboxWithResponse(ctx, m.ID, nil)
	wantProblem(t, "get a deleted shared mailbox", g, err, http.StatusNotFound, typeNotFound)
}

// mentions reports whether the problem's detail or errors contain any of
// the words (ignoring case).
func mentions(p uc.Problem, words ...string) bool {
	text := strings.ToLower(p.Detail)
	for _, e := range p.Errors {
		text += " " + strings.ToLower(e.Reason)
	}
	for _, w := range words {
		if strings.Contains(text, strings.ToLower(w)) {
			return true
		}
	}
	return false
}

func testTemplates(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)
	e.mkGroup(t, uc.GroupCreate{Name: "everyone"})

	r, err := c.CreateTemplateWithResponse(ctx, uc.TemplateCreate{Name: "staff", Site: ptr("hq"), Groups: &[]string{"everyone"},
		Permissions: &uc.PermissionsPatch{InternetReceive: ptr(true), InternetSend: ptr(false)}, QuotaBytes: ptr(int64(1 << 30))})
	wantStatus(t, "create template", r, err, http.StatusCreated)
	tpl := *r.JSON201
	if tpl.Name != "staff" || tpl.Site != "hq" || !slices.Equal(tpl.Groups, []string{"everyone"}) || !tpl.Enabled ||
		tpl.Permissions != (uc.Permissions{InternetReceive: true}) || tpl.QuotaBytes != 1<<30 || tpl.Version != 1 {
		t.Errorf("create template: %s", js(tpl))
	}
	checkETag(t, "create template", r.Headers201.ETag, 1)
	checkLocation(t, "create template", r.Headers201.Location, "/v1/templates/"+tpl.ID)

	// users created from it
	u1 := e.mkUser(t, uc.UserCreate{Username: "tpl-user", Template: ptr("staff")})
	if u1.Site != "hq" || u1.PrimaryAddress != "tpl-user@hq.example.org" || !slices.Equal(u1.Groups, []string{"everyone"}) ||
		u1.Permissions != (uc.Permissions{InternetReceive: true}) || u1.QuotaBytes != 1<<30 || !u1.Enabled {
		t.Errorf("create user from template: %s", js(u1))
	}
	u2 := e.mkUser(t, uc.UserCreate{Username: "tpl-user2", Template: ptr("staff"), Site: ptr("branch"), QuotaBytes: ptr(int64(5)),
		Permissions: &uc.PermissionsPatch{InternetSend: ptr(true)}})
	if u2.Site != "branch" || u2.QuotaBytes != 5 || u2.Permissions != (uc.Permissions{InternetReceive: true, InternetSend: true}) ||
		!slices.Equal(u2.Groups, []string{"everyone"}) {
		t.Errorf("create user from template with overrides: %s", js(u2))
	}
	cr, err := c.CreateUserWithResponse(ctx, uc.UserCreate{Username: "tpl-ghost", Template: ptr("no-such-template")})
	wantProblem(t, "create user from a template that does not exist", cr, err, http.StatusUnprocessableEntity, typeValidation, "template")

	// patches do not touch users created earlier
	u, err := c.UpdateTemplateWithResponse(ctx, tpl.ID, nil, uc.TemplatePatch{QuotaBytes: ptr(int64(2 << 30)), Permissions: &uc.PermissionsPatch{InternetSend: ptr(true)}})
	wantStatus(t, "patch template", u, err, http.StatusOK)
	cur := *u.JSON200
	if cur.QuotaBytes != 2<<30 || cur.Permissions != (uc.Permissions{InternetReceive: true, InternetSend: true}) || cur.Site != "hq" ||
		!slices.Equal(cur.Groups, []string{"everyone"}) || cur.Version != 2 {
		t.Errorf("patch template: %s", js(cur))
	}
	checkETag(t, "patch template", u.Headers200.ETag, 2)
	if now := e.getUser(t, u1.ID); now.QuotaBytes != 1<<30 || now.Version != u1.Version {
		t.Errorf("patching a template changed a user created from it: %s", js(now))
	}

	g, err := c.GetTemplateWithResponse(ctx, tpl.ID, &uc.GetTemplateParams{IfNoneMatch: ptr(etag(2))})
	if checkStatus(t, "get template If-None-Match current", g, err, http.StatusNotModified) {
		checkETag(t, "get template 304", g.Headers304.ETag, 2)
	}
	u, err = c.UpdateTemplateWithResponse(ctx, tpl.ID, &uc.UpdateTemplateParams{IfMatch: ptr(etag(1))}, uc.TemplatePatch{QuotaBytes: ptr(int64(1))})
	wantProblem(t, "patch template with a stale If-Match", u, err, http.StatusPreconditionFailed, typePrecondition)

	e.mkTemplate(t, uc.TemplateCreate{Name: "interns"})
	l, err := c.ListTemplatesWithResponse(ctx, nil)
	wantStatus(t, "list templates", l, err, http.StatusOK)
	if l.JSON200.Total != 2 || len(l.JSON200.Items) != 2 || l.JSON200.Items[0].Name != "interns" || l.JSON200.Items[1].Name != "staff" {
		t.Errorf("list templates: %s", js(l.JSON200))
	}

	d, err := c.DeleteTemplateWithResponse(ctx, tpl.ID, &uc.DeleteTemplateParams{IfMatch: ptr(etag(1))})
	wantProblem(t, "delete template with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeleteTemplateWithResponse(ctx, tpl.ID, nil)
	wantStatus(t, "delete template", d, err, http.StatusNoContent)
	g, err = c.GetTemplateWithResponse(ctx, tpl.ID, nil)
	wantProblem(t, "get a deleted template", g, err, http.StatusNotFound, typeNotFound)
	if now := e.getUser(t, u1.ID); now.Site != "hq" {
		t.Errorf("deleting a template changed a user created from it: %s", js(now))
	}
}

func testTokens(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	e.mkSites(t)

	r, err := c.CreateTokenWithResponse(ctx, uc.TokenCreate{Name: "ops-reader", Role: uc.TokenRoleReader})
	wantStatus(t, "create token", r, err, http.StatusCreated)
	tok := *r.JSON201
	e.secret("the reader token's secret", tok.Secret, isTokenCreation)
	if !strings.HasPrefix(tok.Secret, "pst_"+tok.ID+"_") || tok.Name != "ops-reader" || tok.Role != uc.TokenRoleReader ||
		tok.Site != "" || tok.Version != 1 || tok.ExpiresAt != nil {
		t.Errorf("create token: %s", js(tok))
	}
	checkETag(t, "create token", r.Headers201.ETag, 1)
	checkLocation(t, "create token", r.Headers201.Location, "/v1/tokens/"+tok.ID)

	// the token works
	reader := e.client("ops-reader", tok.Secret)
	ls, err := reader.ListSitesWithResponse(ctx, nil)
	wantStatus(t, "list sites with the new token", ls, err, http.StatusOK)

	// its secret is never shown again
	g, err := c.GetTokenWithResponse(ctx, tok.ID, nil)
	wantStatus(t, "get token", g, err, http.StatusOK)
	noMembers(t, "get token", g.Body, "secret", "secret_hash")
	if g.JSON200.ID != tok.ID || g.JSON200.Name != "ops-reader" || g.JSON200.Role != uc.TokenRoleReader {
		t.Errorf("get token: %s", js(g.JSON200))
	}
	checkETag(t, "get token", g.Headers200.ETag, g.JSON200.Version)
	g, err = c.GetTokenWithResponse(ctx, tok.ID, &uc.GetTokenParams{IfNoneMatch: ptr(etag(g.JSON200.Version))})
	checkStatus(t, "get token If-None-Match current", g, err, http.StatusNotModified)

	_, agent := e.mkToken(t, "hq-agent", uc.TokenRoleSiteAgent, "hq")
	_, sadm := e.mkToken(t, "hq-admin", uc.TokenRoleSiteAdmin, "hq")
	if agent.Site != "hq" || sadm.Site != "hq" || sadm.Role != uc.TokenRoleSiteAdmin {
		t.Errorf("create site tokens: %s %s", js(agent), js(sadm))
	}
	l, err := c.ListTokensWithResponse(ctx, nil)
	wantStatus(t, "list tokens", l, err, http.StatusOK)
	var names []string
	for _, it := range l.JSON200.Items {
		names = append(names, it.Name)
	}
	if !slices.Equal(names, []string{bootstrap, "hq-admin", "hq-agent", "ops-reader"}) || l.JSON200.Total != 4 {
		t.Errorf("list tokens: %v total %d", names, l.JSON200.Total)
	}
	if strings.Contains(string(l.Body), `"secret"`) {
		t.Errorf("list tokens shows secrets: %s", clip(l.Body))
	}
	for _, tc := range []struct {
		p    uc.ListTokensParams
		want []string
	}{
		{uc.ListTokensParams{Role: ptr(uc.TokenRoleReader)}, []string{"ops-reader"}},
		{uc.ListTokensParams{Site: ptr("hq")}, []string{"hq-admin", "hq-agent"}},
		{uc.ListTokensParams{Site: ptr("hq"), Role: ptr(uc.TokenRoleSiteAgent)}, []string{"hq-agent"}},
	} {
		l, err := c.ListTokensWithResponse(ctx, &tc.p)
		wantStatus(t, "list tokens with filters", l, err, http.StatusOK)
		var got []string
		for _, it := range l.JSON200.Items {
			got = append(got, it.Name)
		}
		if !slices.Equal(got, tc.want) || l.JSON200.Total != int64(len(tc.want)) {
			t.Errorf("list tokens %s: %v (total %d), want %v", js(tc.p), got, l.JSON200.Total, tc.want)
		}
	}

	// validation
	for _, tc := range []struct {
		what  string
		body  uc.TokenCreate
		field string
	}{
		{"site_admin without a site", uc.TokenCreate{Name: "x", Role: uc.TokenRoleSiteAdmin}, "site"},
		{"reader with a site", uc.TokenCreate{Name: "x", Role: uc.TokenRoleReader, Site: ptr("hq")}, "site"},
		{"site_agent of a site that does not exist", uc.TokenCreate{Name: "x", Role: uc.TokenRoleSiteAgent, Site: ptr("atlantis")}, "site"},
		{"expiry in the past", uc.TokenCreate{Name: "x", Role: uc.TokenRoleReader, ExpiresAt: ptr(time.Now().Add(-time.Hour))}, "expires_at"},
	} {
		r, err := c.CreateTokenWithResponse(ctx, tc.body)
		wantProblem(t, "create token: "+tc.what, r, err, http.StatusUnprocessableEntity, typeValidation, tc.field)
	}
	r, err = c.CreateTokenWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"name":"x","role":"superuser"}`))
	wantProblem(t, "create token with an unknown role", r, err, http.StatusBadRequest, typeBadRequest, "role")

	// expiry
	r, err = c.CreateTokenWithResponse(ctx, uc.TokenCreate{Name: "short-lived", Role: uc.TokenRoleReader, ExpiresAt: ptr(e.clock.Now().Add(time.Hour))})
	wantStatus(t, "create token with an expiry", r, err, http.StatusCreated)
	e.secret("the short-lived token's secret", r.JSON201.Secret, isTokenCreation)
	short := e.client("short-lived", r.JSON201.Secret)
	ls, err = short.ListSitesWithResponse(ctx, nil)
	checkStatus(t, "use a token before its expiry", ls, err, http.StatusOK)
	e.clock.Advance(2 * time.Hour)
	ls, err = short.ListSitesWithResponse(ctx, nil)
	if checkStatus(t, "use a token after its expiry", ls, err, http.StatusUnauthorized) {
		checkWWWAuthenticate(t, "use a token after its expiry", ls.Headers401)
	}

	// revocation
	d, err := c.DeleteTokenWithResponse(ctx, tok.ID, &uc.DeleteTokenParams{IfMatch: ptr(etag(99))})
	wantProblem(t, "revoke token with a stale If-Match", d, err, http.StatusPreconditionFailed, typePrecondition)
	d, err = c.DeleteTokenWithResponse(ctx, tok.ID, nil)
	wantStatus(t, "revoke token", d, err, http.StatusNoContent)
	ls, err = reader.ListSitesWithResponse(ctx, nil)
	if checkStatus(t, "use a revoked token", ls, err, http.StatusUnauthorized) {
		checkWWWAuthenticate(t, "use a revoked token", ls.Headers401)
		problemOf(t, "use a revoked token", ls)
	}
	g, err = c.GetTokenWithResponse(ctx, tok.ID, nil)
	wantProblem(t, "get a revoked token", g, err, http.StatusNotFound, typeNotFound)

	// a token may revoke itself
	admin2, a2 := e.mkToken(t, "second-admin", uc.TokenRoleAdmin, "")
	d, err = admin2.DeleteTokenWithResponse(ctx, a2.ID, nil)
	wantStatus(t, "a token revokes itself", d, err, http.StatusNoContent)
	ls, err = admin2.ListSitesWithResponse(ctx, nil)
	checkStatus(t, "use a token that revoked itself", ls, err, http.StatusUnauthorized)
}
