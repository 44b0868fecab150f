// Package users is the directory service, the AUM source of truth: sites,
// users, groups, POP3 accounts, shared mailboxes, API tokens, the audit log and
// the /v1/sync change feed (see ../../README.md). This package builds and runs
// it; cmd/users and `postern serve` both use New.
package users

import (
	"context"
	"log/slog"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/opshttp"
)

// Config is the users's own configuration (the shared part is app.Common).
type Config struct {
	HTTP opshttp.Config `yaml:"http" doc:"side server of the users: /healthz, /readyz, /metrics"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{HTTP: opshttp.Config{Listen: "127.0.0.1:9180"}}
}

// Needs is what the users needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: false}

// Service is the running users.
type Service struct {
	cfg Config
	rt  *app.Runtime
	log *slog.Logger
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the users on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	return &Service{cfg: cfg, rt: rt, log: rt.Logger.With("service", "users")}, nil
}

// Name is "users".
func (s *Service) Name() string { return "users" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the users's readiness checks.
func (s *Service) Checks() []opshttp.Check {
	return s.rt.BusCheck()
}

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("users running")
	<-ctx.Done()
	return nil
}
