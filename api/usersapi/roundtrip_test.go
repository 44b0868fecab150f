package usersapi_test

// The generated server and the generated client must agree with each other
// and with the document: a trivial strict server for a few operations runs
// behind echo on 127.0.0.1, every request and response is validated against
// users.yaml by kin-openapi, and the calls go through the generated client.

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
	"github.com/postern/postern/api/usersclient"
)

const token = "pst_t1_0123456789012345678901234567890123456789012"

// fake implements a few operations over one in-memory user; the others
// panic (the embedded interface is nil), which the test never reaches.
type fake struct {
	usersapi.StrictServerInterface

	mu   sync.Mutex
	user usersapi.User
}

var _ usersapi.StrictServerInterface = (*fake)(nil)

func etag(version int64) string { return fmt.Sprintf("%q", fmt.Sprint(version)) }

func notFound(id string) usersapi.NotFoundApplicationProblemPlusJSONResponse {
	return usersapi.NotFoundApplicationProblemPlusJSONResponse{
		Type: "urn:postern:problem:not-found", Title: "Not found", Status: http.StatusNotFound,
		Detail: "No user has id " + id + ".", Instance: "/v1/users/" + id,
	}
}

func (f *fake) GetUser(_ context.Context, req usersapi.GetUserRequestObject) (usersapi.GetUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.ID != f.user.ID {
		return usersapi.GetUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: notFound(req.ID)}, nil
	}
	tag := etag(f.user.Version)
	if req.Params.IfNoneMatch != nil && *req.Params.IfNoneMatch == tag {
		return usersapi.GetUser304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: tag}}, nil
	}
	return usersapi.GetUser200JSONResponse{UserJSONResponse: usersapi.UserJSONResponse{
		Body: f.user, Headers: usersapi.UserResponseHeaders{ETag: tag},
	}}, nil
}

func (f *fake) UpdateUser(_ context.Context, req usersapi.UpdateUserRequestObject) (usersapi.UpdateUserResponseObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.ID != f.user.ID {
		return usersapi.UpdateUser404ApplicationProblemPlusJSONResponse{NotFoundApplicationProblemPlusJSONResponse: notFound(req.ID)}, nil
	}
	if m := req.Params.IfMatch; m != nil && *m != etag(f.user.Version) {
		return usersapi.UpdateUser412ApplicationProblemPlusJSONResponse{PreconditionFailedApplicationProblemPlusJSONResponse: usersapi.PreconditionFailedApplicationProblemPlusJSONResponse{
			Type: "urn:postern:problem:precondition-failed", Title: "The object changed", Status: http.StatusPreconditionFailed,
		}}, nil
	}
	p := req.Body
	if p.DisplayName != nil {
		f.user.DisplayName = *p.DisplayName
	}
	if p.Aliases != nil {
		f.user.Aliases = *p.Aliases
	}
	if p.Permissions != nil && p.Permissions.InternetSend != nil {
		f.user.Permissions.InternetSend = *p.Permissions.InternetSend
	}
	f.user.Version++
	f.user.UpdatedAt = f.user.UpdatedAt.Add(time.Minute)
	return usersapi.UpdateUser200JSONResponse{UserJSONResponse: usersapi.UserJSONResponse{
		Body: f.user, Headers: usersapi.UserResponseHeaders{ETag: etag(f.user.Version)},
	}}, nil
}

