// Package usersapi is the server side of the users service's REST API,
// generated from ../openapi/users.yaml: the models, the echo routes and the
// strict server interface that the service's handlers implement.
package usersapi

//go:generate go tool oapi-codegen -config cfg.yaml ../openapi/users.yaml
