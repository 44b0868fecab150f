package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/openapi"
	"github.com/postern/postern/api/usersapi"
)

// routeKey is an operation as echo routes it: the method and the path
// template in echo's syntax (/v1/users/:id).
type routeKey struct{ method, path string }

var pathParam = regexp.MustCompile(`\{([^}/]+)\}`)

// loadRoutes loads the OpenAPI document and indexes its operations by
// the routes the generated server registers in echo, so that validation
// needs no second router.
func loadRoutes() (map[routeKey]*routers.Route, error) {
	doc, err := openapi.Load()
	if err != nil {
		return nil, fmt.Errorf("users api: %w", err)
	}
	doc.Servers = nil // any host
	routes := map[routeKey]*routers.Route{}
	for path, item := range doc.Paths.Map() {
		echoPath := pathParam.ReplaceAllString(path, ":$1")
		for method, op := range item.Operations() {
			routes[routeKey{method, echoPath}] = &routers.Route{
				Spec: doc, Path: path, PathItem: item, Method: method, Operation: op,
			}
		}
	}
	return routes, nil
}

// operation returns the document's route c was routed to, or nil for
// echo's not-found and method-not-allowed answers.
func (h *Handlers) operation(c echo.Context) *routers.Route {
	return h.routes[routeKey{c.Request().Method, c.Path()}]
}

// Operations whose body the validator leaves to the handler: the CSV of
// an import is checked line by line (422 naming every bad line), not
// refused whole by the CSV decoder (400).
var bodyByHandler = map[string]bool{"importUsers": true}

// validate checks the request against the document: parameters, headers
// and the JSON body (types, enumerations, ranges, unknown members, null).
// The security requirement is the authentication middleware's, and
// defaults are not written into the request: handlers must know what the
// client left out (merge patches, templates).
func (h *Handlers) validate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		route := h.operation(c)
		if route == nil {
			return next(c) // echo answers 404 or 405
		}
		req := c.Request()
		if bodyByHandler[route.Operation.OperationID] {
			if err := checkContentType(req, route.Operation.RequestBody); err != nil {
				return err
			}
		}
		params := map[string]string{}
		for i, name := range c.ParamNames() {
			params[name] = c.ParamValues()[i]
		}
		opts := &openapi3filter.Options{
			MultiError:              true,
			AuthenticationFunc:      openapi3filter.NoopAuthenticationFunc,
			SkipSettingDefaults:     true,
			KeepValidatedValue:      true,
			ExcludeRequestBody:      bodyByHandler[route.Operation.OperationID],
			SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.DisableSchemaErrorDetails()},
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			return requestProblem(err)
		}
		return next(c)
	}
}

// checkContentType refuses (400) a body whose Content-Type the operation
// does not accept (the validator does it for the bodies it reads).
func checkContentType(req *http.Request, body *openapi3.RequestBodyRef) error {
	if body == nil || body.Value == nil {
		return nil
	}
	ct := req.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && body.Value.Content.Get(mt) != nil {
		return nil
	}
	return badRequest("The body's Content-Type is not one this operation accepts.",
		usersapi.FieldError{Field: "Content-Type", Reason: "must be " + strings.Join(contentTypes(body.Value), " or ")})
}

// requestProblem turns the validator's error into a 400 problem listing
// every offending member or parameter (413 when the body was too large).
func requestProblem(err error) error {
	if mb, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return tooLarge(mb.Limit)
	}
	var fields []usersapi.FieldError
	for _, e := range flattenValidation(err) {
		fields = append(fields, fieldErrorsOf(e)...)
	}
	if len(fields) == 0 {
		fields = []usersapi.FieldError{{Field: "", Reason: "does not match the API"}}
	}
	slices.SortStableFunc(fields, func(a, b usersapi.FieldError) int { return strings.Compare(a.Field, b.Field) })
	fields = slices.Compact(fields)
	p := badRequest(countDetail(len(fields), "member or parameter is", "members or parameters are", "malformed"), fields...)
	return p
}