// ImportUsers reads the CSV body: a line without a username is bad.
func (f *fake) ImportUsers(_ context.Context, req usersapi.ImportUsersRequestObject) (usersapi.ImportUsersResponseObject, error) {
	records, err := csv.NewReader(req.Body).ReadAll()
	if err != nil || len(records) == 0 || records[0][0] != "username" {
		return usersapi.ImportUsers400ApplicationProblemPlusJSONResponse{BadRequestApplicationProblemPlusJSONResponse: usersapi.BadRequestApplicationProblemPlusJSONResponse{
			Type: "urn:postern:problem:bad-request", Title: "Unreadable CSV", Status: http.StatusBadRequest,
		}}, nil
	}
	res := usersapi.ImportResult{DryRun: req.Params.DryRun != nil && *req.Params.DryRun, Created: []string{}, Updated: []string{}, Errors: []usersapi.FieldError{}}
	for i, r := range records[1:] {
		if r[0] == "" {
			res.Errors = append(res.Errors, usersapi.FieldError{Field: "username", Line: i + 2, Column: 1, Reason: "required"})
			continue
		}
		res.Created = append(res.Created, r[0])
	}
	if len(res.Errors) > 0 && !res.DryRun {
		return usersapi.ImportUsers422ApplicationProblemPlusJSONResponse{UnprocessableContentApplicationProblemPlusJSONResponse: usersapi.UnprocessableContentApplicationProblemPlusJSONResponse{
			Type: "urn:postern:problem:validation", Title: "Invalid CSV file", Status: http.StatusUnprocessableEntity,
			Errors: res.Errors,
		}}, nil
	}
	return usersapi.ImportUsers200JSONResponse(res), nil
}

func (f *fake) ExportUsers(_ context.Context, req usersapi.ExportUsersRequestObject) (usersapi.ExportUsersResponseObject, error) {
	f.mu.Lock()
	u := f.user
	f.mu.Unlock()
	if req.Params.Format != nil && *req.Params.Format == usersapi.ExportFormatJSON {
		return usersapi.ExportUsers200JSONResponse{{
			Username: u.Username, Description: u.DisplayName, Email: u.PrimaryAddress,
			Aliases: u.Aliases, Site: u.Site, Groups: u.Groups, Enabled: u.Enabled,
			InternetReceive: u.Permissions.InternetReceive, InternetSend: u.Permissions.InternetSend,
			QuotaBytes: u.QuotaBytes,
		}}, nil
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	_ = w.Write([]string{"username", "description", "email"})
	_ = w.Write([]string{u.Username, u.DisplayName, u.PrimaryAddress})
	w.Flush()
	return usersapi.ExportUsers200TextCsvResponse{Body: &buf, ContentLength: int64(buf.Len())}, nil
}

func (f *fake) GetSync(_ context.Context, req usersapi.GetSyncRequestObject) (usersapi.GetSyncResponseObject, error) {
	f.mu.Lock()
	data, err := json.Marshal(f.user)
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if req.Params.Cursor != nil && *req.Params.Cursor != "0" {
		return usersapi.GetSync200JSONResponse{Cursor: *req.Params.Cursor, Changes: []usersapi.SyncChange{}}, nil
	}
	return usersapi.GetSync200JSONResponse{Cursor: "7", Snapshot: true, Changes: []usersapi.SyncChange{{
		Seq: 7, Kind: usersapi.ChangeKindUser, ID: f.user.ID, Op: usersapi.ChangeOpUpsert, Data: data, Keys: []string{f.user.Username},
	}}}, nil
}

// bodyRecorder keeps a copy of what the handler writes, for the response
// validation.
type bodyRecorder struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (r *bodyRecorder) Write(p []byte) (int, error) {
	r.buf.Write(p)
	return r.ResponseWriter.Write(p)
}

// validator checks the bearer token, and every request and response
// against the document; a request the document refuses gets 400 as a
// problem, a response it refuses fails the test.
func validator(t *testing.T, router routers.Router) echo.MiddlewareFunc {
	opts := &openapi3filter.Options{
		AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
			if in.RequestValidationInput.Request.Header.Get("Authorization") != "Bearer "+token {
				return errors.New("bad token")
			}
			return nil
		},
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Errorf("%s %s: no route: %v", req.Method, req.URL, err)
				return echo.ErrNotFound
			}
			in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
			if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
				if _, ok := errors.AsType[*openapi3filter.SecurityRequirementsError](err); ok {
					c.Response().Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
					return c.Blob(http.StatusUnauthorized, "application/problem+json",
						[]byte(`{"type":"urn:postern:problem:unauthorized","title":"Authentication required","status":401}`))
				}
				return c.Blob(http.StatusBadRequest, "application/problem+json",
					[]byte(`{"type":"urn:postern:problem:bad-request","title":"Bad request","status":400}`))
			}
			rec := &bodyRecorder{ResponseWriter: c.Response().Writer}
			c.Response().Writer = rec
			if err := next(c); err != nil {
				return err
			}
			out := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: in,
				Status:                 c.Response().Status,
				Header:                 c.Response().Header(),
				Body:                   io.NopCloser(bytes.NewReader(rec.buf.Bytes())),
				Options:                &openapi3filter.Options{IncludeResponseStatus: true},
			}
			if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
				t.Errorf("%s %s: response %d does not match the document: %v", req.Method, req.URL, out.Status, err)
			}
			return nil
		}
	}
}

