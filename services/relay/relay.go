// Package relay is everything at a site that speaks SMTP: submission, inbound,
// delivery into mailboxes and outbound through the ISP smarthost. This package
// builds and runs it; cmd/relay and `postern serve` both use New.
//
// The parts, each in its own package under internal/:
//
//   - smtpin: the SMTP listeners (submission 587/465 with AUTH over TLS,
//     inbound 25 for the organisation's domains, inter-site with mutual
//     TLS); a message is answered 250 only once it is in mail.inbound.
//   - delivery: the consumer of mail.delivery (local mailbox, another
//     site, the smarthost), its retry tiers and bounces, mail.status.
//   - smtpout: the SMTP client sessions delivery uses.
//   - mailbox: final delivery into Maildir or over LMTP to Dovecot.
//   - dovecotauth: the Dovecot passwd-file kept current from the replica,
//     so users read their mail with their directory password.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/opshttp"
	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/dovecotauth"
	"github.com/postern/postern/services/relay/internal/mailbox"
	"github.com/postern/postern/services/relay/internal/smtpin"
)

// Config is the relay's own configuration (the shared part is app.Common).
type Config struct {
	HTTP        opshttp.Config     `yaml:"http" doc:"side server of the relay: /healthz, /readyz, /metrics"`
	SMTP        smtpin.Config      `yaml:"smtp" doc:"SMTP listeners: submission, inbound, inter-site"`
	Delivery    delivery.Config    `yaml:"delivery" doc:"delivery of mail.delivery records: local mailboxes, other sites, the smarthost; retries and bounces"`
	Mailbox     mailbox.Config     `yaml:"mailbox" doc:"final delivery into the users' mailboxes (Maildir, or LMTP to Dovecot)"`
	DovecotAuth dovecotauth.Config `yaml:"dovecot_auth" doc:"the Dovecot passwd-file kept current from the directory replica (users log in to IMAP/POP3 with their directory password)"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{
		HTTP:        opshttp.Config{Listen: "127.0.0.1:9183"},
		SMTP:        smtpin.DefaultConfig(),
		Delivery:    delivery.DefaultConfig(),
		Mailbox:     mailbox.DefaultConfig(),
		DovecotAuth: dovecotauth.DefaultConfig(),
	}
}

// Needs is what the relay needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running relay.
type Service struct {
	cfg      Config
	rt       *app.Runtime
	log      *slog.Logger
	smtp     *smtpin.Server
	delivery *delivery.Service
	local    mailbox.Deliverer
	auth     *dovecotauth.Writer
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the relay on a runtime started with (at least) Needs. It
// listens on nothing until Run.
func New(cfg Config, rt *app.Runtime) (_ *Service, err error) {
	if rt.Bus == nil || rt.State == nil {
		return nil, errors.New("relay: needs the message bus and the site state")
	}
	log := rt.Logger.With("service", "relay")
	s := &Service{cfg: cfg, rt: rt, log: log}
	meter := rt.Telemetry.MeterProvider()

	s.local, err = mailbox.New(cfg.Mailbox, mailbox.Options{State: rt.State.Idempotency(), Logger: log, Hostname: cfg.Delivery.Hostname})
	if err != nil {
		return nil, fmt.Errorf("relay mailbox: %w", err)
	}
	defer func() {
		if err != nil {
			_ = s.local.Close()
		}
	}()
	s.delivery, err = delivery.New(cfg.Delivery, delivery.Deps{
		Bus: rt.Bus, Directory: rt.State.Directory(), Idempotency: rt.State.Idempotency(), Local: s.local,
		Site: rt.Common.Site, Logger: log, MeterProvider: meter,
	})
	if err != nil {
		return nil, fmt.Errorf("relay delivery: %w", err)
	}
	s.smtp, err = smtpin.New(cfg.SMTP, smtpin.Deps{
		Site: rt.Common.Site, Bus: rt.Bus, State: rt.State, Logger: log,
		Meter: meter, Tracer: rt.Telemetry.TracerProvider(),
	})
	if err != nil {
		return nil, fmt.Errorf("relay smtp: %w", err)
	}
	s.auth, err = dovecotauth.New(cfg.DovecotAuth, rt.State.Directory(), rt.Common.Site, dovecotauth.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("relay dovecot_auth: %w", err)
	}
	return s, nil
}

// Name is "relay".
func (s *Service) Name() string { return "relay" }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the relay's readiness checks.
func (s *Service) Checks() []opshttp.Check {
	return append(s.rt.BusCheck(), s.rt.StateCheck()...)
}

// Addrs returns the SMTP listeners' addresses once Run has started them
// (listener name → host:port).
func (s *Service) Addrs() map[string]string { return s.smtp.Addrs() }

// Run starts the SMTP listeners, prints their addresses, then serves and
// delivers until ctx is cancelled; it drains the SMTP sessions and the
// deliveries under way before it returns.
func (s *Service) Run(ctx context.Context) error {
	defer s.local.Close()
	if err := s.smtp.Start(ctx); err != nil {
		return fmt.Errorf("relay smtp: %w", err)
	}
	for _, name := range []string{smtpin.ListenerSubmission, smtpin.ListenerSubmissions, smtpin.ListenerInbound, smtpin.ListenerIntersite} {
		if addr, ok := s.smtp.Addrs()[name]; ok {
			fmt.Fprintf(s.rt.Out, "%-11s %s  (relay SMTP %s)\n", name, addr, name)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("relay %s: %w", name, err))
				mu.Unlock()
				cancel() // one part failing stops the relay: the supervisor restarts it whole
			}
		}()
	}
	run("smtp", s.smtp.Run)
	run("delivery", s.delivery.Run)
	run("dovecot_auth", s.auth.Run)
	s.log.Info("relay running", "site", s.rt.Common.Site)
	wg.Wait()
	return errors.Join(errs...)
}
