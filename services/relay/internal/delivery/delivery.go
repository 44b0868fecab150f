// Package delivery is the relay's consumer of mail.delivery: it delivers
// each routed message to its destination — a local mailbox, another site's
// relay, or the Internet through the ISP smarthost — and reports every
// outcome, per recipient, on mail.status.
//
// # Retries
//
// A temporary failure is retried with capped exponential backoff computed in
// floating point with jitter (Config.Retry), until Retry.MaxLifetime after
// the first attempt; then it bounces as expired. The schedule lives in Kafka,
// so it survives restarts: the delivery, with the recipients still to be
// tried, is published to the retry tier topic of its wait (mail.retry.<i>,
// tier i waiting about base·factorⁱ, capped; see api/events.Retry) with
// headers for the next attempt's number and due time and the first
// attempt's time. One consumer group per tier reads it, sleeps (cancellably)
// until the record at the head is due, and tries again. Within a tier every
// record waits about as long, so the topic is roughly in due order and a
// short wait never sits behind a long one; jitter makes a record wait at most
// 2·jitter of its tier's delay longer than it would alone. A relay stopped
// during the wait leaves the record uncommitted: the next consumer of the
// tier sleeps out what is left and delivers it.
//
// # Parallelism
//
// msgbus.Consume handles one record at a time. The relay runs
// Config.Consumers consumers of one group on mail.delivery (and
// Config.RetryConsumers per tier), so records on different partitions are
// delivered in parallel; sessions to the smarthost are shared by all of them
// in a pool limited to Smarthost.MaxSessions.
//
// # Exactly once
//
// Local final delivery is idempotent in the mailbox deliverer (by delivery
// id). SMTP to a site or the smarthost skips a recipient whose key
// "sent:<delivery id>:<recipient>" is set and sets it once the remote server
// answered 250. While it sends, it holds a lease "sending:<delivery id>:
// <recipient>" (an idempotency key with the length of one SMTP transaction),
// so that two consumers holding the same record after a rebalance do not
// both send it: the second defers the recipient. The key is stored the
// moment the 250 is read (smtpout.Hooks.Accepted), before the session is
// reused or closed. A relay killed between the remote 250 and the key
// being stored sends the message again once the lease has expired: that
// window (the time of one sitestate write) remains, as in every MTA that
// has no two-phase commit with its peer (RFC 1047). It is not silent: just
// before DATA the relay sets "attempt:<delivery id>:<recipient>"
// (attempt.go), removed when the server answers with a failure and
// superseded by the sent key; a later attempt that finds it set was preceded
// by one whose outcome is unknown, and is logged ("ambiguous resend") and
// counted (postern.relay.ambiguous_resends) before it is sent.
//
// # Bounces
//
// A permanent failure (a 5xx reply, an unknown site, a mailbox that no
// longer exists) and an expired message bounce: a delivery status
// notification (internal/dsn) goes to mail.inbound, addressed to the
// envelope sender, and the router delivers it like any message. A message
// with the null sender is never bounced.
package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/dsn"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/relay/internal/mailbox"
	"github.com/postern/postern/services/relay/internal/smtpout"
)

// Stage is the Stage of the mail.status records the relay writes.
const Stage = "relay"

// Local delivers a message into a local mailbox. mailbox.Deliverer is one.
// Deliver must be idempotent by Message.DeliveryID; an error is temporary
// unless mailbox.IsPermanent says otherwise.
type Local interface {
	Deliver(ctx context.Context, m mailbox.Message) error
}

// Deps are the service's collaborators.
type Deps struct {
	// Bus consumes mail.delivery and the retry tiers and publishes what
	// the handlers produce. Required.
	Bus *msgbus.Bus
	// Directory is the site's directory replica. Required.
	Directory sitestate.DirectoryReader
	// Idempotency remembers what was sent over SMTP. Required.
	Idempotency sitestate.Idempotency
	// Local delivers into local mailboxes. Required.
	Local Local
	// Site is this site's name (consumer groups, status and bounce records). Required.
	Site string
	// Logger; nil: slog.Default().
	Logger *slog.Logger
	// MeterProvider; nil: the OpenTelemetry global.
	MeterProvider metric.MeterProvider
}

