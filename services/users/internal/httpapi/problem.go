package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// Problem types (the document's Problem schema lists them).
const (
	typePrefix           = "urn:postern:problem:"
	typeBadRequest       = typePrefix + "bad-request"
	typeUnauthorized     = typePrefix + "unauthorized"
	typeForbidden        = typePrefix + "forbidden"
	typeNotFound         = typePrefix + "not-found"
	typeMethodNotAllowed = typePrefix + "method-not-allowed"
	typeConflict         = typePrefix + "conflict"
	typeInUse            = typePrefix + "in-use"
	typePrecondition     = typePrefix + "precondition-failed"
	typeTooLarge         = typePrefix + "too-large"
	typeValidation       = typePrefix + "validation"
	typeInternal         = typePrefix + "internal"
	typeUnavailable      = typePrefix + "unavailable"
)

// problemError is an error that is answered as a problem document. Its
// text is what the client may read; cause, when set, is logged and never
// sent.
type problemError struct {
	Status int
	Type   string
	Title  string
	Detail string
	Errors []usersapi.FieldError
	Header http.Header // extra response headers (WWW-Authenticate)
	cause  error
}

func (p *problemError) Error() string {
	s := fmt.Sprintf("%d %s: %s", p.Status, p.Title, p.Detail)
	if p.cause != nil {
		s += ": " + p.cause.Error()
	}
	return s
}

func (p *problemError) Unwrap() error { return p.cause }

// body is the document sent, with instance set to the request's path.
func (p *problemError) body(instance string) usersapi.Problem {
	return usersapi.Problem{Type: p.Type, Title: p.Title, Status: p.Status, Detail: p.Detail, Instance: instance, Errors: p.Errors}
}

func badRequest(detail string, fields ...usersapi.FieldError) *problemError {
	return &problemError{Status: http.StatusBadRequest, Type: typeBadRequest, Title: "The request does not match the API", Detail: detail, Errors: fields}
}

func unauthorized(detail string) *problemError {
	return &problemError{Status: http.StatusUnauthorized, Type: typeUnauthorized, Title: "Authentication required", Detail: detail,
		Header: http.Header{"Www-Authenticate": {`Bearer realm="postern"`}}}
}

func forbidden(detail string) *problemError {
	return &problemError{Status: http.StatusForbidden, Type: typeForbidden, Title: "Not allowed", Detail: detail}
}

func notFound(detail string) *problemError {
	return &problemError{Status: http.StatusNotFound, Type: typeNotFound, Title: "Not found", Detail: detail}
}

func preconditionFailed(detail string) *problemError {
	return &problemError{Status: http.StatusPreconditionFailed, Type: typePrecondition, Title: "The object changed", Detail: detail}
}

func tooLarge(limit int64) *problemError {
	return &problemError{Status: http.StatusRequestEntityTooLarge, Type: typeTooLarge, Title: "Request too large",
		Detail: fmt.Sprintf("The request body is larger than %s.", byteSize(limit))}
}

func invalid(detail string, fields ...usersapi.FieldError) *problemError {
	return &problemError{Status: http.StatusUnprocessableEntity, Type: typeValidation, Title: "Invalid request", Detail: detail, Errors: fields}
}

func internal(cause error) *problemError {
	return &problemError{Status: http.StatusInternalServerError, Type: typeInternal, Title: "Internal error", cause: cause}
}

// invalidField is a 422 about one member.
func invalidField(field, reason string) *problemError {
	return invalid("1 member is invalid.", usersapi.FieldError{Field: field, Reason: reason})
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// countDetail says "1 member is invalid." or "3 members are invalid.".
func countDetail(n int, one, many, what string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s %s.", one, what)
	}
	return fmt.Sprintf("%d %s %s.", n, many, what)
}

