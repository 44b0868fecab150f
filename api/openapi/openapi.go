// Package openapi holds the OpenAPI 3.0 document of the users service
// (users.yaml, hand-written, the source of truth of the REST API) and loads
// it for request validation.
//
// The generated packages ../usersapi (server) and ../usersclient (client)
// come from the same file; `make generate` regenerates them and
// `make openapi-lint` lints the document.
package openapi

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"

	"github.com/getkin/kin-openapi/openapi3"
)

//go:embed users.yaml
var spec []byte

// Spec returns the document as written (YAML). The slice is a copy: the
// caller may keep or change it.
func Spec() []byte { return bytes.Clone(spec) }

// Load parses and validates the document. Every call returns a new
// *openapi3.T, so a caller may change it (a request validator usually clears
// Servers so that any host matches).
func Load() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = false
	doc, err := loader.LoadFromData(spec)
	if err != nil {
		return nil, fmt.Errorf("openapi: loading users.yaml: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi: users.yaml is invalid: %w", err)
	}
	return doc, nil
}
