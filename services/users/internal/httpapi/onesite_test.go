package httpapi

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// In a directory with one site, the seed's three-column CSV and a user
// created without a site land in that site; with two sites the site must be
// named.
func TestOneSiteIsTheDefault(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"office","domains":["office.example.org"]}`)

	seed := "\"username\",\"description\",\"password\"\n\"john\",\"John Doe\",\"abcd1234\"\n"
	r := s.do("POST", "/v1/users/import", s.admin, "text/csv", seed)
	if r.status != http.StatusOK {
		t.Fatalf("import into the only site: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/v1/users", s.admin, "application/json", `{"username":"jane","display_name":"Jane"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create without a site: %d %s", r.status, r.body)
	}
	r = s.do("GET", "/v1/users?site=office", s.admin, "", "")
	var list struct {
		Total int `json:"total"`
	}
	if err := json.Unmarshal(r.body, &list); err != nil || list.Total != 2 {
		t.Fatalf("users at the only site: %d (%v) %s", list.Total, err, r.body)
	}
	if !strings.Contains(string(r.body), `"primary_address":"john@office.example.org"`) {
		t.Errorf("john has no default address in the site's domain: %s", r.body)
	}

	s.create("/v1/sites", `{"name":"branch","domains":["branch.example.org"]}`)
	r = s.do("POST", "/v1/users", s.admin, "application/json", `{"username":"bob","display_name":"Bob"}`)
	if r.status != http.StatusUnprocessableEntity || !strings.Contains(string(r.body), "site") {
		t.Errorf("create without a site among two: %d %s, want 422 naming the site", r.status, r.body)
	}
}
