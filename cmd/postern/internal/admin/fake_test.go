package admin

// The commands run in-process against a stand-in for the users service: the
// generated strict server (api/usersapi) behind echo, with every request and
// response validated against users.yaml, implementing just the operations the
// tests use over an in-memory directory. It records every request as it came
// over the wire, and can be told to fail the next one.

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/openapi"
	"github.com/postern/postern/api/usersapi"
)

const testToken = "pst_01936d3e-0000-7000-8000-00000000a000_c2VjcmV0LXRva2VuLXZhbHVl"

var created = time.Date(2026, 1, 15, 9, 30, 0, 0, time.UTC)

// request is one request as the server received it.
type request struct {
	Method string
	Path   string
	Query  map[string][]string
	Header http.Header
	Body   []byte
}

// failure is a canned answer for the next request.
type failure struct {
	status  int
	problem usersapi.Problem
	raw     string // sent as is, with status, when not empty
	ctype   string
}

type fake struct {
	usersapi.StrictServerInterface // operations not implemented panic; tests never reach them

	mu       sync.Mutex
	requests []request
	fail     *failure

	sites  []usersapi.Site
	users  []usersapi.User
	groups []usersapi.Group
	audit  []usersapi.AuditEntry

	importResult  *usersapi.ImportResult // answered to an import (200)
	importProblem *usersapi.Problem      // answered to an import (422), if set
	exportCSV     string
	exportJSON    usersapi.UserExport
}

var _ usersapi.StrictServerInterface = (*fake)(nil)

func userID(n int) string { return fmt.Sprintf("01936d3e-8f2a-7c41-9b1e-%012d", n) }

func (f *fake) addUser(username, name, site string, groups ...string) usersapi.User {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := usersapi.User{
		ID: userID(len(f.users) + 1), Version: 1, CreatedAt: created, UpdatedAt: created,
		Username: username, DisplayName: name, PrimaryAddress: username + "@example.org",
		Aliases: []string{}, Site: site, Groups: append([]string{}, groups...), Enabled: true,
		Permissions: usersapi.Permissions{InternetReceive: true},
	}
	f.users = append(f.users, u)
	slices.SortFunc(f.users, func(a, b usersapi.User) int { return strings.Compare(a.Username, b.Username) })
	return u
}

// last is the last request to path (any method), failing the test if none.
func (f *fake) last(t *testing.T, method, path string) request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.requests) - 1; i >= 0; i-- {
		if r := f.requests[i]; r.Method == method && r.Path == path {
			return r
		}
	}
	t.Fatalf("no %s %s among %d requests", method, path, len(f.requests))
	return request{}
}

func (f *fake) count(method, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r.Method == method && r.Path == path {
			n++
		}
	}
	return n
}

func (f *fake) failNext(status int, p usersapi.Problem) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = &failure{status: status, problem: p}
}

func problem(status int, title, detail string, errs ...usersapi.FieldError) usersapi.Problem {
	return usersapi.Problem{Type: "urn:postern:problem:test", Title: title, Status: status, Detail: detail, Errors: errs}
}

// page cuts items at the cursor (an index) and the limit.
func pageOf[T any](items []T, cursor *string, limit *int) ([]T, string) {
	start := 0
	if cursor != nil {
		start, _ = strconv.Atoi(*cursor)
	}
	n := 100
	if limit != nil {
		n = *limit
	}
	start = min(start, len(items))
	end := min(start+n, len(items))
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return append([]T{}, items[start:end]...), next
}

// ---------------------------------------------------------------- sites

func (f *fake) ListSites(_ context.Context, req usersapi.ListSitesRequestObject) (usersapi.ListSitesResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	items, next := pageOf(f.sites, req.Params.Cursor, req.Params.Limit)
	return usersapi.ListSites200JSONResponse{Items: items, NextCursor: next, Total: int64(len(f.sites))}, nil
}

func (f *fake) GetSite(_ context.Context, req usersapi.GetSiteRequestObject) (usersapi.GetSiteResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.sites {
		if s.Name == req.Name {
			return usersapi.GetSite200JSONResponse{SiteJSONResponse: usersapi.SiteJSONResponse{Body: s, Headers: usersapi.SiteResponseHeaders{ETag: `"1"`}}}, nil
		}
	}
	return usersapi.GetSite404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: usersapi.NotFoundApplicationProblemPlusJSONResponse(
		problem(404, "Not found", "No site is named "+req.Name+"."))}, nil
}