// Service delivers what the router routed.
type Service struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	dir    replica.Reader
	inst   *instruments
	helo   string
	master string // postmaster address

	smarthost *smtpout.Pool            // nil: none configured
	bySender  map[string]*smtpout.Pool // lower-case sender domain → pool
	siteTLS   *tls.Config              // nil: inter-site TLS not configured
	ambiguous metric.Int64Counter      // postern.relay.ambiguous_resends (attempt.go)

	mu        sync.Mutex
	sitePools map[string]*smtpout.Pool // endpoint → pool
	closed    bool
}

// New checks cfg and deps and builds the service; it reads the TLS files
// and opens no connection.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("delivery: invalid configuration: %w", err)
	}
	switch {
	case deps.Bus == nil:
		return nil, errors.New("delivery: no bus")
	case deps.Directory == nil:
		return nil, errors.New("delivery: no directory replica")
	case deps.Idempotency == nil:
		return nil, errors.New("delivery: no idempotency store")
	case deps.Local == nil:
		return nil, errors.New("delivery: no local mailbox deliverer")
	case deps.Site == "":
		return nil, errors.New("delivery: no site name")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.MeterProvider == nil {
		deps.MeterProvider = otel.GetMeterProvider()
	}
	inst, err := newInstruments(deps.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("delivery: metrics: %w", err)
	}
	ambiguous, err := newAmbiguousCounter(deps.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("delivery: metrics: %w", err)
	}
	s := &Service{
		cfg:       cfg,
		deps:      deps,
		log:       deps.Logger.With(slog.String("component", "delivery")),
		dir:       replica.Reader{D: deps.Directory},
		inst:      inst,
		ambiguous: ambiguous,
		helo:      cfg.Hostname,
		master:    cfg.Postmaster,
		bySender:  map[string]*smtpout.Pool{},
		sitePools: map[string]*smtpout.Pool{},
	}
	if s.helo == "" {
		if s.helo, err = os.Hostname(); err != nil || s.helo == "" {
			s.helo = "localhost"
		}
	}
	if s.master == "" {
		s.master = "postmaster@" + s.helo
	}
	if cfg.Smarthost.Host != "" {
		if s.smarthost, err = s.newSmarthostPool("smarthost", cfg.Smarthost); err != nil {
			return nil, err
		}
	}
	for i, ss := range cfg.SenderSmarthosts {
		p, err := s.newSmarthostPool(fmt.Sprintf("sender_smarthosts[%d]", i), ss.Smarthost(cfg.Smarthost))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.bySender[strings.ToLower(ss.Domain)] = p
	}
	if cfg.Sites.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Sites.CertFile, cfg.Sites.KeyFile)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("delivery: sites.cert_file, sites.key_file: %w", err)
		}
		roots, err := loadCAs(cfg.Sites.CAFile)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("delivery: sites.ca_file: %w", err)
		}
		s.siteTLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return s, nil
}

func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}