func start(t *testing.T) (*fake, *usersclient.ClientWithResponses) {
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
	created := time.Date(2026, 1, 15, 9, 31, 0, 0, time.UTC)
	f := &fake{user: usersapi.User{
		ID: "01936d3e-8f2a-7c41-9b1e-4a5c6d7e8f90", Version: 1, CreatedAt: created, UpdatedAt: created,
		Username: "zhangsan", DisplayName: "Zhang San", PrimaryAddress: "zhangsan@example.org",
		Aliases: []string{}, Site: "headquarters", Groups: []string{"sales"}, Enabled: true,
		Permissions: usersapi.Permissions{InternetReceive: true},
	}}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.Use(validator(t, router))
	usersapi.RegisterHandlers(e, usersapi.NewStrictHandler(f, nil))
	srv := httptest.NewServer(e) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	c, err := usersclient.NewClientWithResponses(srv.URL, usersclient.WithRequestEditorFn(
		func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func ptr[T any](v T) *T { return &v }

func TestGetAndConditionalUpdate(t *testing.T) {
	f, c := start(t)
	ctx := context.Background()
	id := f.user.ID

	got, err := c.GetUserWithResponse(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.StatusCode() != http.StatusOK || got.JSON200 == nil || got.JSON200.Username != "zhangsan" {
		t.Fatalf("get: %d %s", got.StatusCode(), got.Body)
	}
	if got.Headers200 == nil || got.Headers200.ETag != `"1"` {
		t.Fatalf("get: ETag %+v", got.Headers200)
	}
	tag := got.Headers200.ETag

	nm, err := c.GetUserWithResponse(ctx, id, &usersclient.GetUserParams{IfNoneMatch: &tag})
	if err != nil {
		t.Fatal(err)
	}
	if nm.StatusCode() != http.StatusNotModified || len(nm.Body) != 0 {
		t.Fatalf("If-None-Match: %d %q", nm.StatusCode(), nm.Body)
	}

	nf, err := c.GetUserWithResponse(ctx, "nobody", nil)
	if err != nil {
		t.Fatal(err)
	}
	if nf.StatusCode() != http.StatusNotFound || nf.ApplicationProblemJSON404 == nil ||
		nf.ApplicationProblemJSON404.Type != "urn:postern:problem:not-found" ||
		nf.HTTPResponse.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("unknown id: %d %s", nf.StatusCode(), nf.Body)
	}

	patch := usersclient.UserPatch{DisplayName: ptr("Zhang San (Sales)"), Permissions: &usersclient.PermissionsPatch{InternetSend: ptr(true)}}
	up, err := c.UpdateUserWithResponse(ctx, id, &usersclient.UpdateUserParams{IfMatch: &tag}, patch)
	if err != nil {
		t.Fatal(err)
	}
	if up.StatusCode() != http.StatusOK || up.JSON200.DisplayName != "Zhang San (Sales)" ||
		!up.JSON200.Permissions.InternetSend || !up.JSON200.Permissions.InternetReceive || up.Headers200.ETag != `"2"` {
		t.Fatalf("update: %d %s", up.StatusCode(), up.Body)
	}

	stale, err := c.UpdateUserWithResponse(ctx, id, &usersclient.UpdateUserParams{IfMatch: &tag}, patch)
	if err != nil {
		t.Fatal(err)
	}
	if stale.StatusCode() != http.StatusPreconditionFailed || stale.ApplicationProblemJSON412 == nil || stale.ApplicationProblemJSON412.Status != 412 {
		t.Fatalf("stale If-Match: %d %s", stale.StatusCode(), stale.Body)
	}

	// The document refuses null in a patch before the handler sees it.
	raw, err := c.UpdateUserWithBodyWithResponse(ctx, id, nil, "application/json", strings.NewReader(`{"display_name":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if raw.StatusCode() != http.StatusBadRequest || raw.ApplicationProblemJSON400 == nil {
		t.Fatalf("null member: %d %s", raw.StatusCode(), raw.Body)
	}
}

func TestCSVImportAndExport(t *testing.T) {
	_, c := start(t)
	ctx := context.Background()
	const good = "username,description,password\njohn,John Doe,abcd\nlisi,Li Si,efgh\n"
	const bad = "username,description,password\njohn,John Doe,abcd\n,Nobody,x\n,Nobody either,y\n"

	ok, err := c.ImportUsersWithBodyWithResponse(ctx, &usersclient.ImportUsersParams{Template: ptr("staff")}, "text/csv", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if ok.StatusCode() != http.StatusOK || ok.JSON200 == nil || strings.Join(ok.JSON200.Created, ",") != "john,lisi" || ok.JSON200.DryRun {
		t.Fatalf("import: %d %s", ok.StatusCode(), ok.Body)
	}

	dry, err := c.ImportUsersWithBodyWithResponse(ctx, &usersclient.ImportUsersParams{DryRun: ptr(true)}, "text/csv", strings.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	if dry.StatusCode() != http.StatusOK || !dry.JSON200.DryRun || len(dry.JSON200.Errors) != 2 {
		t.Fatalf("dry run: %d %s", dry.StatusCode(), dry.Body)
	}

	rejected, err := c.ImportUsersWithBodyWithResponse(ctx, nil, "text/csv", strings.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	p := rejected.ApplicationProblemJSON422
	if rejected.StatusCode() != http.StatusUnprocessableEntity || p == nil || len(p.Errors) != 2 ||
		p.Errors[0].Line != 3 || p.Errors[1].Line != 4 || p.Errors[0].Column != 1 {
		t.Fatalf("bad CSV: %d %s", rejected.StatusCode(), rejected.Body)
	}

	exp, err := c.ExportUsersWithResponse(ctx, &usersclient.ExportUsersParams{Format: ptr(usersclient.ExportFormatCsv)})
	if err != nil {
		t.Fatal(err)
	}
	if exp.StatusCode() != http.StatusOK || exp.HTTPResponse.Header.Get("Content-Type") != "text/csv" ||
		string(exp.Body) != "username,description,email\nzhangsan,Zhang San,zhangsan@example.org\n" {
		t.Fatalf("CSV export: %d %q", exp.StatusCode(), exp.Body)
	}

	js, err := c.ExportUsersWithResponse(ctx, &usersclient.ExportUsersParams{Format: ptr(usersclient.ExportFormatJSON)})
	if err != nil {
		t.Fatal(err)
	}
	if js.StatusCode() != http.StatusOK || js.JSON200 == nil || len(*js.JSON200) != 1 || (*js.JSON200)[0].Email != "zhangsan@example.org" {
		t.Fatalf("JSON export: %d %s", js.StatusCode(), js.Body)
	}
}

func TestSyncAndAuth(t *testing.T) {
	f, c := start(t)
	ctx := context.Background()

	s, err := c.GetSyncWithResponse(ctx, &usersclient.GetSyncParams{Cursor: ptr("0")})
	if err != nil {
		t.Fatal(err)
	}
	if s.StatusCode() != http.StatusOK || !s.JSON200.Snapshot || s.JSON200.Cursor != "7" || len(s.JSON200.Changes) != 1 {
		t.Fatalf("sync: %d %s", s.StatusCode(), s.Body)
	}
	var u usersclient.User
	if err := json.Unmarshal(s.JSON200.Changes[0].Data, &u); err != nil || u.ID != f.user.ID || u.Site != "headquarters" {
		t.Fatalf("sync data: %v %+v", err, u)
	}

	// No token: the document's security requirement refuses the request.
	anon, err := usersclient.NewClientWithResponses(c.ClientInterface.(*usersclient.Client).Server)
	if err != nil {
		t.Fatal(err)
	}
	r, err := anon.GetSyncWithResponse(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode() != http.StatusUnauthorized || r.ApplicationProblemJSON401 == nil ||
		r.HTTPResponse.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %s", r.StatusCode(), r.Body)
	}
}