// errorHandler answers every error echo or a handler returns as a
// problem document. Internal errors are logged here, once, with their
// detail; the client reads only the request id.
func (h *Handlers) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		if !errors.Is(err, context.Canceled) {
			h.log.WarnContext(c.Request().Context(), "error after the response was sent", "error", err,
				"request_id", requestIDFrom(c.Request().Context()))
		}
		return
	}
	ctx := c.Request().Context()
	p := problemFor(err, nil)
	if p.Status >= 500 {
		rid := requestIDFrom(ctx)
		if p.Type == typeInternal {
			p.Detail = "The request could not be completed; it was logged as " + rid + "."
		}
		level := slogLevelFor(err)
		h.log.Log(ctx, level, "request failed", "method", c.Request().Method, "route", c.Path(),
			"status", p.Status, "request_id", rid, "error", errorText(p))
	}
	for k, vs := range p.Header {
		for _, v := range vs {
			c.Response().Header().Add(k, v)
		}
	}
	if p.Status == http.StatusMethodNotAllowed && c.Response().Header().Get(echo.HeaderAllow) == "" {
		if allow, ok := c.Get(echo.ContextKeyHeaderAllow).(string); ok && allow != "" {
			c.Response().Header().Set(echo.HeaderAllow, allow)
		}
	}
	writeProblem(c, p)
}

func errorText(p *problemError) string {
	if p.cause != nil {
		return p.cause.Error()
	}
	return p.Detail
}

func writeProblem(c echo.Context, p *problemError) {
	b, err := json.Marshal(p.body(c.Request().URL.Path))
	if err != nil {
		b = []byte(`{"type":"` + typeInternal + `","title":"Internal error","status":500}`)
	}
	if c.Request().Method == http.MethodHead {
		c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
		c.Response().WriteHeader(p.Status)
		return
	}
	_ = c.Blob(p.Status, "application/problem+json", append(b, '\n'))
}

// problemFor maps any error to the problem the client gets. obj, when not
// nil, is the directory object being written: it lets a store error name
// the member precisely (aliases[2] rather than aliases).
func problemFor(err error, obj any) *problemError { return problemOf(err, obj, false) }

// problemForAs is problemFor for a request of p: a site_admin is not told
// which object holds a value its write conflicts with (it may be another
// site's user), only its kind.
func problemForAs(p auth.Principal, err error, obj any) *problemError {
	return problemOf(err, obj, hidesOwners(p))
}

// hidesOwners says whether conflicts are reported to p without their owner.
func hidesOwners(p auth.Principal) bool { return p.Role == directory.RoleSiteAdmin }

func problemOf(err error, obj any, hideOwners bool) *problemError {
	if p, ok := errors.AsType[*problemError](err); ok {
		return p
	}
	if mb, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge(mb.Limit)
	}
	if he, ok := errors.AsType[*echo.HTTPError](err); ok {
		return echoProblem(he)
	}
	if ve, ok := errors.AsType[*directory.ValidationError](err); ok {
		return validationProblem(ve)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &problemError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Title: "Unavailable",
			Detail: "The request was cancelled or took too long; try again.", cause: err}
	}
	if p := storeProblem(err, obj, hideOwners); p != nil {
		return p
	}
	return internal(err)
}

func slogLevelFor(err error) slog.Level {
	if errors.Is(err, context.Canceled) {
		return slog.LevelInfo // the client went away
	}
	return slog.LevelError
}

func echoProblem(he *echo.HTTPError) *problemError {
	msg := ""
	if s, ok := he.Message.(string); ok {
		msg = s
	}
	switch he.Code {
	case http.StatusNotFound:
		return notFound("No operation of this API has this path.")
	case http.StatusMethodNotAllowed:
		return &problemError{Status: he.Code, Type: typeMethodNotAllowed, Title: "Method not allowed",
			Detail: "This path does not support this method; see the Allow header."}
	case http.StatusRequestEntityTooLarge:
		return &problemError{Status: he.Code, Type: typeTooLarge, Title: "Request too large", Detail: "The request body is too large."}
	case http.StatusUnsupportedMediaType:
		return badRequest("The body's Content-Type is not one this operation accepts.", usersapi.FieldError{Field: "Content-Type", Reason: "unsupported"})
	case http.StatusBadRequest:
		if msg == "" || msg == http.StatusText(http.StatusBadRequest) {
			msg = "The request is malformed."
		}
		return badRequest(msg)
	case http.StatusUnauthorized:
		return unauthorized("This API needs a bearer token.")
	case http.StatusForbidden:
		return forbidden("Not allowed.")
	case http.StatusServiceUnavailable:
		return &problemError{Status: he.Code, Type: typeUnavailable, Title: "Unavailable", Detail: "The service is unavailable; try again."}
	}
	if he.Code >= 400 && he.Code < 500 {
		return &problemError{Status: he.Code, Type: typeBadRequest, Title: http.StatusText(he.Code), Detail: msg}
	}
	return internal(he)
}