func (f *fake) CreateSite(_ context.Context, req usersapi.CreateSiteRequestObject) (usersapi.CreateSiteResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := req.Body
	s := usersapi.Site{ID: b.Name, Name: b.Name, Version: 1, CreatedAt: created, UpdatedAt: created, Domains: []string{}}
	if b.Description != nil {
		s.Description = *b.Description
	}
	if b.Domains != nil {
		s.Domains = *b.Domains
	}
	if b.SMTPEndpoint != nil {
		s.SMTPEndpoint = *b.SMTPEndpoint
	}
	f.sites = append(f.sites, s)
	return usersapi.CreateSite201JSONResponse{Body: s, Headers: usersapi.CreateSite201ResponseHeaders{ETag: `"1"`, Location: "/v1/sites/" + s.Name}}, nil
}

// ---------------------------------------------------------------- users

func (f *fake) ListUsers(_ context.Context, req usersapi.ListUsersRequestObject) (usersapi.ListUsersResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := req.Params
	var match []usersapi.User
	for _, u := range f.users {
		if p.Site != nil && u.Site != *p.Site || p.Group != nil && !slices.Contains(u.Groups, *p.Group) ||
			p.Enabled != nil && u.Enabled != *p.Enabled ||
			p.Q != nil && !strings.Contains(u.Username+" "+u.DisplayName+" "+u.PrimaryAddress, strings.ToLower(*p.Q)) {
			continue
		}
		match = append(match, u)
	}
	items, next := pageOf(match, p.Cursor, p.Limit)
	return usersapi.ListUsers200JSONResponse{Items: items, NextCursor: next, Total: int64(len(match))}, nil
}

func (f *fake) find(id string) int {
	return slices.IndexFunc(f.users, func(u usersapi.User) bool { return u.ID == id })
}

func userNotFound(id string) usersapi.NotFoundApplicationProblemPlusJSONResponse {
	return usersapi.NotFoundApplicationProblemPlusJSONResponse(problem(404, "Not found", "No user has id "+id+"."))
}

func (f *fake) GetUser(_ context.Context, req usersapi.GetUserRequestObject) (usersapi.GetUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(req.ID)
	if i < 0 {
		return usersapi.GetUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: userNotFound(req.ID)}, nil
	}
	u := f.users[i]
	return usersapi.GetUser200JSONResponse{UserJSONResponse: usersapi.UserJSONResponse{Body: u, Headers: usersapi.UserResponseHeaders{ETag: strconv.Quote(strconv.FormatInt(u.Version, 10))}}}, nil
}

func (f *fake) CreateUser(_ context.Context, req usersapi.CreateUserRequestObject) (usersapi.CreateUserResponseObject, error) {
	b := req.Body
	site := ""
	if b.Site != nil {
		site = *b.Site
	}
	u := f.addUser(b.Username, "", site)
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(u.ID)
	if b.DisplayName != nil {
		f.users[i].DisplayName = *b.DisplayName
	}
	if b.PrimaryAddress != nil {
		f.users[i].PrimaryAddress = *b.PrimaryAddress
	}
	if b.Aliases != nil {
		f.users[i].Aliases = *b.Aliases
	}
	if b.Groups != nil {
		f.users[i].Groups = *b.Groups
	}
	if b.QuotaBytes != nil {
		f.users[i].QuotaBytes = *b.QuotaBytes
	}
	if b.Permissions != nil && b.Permissions.InternetSend != nil {
		f.users[i].Permissions.InternetSend = *b.Permissions.InternetSend
	}
	return usersapi.CreateUser201JSONResponse{Body: f.users[i], Headers: usersapi.CreateUser201ResponseHeaders{ETag: `"1"`, Location: "/v1/users/" + u.ID}}, nil
}

