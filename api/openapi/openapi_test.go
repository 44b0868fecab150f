package openapi

import (
	"bytes"
	"context"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

func load(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestSpecIsACopy(t *testing.T) {
	a := Spec()
	if !bytes.HasPrefix(a, []byte("openapi: 3.0.3")) {
		t.Fatalf("Spec does not start with the OpenAPI version: %.40q", a)
	}
	a[0] = 'X'
	if Spec()[0] != 'o' {
		t.Fatal("Spec returned the embedded slice itself")
	}
}

// TestOperations pins the operations: a rename breaks the generated
// interfaces, so it must be deliberate.
func TestOperations(t *testing.T) {
	want := []string{
		"DELETE /v1/groups/{id} deleteGroup",
		"DELETE /v1/pop3-accounts/{id} deletePOP3Account",
		"DELETE /v1/shared-mailboxes/{id} deleteSharedMailbox",
		"DELETE /v1/sites/{name} deleteSite",
		"DELETE /v1/templates/{id} deleteTemplate",
		"DELETE /v1/tokens/{id} deleteToken",
		"DELETE /v1/users/{id} deleteUser",
		"GET /v1/audit listAuditEntries",
		"GET /v1/groups listGroups",
		"GET /v1/groups/{id} getGroup",
		"GET /v1/pop3-accounts listPOP3Accounts",
		"GET /v1/pop3-accounts/{id} getPOP3Account",
		"GET /v1/shared-mailboxes listSharedMailboxes",
		"GET /v1/shared-mailboxes/{id} getSharedMailbox",
		"GET /v1/sites listSites",
		"GET /v1/sites/{name} getSite",
		"GET /v1/sync getSync",
		"GET /v1/templates listTemplates",
		"GET /v1/templates/{id} getTemplate",
		"GET /v1/tokens listTokens",
		"GET /v1/tokens/{id} getToken",
		"GET /v1/users listUsers",
		"GET /v1/users/export exportUsers",
		"GET /v1/users/{id} getUser",
		"PATCH /v1/groups/{id} updateGroup",
		"PATCH /v1/pop3-accounts/{id} updatePOP3Account",
		"PATCH /v1/shared-mailboxes/{id} updateSharedMailbox",
		"PATCH /v1/sites/{name} updateSite",
		"PATCH /v1/templates/{id} updateTemplate",
		"PATCH /v1/users/{id} updateUser",
		"POST /v1/groups createGroup",
		"POST /v1/pop3-accounts createPOP3Account",
		"POST /v1/shared-mailboxes createSharedMailbox",
		"POST /v1/sites createSite",
		"POST /v1/templates createTemplate",
		"POST /v1/tokens createToken",
		"POST /v1/users createUser",
		"POST /v1/users/import importUsers",
		"POST /v1/users/{id}/move moveUser",
		"POST /v1/users/{id}/password setUserPassword",
	}
	doc := load(t)
	var got []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			got = append(got, method+" "+path+" "+op.OperationID)
			if len(op.Tags) == 0 || op.Summary == "" {
				t.Errorf("%s %s: needs a tag and a summary", method, path)
			}
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("operations:\n got %q\nwant %q", got, want)
	}
}

// TestExamples checks that every component schema, every parameter and
// every request or response body has an example, that scalar properties of
// component schemas have one too, and that every example matches its schema.
func TestExamples(t *testing.T) {
	doc := load(t)
	for name, ref := range doc.Components.Schemas {
		s := ref.Value
		if s.Example == nil {
			t.Errorf("schema %s has no example", name)
			continue
		}
		checkExample(t, "schema "+name, s, s.Example)
		for pname, p := range s.Properties {
			if p.Ref != "" {
				continue // the referenced component has its own
			}
			v := p.Value
			if v.Type.Is("array") && v.Items != nil && (v.Items.Ref != "" || v.Items.Value.Example != nil) {
				continue // the items carry it
			}
			if v.Example == nil {
				t.Errorf("schema %s: property %s has no example", name, pname)
				continue
			}
			checkExample(t, "schema "+name+"."+pname, v, v.Example)
		}
	}
	for name, ref := range doc.Components.Parameters {
		checkParameter(t, "parameter "+name, ref.Value)
	}
	for name, ref := range doc.Components.Headers {
		h := ref.Value
		if h.Example == nil && h.Schema.Value.Example == nil {
			t.Errorf("header %s has no example", name)
		}
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			for _, p := range op.Parameters {
				checkParameter(t, where+" parameter "+p.Value.Name, p.Value)
			}
			if op.RequestBody != nil {
				for ct, mt := range op.RequestBody.Value.Content {
					checkMedia(t, where+" request "+ct, mt)
				}
			}
			for code, r := range op.Responses.Map() {
				for ct, mt := range r.Value.Content {
					checkMedia(t, where+" response "+code+" "+ct, mt)
				}
			}
		}
	}
}

func checkParameter(t *testing.T, where string, p *openapi3.Parameter) {
	t.Helper()
	switch {
	case p.Example != nil:
		checkExample(t, where, p.Schema.Value, p.Example)
	case p.Schema != nil && p.Schema.Value.Example != nil:
		checkExample(t, where, p.Schema.Value, p.Schema.Value.Example)
	case p.Schema != nil && p.Schema.Ref != "":
		// a component schema, checked with the schemas
	default:
		t.Errorf("%s has no example", where)
	}
}