// validationProblem is the 422 of a directory validation error.
func validationProblem(ve *directory.ValidationError) *problemError {
	fields := make([]usersapi.FieldError, len(ve.Errors))
	for i, fe := range ve.Errors {
		fields[i] = usersapi.FieldError{Field: fe.Field, Reason: fe.Reason}
	}
	return invalid(countDetail(len(fields), "member is", "members are", "invalid"), fields...)
}

// flattenErrors lists the errors joined in err (errors.Join, several
// levels), unwrapping store ItemErrors.
func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	}
	if ie, ok := err.(*store.ItemError); ok {
		return flattenErrors(ie.Err)
	}
	return []error{err}
}

// storeProblem maps the typed errors of the store (alone or joined): a
// conflict is 409 (every problem listed), a reference to a missing object
// or a group cycle 422, a refused delete 409 in-use, a stale version 412,
// a missing object 404, a bad cursor 400. nil when err is none of these.
func storeProblem(err error, obj any, hideOwners bool) *problemError {
	errs := flattenErrors(err)
	if len(errs) == 0 {
		return nil
	}
	var (
		fields         []usersapi.FieldError
		conflicts, bad int
		inUse          []string
		details        []string
	)
	for _, e := range errs {
		if x, ok := errors.AsType[*store.ConflictError](e); ok {
			conflicts++
			fields = append(fields, usersapi.FieldError{Field: refineField(obj, x.Field, x.Value), Reason: conflictReason(x, hideOwners)})
			details = append(details, conflictDetail(x, hideOwners))
		} else if x, ok := errors.AsType[*store.ReferenceError](e); ok {
			bad++
			fields = append(fields, usersapi.FieldError{Field: refineField(obj, x.Field, x.Value), Reason: referenceReason(x)})
		} else if x, ok := errors.AsType[*store.CycleError](e); ok {
			bad++
			fields = append(fields, usersapi.FieldError{Field: "members", Reason: "the members would make the group contain itself: " + strings.Join(x.Path, " > ")})
		} else if x, ok := errors.AsType[*directory.ValidationError](e); ok {
			bad++
			for _, fe := range x.Errors {
				fields = append(fields, usersapi.FieldError{Field: fe.Field, Reason: fe.Reason})
			}
		} else if x, ok := errors.AsType[*store.InUseError](e); ok {
			inUse = append(inUse, inUseReason(x))
		} else if x, ok := errors.AsType[*store.StaleError](e); ok {
			return preconditionFailed(fmt.Sprintf("The object changed since it was read; its ETag is now %s.", etag(x.Actual)))
		} else if x, ok := errors.AsType[*store.NotFoundError](e); ok {
			return notFound(notFoundDetail(x.Kind, x.Key))
		} else {
			switch {
			case errors.Is(e, store.ErrNotFound):
				return notFound("The object does not exist.")
			case errors.Is(e, store.ErrStale):
				return preconditionFailed("The object changed since it was read.")
			case errors.Is(e, store.ErrBadCursor):
				return badRequest("The cursor is not one this list gave.", usersapi.FieldError{Field: "cursor", Reason: "not a cursor of this list; start again without one"})
			}
			return nil // an internal error somewhere in the lot
		}
	}
	switch {
	case len(inUse) > 0:
		p := &problemError{Status: http.StatusConflict, Type: typeInUse, Title: "Still in use", Detail: strings.Join(inUse, " ")}
		for _, r := range inUse {
			p.Errors = append(p.Errors, usersapi.FieldError{Field: "", Reason: r})
		}
		return p
	case conflicts > 0:
		detail := countDetail(conflicts, "value is", "values are", "already used")
		if conflicts == 1 && len(details) == 1 {
			detail = details[0]
		}
		return &problemError{Status: http.StatusConflict, Type: typeConflict, Title: "Conflict", Detail: detail, Errors: fields}
	case bad > 0:
		return invalid422(fields)
	}
	return nil
}

func invalid422(fields []usersapi.FieldError) *problemError {
	return invalid(countDetail(len(fields), "member is", "members are", "invalid"), fields...)
}