func (f *fake) UpdateUser(_ context.Context, req usersapi.UpdateUserRequestObject) (usersapi.UpdateUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(req.ID)
	if i < 0 {
		return usersapi.UpdateUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: userNotFound(req.ID)}, nil
	}
	u := &f.users[i]
	if m := req.Params.IfMatch; m != nil && *m != strconv.Quote(strconv.FormatInt(u.Version, 10)) {
		return usersapi.UpdateUser412ApplicationProblemPlusJSONResponse{PreconditionFailedApplicationProblemPlusJSONResponse: usersapi.PreconditionFailedApplicationProblemPlusJSONResponse(
			problem(412, "The object changed", fmt.Sprintf("If-Match %s does not match the current ETag \"%d\".", *m, u.Version)))}, nil
	}
	b := req.Body
	if b.DisplayName != nil {
		u.DisplayName = *b.DisplayName
	}
	if b.Aliases != nil {
		u.Aliases = *b.Aliases
	}
	if b.Permissions != nil && b.Permissions.InternetSend != nil {
		u.Permissions.InternetSend = *b.Permissions.InternetSend
	}
	u.Version++
	return usersapi.UpdateUser200JSONResponse{UserJSONResponse: usersapi.UserJSONResponse{Body: *u, Headers: usersapi.UserResponseHeaders{ETag: strconv.Quote(strconv.FormatInt(u.Version, 10))}}}, nil
}

func (f *fake) DeleteUser(_ context.Context, req usersapi.DeleteUserRequestObject) (usersapi.DeleteUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(req.ID)
	if i < 0 {
		return usersapi.DeleteUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: userNotFound(req.ID)}, nil
	}
	f.users = slices.Delete(f.users, i, i+1)
	return usersapi.DeleteUser204Response{}, nil
}

func (f *fake) MoveUser(_ context.Context, req usersapi.MoveUserRequestObject) (usersapi.MoveUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.find(req.ID)
	if i < 0 {
		return usersapi.MoveUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: userNotFound(req.ID)}, nil
	}
	f.users[i].Site = req.Body.Site
	f.users[i].Version++
	u := f.users[i]
	return usersapi.MoveUser200JSONResponse{UserJSONResponse: usersapi.UserJSONResponse{Body: u, Headers: usersapi.UserResponseHeaders{ETag: strconv.Quote(strconv.FormatInt(u.Version, 10))}}}, nil
}

func (f *fake) SetUserPassword(_ context.Context, req usersapi.SetUserPasswordRequestObject) (usersapi.SetUserPasswordResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.find(req.ID) < 0 {
		return usersapi.SetUserPassword404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: userNotFound(req.ID)}, nil
	}
	return usersapi.SetUserPassword204Response{}, nil
}

// ---------------------------------------------------------------- groups

func (f *fake) ListGroups(_ context.Context, req usersapi.ListGroupsRequestObject) (usersapi.ListGroupsResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	items, next := pageOf(f.groups, req.Params.Cursor, req.Params.Limit)
	return usersapi.ListGroups200JSONResponse{Items: items, NextCursor: next, Total: int64(len(f.groups))}, nil
}

func (f *fake) GetGroup(_ context.Context, req usersapi.GetGroupRequestObject) (usersapi.GetGroupResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		if g.ID == req.ID {
			return usersapi.GetGroup200JSONResponse{GroupJSONResponse: usersapi.GroupJSONResponse{Body: g, Headers: usersapi.GroupResponseHeaders{ETag: `"1"`}}}, nil
		}
	}
	return usersapi.GetGroup404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: usersapi.NotFoundApplicationProblemPlusJSONResponse(
		problem(404, "Not found", "No group has id "+req.ID+"."))}, nil
}

func (f *fake) CreateGroup(_ context.Context, req usersapi.CreateGroupRequestObject) (usersapi.CreateGroupResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := req.Body
	g := usersapi.Group{ID: fmt.Sprintf("01936d3e-9a10-7b22-8c33-%012d", len(f.groups)+1), Version: 1, CreatedAt: created, UpdatedAt: created,
		Name: b.Name, Members: []usersapi.Member{}}
	if b.Address != nil {
		g.Address = *b.Address
	}
	if b.Description != nil {
		g.Description = *b.Description
	}
	if b.Members != nil {
		g.Members = *b.Members
	}
	f.groups = append(f.groups, g)
	return usersapi.CreateGroup201JSONResponse{Body: g, Headers: usersapi.CreateGroup201ResponseHeaders{ETag: `"1"`, Location: "/v1/groups/" + g.ID}}, nil
}

// ---------------------------------------------------------------- POP3 accounts