func (s *Service) newSmarthostPool(key string, h Smarthost) (*smtpout.Pool, error) {
	tcfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if h.CAFile != "" {
		roots, err := loadCAs(h.CAFile)
		if err != nil {
			return nil, fmt.Errorf("delivery: %s.ca_file: %w", key, err)
		}
		tcfg.RootCAs = roots
	}
	p, err := smtpout.NewPool(smtpout.Options{
		Name:                  h.Host,
		Addr:                  net.JoinHostPort(h.Host, strconv.Itoa(h.Port)),
		TLS:                   h.TLS,
		TLSConfig:             tcfg,
		Username:              h.Username,
		Password:              h.Password.Reveal(),
		Helo:                  s.helo,
		DialTimeout:           s.cfg.DialTimeout,
		CommandTimeout:        s.cfg.CommandTimeout,
		DataTimeout:           s.cfg.DataTimeout,
		MaxSessions:           h.MaxSessions,
		IdleTimeout:           h.IdleTimeout,
		MaxMessagesPerSession: h.MaxMessagesPerSession,
		OnSession:             s.inst.sessionsOf(events.DestOutbound),
		Logger:                s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: %s: %w", key, err)
	}
	return p, nil
}

// RetryTopics are the logical retry tier topics this configuration uses
// (Run creates them when they are missing).
func (s *Service) RetryTopics() []string { return events.RetryTopics(s.cfg.Retry.Tiers()) }

// DeliveryGroup is the consumer group of mail.delivery.
func (s *Service) DeliveryGroup() string { return s.deps.Site + "-relay-delivery" }

// RetryGroup is the consumer group of retry tier i.
func (s *Service) RetryGroup(tier int) string {
	return s.deps.Site + "-relay-retry-" + strconv.Itoa(tier)
}

// Run consumes mail.delivery and the retry tiers until ctx is cancelled
// (then it returns nil) or a consumer fails. It closes the SMTP sessions
// before it returns.
func (s *Service) Run(ctx context.Context) error {
	defer s.Close()
	if err := s.deps.Bus.EnsureTopics(ctx, append([]string{events.TopicDelivery, events.TopicStatus, events.TopicInbound}, s.RetryTopics()...)...); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("delivery: %w", err)
	}
	var subs []msgbus.Subscription
	start := func(sub msgbus.Subscription) { subs = append(subs, sub) }
	for range s.cfg.Consumers {
		start(msgbus.Subscription{Group: s.DeliveryGroup(), Topic: events.TopicDelivery, Name: "relay-delivery", Handler: s.handleDelivery})
	}
	for tier := range s.cfg.Retry.Tiers() {
		for range s.cfg.RetryConsumers {
			start(msgbus.Subscription{Group: s.RetryGroup(tier), Topic: events.TopicRetry(tier), Name: "relay-retry-" + strconv.Itoa(tier), Handler: s.retryHandler()})
		}
	}
	s.log.InfoContext(ctx, "delivery running", slog.Int("consumers", s.cfg.Consumers), slog.Int("retry_tiers", s.cfg.Retry.Tiers()),
		slog.Bool("smarthost", s.smarthost != nil), slog.Bool("site_tls", s.siteTLS != nil))
	if err := s.deps.Bus.ConsumeAll(ctx, subs...); err != nil {
		return fmt.Errorf("delivery: %w", err)
	}
	return nil
}

// Close closes the SMTP session pools. Run calls it when it returns.
func (s *Service) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	pools := []*smtpout.Pool{}
	for _, p := range s.sitePools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	if s.smarthost != nil {
		pools = append(pools, s.smarthost)
	}
	for _, p := range s.bySender {
		pools = append(pools, p)
	}
	for _, p := range pools {
		_ = p.Close()
	}
}

// job is one attempt at a delivery.
type job struct {
	d       events.Delivery
	attempt int       // from 1
	first   time.Time // the first attempt: the start of the lifetime
	partial bool      // d.Recipients is what is left of a larger set
}

// handleDelivery is the handler of mail.delivery: the first attempt.
func (s *Service) handleDelivery(ctx context.Context, rec msgbus.Record) ([]msgbus.Message, error) {
	d, err := events.DecodeDelivery(rec.Event())
	if err != nil {
		return nil, msgbus.Permanent(fmt.Errorf("delivery: %w", err))
	}
	now := time.Now()
	first := rec.Time
	if first.IsZero() || first.After(now) {
		first = now
	}
	return s.attempt(ctx, job{d: d, attempt: 1, first: first.UTC()})
}

// retryHandler is the handler of a retry tier: wait until the record is
// due, then attempt again.
func (s *Service) retryHandler() msgbus.Handler {
	return func(ctx context.Context, rec msgbus.Record) ([]msgbus.Message, error) {
		r, err := events.DecodeRetry(rec.Event())
		if err != nil {
			return nil, msgbus.Permanent(fmt.Errorf("delivery: retry: %w", err))
		}
		if wait := time.Until(r.NextAttempt); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err() // not committed: the next consumer waits out the rest
			}
		}
		return s.attempt(ctx, job{d: r.Delivery, attempt: r.Attempt, first: r.FirstAttempt, partial: r.Partial})
	}
}

// outcome is what happened to one recipient.
type outcome struct {
	rcpt      string
	delivered bool
	permanent bool
	code      int    // SMTP reply code, 0 without one
	status    string // enhanced status code
	reason    string // human-readable, never internal detail
	diag      string // DSN diagnostic ("smtp; ..."), "" without a reply
	remote    string // the server that answered
}