// flattenValidation lists the leaves of the validator's error tree
// (openapi3.MultiError, and RequestErrors whose Err is one).
func flattenValidation(err error) []error {
	var out []error
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case openapi3.MultiError:
			for _, x := range e {
				walk(x)
			}
		case *openapi3filter.RequestError:
			if me, ok := e.Err.(openapi3.MultiError); ok {
				for _, x := range me {
					out = append(out, &openapi3filter.RequestError{Input: e.Input, Parameter: e.Parameter, RequestBody: e.RequestBody, Reason: e.Reason, Err: x})
				}
				return
			}
			out = append(out, e)
		default:
			out = append(out, err)
		}
	}
	walk(err)
	return out
}

var unsupportedProperty = regexp.MustCompile(`^property "(.*)" is unsupported$`)

// fieldErrorsOf describes one validation failure. Reasons come from the
// schema (never the value, which may be a secret) or are written here.
func fieldErrorsOf(err error) []usersapi.FieldError {
	re, ok := err.(*openapi3filter.RequestError)
	if !ok {
		return []usersapi.FieldError{{Field: "", Reason: "does not match the API"}}
	}
	if p := re.Parameter; p != nil {
		field := p.Name
		switch {
		case errors.Is(re.Err, openapi3filter.ErrInvalidRequired):
			return []usersapi.FieldError{{Field: field, Reason: "required"}}
		case re.Err != nil:
			if se, ok := re.Err.(*openapi3.SchemaError); ok {
				return []usersapi.FieldError{{Field: field, Reason: schemaReason(se)}}
			}
			if pe, ok := re.Err.(*openapi3filter.ParseError); ok {
				return []usersapi.FieldError{{Field: field, Reason: parseReason(pe)}}
			}
			return []usersapi.FieldError{{Field: field, Reason: "malformed"}}
		}
		return []usersapi.FieldError{{Field: field, Reason: orDefault(re.Reason, "malformed")}}
	}
	// The body.
	switch {
	case errors.Is(re.Err, openapi3filter.ErrInvalidRequired):
		return []usersapi.FieldError{{Field: "", Reason: "a request body is required"}}
	case strings.HasPrefix(re.Reason, "header Content-Type has unexpected value"):
		return []usersapi.FieldError{{Field: "Content-Type", Reason: "must be " + strings.Join(contentTypes(re.RequestBody), " or ")}}
	}
	if se, ok := re.Err.(*openapi3.SchemaError); ok {
		path := se.JSONPointer()
		reason := schemaReason(se)
		if m := unsupportedProperty.FindStringSubmatch(se.Reason); m != nil {
			path = append(path, m[1])
			reason = "unknown member"
		}
		if se.SchemaField == "required" {
			reason = "required"
		}
		return []usersapi.FieldError{{Field: memberPath(path), Reason: reason}}
	}
	if re.Reason == "failed to decode request body" {
		if se, ok := errors.AsType[*json.SyntaxError](re.Err); ok {
			return []usersapi.FieldError{{Field: "", Reason: fmt.Sprintf("the body is not valid JSON (at byte %d)", se.Offset)}}
		}
		return []usersapi.FieldError{{Field: "", Reason: "the body is not valid JSON"}}
	}
	return []usersapi.FieldError{{Field: "", Reason: "the body does not match the API"}}
}

func schemaReason(se *openapi3.SchemaError) string {
	switch {
	case se.Reason == "Value is not nullable":
		return "may not be null (clear a string with \"\" and a list with [])"
	case se.Reason != "":
		return se.Reason
	}
	return fmt.Sprintf("does not match the schema's %q", se.SchemaField)
}

func parseReason(pe *openapi3filter.ParseError) string {
	switch {
	case pe.Reason != "":
		return pe.Reason
	case pe.Cause != nil:
		if c, ok := pe.Cause.(*openapi3filter.ParseError); ok {
			return parseReason(c)
		}
	}
	return "malformed"
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func contentTypes(b *openapi3.RequestBody) []string {
	if b == nil {
		return []string{"application/json"}
	}
	var out []string
	for ct := range b.Content {
		out = append(out, ct)
	}
	slices.Sort(out)
	return out
}

// memberPath writes a JSON pointer's parts as the API names members:
// aliases[1], permissions.internet_send, members[0].id.
func memberPath(parts []string) string {
	var b strings.Builder
	for _, p := range parts {
		if isIndex(p) {
			b.WriteString("[" + p + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

func isIndex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
