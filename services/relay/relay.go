// Package relay is everything at a site that speaks SMTP: submission, inbound,
// delivery into mailboxes and outbound through the ISP smarthost. This package
// builds and runs it; cmd/relay and `postern serve` both use New.
package relay

import (
	"context"
	"log/slog"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/opshttp"
)

// Config is the relay's own configuration (the shared part is app.Common).
type Config struct {
	HTTP opshttp.Config `yaml:"http" doc:"side server of the relay: /healthz, /readyz, /metrics"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{HTTP: opshttp.Config{Listen: "127.0.0.1:9183"}}
}

// Needs is what the relay needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running relay.
type Service struct {
	cfg Config
	rt  *app.Runtime
	log *slog.Logger
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the relay on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	return &Service{cfg: cfg, rt: rt, log: rt.Logger.With("service", "relay")}, nil
}

// Name is "relay".
func (s *Service) Name() string { return "relay" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the relay's readiness checks.
func (s *Service) Checks() []opshttp.Check {
	return append(s.rt.BusCheck(), s.rt.StateCheck()...)
}

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("relay running")
	<-ctx.Done()
	return nil
}