func (s *Service) attempt(ctx context.Context, j job) ([]msgbus.Message, error) {
	start := time.Now()
	// A delivery under way is not cut the moment the relay stops: it gets
	// DrainTimeout to finish, so that a server is not left holding a
	// message the relay will send again.
	dctx, cancel := drainContext(ctx, s.cfg.DrainTimeout)
	defer cancel()
	var outs []outcome
	switch j.d.Destination {
	case events.DestLocal:
		outs = s.deliverLocal(dctx, j)
	case events.DestSite:
		outs = s.deliverSite(dctx, j)
	case events.DestOutbound:
		outs = s.deliverOutbound(dctx, j)
	}
	s.inst.observeDuration(ctx, j.d.Destination, time.Since(start))
	if ctx.Err() != nil {
		// Stopping: an interrupted attempt is not an outcome. Nothing is
		// committed; the record is tried again after the restart.
		return nil, ctx.Err()
	}
	return s.outputs(ctx, j, outs)
}

// drainContext returns a context that ends drain after ctx ends (or when
// cancel is called).
func drainContext(ctx context.Context, drain time.Duration) (context.Context, context.CancelFunc) {
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu    sync.Mutex
		timer *time.Timer
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		timer = time.AfterFunc(drain, cancel)
	})
	return dctx, func() {
		stop()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

func all(rcpts []string, o outcome) []outcome {
	out := make([]outcome, len(rcpts))
	for i, r := range rcpts {
		out[i] = o
		out[i].rcpt = r
	}
	return out
}

// temporary is a temporary failure without a remote reply.
func temporary(status, reason string) outcome { return outcome{status: status, reason: reason} }

// permanent is a permanent failure without a remote reply.
func permanent(status, reason string) outcome {
	return outcome{permanent: true, status: status, reason: reason}
}

func (s *Service) deliverLocal(ctx context.Context, j job) []outcome {
	d := j.d
	u, err := s.dir.User(ctx, d.Mailbox)
	if err != nil {
		s.log.WarnContext(ctx, "directory lookup failed", slog.String("delivery_id", d.ID), slog.Any("error", err))
		return all(d.Recipients, temporary("4.3.0", "the directory is not available"))
	}
	if u == nil {
		return all(d.Recipients, permanent("5.1.1", "the mailbox does not exist any more"))
	}
	perRcpt := len(d.Recipients) > 1 || j.partial
	outs := make([]outcome, 0, len(d.Recipients))
	for _, rcpt := range d.Recipients {
		id := d.ID
		if perRcpt {
			id = d.ID + "/" + strings.ToLower(rcpt)
		}
		err := s.deps.Local.Deliver(ctx, mailbox.Message{DeliveryID: id, Username: u.Username, Recipient: rcpt, MailFrom: d.MailFrom, Data: d.Message})
		if err == nil {
			outs = append(outs, outcome{rcpt: rcpt, delivered: true, status: "2.0.0", reason: "delivered to the mailbox"})
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		o := outcome{rcpt: rcpt, permanent: mailbox.IsPermanent(err)}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			o.code, o.status = se.Code, smtpout.EnhancedStatus(se)
			o.reason = strings.TrimSpace(fmt.Sprintf("%d %s %s", se.Code, o.status, oneLine(se.Message)))
			o.diag = "smtp; " + o.reason
		} else if o.permanent {
			o.status, o.reason = "5.2.0", "the mailbox cannot take the message"
		} else {
			o.status, o.reason = "4.2.0", "the mailbox is not available"
		}
		s.log.WarnContext(ctx, "local delivery failed", slog.String("delivery_id", d.ID), slog.String("mailbox", d.Mailbox),
			slog.Bool("permanent", o.permanent), slog.Any("error", err))
		outs = append(outs, o)
	}
	return outs
}

func (s *Service) deliverSite(ctx context.Context, j job) []outcome {
	d := j.d
	site, err := s.dir.Site(ctx, d.TargetSite)
	switch {
	case err != nil:
		s.log.WarnContext(ctx, "directory lookup failed", slog.String("delivery_id", d.ID), slog.Any("error", err))
		return all(d.Recipients, temporary("4.3.0", "the directory is not available"))
	case site == nil:
		return all(d.Recipients, permanent("5.4.4", fmt.Sprintf("site %q is not in the directory", d.TargetSite)))
	case site.SMTPEndpoint == "":
		return all(d.Recipients, temporary("4.4.4", fmt.Sprintf("site %q has no SMTP endpoint in the directory", d.TargetSite)))
	case s.siteTLS == nil:
		s.log.WarnContext(ctx, "mail for another site waits: relay.delivery.sites.cert_file, key_file and ca_file are not set", slog.String("site", d.TargetSite))
		return all(d.Recipients, temporary("4.7.0", "delivery to other sites is not configured at this site"))
	}
	pool, err := s.sitePool(site)
	if err != nil {
		s.log.WarnContext(ctx, "site endpoint unusable", slog.String("site", site.Name), slog.Any("error", err))
		return all(d.Recipients, temporary("4.4.4", fmt.Sprintf("the SMTP endpoint of site %q is not usable", site.Name)))
	}
	return s.sendSMTP(ctx, pool, d)
}

func (s *Service) sitePool(site *replica.Site) (*smtpout.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("delivery: closed")
	}
	if p := s.sitePools[site.SMTPEndpoint]; p != nil {
		return p, nil
	}
	host, _, err := net.SplitHostPort(site.SMTPEndpoint)
	if err != nil {
		return nil, fmt.Errorf("site %s: smtp_endpoint %q: %w", site.Name, site.SMTPEndpoint, err)
	}
	p, err := smtpout.NewPool(smtpout.Options{
		Name:           host,
		Addr:           site.SMTPEndpoint,
		TLS:            s.cfg.Sites.TLS,
		TLSConfig:      s.siteTLS,
		Helo:           s.helo,
		DialTimeout:    s.cfg.DialTimeout,
		CommandTimeout: s.cfg.CommandTimeout,
		DataTimeout:    s.cfg.DataTimeout,
		MaxSessions:    s.cfg.Sites.MaxSessions,
		IdleTimeout:    s.cfg.Sites.IdleTimeout,
		OnSession:      s.inst.sessionsOf(events.DestSite),
		Logger:         s.log,
	})
	if err != nil {
		return nil, err
	}
	s.sitePools[site.SMTPEndpoint] = p
	return p, nil
}

