package httpapi

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/api/usersapi"
)

// importOK posts a CSV file and returns the result (200).
func (s *testServer) importOK(t *testing.T, query, body string) usersapi.ImportResult {
	t.Helper()
	r := s.do("POST", "/v1/users/import"+query, s.admin, "text/csv", body)
	if r.status != http.StatusOK {
		t.Fatalf("import %q: %d %s", body, r.status, r.body)
	}
	var res usersapi.ImportResult
	if err := json.Unmarshal(r.body, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func (s *testServer) userJSON(t *testing.T, id string) map[string]any {
	t.Helper()
	r := s.do("GET", "/v1/users/"+id, s.admin, "", "")
	var u map[string]any
	if err := json.Unmarshal(r.body, &u); r.status != http.StatusOK || err != nil {
		t.Fatalf("get user %s: %d %v %s", id, r.status, err, r.body)
	}
	return u
}

// A line that changes nothing about an existing user writes nothing, as a
// PATCH that changes nothing: same version, no change-log entry, listed as
// unchanged. An empty description cell keeps the display name.
func TestImportLineThatChangesNothing(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	s.create("/v1/groups", `{"name":"sales"}`)
	s.create("/v1/groups", `{"name":"support"}`)
	ann := s.create("/v1/users", `{"username":"ann","display_name":"Ann Leroy","site":"hq","groups":["support","sales"],"aliases":["a@hq.example.org"]}`)["id"].(string)
	last, err := s.store.LastSeq(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct{ name, body string }{
		{"empty description", "username,description,password_hash\nann,,\n"},
		{"the same values, groups in another order", "username,description,email,aliases,groups,enabled,password_hash\nann,Ann Leroy,ann@hq.example.org,a@hq.example.org,sales;support,true,\n"},
	} {
		for _, dry := range []string{"?dry_run=true", ""} {
			res := s.importOK(t, dry, tt.body)
			if len(res.Created) != 0 || len(res.Updated) != 0 || res.Unchanged == nil || !slices.Equal(*res.Unchanged, []string{"ann"}) {
				t.Errorf("%s%s: created %v, updated %v, unchanged %v; want ann unchanged", tt.name, dry, res.Created, res.Updated, res.Unchanged)
			}
		}
		if u := s.userJSON(t, ann); u["version"] != float64(1) || u["display_name"] != "Ann Leroy" {
			t.Errorf("%s: ann is now %v", tt.name, u)
		}
		if now, _ := s.store.LastSeq(t.Context()); now != last {
			t.Errorf("%s: the change log moved from %d to %d", tt.name, last, now)
		}
	}

	// A real change is still written, and the empty cell still keeps the name.
	res := s.importOK(t, "", "username,description,quota_bytes,password_hash\nann,,1024,\n")
	if !slices.Equal(res.Updated, []string{"ann"}) || len(*res.Unchanged) != 0 {
		t.Errorf("a line with a change: updated %v, unchanged %v", res.Updated, *res.Unchanged)
	}
	if u := s.userJSON(t, ann); u["version"] != float64(2) || u["display_name"] != "Ann Leroy" || u["quota_bytes"] != float64(1024) {
		t.Errorf("after a line with a change and an empty description: %v", u)
	}
	// A plain password is a change, in a dry run too.
	res = s.importOK(t, "?dry_run=true", "username,description,password\nann,,a-new-password-1\n")
	if !slices.Equal(res.Updated, []string{"ann"}) {
		t.Errorf("a dry run of a new password: updated %v, unchanged %v", res.Updated, *res.Unchanged)
	}
	if strings.Contains(s.logs.String(), "a-new-password-1") {
		t.Error("the password is in the log")
	}
}
