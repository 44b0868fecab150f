package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
)

// problemNaming checks that r is a problem of status whose errors name
// field with a reason containing want.
func problemNaming(t *testing.T, what string, r result, status int, field, want string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: %d %s, want %d", what, r.status, r.body, status)
		return
	}
	p := r.problem(t)
	for _, fe := range p.Errors {
		if fe.Field == field && strings.Contains(fe.Reason, want) {
			return
		}
	}
	t.Errorf("%s: errors %+v do not name %s with %q", what, p.Errors, field, want)
}

// importErrors posts a CSV file and returns its line errors (422).
func (s *testServer) importErrors(t *testing.T, secret, body string) []usersapi.FieldError {
	t.Helper()
	r := s.do("POST", "/v1/users/import", secret, "text/csv", body)
	if r.status != http.StatusUnprocessableEntity {
		t.Fatalf("import %q: %d %s, want 422", body, r.status, r.body)
	}
	return r.problem(t).Errors
}

func hasLineError(errs []usersapi.FieldError, line int, column, want string) bool {
	for _, fe := range errs {
		if fe.Line == line && fe.Field == column && strings.Contains(fe.Reason, want) {
			return true
		}
	}
	return false
}

// Every address a write gives a user is in a domain of some site; a
// site_admin's are in its own site's domains, and it cannot change group
// memberships (the API, PATCH and the CSV import alike).
func TestUserAddressesStayInTheOrganisation(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	s.create("/v1/sites", `{"name":"branch","domains":["branch.example.org"]}`)
	s.create("/v1/groups", `{"name":"sales"}`)
	s.create("/v1/templates", `{"name":"staff","groups":["sales"]}`)
	sa := s.mkToken(directory.RoleSiteAdmin, "hq", nil)

	// An admin: any site's domain, no other.
	r := s.json("POST", "/v1/users", s.admin, `{"username":"ann","site":"hq","primary_address":"ann@elsewhere.example"}`)
	problemNaming(t, "admin: primary address outside every site", r, http.StatusUnprocessableEntity, "primary_address", "not in a mail domain of any site")
	r = s.json("POST", "/v1/users", s.admin, `{"username":"ann","site":"hq","aliases":["ann@branch.example.org","a@elsewhere.example"]}`)
	problemNaming(t, "admin: an alias outside every site", r, http.StatusUnprocessableEntity, "aliases[1]", "elsewhere.example")
	ann := s.create("/v1/users", `{"username":"ann","site":"hq","aliases":["ann@branch.example.org"]}`)["id"].(string)
	r = s.json("PATCH", "/v1/users/"+ann, s.admin, `{"aliases":["ann@branch.example.org","ann@gmail.example"]}`)
	problemNaming(t, "admin: patch an alias outside every site", r, http.StatusUnprocessableEntity, "aliases[1]", "gmail.example")

	// A site_admin: its own site's domains only.
	for _, tt := range []struct {
		name, method, path, body, field, want string
	}{
		{"create with another site's domain", "POST", "/v1/users", `{"username":"eve","site":"hq","primary_address":"boss@branch.example.org"}`, "primary_address", "not in a mail domain of site hq"},
		{"create with an alias outside", "POST", "/v1/users", `{"username":"eve","site":"hq","aliases":["eve@elsewhere.example"]}`, "aliases[0]", "hq.example.org"},
		{"create with groups", "POST", "/v1/users", `{"username":"eve","site":"hq","groups":["sales"]}`, "groups", "group memberships"},
		{"patch the primary address to another site's domain", "PATCH", "/v1/users/" + ann, `{"primary_address":"boss@branch.example.org"}`, "primary_address", "branch.example.org"},
		{"patch an alias in another site's domain", "PATCH", "/v1/users/" + ann, `{"aliases":["ann@branch.example.org","sales@branch.example.org"]}`, "aliases[1]", "site_admin"},
		{"patch the groups", "PATCH", "/v1/users/" + ann, `{"groups":["sales"]}`, "groups", "managed by admins"},
	} {
		problemNaming(t, "site_admin: "+tt.name, s.json(tt.method, tt.path, sa, tt.body), http.StatusForbidden, tt.field, tt.want)
	}
	r = s.do("GET", "/v1/users/"+ann, s.admin, "", "")
	if !strings.Contains(string(r.body), `"aliases":["ann@branch.example.org"]`) || !strings.Contains(string(r.body), `"groups":[]`) ||
		!strings.Contains(string(r.body), `"version":1`) {
		t.Errorf("refused patches changed ann: %s", r.body)
	}
	// What the user already has stays; the template's groups are the admin's.
	if r := s.json("PATCH", "/v1/users/"+ann, sa, `{"display_name":"Ann","aliases":["ann@branch.example.org","a@hq.example.org"]}`); r.status != http.StatusOK {
		t.Errorf("site_admin: patch keeping an existing alias: %d %s", r.status, r.body)
	}
	r = s.json("POST", "/v1/users", sa, `{"username":"tim","template":"staff"}`)
	var tim map[string]any
	if _ = json.Unmarshal(r.body, &tim); r.status != http.StatusCreated || tim["primary_address"] != "tim@hq.example.org" {
		t.Errorf("site_admin: create with a template giving groups: %d %s", r.status, r.body)
	}

	// The CSV import: the same rules, line by line; nothing written.
	errs := s.importErrors(t, sa, "username,description,email,aliases,groups,password_hash\n"+
		"ann,Ann,,ann@branch.example.org;x@branch.example.org,,\n"+
		"tim,Tim,,,sales;other,\n"+
		"new,New,new@branch.example.org,,,\n")
	for _, want := range []struct {
		line        int
		column, why string
	}{{2, "aliases", "x@branch.example.org"}, {3, "groups", "group memberships"}, {4, "email", "not in a mail domain of site hq"}} {
		if !hasLineError(errs, want.line, want.column, want.why) {
			t.Errorf("site_admin import: no error on line %d, column %s, with %q: %+v", want.line, want.column, want.why, errs)
		}
	}
	errs = s.importErrors(t, s.admin, "username,description,email,site,password_hash\nzed,Zed,zed@elsewhere.example,hq,\n")
	if !hasLineError(errs, 2, "email", "not in a mail domain of any site") {
		t.Errorf("admin import of an address outside every site: %+v", errs)
	}
	if r := s.do("GET", "/v1/users?q=zed", s.admin, "", ""); !strings.Contains(string(r.body), `"total":0`) {
		t.Errorf("a refused import wrote: %s", r.body)
	}
}