func (f *fake) CreatePOP3Account(_ context.Context, req usersapi.CreatePOP3AccountRequestObject) (usersapi.CreatePOP3AccountResponseObject, error) {
	b := req.Body
	a := usersapi.POP3Account{ID: "01936d3f-1234-7abc-8def-0123456789ab", Version: 1, CreatedAt: created, UpdatedAt: created,
		Name: b.Name, Host: b.Host, Port: 995, TLS: usersapi.TLSModeTLS, Auth: usersapi.POP3AuthUser, Username: b.Username,
		Site: b.Site, Mode: usersapi.POP3ModeSingle, EnvelopeHeaders: []string{}, LocalDomains: []string{},
		Keep: usersapi.KeepPolicy{Policy: usersapi.KeepPolicyKindKeep}, PollIntervalSeconds: 300, Enabled: true}
	if b.Mode != nil {
		a.Mode = *b.Mode
	}
	if b.Postmaster != nil {
		a.Postmaster = *b.Postmaster
	}
	if b.TargetUser != nil {
		a.TargetUser = *b.TargetUser
	}
	if b.EnvelopeHeaders != nil {
		a.EnvelopeHeaders = *b.EnvelopeHeaders
	}
	if b.Keep != nil {
		a.Keep = *b.Keep
	}
	if b.PollIntervalSeconds != nil {
		a.PollIntervalSeconds = *b.PollIntervalSeconds
	}
	return usersapi.CreatePOP3Account201JSONResponse{Body: a, Headers: usersapi.CreatePOP3Account201ResponseHeaders{ETag: `"1"`, Location: "/v1/pop3-accounts/" + a.ID}}, nil
}

// ---------------------------------------------------------------- tokens, audit

func (f *fake) CreateToken(_ context.Context, req usersapi.CreateTokenRequestObject) (usersapi.CreateTokenResponseObject, error) {
	b := req.Body
	t := usersapi.CreatedToken{ID: "01936d3e-0000-7000-8000-00000000a002", Version: 1, CreatedAt: created, UpdatedAt: created,
		Name: b.Name, Role: b.Role, ExpiresAt: b.ExpiresAt, Secret: "pst_01936d3e-0000-7000-8000-00000000a002_bmV3LXNlY3JldA"}
	if b.Site != nil {
		t.Site = *b.Site
	}
	return usersapi.CreateToken201JSONResponse{Body: t, Headers: usersapi.CreateToken201ResponseHeaders{ETag: `"1"`, Location: "/v1/tokens/" + t.ID}}, nil
}

func (f *fake) ListAuditEntries(_ context.Context, req usersapi.ListAuditEntriesRequestObject) (usersapi.ListAuditEntriesResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	items, next := pageOf(f.audit, req.Params.Cursor, req.Params.Limit)
	return usersapi.ListAuditEntries200JSONResponse{Items: items, NextCursor: next, Total: int64(len(f.audit))}, nil
}

// ---------------------------------------------------------------- import, export

