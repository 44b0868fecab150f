// Package router decides where each message of mail.inbound goes (local
// mailbox, another site, the Internet, a bounce) and writes one mail.delivery
// record per destination. This package builds and runs it; cmd/router and
// `postern serve` both use New.
package router

import (
	"context"
	"log/slog"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/opshttp"
)

// Config is the router's own configuration (the shared part is app.Common).
type Config struct {
	HTTP opshttp.Config `yaml:"http" doc:"side server of the router: /healthz, /readyz, /metrics"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{HTTP: opshttp.Config{Listen: "127.0.0.1:9182"}}
}

// Needs is what the router needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running router.
type Service struct {
	cfg Config
	rt  *app.Runtime
	log *slog.Logger
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the router on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	return &Service{cfg: cfg, rt: rt, log: rt.Logger.With("service", "router")}, nil
}

// Name is "router".
func (s *Service) Name() string { return "router" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the router's readiness checks.
func (s *Service) Checks() []opshttp.Check {
	return append(s.rt.BusCheck(), s.rt.StateCheck()...)
}

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("router running")
	<-ctx.Done()
	return nil
}