// A site is not deleted while an address of a user, group or shared
// mailbox is in one of its domains (as its domain could not be removed).
func TestDeleteSiteRefusedWhileItsDomainIsUsed(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	s.create("/v1/sites", `{"name":"old","domains":["old.example.org"]}`)
	alice := s.create("/v1/users", `{"username":"alice","site":"hq","aliases":["alice@old.example.org"]}`)["id"].(string)
	team := s.create("/v1/groups", `{"name":"team","address":"team@old.example.org"}`)["id"].(string)

	for _, step := range []struct{ who, patchPath, patch string }{
		{"user alice (alice@old.example.org)", "/v1/users/" + alice, `{"aliases":[]}`},
		{"group team (team@old.example.org)", "/v1/groups/" + team, `{"address":""}`},
	} {
		r := s.do("DELETE", "/v1/sites/old", s.admin, "", "")
		if r.status != http.StatusConflict {
			t.Fatalf("delete a site whose domain %s uses: %d %s, want 409", step.who, r.status, r.body)
		}
		if p := r.problem(t); p.Type != typeInUse || len(p.Errors) != 1 || p.Errors[0].Field != "domains" ||
			!strings.Contains(p.Errors[0].Reason, "old.example.org is still used by "+step.who) {
			t.Errorf("delete refused with %+v, want one error naming %s", p, step.who)
		}
		if r := s.do("GET", "/v1/sites/old", s.admin, "", ""); r.status != http.StatusOK {
			t.Fatalf("the refused delete removed the site: %d", r.status)
		}
		if r := s.json("PATCH", step.patchPath, s.admin, step.patch); r.status != http.StatusOK {
			t.Fatalf("PATCH %s: %d %s", step.patchPath, r.status, r.body)
		}
	}
	if r := s.do("DELETE", "/v1/sites/old", s.admin, "", ""); r.status != http.StatusNoContent {
		t.Errorf("delete a site whose domains nobody uses: %d %s", r.status, r.body)
	}
}

// A site_admin's write that conflicts with another site's user is told
// that the value is taken, not by whom; an admin is told who holds it.
func TestConflictDoesNotNameTheOwnerToASiteAdmin(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	s.create("/v1/sites", `{"name":"branch","domains":["branch.example.org"]}`)
	bob := s.create("/v1/users", `{"username":"bob","site":"branch","aliases":["bob@hq.example.org"]}`)["id"].(string)
	sa := s.mkToken(directory.RoleSiteAdmin, "hq", nil)

	for _, tt := range []struct{ name, body string }{
		{"a username", `{"username":"bob","site":"hq"}`},
		{"an address", `{"username":"carl","site":"hq","aliases":["bob@hq.example.org"]}`},
	} {
		r := s.json("POST", "/v1/users", sa, tt.body)
		if r.status != http.StatusConflict {
			t.Errorf("site_admin: %s of another site's user: %d %s, want 409", tt.name, r.status, r.body)
			continue
		}
		if body := string(r.body); strings.Contains(body, bob) || strings.Contains(body, "user bob") || !strings.Contains(body, "already used by a user") {
			t.Errorf("site_admin: %s of another site's user: %s", tt.name, body)
		}
		if r := s.json("POST", "/v1/users", s.admin, tt.body); r.status != http.StatusConflict || !strings.Contains(string(r.body), "user bob") {
			t.Errorf("admin: %s of bob: %d %s, want 409 naming bob", tt.name, r.status, r.body)
		}
	}
	errs := s.importErrors(t, sa, "username,description,aliases,password_hash\ncarl,Carl,bob@hq.example.org,\n")
	if !hasLineError(errs, 2, "aliases", "already used by a user") {
		t.Errorf("site_admin import of another site's address: %+v", errs)
	}
	for _, fe := range errs {
		if strings.Contains(fe.Reason, bob) || strings.Contains(fe.Reason, "user bob") {
			t.Errorf("site_admin import names the owner: %+v", fe)
		}
	}
}
