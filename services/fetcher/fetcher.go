// Package fetcher is a site's AUM client and POP3 downloader: it syncs the
// site's directory replica before every download cycle and publishes each
// downloaded message to mail.inbound. This package builds and runs it;
// cmd/fetcher and `postern serve` both use New.
package fetcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/opshttp"
	"github.com/postern/postern/services/fetcher/internal/aum"
	"github.com/postern/postern/services/fetcher/internal/download"
)

// Config is the fetcher's own configuration (the shared part is app.Common).
type Config struct {
	HTTP     opshttp.Config  `yaml:"http" doc:"side server of the fetcher: /healthz, /readyz, /metrics"`
	AUM      AUMConfig       `yaml:"aum" doc:"the AUM client, which keeps the site's directory replica (users, POP3 accounts) in sync with the users service before every download cycle. Off while url or token is empty: the fetcher then works on the replica as it is. In postern serve with the users service in the same process, an empty token means that users service, with a site_agent token it creates and keeps"`
	Download download.Config `yaml:"download" doc:"the POP3 downloader"`
}

// AUMConfig is the AUM client's configuration (aum.Config). It is its own
// type so that an unset url or token turns the client off instead of
// failing validation: Config.Validate checks it only when it is on.
type AUMConfig aum.Config

// Enabled reports whether the AUM client runs: url and token are both set.
func (c AUMConfig) Enabled() bool { return c.URL != "" && c.Token.IsSet() }

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{
		HTTP:     opshttp.Config{Listen: "127.0.0.1:9181"},
		AUM:      AUMConfig(aum.DefaultConfig()),
		Download: download.DefaultConfig(),
	}
}

// Validate checks the AUM section when the client is on (the other
// sections validate themselves).
func (c Config) Validate() error {
	switch {
	case c.AUM.Enabled():
		return config.Prefix("aum", aum.Config(c.AUM).Validate())
	case c.AUM.Token.IsSet():
		return config.Errorf("aum.url", "must be set when aum.token is (the users service's base URL, e.g. http://127.0.0.1:8080)")
	}
	return nil
}

// Needs is what the fetcher needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running fetcher.
type Service struct {
	cfg Config
	rt  *app.Runtime
	log *slog.Logger
	aum *aum.Client // nil when the AUM client is off
	dl  *download.Downloader
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the fetcher on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	if rt.Bus == nil || rt.State == nil {
		return nil, errors.New("fetcher: the runtime has no bus or no site state")
	}
	s := &Service{cfg: cfg, rt: rt, log: rt.Logger.With("service", "fetcher")}
	var mp metric.MeterProvider
	if rt.Telemetry != nil {
		mp = rt.Telemetry.MeterProvider()
	}
	var beforeCycle func(context.Context) error
	if cfg.AUM.Enabled() {
		c, err := aum.New(aum.Config(cfg.AUM), rt.State.Directory(), aum.Options{Logger: s.log, Meter: mp})
		if err != nil {
			return nil, fmt.Errorf("fetcher: %w", err)
		}
		s.aum, beforeCycle = c, c.BeforeCycle
	}
	dl, err := download.New(cfg.Download, download.Options{
		Site:            rt.Common.Site,
		Bus:             rt.Bus,
		MaxMessageBytes: int64(rt.Bus.Config().MaxRecordBytes),
		Directory:       rt.State.Directory(),
		Ledger:          rt.State.Ledger(),
		Idempotency:     rt.State.Idempotency(),
		BeforeCycle:     beforeCycle,
		Logger:          s.log,
		MeterProvider:   mp,
	})
	if err != nil {
		return nil, fmt.Errorf("fetcher: %w", err)
	}
	s.dl = dl
	return s, nil
}

// Name is "fetcher".
func (s *Service) Name() string { return "fetcher" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the fetcher's readiness checks: the broker, the site state,
// and — when the AUM client refuses stale replicas — a replica fresh enough
// to download with.
func (s *Service) Checks() []opshttp.Check {
	checks := append(s.rt.BusCheck(), s.rt.StateCheck()...)
	if s.aum != nil && s.cfg.AUM.RefuseStale {
		checks = append(checks, opshttp.Check{Name: "directory-replica", Func: func(ctx context.Context) error {
			age, err := s.aum.Age(ctx)
			if err != nil {
				return err
			}
			if age > s.cfg.AUM.MaxAge {
				return fmt.Errorf("%w: last synced %s ago", aum.ErrStale, age.Round(1e9))
			}
			return nil
		}})
	}
	return checks
}

// Run serves until ctx is cancelled: the AUM client's long poll, the
// download scheduler and the mail.status consumer. If one of them fails
// the others are stopped and the error is returned.
func (s *Service) Run(ctx context.Context) error {
	if s.aum == nil {
		s.log.Warn("AUM sync is off (fetcher.aum.url or fetcher.aum.token is empty): the directory replica is not updated")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	start := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
					}
				}()
				err = run(ctx)
			}()
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("fetcher: %s: %w", name, err)
				}
				mu.Unlock()
				cancel()
			}
		}()
	}
	if s.aum != nil {
		start("aum", s.aum.Run)
	}
	start("downloader", s.dl.Run)
	start("status consumer", s.dl.RunStatus)
	s.log.Info("fetcher running", "aum", s.aum != nil, "status_group", s.dl.StatusGroup())
	wg.Wait()
	return first
}
