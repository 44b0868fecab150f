package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func TestProblemFor(t *testing.T) {
	user := &directory.User{Username: "zhangsan", Aliases: []string{"a@example.org", "sales@example.org"}, Groups: []string{"staff", "ghosts"}}
	group := &directory.Group{Members: []directory.Member{{Type: "user", ID: "u1"}, {Type: "group", ID: "g9"}}}
	conflict := &store.ConflictError{Kind: directory.KindUser, Field: "aliases", Value: "sales@example.org",
		OwnerKind: directory.KindSharedMailbox, OwnerID: "m1", OwnerName: "sales@example.org"}
	tests := []struct {
		name      string
		err       error
		obj       any
		status    int
		typ       string
		fields    []string
		detailHas string
	}{
		{"conflict names member, value and owner", conflict, user, 409, typeConflict, []string{"aliases[1]"},
			"The address sales@example.org is already used by shared mailbox sales@example.org."},
		{"conflict without the object", conflict, nil, 409, typeConflict, []string{"aliases"}, "shared mailbox"},
		{"missing group of a user", &store.ReferenceError{Kind: directory.KindUser, Field: "groups", RefKind: directory.KindGroup, Value: "ghosts"},
			user, 422, typeValidation, []string{"groups[1]"}, "1 member is invalid."},
		{"missing member of a group", &store.ReferenceError{Kind: directory.KindGroup, Field: "members", RefKind: directory.KindGroup, Value: "g9"},
			group, 422, typeValidation, []string{"members[1].id"}, ""},
		{"cycle", &store.CycleError{Group: "g1", Path: []string{"g1", "g2", "g1"}}, nil, 422, typeValidation, []string{"members"}, ""},
		{"conflicts and references together, every one listed",
			errors.Join(conflict, &store.ReferenceError{Kind: directory.KindUser, Field: "site", RefKind: directory.KindSite, Value: "paris"}),
			user, 409, typeConflict, []string{"aliases[1]", "site"}, ""},
		{"user manages a shared mailbox", &store.InUseError{Kind: directory.KindUser, ID: "u1", ByKind: directory.KindSharedMailbox,
			ByID: "m1", ByName: "sales@example.org", Role: store.RoleManager, Count: 1}, nil, 409, typeInUse, []string{""},
			"is the manager of shared mailbox sales@example.org"},
		{"site still has users", &store.InUseError{Kind: directory.KindSite, ID: "hq", ByKind: directory.KindUser,
			ByID: "u1", ByName: "john", Role: store.RoleHomeSite, Count: 3}, nil, 409, typeInUse, nil, "3 users still belong to the site"},
		{"stale", &store.StaleError{Kind: directory.KindUser, ID: "u1", Expected: 3, Actual: 4}, nil, 412, typePrecondition, nil, `"4"`},
		{"not found", &store.NotFoundError{Kind: directory.KindUser, Key: "u1"}, nil, 404, typeNotFound, nil, "No user has id u1."},
		{"not found site", fmt.Errorf("get: %w", &store.NotFoundError{Kind: directory.KindSite, Key: "paris"}), nil, 404, typeNotFound, nil, "No site is named paris."},
		{"bad cursor", fmt.Errorf("users store: %w", store.ErrBadCursor), nil, 400, typeBadRequest, []string{"cursor"}, ""},
		{"validation", &directory.ValidationError{Errors: []directory.FieldError{{Field: "username", Reason: "empty"}, {Field: "site", Reason: "required"}}},
			nil, 422, typeValidation, []string{"username", "site"}, "2 members are invalid."},
		{"body too large", &http.MaxBytesError{Limit: 10}, nil, 413, typeTooLarge, nil, ""},
		{"echo not found", echo.ErrNotFound, nil, 404, typeNotFound, nil, ""},
		{"echo method not allowed", echo.ErrMethodNotAllowed, nil, 405, typeMethodNotAllowed, nil, ""},
		{"echo too large", echo.ErrStatusRequestEntityTooLarge, nil, 413, typeTooLarge, nil, ""},
		{"echo bind error", echo.NewHTTPError(http.StatusBadRequest, "Syntax error: offset=3"), nil, 400, typeBadRequest, nil, "offset=3"},
		{"problem passes through", fmt.Errorf("wrapped: %w", forbidden("no")), nil, 403, typeForbidden, nil, "no"},
		{"cancelled", context.Canceled, nil, 503, typeUnavailable, nil, ""},
		{"internal", errors.New("pq: relation users does not exist"), nil, 500, typeInternal, nil, ""},
		{"internal among typed errors", errors.Join(conflict, errors.New("disk full")), nil, 500, typeInternal, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := problemFor(tt.err, tt.obj)
			if p.Status != tt.status || p.Type != tt.typ {
				t.Fatalf("problem %d %s, want %d %s: %+v", p.Status, p.Type, tt.status, tt.typ, p)
			}
			var fields []string
			for _, f := range p.Errors {
				fields = append(fields, f.Field)
				if f.Reason == "" {
					t.Errorf("field %q without a reason", f.Field)
				}
			}
			for _, f := range tt.fields {
				if !slices.Contains(fields, f) {
					t.Errorf("fields %q do not name %q", fields, f)
				}
			}
			if !strings.Contains(p.Detail, tt.detailHas) {
				t.Errorf("detail %q does not say %q", p.Detail, tt.detailHas)
			}
			if p.Status == 500 && (strings.Contains(p.Detail, "pq:") || strings.Contains(p.Detail, "disk")) {
				t.Errorf("internal detail leaks: %q", p.Detail)
			}
		})
	}
}