func (s *Service) deliverOutbound(ctx context.Context, j job) []outcome {
	d := j.d
	pool := s.smarthost
	if _, domain, ok := strings.Cut(d.MailFrom, "@"); ok {
		if p := s.bySender[strings.ToLower(domain)]; p != nil {
			pool = p
		}
	}
	if pool == nil {
		s.log.WarnContext(ctx, "outbound mail waits: relay.delivery.smarthost.host is not set", slog.String("delivery_id", d.ID))
		return all(d.Recipients, temporary("4.4.0", "no smarthost is configured at this site"))
	}
	return s.sendSMTP(ctx, pool, d)
}

// sentKey is the idempotency key of a message handed to a remote server.
func sentKey(id, rcpt string) string { return "sent:" + id + ":" + strings.ToLower(rcpt) }

// leaseKey marks a recipient of a delivery being sent right now by one
// consumer: after a consumer-group rebalance, two consumers may hold the
// same uncommitted record (kafka-go does not cancel a handler already
// running for the old generation) and would otherwise both send it.
func leaseKey(id, rcpt string) string { return "sending:" + id + ":" + strings.ToLower(rcpt) }

// leaseTTL bounds a sending lease: the longest one SMTP transaction may
// take. A lease left by a killed process expires after it, and the
// recipient is sent by the next attempt.
func (s *Service) leaseTTL() time.Duration {
	return s.cfg.DialTimeout + 4*s.cfg.CommandTimeout + s.cfg.DataTimeout
}

