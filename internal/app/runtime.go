package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/logging"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/telemetry"
)

// Needs says which shared parts a process must start.
type Needs struct {
	Bus   bool // the Kafka bus (and the embedded broker when none is configured)
	State bool // the site state (directory replica, ledgers, ...): site services only
}

// Options are what a process tells Start besides the configuration.
type Options struct {
	Name      string    // process name for telemetry: "postern", "router", ...
	Version   string    // build version
	LogOutput io.Writer // where logs go (stderr in production)
	Out       io.Writer // where a service prints what an operator must see at start (endpoints, a bootstrap token); nil: discarded
	Needs     Needs
}

// Runtime holds the shared parts of one process. In single-box mode the four
// services share one Runtime: one broker, one bus client, one site state.
type Runtime struct {
	Common    Common
	Out       io.Writer // the operator's terminal (stdout): endpoints, a first-start token
	Logger    *slog.Logger
	Telemetry *telemetry.Telemetry
	Broker    *broker.Broker // nil when bus.brokers names a real cluster
	Bus       *msgbus.Bus    // nil unless Needs.Bus
	State     sitestate.Store
}

// Start builds the runtime: logging, telemetry, the embedded broker when no
// brokers are configured, the bus with every topic created, and the site
// state. On error, whatever was started is closed again.
func Start(ctx context.Context, c Common, opts Options) (_ *Runtime, err error) {
	rt := &Runtime{Common: c, Out: opts.Out}
	if rt.Out == nil {
		rt.Out = io.Discard
	}
	rt.Logger = logging.New(c.Log, opts.LogOutput).With("site", c.Site)
	defer func() {
		if err != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = rt.Close(closeCtx)
		}
	}()

	rt.Telemetry, err = telemetry.Setup(ctx, c.Telemetry, telemetry.Resource{ServiceName: opts.Name, ServiceVersion: opts.Version, Site: c.Site})
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}

	if opts.Needs.Bus {
		busCfg := c.Bus
		if c.EmbeddedBroker() {
			rt.Broker, err = broker.Start(c.Broker, busCfg.BrokerMaxMessageBytes(), rt.Logger)
			if err != nil {
				return nil, fmt.Errorf("embedded broker: %w", err)
			}
			busCfg.Brokers = rt.Broker.Addrs()
		}
		rt.Bus, err = msgbus.New(busCfg, msgbus.Options{
			Logger:         rt.Logger,
			TracerProvider: rt.Telemetry.TracerProvider(),
			MeterProvider:  rt.Telemetry.MeterProvider(),
			Propagator:     rt.Telemetry.Propagator(),
			ClientID:       "postern-" + c.Site + "-" + opts.Name,
		})
		if err != nil {
			return nil, fmt.Errorf("bus: %w", err)
		}
		if err := rt.Bus.EnsureTopics(ctx, events.AllTopics...); err != nil {
			return nil, fmt.Errorf("bus: creating topics: %w", err)
		}
	}

	if opts.Needs.State {
		rt.State, err = sitestate.Open(ctx, c.State)
		if err != nil {
			return nil, fmt.Errorf("site state: %w", err)
		}
	}
	return rt, nil
}

// Close releases everything Start started, in reverse order: site state,
// bus, broker (which persists its data), and last telemetry (which flushes
// the spans and metrics of the shutdown itself).
func (rt *Runtime) Close(ctx context.Context) error {
	var errs []error
	if rt.State != nil {
		if err := rt.State.Close(); err != nil {
			errs = append(errs, fmt.Errorf("site state: %w", err))
		}
		rt.State = nil
	}
	if rt.Bus != nil {
		if err := rt.Bus.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bus: %w", err))
		}
		rt.Bus = nil
	}
	if rt.Broker != nil {
		if err := rt.Broker.Close(); err != nil {
			errs = append(errs, fmt.Errorf("embedded broker: %w", err))
		}
		rt.Broker = nil
	}
	if rt.Telemetry != nil {
		if err := rt.Telemetry.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("telemetry: %w", err))
		}
		rt.Telemetry = nil
	}
	return errors.Join(errs...)
}
