// Package router decides where each message of mail.inbound goes (local
// mailbox, another site, the Internet, a bounce) and writes one mail.delivery
// record per destination. This package builds and runs it; cmd/router and
// `postern serve` both use New.
//
// The rules are in internal/routing, the consumer (idempotency, statuses,
// bounces, metrics) in internal/pipeline, the message trace (the mail.status
// indexer and GET /v1/trace on the side server) in trace.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/opshttp"
	"github.com/postern/postern/services/router/internal/pipeline"
	"github.com/postern/postern/services/router/internal/routing"
	"github.com/postern/postern/services/router/trace"
)

// Policies for mail to unknown addresses in the organisation's domains (the
// values of Config.UnknownRecipients).
const (
	UnknownBounce     = string(routing.UnknownBounce)
	UnknownPostmaster = string(routing.UnknownPostmaster)
)

// DefaultConsumers is the default of Config.Consumers: as many as the bus
// gives each topic partitions by default (bus.partitions).
const DefaultConsumers = 3

// Config is the router's own configuration (the shared part is app.Common).
type Config struct {
	HTTP              opshttp.Config `yaml:"http" doc:"side server of the router: /healthz, /readyz, /metrics and the message trace (/v1/trace)"`
	ConsumerGroup     string         `yaml:"consumer_group" doc:"Kafka consumer group of this site's routers (every router process of the site uses the same one, and they share the partitions of mail.inbound); empty: postern-<site>-router"`
	Consumers         int            `yaml:"consumers" doc:"consumers of mail.inbound in this process, all in consumer_group; records of different partitions are routed in parallel, so more than bus.partitions (counting every router process of the site) only adds idle consumers"`
	UnknownRecipients string         `yaml:"unknown_recipients" doc:"mail for an address in the organisation's domains that nobody owns: bounce (refused, and the sender gets a DSN) or postmaster (delivered to the postmaster address)"`
	Postmaster        string         `yaml:"postmaster" doc:"the postmaster's address: receives mail for unknown recipients with unknown_recipients: postmaster (a user's, group's or shared mailbox's address), and is the From: of the bounces the router writes; empty: postmaster@<reporting_mta>"`
	MaxHops           int            `yaml:"max_hops" doc:"most Received header fields a message may carry; one more is a mail loop and the message is dead-lettered"`
	MessageIDTTL      time.Duration  `yaml:"message_id_ttl" doc:"how long the Message-IDs of mail staff sent for a shared mailbox are remembered, so that replies reach the staff member who wrote"`
	IdempotencyTTL    time.Duration  `yaml:"idempotency_ttl" doc:"how long the router remembers the records it published, so that a redelivered mail.inbound record yields no second delivery record; far longer than a record can wait in Kafka"`
	ReportingMTA      string         `yaml:"reporting_mta" doc:"host name the router names in the bounces (DSNs) it writes (Reporting-MTA); empty: this machine's host name"`
	Trace             trace.Config   `yaml:"trace" doc:"the message trace: mail.status indexed per Message-ID and inbound id (postern trace, GET /v1/trace)"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{
		HTTP:              opshttp.Config{Listen: "127.0.0.1:9182"},
		Consumers:         DefaultConsumers,
		UnknownRecipients: UnknownBounce,
		MaxHops:           routing.DefaultMaxHops,
		MessageIDTTL:      routing.DefaultMessageIDTTL,
		IdempotencyTTL:    pipeline.DefaultIdempotencyTTL,
		Trace:             trace.DefaultConfig(),
	}
}

// Validate checks the router's settings.
func (c Config) Validate() error {
	var errs []error
	switch c.UnknownRecipients {
	case UnknownBounce:
	case UnknownPostmaster:
		if _, err := routing.ParseAddress(c.Postmaster); err != nil {
			errs = append(errs, config.Errorf("postmaster", "%q is not a mail address; unknown_recipients: postmaster needs one", c.Postmaster))
		}
	default:
		errs = append(errs, config.Errorf("unknown_recipients", "%q is neither %q nor %q", c.UnknownRecipients, UnknownBounce, UnknownPostmaster))
	}
	if c.Postmaster != "" && c.UnknownRecipients != UnknownPostmaster {
		if _, err := routing.ParseAddress(c.Postmaster); err != nil {
			errs = append(errs, config.Errorf("postmaster", "%q is not a mail address", c.Postmaster))
		}
	}
	if c.Consumers < 1 {
		errs = append(errs, config.Errorf("consumers", "must be at least 1, got %d", c.Consumers))
	}
	if c.MaxHops < 1 {
		errs = append(errs, config.Errorf("max_hops", "must be at least 1, got %d", c.MaxHops))
	}
	if c.MessageIDTTL < time.Hour {
		errs = append(errs, config.Errorf("message_id_ttl", "must be at least 1h, got %s", c.MessageIDTTL))
	}
	if c.IdempotencyTTL < time.Hour {
		errs = append(errs, config.Errorf("idempotency_ttl", "must be at least 1h, got %s", c.IdempotencyTTL))
	}
	if c.ReportingMTA != "" && !config.IsHostname(c.ReportingMTA) {
		errs = append(errs, config.Errorf("reporting_mta", "%q is not a host name", c.ReportingMTA))
	}
	if strings.ContainsAny(c.ConsumerGroup, " \t\r\n") {
		errs = append(errs, config.Errorf("consumer_group", "%q contains white space", c.ConsumerGroup))
	}
	errs = append(errs, config.Prefix("trace", c.Trace.Validate()))
	if c.Trace.Enabled && !c.Trace.Token.IsSet() && !loopbackListen(c.HTTP.Listen) {
		errs = append(errs, config.Errorf("trace.token", "must be set while router.trace.enabled is true and router.http.listen (%q) is not a loopback address: "+
			"GET /v1/trace answers addresses, user ids and client addresses to whoever reaches the side server. "+
			"Set a random token (head -c32 /dev/urandom | base64), listen on 127.0.0.1, or set router.trace.enabled: false", c.HTTP.Listen))
	}
	return config.Join(errs...)
}

// loopbackListen reports whether listen (host:port) accepts connections
// only from this machine: a loopback IP or localhost. An empty host is
// every interface; an unparsable address is reported by http.listen's own
// check.
func loopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Needs is what the router needs from the shared runtime.
var Needs = app.Needs{Bus: true, State: true}

// Service is the running router.
type Service struct {
	cfg   Config
	rt    *app.Runtime
	log   *slog.Logger
	group string
	pipe  *pipeline.Pipeline

	traceGroup string
	indexer    *trace.Indexer // nil when tracing is off
	traceHTTP  *trace.Handler
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New builds the router on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rt.Bus == nil || rt.State == nil {
		return nil, fmt.Errorf("router: the runtime has no bus or no site state (start it with router.Needs)")
	}
	log := rt.Logger.With("service", "router")
	mta := cfg.ReportingMTA
	if mta == "" {
		h, err := os.Hostname()
		if err != nil || !config.IsHostname(h) {
			h = "localhost"
		}
		mta = h
	}
	postmaster := cfg.Postmaster
	if postmaster == "" {
		postmaster = "postmaster@" + mta
	}
	group := cfg.ConsumerGroup
	if group == "" {
		group = "postern-" + rt.Common.Site + "-router"
	}
	pipe, err := pipeline.New(pipeline.Options{
		Routing: routing.Config{
			Site: rt.Common.Site, Unknown: routing.UnknownPolicy(cfg.UnknownRecipients), Postmaster: cfg.Postmaster,
			MaxHops: cfg.MaxHops, MessageIDTTL: cfg.MessageIDTTL,
		},
		Directory:      rt.State.Directory(),
		Index:          rt.State.MessageIndex(),
		Keys:           rt.State.Idempotency(),
		ReportingMTA:   mta,
		Postmaster:     postmaster,
		IdempotencyTTL: cfg.IdempotencyTTL,
		MeterProvider:  rt.Telemetry.MeterProvider(),
		Logger:         log,
	})
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	s := &Service{cfg: cfg, rt: rt, log: log, group: group, pipe: pipe,
		traceGroup: cfg.Trace.ConsumerGroup,
		traceHTTP:  &trace.Handler{Site: rt.Common.Site, Token: cfg.Trace.Token, Log: log},
	}
	if s.traceGroup == "" {
		s.traceGroup = "postern-" + rt.Common.Site + "-router-trace"
	}
	if cfg.Trace.Enabled {
		s.traceHTTP.Index = rt.State.TraceIndex()
		if s.indexer, err = trace.NewIndexer(cfg.Trace, rt.State.TraceIndex(), rt.Telemetry.MeterProvider(), log); err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
	}
	return s, nil
}

// Name is "router".
func (s *Service) Name() string { return "router" }

// Unit is the service with its side HTTP server, for app.Run; the server
// answers the message trace at trace.Path.
func (s *Service) Unit() app.Unit {
	return app.Unit{Service: s, HTTP: s.cfg.HTTP, Routes: []opshttp.Route{{Pattern: "GET " + trace.Path, Handler: s.traceHTTP}}}
}

// Checks are the router's readiness checks: the broker and the site state.
func (s *Service) Checks() []opshttp.Check {
	return append(s.rt.BusCheck(), s.rt.StateCheck()...)
}

// Run waits until the directory replica has been synced once, then runs
// Config.Consumers consumers of mail.inbound in the router's group until
// ctx is cancelled; the records of different partitions are routed in
// parallel. From the start, and apart from that, one consumer of
// mail.status in the trace group indexes outcomes (unless Trace.Enabled is
// off). A record in flight when ctx is cancelled is not committed: it is
// delivered again. If one consumer fails, the others are stopped and Run
// returns the error.
func (s *Service) Run(ctx context.Context) error {
	if s.indexer == nil {
		return s.route(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	traced := make(chan error, 1)
	go func() {
		s.log.Info("router indexing statuses for message traces", "topic", s.rt.Bus.Topic(events.TopicStatus), "group", s.traceGroup)
		err := s.rt.Bus.ConsumeAll(ctx, s.indexer.Subscription(s.traceGroup))
		if err != nil {
			err = fmt.Errorf("router: trace indexer: %w", err)
			cancel()
		}
		traced <- err
	}()
	err := s.route(ctx)
	cancel()
	return errors.Join(err, <-traced)
}

// route runs the routing consumers (see Run).
func (s *Service) route(ctx context.Context) error {
	if !s.waitForDirectory(ctx) {
		return nil
	}
	s.log.Info("router consuming", "topic", s.rt.Bus.Topic(events.TopicInbound), "group", s.group, "consumers", s.cfg.Consumers)
	subs := make([]msgbus.Subscription, s.cfg.Consumers)
	for i := range subs {
		subs[i] = s.pipe.Subscription(s.group)
	}
	if err := s.rt.Bus.ConsumeAll(ctx, subs...); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	return nil
}

// directoryWaitLog is how often the router says it waits for the first
// directory sync.
const directoryWaitLog = time.Minute

// waitForDirectory returns once the replica has been synced at least once
// (true), or when ctx is cancelled (false). Routing against an empty replica
// would take every address of the organisation for an outside one.
func (s *Service) waitForDirectory(ctx context.Context) bool {
	var lastLog time.Time
	for {
		st, err := s.rt.State.Directory().SyncState(ctx)
		if err == nil && (st.Cursor != "" || !st.SyncedAt.IsZero()) {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if time.Since(lastLog) >= directoryWaitLog {
			lastLog = time.Now()
			if err != nil {
				s.log.Warn("cannot read the directory replica's sync state; not routing yet", "error", err)
			} else {
				s.log.Warn("the directory replica has never been synced (is the fetcher running?); not routing yet")
			}
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}