// sendSMTP sends d to the recipients that were not sent already, and
// remembers those the server accepted. A recipient another consumer is
// sending at this moment is deferred: its next attempt finds it sent (or
// the lease expired after a crash, and sends it).
func (s *Service) sendSMTP(ctx context.Context, pool *smtpout.Pool, d events.Delivery) []outcome {
	outs := make([]outcome, 0, len(d.Recipients))
	unavailable := func(rcpts []string, err error) []outcome {
		s.log.WarnContext(ctx, "idempotency check failed", slog.String("delivery_id", d.ID), slog.Any("error", err))
		for _, r := range rcpts {
			outs = append(outs, outcome{rcpt: r, status: "4.3.0", reason: "the relay's state store is not available"})
		}
		return outs
	}
	keys := make([]string, len(d.Recipients))
	for i, r := range d.Recipients {
		keys[i] = sentKey(d.ID, r)
	}
	seen, err := s.deps.Idempotency.SeenAll(ctx, keys)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return unavailable(d.Recipients, err)
	}
	var todo []string
	for i, r := range d.Recipients {
		if seen[i] {
			outs = append(outs, outcome{rcpt: r, delivered: true, code: 250, status: "2.0.0", reason: "delivered (sent before)", remote: pool.Name()})
		} else {
			todo = append(todo, r)
		}
	}
	if len(todo) == 0 {
		return outs
	}
	leases := make([]string, len(todo))
	for i, r := range todo {
		leases[i] = leaseKey(d.ID, r)
	}
	held, err := s.deps.Idempotency.ClaimAll(ctx, leases, s.leaseTTL())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return unavailable(todo, err)
	}
	var pending []string
	for i, r := range todo {
		if held[i] {
			pending = append(pending, r)
		} else {
			outs = append(outs, outcome{rcpt: r, status: "4.4.0", reason: "being delivered by another relay process"})
		}
	}
	if len(pending) == 0 {
		return outs
	}
	// The transaction's hooks set the attempt markers just before DATA
	// and store the sent keys right after the 250 (attempt.go).
	tx := s.newTransaction(ctx, d, pool.Name())
	var failed []smtpout.Result
	for _, r := range pool.SendHooked(ctx, d.MailFrom, pending, d.Message, tx.hooks()) {
		o := outcome{rcpt: r.Recipient, delivered: r.Delivered(), permanent: r.Permanent, code: r.Code, status: r.Status,
			reason: r.Reason(), diag: r.Diagnostic(), remote: r.Remote}
		if !r.Delivered() {
			failed = append(failed, r)
			if ctx.Err() == nil {
				s.log.InfoContext(ctx, "smtp delivery failed", slog.String("delivery_id", d.ID), slog.String("remote", r.Remote),
					slog.Bool("permanent", r.Permanent), slog.Int("code", r.Code), slog.Any("error", r.Err))
			}
		}
		outs = append(outs, o)
	}
	tx.finish(failed)
	return outs
}

// outputs turns the outcomes of an attempt into records: a status per
// recipient, a retry record for the temporary failures, a bounce for the
// permanent ones and the expired.
func (s *Service) outputs(ctx context.Context, j job, outs []outcome) ([]msgbus.Message, error) {
	d := j.d
	now := time.Now().UTC()
	deadline := j.first.Add(s.cfg.Retry.MaxLifetime)
	msgID := messageID(d.Message)
	status := func(o outcome, result string) events.Status {
		return events.Status{
			InboundID: d.InboundID, DeliveryID: d.ID, Site: s.deps.Site, Stage: Stage, Recipient: o.rcpt,
			Outcome: result, Reason: o.reason, SMTPCode: o.code, At: now, MessageID: msgID,
			Source: d.Source, Attempt: j.attempt, Destination: d.Destination,
			OriginalRecipient: d.OriginalRecipient, ReceivedAt: d.ReceivedAt,
		}
	}
	var (
		msgs              []msgbus.Message
		statuses          []events.Status
		deferred, bounced []outcome
	)
	for _, o := range outs {
		switch {
		case o.delivered:
			statuses = append(statuses, status(o, events.OutcomeDelivered))
		case o.permanent:
			bounced = append(bounced, o)
		case !now.Before(deadline):
			o.reason = "delivery time expired: " + o.reason
			o.status = "4.4.7"
			bounced = append(bounced, o)
		default:
			deferred = append(deferred, o)
		}
	}
	if len(deferred) > 0 {
		next := now.Add(s.cfg.Retry.Delay(j.attempt, rand.Float64()))
		if next.After(deadline) {
			next = deadline // one last attempt when the lifetime ends
		}
		tier := s.cfg.Retry.Tier(j.attempt)
		r := events.Retry{Delivery: d, Attempt: j.attempt + 1, NextAttempt: next, FirstAttempt: j.first,
			LastCode: deferred[0].code, LastError: oneLine(deferred[0].reason), Partial: j.partial || len(deferred) < len(d.Recipients)}
		r.Delivery.Recipients = nil
		for _, o := range deferred {
			r.Delivery.Recipients = append(r.Delivery.Recipients, o.rcpt)
			st := status(o, events.OutcomeDeferred)
			st.NextAttempt = next
			statuses = append(statuses, st)
		}
		rec, err := r.Encode()
		if err != nil {
			return nil, msgbus.Permanent(fmt.Errorf("delivery %s: retry record: %w", d.ID, err))
		}
		msgs = append(msgs, msgbus.NewMessage(events.TopicRetry(tier), rec))
		s.inst.retryScheduled(ctx, tier)
		s.log.InfoContext(ctx, "delivery deferred", slog.String("delivery_id", d.ID), slog.String("destination", d.Destination),
			slog.Int("recipients", len(deferred)), slog.Int("attempt", j.attempt), slog.Time("next_attempt", next), slog.Int("tier", tier),
			slog.String("reason", deferred[0].reason))
	}
	for _, o := range bounced {
		statuses = append(statuses, status(o, events.OutcomeBounced))
	}
	if len(bounced) > 0 {
		m, err := s.bounce(ctx, j, bounced, now)
		if err != nil {
			return nil, err
		}
		if m != nil {
			msgs = append(msgs, *m)
		}
	}
	for _, st := range statuses {
		rec, err := st.Encode()
		if err != nil {
			return nil, msgbus.Permanent(fmt.Errorf("delivery %s: status record: %w", d.ID, err))
		}
		msgs = append(msgs, msgbus.NewMessage(events.TopicStatus, rec))
		s.inst.delivered(ctx, d.Destination, st.Outcome)
		if st.Outcome != events.OutcomeDeferred {
			s.inst.observeLatency(ctx, d.Destination, st.Outcome, d.ReceivedAt, now)
		}
	}
	return msgs, nil
}

