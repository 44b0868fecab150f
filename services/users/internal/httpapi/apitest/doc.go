// Package apitest is the HTTP-level test suite of the users service's REST
// API (api/openapi/users.yaml). It serves internal/httpapi with httptest,
// once over SQLite and once over PostgreSQL, and drives it only through the
// generated Go client (api/usersclient), checking what an API user checks:
// status codes, bodies, headers, and that no secret leaks into a response,
// the audit log or the server's log.
//
// The suite lives in its own package so that it sees the handlers exactly
// as a client does: through HTTP, with no access to their internals. Run it
// with
//
//	go test ./internal/httpapi/apitest/
//
// PostgreSQL comes from internal/testenv (POSTERN_TEST_POSTGRES_DSN); the
// PostgreSQL half is skipped when no server answers, and fails under CI=true.
package apitest