func (f *fake) ImportUsers(_ context.Context, req usersapi.ImportUsersRequestObject) (usersapi.ImportUsersResponseObject, error) {
	if _, err := csv.NewReader(req.Body).ReadAll(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.importProblem != nil {
		return usersapi.ImportUsers422ApplicationProblemPlusJSONResponse{UnprocessableContentApplicationProblemPlusJSONResponse: usersapi.UnprocessableContentApplicationProblemPlusJSONResponse(*f.importProblem)}, nil
	}
	res := *f.importResult
	res.DryRun = req.Params.DryRun != nil && *req.Params.DryRun
	return usersapi.ImportUsers200JSONResponse(res), nil
}

func (f *fake) ExportUsers(_ context.Context, req usersapi.ExportUsersRequestObject) (usersapi.ExportUsersResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.Params.Format != nil && *req.Params.Format == usersapi.ExportFormatJSON {
		return usersapi.ExportUsers200JSONResponse(f.exportJSON), nil
	}
	return usersapi.ExportUsers200TextCsvResponse{Body: strings.NewReader(f.exportCSV), ContentLength: int64(len(f.exportCSV))}, nil
}

// ---------------------------------------------------------------- the server

type bodyRecorder struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (r *bodyRecorder) Write(p []byte) (int, error) {
	r.buf.Write(p)
	return r.ResponseWriter.Write(p)
}

// middleware records the request, answers a planned failure, checks the
// token, and validates the request and the response against the document.
func (f *fake) middleware(t *testing.T, router routers.Router) echo.MiddlewareFunc {
	opts := &openapi3filter.Options{AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		if in.RequestValidationInput.Request.Header.Get("Authorization") != "Bearer "+testToken {
			return errors.New("bad token")
		}
		return nil
	}}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			body, err := io.ReadAll(req.Body)
			if err != nil {
				return err
			}
			req.Body = io.NopCloser(bytes.NewReader(body))
			f.mu.Lock()
			f.requests = append(f.requests, request{Method: req.Method, Path: req.URL.Path, Query: req.URL.Query(), Header: req.Header.Clone(), Body: body})
			fail := f.fail
			f.fail = nil
			f.mu.Unlock()

			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Errorf("%s %s: not in the document: %v", req.Method, req.URL, err)
				return echo.ErrNotFound
			}
			in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
			if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
				if _, ok := errors.AsType[*openapi3filter.SecurityRequirementsError](err); ok {
					c.Response().Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
					return c.JSON(http.StatusUnauthorized, problem(401, "Authentication required", "The bearer token is unknown or revoked."))
				}
				t.Errorf("%s %s: the CLI sent a request the document refuses: %v", req.Method, req.URL, err)
				return c.JSON(http.StatusBadRequest, problem(400, "Bad request", err.Error()))
			}
			if fail != nil {
				if fail.raw != "" {
					return c.Blob(fail.status, fail.ctype, []byte(fail.raw))
				}
				b, _ := json.Marshal(fail.problem)
				return c.Blob(fail.status, "application/problem+json", b)
			}
			rec := &bodyRecorder{ResponseWriter: c.Response().Writer}
			c.Response().Writer = rec
			if err := next(c); err != nil {
				return err
			}
			out := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: in, Status: c.Response().Status, Header: c.Response().Header(),
				Body: io.NopCloser(bytes.NewReader(rec.buf.Bytes())), Options: &openapi3filter.Options{IncludeResponseStatus: true},
			}
			if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
				t.Errorf("%s %s: the fake's response %d does not match the document: %v", req.Method, req.URL, out.Status, err)
			}
			return nil
		}
	}
}

// serve starts the fake on 127.0.0.1 and returns its URL.
func (f *fake) serve(t *testing.T) string {
	t.Helper()
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.Use(f.middleware(t, router))
	usersapi.RegisterHandlers(e, usersapi.NewStrictHandler(f, nil))
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv.URL
}

// ---------------------------------------------------------------- running commands

type result struct {
	code           int
	stdout, stderr string
}

// cli runs commands against a server URL with the test token in the
// environment.
type cli struct {
	t     *testing.T
	url   string
	token string
	env   Env
}

func newCLI(t *testing.T) (*fake, *cli) {
	f := &fake{
		sites: []usersapi.Site{
			{ID: "branch-lyon", Name: "branch-lyon", Version: 1, CreatedAt: created, UpdatedAt: created, Description: "Lyon branch office", Domains: []string{"lyon.example.org"}, SMTPEndpoint: "mail.lyon.example.org:25"},
			{ID: "headquarters", Name: "headquarters", Version: 3, CreatedAt: created, UpdatedAt: created, Description: "Head office, Paris", Domains: []string{"example.org", "example.fr"}, SMTPEndpoint: "mail.hq.example.org:25"},
		},
	}
	return f, &cli{t: t, url: f.serve(t), token: testToken}
}

func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	var out, errb bytes.Buffer
	env := c.env
	env.Stdin = strings.NewReader(stdin)
	env.Stdout, env.Stderr = &out, &errb
	env.Getenv = func(k string) string {
		switch k {
		case "POSTERN_SERVER":
			return c.url
		case "POSTERN_TOKEN":
			return c.token
		}
		return ""
	}
	code := Run(context.Background(), env, args)
	r := result{code: code, stdout: out.String(), stderr: errb.String()}
	if strings.Contains(r.stdout+r.stderr, c.token) {
		c.t.Errorf("postern %s printed the API token:\n%s%s", strings.Join(args, " "), r.stdout, r.stderr)
	}
	return r
}

// ok runs a command that must succeed.
func (c *cli) ok(args ...string) result {
	c.t.Helper()
	r := c.run("", args...)
	if r.code != 0 {
		c.t.Fatalf("postern %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}