// bounce builds the DSN for the bounced recipients, or nil for the null sender.
func (s *Service) bounce(ctx context.Context, j job, bounced []outcome, now time.Time) (*msgbus.Message, error) {
	d := j.d
	rcpts := make([]string, len(bounced))
	for i, o := range bounced {
		rcpts[i] = o.rcpt
	}
	if d.MailFrom == "" {
		s.log.WarnContext(ctx, "delivery failed; no bounce to the null sender", slog.String("delivery_id", d.ID),
			slog.Any("recipients", rcpts), slog.String("reason", bounced[0].reason))
		return nil, nil
	}
	report := dsn.Report{
		ReportingMTA: s.helo,
		Postmaster:   s.master,
		To:           d.MailFrom,
		EnvelopeID:   d.InboundID,
		ArrivalDate:  j.first,
		Original:     d.Message,
		Now:          now,
	}
	for _, o := range bounced {
		r := dsn.Recipient{Final: o.rcpt, Action: dsn.ActionFailed, Status: o.status, Diagnostic: o.diag, RemoteMTA: o.remote}
		if r.Diagnostic == "" {
			r.Diagnostic = "x-postern; " + o.reason
		}
		if len(d.Recipients) == 1 && !j.partial {
			r.Original = d.OriginalRecipient
		}
		report.Recipients = append(report.Recipients, r)
	}
	in, err := dsn.Inbound(report, s.deps.Site)
	if errors.Is(err, dsn.ErrNullSender) {
		return nil, nil
	}
	if err != nil {
		return nil, msgbus.Permanent(fmt.Errorf("delivery %s: building the bounce: %w", d.ID, err))
	}
	rec, err := in.Encode()
	if err != nil {
		return nil, msgbus.Permanent(fmt.Errorf("delivery %s: bounce record: %w", d.ID, err))
	}
	s.inst.bounce(ctx)
	s.log.WarnContext(ctx, "delivery failed; bounced to the sender", slog.String("delivery_id", d.ID), slog.String("bounce_id", in.ID),
		slog.Any("recipients", rcpts), slog.String("reason", bounced[0].reason))
	m := msgbus.NewMessage(events.TopicInbound, rec)
	return &m, nil
}

// messageID returns the message's Message-ID header, "" when it has none
// or its header cannot be read.
func messageID(msg []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return ""
	}
	return oneLine(h.Get("Message-Id"))
}

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}
