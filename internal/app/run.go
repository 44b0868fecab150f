package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/postern/postern/internal/lifecycle"
	"github.com/postern/postern/internal/opshttp"
)

// Service is one of Postern's services, built by its package's constructor.
type Service interface {
	// Name is the service's name: "users", "fetcher", "router", "relay".
	Name() string
	// Run does the service's work until ctx is cancelled, then stops taking
	// new work, finishes or abandons (uncommitted, so it is redelivered) what
	// is in flight, and returns. An error returned before ctx is cancelled
	// stops the whole process.
	Run(ctx context.Context) error
}

// Checker is implemented by services with readiness checks of their own
// (a dependency that must answer) beyond the broker and the site state.
type Checker interface {
	Checks() []opshttp.Check
}

// Unit is a service with the address of its side HTTP server.
type Unit struct {
	Service Service
	HTTP    opshttp.Config
	// Routes are endpoints of the service's own on its side HTTP server
	// (the router's message trace), next to /healthz, /readyz and /metrics.
	Routes []opshttp.Route
}

// Run starts each unit's side HTTP server (/healthz, /readyz, /metrics) and
// the service itself, prints where each listens to out, and blocks until ctx
// is cancelled (a signal) or a service fails. Then it marks every service
// draining (readiness goes 503 so no new work is routed to it), waits for the
// services to return within the shutdown timeout, stops the HTTP servers and
// returns. The caller closes the Runtime afterwards.
func Run(ctx context.Context, rt *Runtime, out io.Writer, units ...Unit) error {
	log := rt.Logger
	servers := make([]*opshttp.Server, 0, len(units))
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			if err := s.Shutdown(sctx); err != nil {
				log.Warn("side http server shutdown", "error", err)
			}
		}
	}()

	for _, u := range units {
		var checks []opshttp.Check
		if c, ok := u.Service.(Checker); ok {
			checks = c.Checks()
		}
		srv := opshttp.New(u.HTTP, opshttp.Options{
			Service: u.Service.Name(),
			Metrics: rt.Telemetry.MetricsHandler(),
			Checks:  checks,
			Logger:  log.With("service", u.Service.Name()),
			Routes:  u.Routes,
		})
		if err := srv.Start(); err != nil {
			return fmt.Errorf("%s: side http server on %s: %w", u.Service.Name(), u.HTTP.Listen, err)
		}
		servers = append(servers, srv)
		paths := "/healthz /readyz /metrics"
		for _, r := range u.Routes {
			paths += " " + r.Path()
		}
		fmt.Fprintf(out, "%-8s http://%s  (%s)\n", u.Service.Name(), srv.Addr(), paths)
		log.Info("service listening", "service", u.Service.Name(), "ops_addr", srv.Addr())
	}

	runCtx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	var (
		wg       sync.WaitGroup
		errMu    sync.Mutex
		firstErr error
	)
	for _, u := range units {
		wg.Add(1)
		go func(s Service) {
			defer wg.Done()
			err := func() (err error) {
				defer lifecycle.Recover(log, s.Name(), &err)
				return s.Run(runCtx)
			}()
			if err != nil && runCtx.Err() == nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", s.Name(), err)
				}
				errMu.Unlock()
				log.Error("service failed; stopping the others", "service", s.Name(), "error", err)
				stopServices()
			} else if err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("service stopped with error", "service", s.Name(), "error", err)
			}
		}(u.Service)
	}

	<-runCtx.Done()
	for _, s := range servers {
		s.SetDraining()
	}
	stopServices()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		log.Info("services drained")
	case <-time.After(rt.Common.ShutdownTimeout):
		log.Error("drain deadline passed; exiting with work in flight (uncommitted records are redelivered)", "shutdown_timeout", rt.Common.ShutdownTimeout)
		errMu.Lock()
		if firstErr == nil {
			firstErr = fmt.Errorf("services did not drain within %s", rt.Common.ShutdownTimeout)
		}
		errMu.Unlock()
	}
	errMu.Lock()
	defer errMu.Unlock()
	return firstErr
}

// BusCheck is the readiness check of the Kafka bus (nil without a bus).
func (rt *Runtime) BusCheck() []opshttp.Check {
	if rt.Bus == nil {
		return nil
	}
	return []opshttp.Check{{Name: "broker", Func: rt.Bus.Ping}}
}

// StateCheck is the readiness check of the site state (nil without one).
func (rt *Runtime) StateCheck() []opshttp.Check {
	if rt.State == nil {
		return nil
	}
	return []opshttp.Check{{Name: "state", Func: rt.State.Ping}}
}
