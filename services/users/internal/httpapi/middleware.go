package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/store"
)

const tracerName = "github.com/postern/postern/services/users/internal/httpapi"

// principalKey is the context key of the authenticated auth.Principal.
type principalKey struct{}

// withPrincipal returns ctx carrying p.
func withPrincipal(ctx context.Context, p auth.Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// principalFrom returns the principal the authentication middleware put
// in ctx.
func principalFrom(ctx context.Context) (auth.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(auth.Principal)
	return p, ok
}

// requestIDKey is the context key of the request id.
type requestIDKey struct{}

func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// requestID takes the client's X-Request-Id when it is a sane token (at
// most 128 characters of letters, digits, '-', '_' and '.'), else makes
// one, and echoes it in the response.
func requestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		id := req.Header.Get(echo.HeaderXRequestID)
		if !saneRequestID(id) {
			var b [16]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		c.SetRequest(req.WithContext(context.WithValue(req.Context(), requestIDKey{}, id)))
		return next(c)
	}
}

func saneRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// tracing starts a server span per request, continuing the caller's
// trace (W3C trace context through the global propagator), named after
// the route.
func (h *Handlers) tracing(next echo.HandlerFunc) echo.HandlerFunc {
	tracer := otel.Tracer(tracerName)
	return func(c echo.Context) error {
		req := c.Request()
		ctx := otel.GetTextMapPropagator().Extract(req.Context(), propagation.HeaderCarrier(req.Header))
		name := req.Method
		attrs := []attribute.KeyValue{
			attribute.String("http.request.method", req.Method),
			attribute.String("url.path", req.URL.Path),
		}
		if op := h.operation(c); op != nil {
			route := c.Path()
			name += " " + route
			attrs = append(attrs, attribute.String("http.route", route))
		}
		ctx, span := tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
		defer span.End()
		c.SetRequest(req.WithContext(ctx))
		err := next(c)
		if err != nil {
			c.Error(err) // the logger below normally has; this is a safety net
		}
		status := c.Response().Status
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		return nil
	}
}

// logRequests writes one line per request at info: method, route, status,
// duration, request and token ids. Never the Authorization header, never
// a body. It hands a handler's error to the error handler first, so that
// the status is the one sent.
func (h *Handlers) logRequests(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		req := c.Request()
		ctx := req.Context()
		route := "unmatched"
		if h.operation(c) != nil {
			route = c.Path()
		}
		attrs := []any{
			"method", req.Method,
			"route", route,
			"status", c.Response().Status,
			"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
			"bytes_out", c.Response().Size,
			"request_id", requestIDFrom(ctx),
		}
		if p, ok := principalFrom(ctx); ok {
			attrs = append(attrs, "token_id", p.TokenID)
		}
		h.log.InfoContext(ctx, "http request", attrs...)
		return nil
	}
}

// recoverPanics turns a panic in a handler into an internal error (logged
// with its stack by the error handler, a generic 500 for the client).
func (h *Handlers) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				err = &panicError{value: r, stack: debug.Stack()}
			}
		}()
		return next(c)
	}
}

type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v\n%s", e.value, e.stack) }

// limitBody refuses bodies larger than limit: at once when Content-Length
// says so, else when reading goes past it (the validator and the import
// handler turn the *http.MaxBytesError into 413).
func limitBody(limit int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			if req.ContentLength > limit {
				return tooLarge(limit)
			}
			if req.Body != nil && req.Body != http.NoBody {
				req.Body = http.MaxBytesReader(c.Response(), req.Body, limit)
			}
			return next(c)
		}
	}
}

// authenticate checks the bearer token: its shape, then the stored token
// found by the id it carries, comparing the secret's hash in constant
// time, then its expiry. The principal goes into the request's context.
func (h *Handlers) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		ctx := req.Context()
		secret, err := bearer(req.Header.Values(echo.HeaderAuthorization))
		if err != nil {
			return err
		}
		id, ok := auth.TokenID(secret)
		if !ok {
			return unauthorized("The bearer token is malformed: Postern tokens look like pst_<id>_<secret>.")
		}
		tok, err := h.store.GetToken(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return unauthorized("The bearer token is unknown or revoked.")
		case err != nil:
			return fmt.Errorf("authenticate: %w", err)
		}
		if !auth.Matches(secret, tok.SecretHash) {
			return unauthorized("The bearer token is unknown or revoked.")
		}
		now := h.now()
		if tok.ExpiresAt != nil && !now.Before(*tok.ExpiresAt) {
			return unauthorized("The bearer token has expired.")
		}
		h.touch(ctx, tok.ID, now)
		c.SetRequest(req.WithContext(withPrincipal(ctx, auth.FromToken(tok))))
		return next(c)
	}
}

// bearer extracts the token of an Authorization header.
func bearer(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", unauthorized("This API needs a bearer token: Authorization: Bearer pst_<id>_<secret>.")
	case 1:
	default:
		return "", unauthorized("Give one Authorization header.")
	}
	scheme, token, found := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", unauthorized("The Authorization header must use the Bearer scheme: Authorization: Bearer pst_<id>_<secret>.")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", unauthorized("The Authorization header has no token.")
	}
	return token, nil
}
