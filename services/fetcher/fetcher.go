// Package fetcher is a site's AUM client and POP3 downloader: it syncs the
// site's directory replica before every download cycle and publishes each
// downloaded message to mail.inbound. This package builds and runs it;
// cmd/fetcher and `postern serve` both use New.
package fetcher

import (
	"context"
	"log/slog"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/opshttp"
)

// Config is the fetcher's own configuration (the shared part is app.Common).
type Config struct {
	HTTP opshttp.Config `yaml:"http" doc:"side server of the fetcher: /healthz, /readyz, /metrics"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{HTTP: opshttp.Config{Listen: "127.0.0.1:9181"}}
}

// Needs is what the fetcher needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running fetcher.
type Service struct {
	cfg Config
	rt  *app.Runtime
	log *slog.Logger
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the fetcher on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	return &Service{cfg: cfg, rt: rt, log: rt.Logger.With("service", "fetcher")}, nil
}

// Name is "fetcher".
func (s *Service) Name() string { return "fetcher" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the fetcher's readiness checks.
func (s *Service) Checks() []opshttp.Check {
	return append(s.rt.BusCheck(), s.rt.StateCheck()...)
}

// Run serves until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info("fetcher running")
	<-ctx.Done()
	return nil
}