func checkMedia(t *testing.T, where string, mt *openapi3.MediaType) {
	t.Helper()
	s := mt.Schema.Value
	switch {
	case mt.Example != nil:
		checkExample(t, where, s, mt.Example)
	case len(mt.Examples) > 0:
		for name, ex := range mt.Examples {
			checkExample(t, where+" example "+name, s, ex.Value.Value)
		}
	case s.Example != nil:
		// the schema's example, checked with the schemas
	default:
		t.Errorf("%s has no example", where)
	}
}

func checkExample(t *testing.T, where string, s *openapi3.Schema, example any) {
	t.Helper()
	if err := s.VisitJSON(example, openapi3.MultiErrors()); err != nil {
		t.Errorf("%s: the example does not match the schema: %v", where, err)
	}
}

// TestNoSecretsInResponses walks every response schema: no password, hash
// or secret may appear, but for the two documented exceptions.
func TestNoSecretsInResponses(t *testing.T) {
	allowed := map[string]bool{
		"ExportedUser.password_hash": true, // admins' export, so that import round-trips
		"CreatedToken.secret":        true, // shown once
	}
	secret := func(name string) bool {
		return strings.Contains(name, "password") || strings.Contains(name, "secret") ||
			strings.HasSuffix(name, "_hash") || strings.HasSuffix(name, "_enc")
	}
	doc := load(t)
	names := map[*openapi3.Schema]string{}
	for name, ref := range doc.Components.Schemas {
		names[ref.Value] = name
	}
	seen := map[*openapi3.Schema]bool{}
	var walk func(where string, s *openapi3.Schema)
	walk = func(where string, s *openapi3.Schema) {
		if s == nil || seen[s] {
			return
		}
		seen[s] = true
		if n, ok := names[s]; ok {
			where = n
		}
		for pname, p := range s.Properties {
			if secret(pname) && !allowed[where+"."+pname] {
				t.Errorf("response schema %s has the secret member %s", where, pname)
			}
			walk(where+"."+pname, p.Value)
		}
		if s.Items != nil {
			walk(where+"[]", s.Items.Value)
		}
		for _, l := range [][]*openapi3.SchemaRef{s.AllOf, s.OneOf, s.AnyOf} {
			for _, x := range l {
				walk(where, x.Value)
			}
		}
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code, r := range op.Responses.Map() {
				for _, mt := range r.Value.Content {
					walk(method+" "+path+" "+code, mt.Schema.Value)
				}
			}
		}
	}
}

// TestRequestValidation shows that the document routes and validates
// requests the way the server will: static paths before parameters, CSV
// bodies accepted, unknown members and nulls refused.
func TestRequestValidation(t *testing.T) {
	doc := load(t)
	doc.Servers = nil // match any host, as the server's validator does
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	tests := []struct {
		method, target, ctype, body string
		op                          string
		ok                          bool
	}{
		{"GET", "/v1/users/export?format=csv", "", "", "exportUsers", true},
		{"GET", "/v1/users/export?format=xml", "", "", "exportUsers", false},
		{"GET", "/v1/users/01936d3e-8f2a-7c41-9b1e-4a5c6d7e8f90", "", "", "getUser", true},
		{"GET", "/v1/users?limit=1000&enabled=true&q=zhang", "", "", "listUsers", true},
		{"GET", "/v1/users?limit=1001", "", "", "listUsers", false},
		{"POST", "/v1/users/import?dry_run=true&template=staff", "text/csv", "username,description,password\njohn,John Doe,abcd\n", "importUsers", true},
		{"POST", "/v1/users", "application/json", `{"username":"lisi","site":"headquarters","password":"x"}`, "createUser", true},
		{"POST", "/v1/users", "application/json", `{"username":"lisi","nickname":"li"}`, "createUser", false},
		{"POST", "/v1/users", "application/json", `{"username":"lisi","enabled":"yes"}`, "createUser", false},
		{"PATCH", "/v1/users/u1", "application/json", `{"display_name":"Li Si","permissions":{"internet_send":true}}`, "updateUser", true},
		{"PATCH", "/v1/users/u1", "application/json", `{"display_name":null}`, "updateUser", false},
		{"POST", "/v1/pop3-accounts", "application/json", `{"name":"isp-sales","host":"pop.isp.example.net","username":"sales","password":"p","site":"headquarters","tls":"ssl"}`, "createPOP3Account", false},
		{"GET", "/v1/sync?cursor=1842&wait=30", "", "", "getSync", true},
		{"GET", "/v1/sync?cursor=abc", "", "", "getSync", false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://users.example:8080"+tt.target, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			req.Header.Set("Authorization", "Bearer pst_x_y")
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatalf("no route: %v", err)
			}
			if route.Operation.OperationID != tt.op {
				t.Fatalf("routed to %s, want %s", route.Operation.OperationID, tt.op)
			}
			err = openapi3filter.ValidateRequest(context.Background(), &openapi3filter.RequestValidationInput{
				Request: req, PathParams: params, Route: route, Options: opts,
			})
			if (err == nil) != tt.ok {
				t.Fatalf("valid = %v, want %v (%v)", err == nil, tt.ok, err)
			}
		})
	}
}