// refineField names the element of a list member that holds value
// ("aliases" → "aliases[1]", "members" → "members[0].id").
func refineField(obj any, field, value string) string {
	var list []string
	suffix := ""
	switch o := obj.(type) {
	case *directory.User:
		switch field {
		case "aliases":
			list = o.Aliases
		case "groups":
			list = o.Groups
		}
	case *directory.Group:
		if field == "members" {
			for _, m := range o.Members {
				list = append(list, m.ID)
			}
			suffix = ".id"
		}
	case *directory.SharedMailbox:
		if field == "staff" {
			list = o.Staff
		}
	}
	if i := slices.Index(list, value); i >= 0 {
		return fmt.Sprintf("%s[%d]%s", field, i, suffix)
	}
	return field
}

// describe names an object for people: "user john", "shared mailbox
// sales@example.org".
func describe(kind, name, id string) string {
	k := strings.ReplaceAll(kind, "_", " ")
	if kind == directory.KindPOP3Account {
		k = "POP3 account"
	}
	switch {
	case name != "":
		return k + " " + name
	case id != "":
		return k + " " + id
	}
	return k
}

func fieldLabel(field string) string {
	switch field {
	case "primary_address", "aliases", "address":
		return "address"
	case "secret_hash":
		return "secret"
	}
	return field
}

// conflictOwner names the holder of a conflicting value; hidden, only its
// kind ("a user").
func conflictOwner(e *store.ConflictError, hidden bool) string {
	if hidden {
		return "a " + describe(e.OwnerKind, "", "")
	}
	return describe(e.OwnerKind, e.OwnerName, e.OwnerID)
}

func conflictReason(e *store.ConflictError, hideOwner bool) string {
	return fmt.Sprintf("%s is already used by %s", e.Value, conflictOwner(e, hideOwner))
}

// conflictDetail: "The address sales@example.org is already used by shared mailbox sales@example.org."
func conflictDetail(e *store.ConflictError, hideOwner bool) string {
	return fmt.Sprintf("The %s %s is already used by %s.", fieldLabel(e.Field), e.Value, conflictOwner(e, hideOwner))
}

func referenceReason(e *store.ReferenceError) string {
	switch e.RefKind {
	case directory.KindSite, directory.KindTemplate:
		return fmt.Sprintf("no %s is named %s", e.RefKind, e.Value)
	case directory.KindGroup:
		if e.Kind == directory.KindUser || e.Kind == directory.KindTemplate {
			return fmt.Sprintf("no group is named %s", e.Value)
		}
		return fmt.Sprintf("no group has id %s", e.Value)
	case directory.KindUser:
		return fmt.Sprintf("no user has id %s", e.Value)
	}
	return fmt.Sprintf("no %s is %s", strings.ReplaceAll(e.RefKind, "_", " "), e.Value)
}

func inUseReason(e *store.InUseError) string {
	by := describe(e.ByKind, e.ByName, e.ByID)
	what := describe(e.Kind, "", e.ID)
	switch e.Role {
	case store.RoleManager:
		return fmt.Sprintf("The %s is the manager of %s; change its manager first.", what, by)
	case store.RoleOnlyStaff:
		return fmt.Sprintf("The %s is the only staff member of %s; add another staff member first.", what, by)
	case store.RoleTargetUser:
		return fmt.Sprintf("The %s receives the mail of %s; change its target user first.", what, by)
	case store.RolePostmaster:
		return fmt.Sprintf("The %s is the postmaster of %s; change its postmaster first.", what, by)
	case store.RoleHomeSite:
		kind := strings.ReplaceAll(e.ByKind, "_", " ")
		if e.ByKind == directory.KindPOP3Account {
			kind = "POP3 account"
		}
		if e.Count > 1 {
			return fmt.Sprintf("%d %ss still belong to the site, such as %s; move or delete them first.", e.Count, kind, by)
		}
		return fmt.Sprintf("The %s still belongs to the site; move or delete it first.", by)
	}
	return fmt.Sprintf("The %s is still used by %s.", what, by)
}

func notFoundDetail(kind, key string) string {
	switch kind {
	case directory.KindSite:
		return fmt.Sprintf("No site is named %s.", key)
	case directory.KindPOP3Account:
		return fmt.Sprintf("No POP3 account has id %s.", key)
	}
	return fmt.Sprintf("No %s has id %s.", strings.ReplaceAll(kind, "_", " "), key)
}