func TestRequestFieldNames(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "",
		"aliases/1":                 "aliases[1]",
		"permissions/internet_send": "permissions.internet_send",
		"members/0/id":              "members[0].id",
		"keep/days":                 "keep.days",
	} {
		var parts []string
		if in != "" {
			parts = strings.Split(in, "/")
		}
		if got := memberPath(parts); got != want {
			t.Errorf("memberPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCountDetail(t *testing.T) {
	if got := countDetail(1, "member is", "members are", "invalid"); got != "1 member is invalid." {
		t.Error(got)
	}
	if got := countDetail(3, "member is", "members are", "invalid"); got != "3 members are invalid." {
		t.Error(got)
	}
	if got := byteSize(32 << 20); got != "32 MiB" {
		t.Error(got)
	}
	if got := byteSize(512 << 10); got != "512 KiB" {
		t.Error(got)
	}
}

func TestValidationOf(t *testing.T) {
	if validationOf(errors.New("x")) != nil || validationOf(forbidden("x")) != nil {
		t.Error("validationOf of a non-422")
	}
	err := validationOf(invalidField("password", "required"))
	ve, ok := err.(*directory.ValidationError)
	if !ok || len(ve.Errors) != 1 || ve.Errors[0] != (directory.FieldError{Field: "password", Reason: "required"}) {
		t.Errorf("validationOf = %v", err)
	}
	merged := mergeValidation(&directory.ValidationError{Errors: []directory.FieldError{{Field: "a", Reason: "x"}}}, nil, err)
	if mv, ok := merged.(*directory.ValidationError); !ok || len(mv.Errors) != 2 {
		t.Errorf("mergeValidation = %v", merged)
	}
	if mergeValidation(nil, nil) != nil {
		t.Error("mergeValidation of nothing is not nil")
	}
}

func TestAuditViewNamesSecretsAsTheAPI(t *testing.T) {
	before := &directory.POP3Account{Name: "isp", PasswordEnc: "v1:k:AAAA"}
	after := &directory.POP3Account{Name: "isp", PasswordEnc: "v1:k:BBBB"}
	diff := string(directory.Diff(auditView(before), auditView(after)))
	if strings.Contains(diff, "password_enc") || strings.Contains(diff, "AAAA") || !strings.Contains(diff, `"password"`) {
		t.Errorf("POP3 diff %s", diff)
	}
	u := &directory.User{Username: "john", PasswordHash: "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA"}
	diff = string(directory.Diff(nil, auditView(u)))
	if strings.Contains(diff, "password_hash") || strings.Contains(diff, "argon2id") || !strings.Contains(diff, `"password":{"to":"`+directory.Mask+`"}`) {
		t.Errorf("user diff %s", diff)
	}
	if auditView(nil) != nil {
		t.Error("auditView(nil) is not nil")
	}
}

func TestApplyPOP3Patch(t *testing.T) {
	multi := directory.POP3Account{Name: "isp", Host: "pop.example.net", Username: "u", Site: "hq", TLS: directory.TLSImplicit, Port: 995, Mode: directory.ModeMulti, Postmaster: "u1",
		EnvelopeHeaders: []string{"Delivered-To"}, LocalDomains: []string{"example.org"}, FallbackToHeaders: true}
	single := usersapi.POP3ModeSingle
	target := "u2"

	// mode multi -> single clears the multi members not given
	a := multi
	applyPOP3Patch(&a, &multi, &usersapi.POP3AccountPatch{Mode: &single, TargetUser: &target})
	if a.Mode != "single" || a.TargetUser != "u2" || a.Postmaster != "" || len(a.EnvelopeHeaders) != 0 || len(a.LocalDomains) != 0 || a.FallbackToHeaders {
		t.Errorf("multi -> single: %+v", a)
	}
	if err := a.Normalize(); err != nil {
		t.Errorf("multi -> single does not validate: %v", err)
	}

	// TLS tls -> starttls moves the default port, keeps a custom one
	starttls := usersapi.TLSModeStarttls
	a = multi
	applyPOP3Patch(&a, &multi, &usersapi.POP3AccountPatch{TLS: &starttls})
	if err := a.Normalize(); err != nil || a.Port != 110 {
		t.Errorf("tls -> starttls: port %d, %v", a.Port, err)
	}
	custom := multi
	custom.Port = 1995
	a = custom
	applyPOP3Patch(&a, &custom, &usersapi.POP3AccountPatch{TLS: &starttls})
	if a.Port != 1995 {
		t.Errorf("tls -> starttls with a custom port: %d", a.Port)
	}

	// keep is given in full
	a = multi
	a.Keep = directory.KeepPolicy{Policy: directory.KeepDays, Days: 7}
	cur := a
	applyPOP3Patch(&a, &cur, &usersapi.POP3AccountPatch{Keep: &usersapi.KeepPolicy{Policy: usersapi.KeepPolicyKindKeep}})
	if a.Keep != (directory.KeepPolicy{Policy: "keep"}) {
		t.Errorf("keep: %+v", a.Keep)
	}
}

func TestMergePatchHelpers(t *testing.T) {
	s := "old"
	set(&s, nil)
	if s != "old" {
		t.Error("set(nil) changed the value")
	}
	set(&s, ptrTo(""))
	if s != "" {
		t.Error("set(\"\") did not clear the value")
	}
	list := []string{"a", "b"}
	setList(&list, nil)
	if len(list) != 2 {
		t.Error("setList(nil) changed the list")
	}
	src := []string{"c"}
	setList(&list, &src)
	src[0] = "changed"
	if !slices.Equal(list, []string{"c"}) {
		t.Errorf("setList: %q (must copy)", list)
	}
	empty := []string{}
	setList(&list, &empty)
	if list == nil || len(list) != 0 {
		t.Errorf("setList([]): %#v", list)
	}
	perms := directory.Permissions{InternetReceive: true, InternetSend: false}
	setPermissions(&perms, &usersapi.PermissionsPatch{InternetSend: ptrTo(true)})
	if !perms.InternetReceive || !perms.InternetSend {
		t.Errorf("setPermissions merged %+v", perms)
	}
}

func ptrTo[T any](v T) *T { return &v }
