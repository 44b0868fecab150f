// Package usersclient is the Go client of the users service's REST API,
// generated from ../openapi/users.yaml, with its own models so that its
// users never import echo.
package usersclient

//go:generate go tool oapi-codegen -config cfg.yaml ../openapi/users.yaml
