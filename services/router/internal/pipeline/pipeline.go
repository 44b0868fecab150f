// Package pipeline is the router's consumer of mail.inbound: for each record
// it decodes the envelope, asks package routing where the message goes, and
// returns what the bus publishes before it commits the record — one
// mail.delivery record per destination, one mail.status record (stage
// "router", outcome rejected) per refused recipient, and a DSN bounce to the
// envelope sender as a new mail.inbound record when the sender must be told.
//
// # Redelivery
//
// Kafka delivers a record again after a crash or a rebalance; routing it
// again gives the same outputs with the same ids (delivery ids are
// deterministic, see routing.Router.Route; so are the DSN's). Each output
// has an idempotency key in the site state:
//
//	route:<delivery id>                          a mail.delivery record
//	route:status:<inbound id>:<recipient>        a mail.status rejection
//	route:dsn:<dsn id>                           a bounce on mail.inbound
//
// [Pipeline.Handle] leaves out the outputs whose key is already set, and
// [Pipeline.AfterPublish] — which the bus calls once the outputs are
// acknowledged and before it commits the record — sets the keys of what was
// published (and stores the Message-IDs of mail staff sent for a shared
// mailbox in the Message-ID index). A key is therefore only ever set for an
// output that is on the broker, and an output whose key is set is never
// published again while the key lives (Config.IdempotencyTTL).
//
// The window that remains: a process killed after the broker acknowledged a
// record's outputs and before AfterPublish set their keys has committed
// neither; the record comes again and the same outputs are published again,
// with the same ids. The relay's final delivery is idempotent by delivery id,
// the fetcher's ledger by recipient and a repeated bounce is routed to
// deliveries whose ids repeat too, so such a copy is dropped downstream;
// never does one message and recipient get two different delivery ids.
package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/dsn"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/router/internal/routing"
)

// Name is the handler's name in dead-letter headers, logs and metrics.
const Name = "router"

// DefaultIdempotencyTTL is how long output keys are kept when Options
// leaves it zero: far longer than any record stays unprocessed.
const DefaultIdempotencyTTL = 7 * 24 * time.Hour

// Results of one handled record, the values of the "result" attribute of
// postern_router_messages_total.
const (
	ResultRouted     = "routed"     // at least one destination
	ResultRejected   = "rejected"   // every recipient refused
	ResultDuplicate  = "duplicate"  // every output was published before (a redelivery)
	ResultDeadLetter = "deadletter" // dead-lettered: a mail loop, or outputs that cannot be written
	ResultMalformed  = "malformed"  // not a mail.inbound record this version reads: dead-lettered
	ResultRetry      = "retry"      // the directory or the site state did not answer: retried
)

// Options are what a Pipeline is built from.
type Options struct {
	// Routing is the routing configuration (Routing.Site is this site).
	Routing routing.Config
	// Directory is the site's directory replica; Index its Message-ID
	// index; Keys its idempotency keys.
	Directory routing.Directory
	Index     sitestate.MessageIndex
	Keys      sitestate.Idempotency
	// ReportingMTA is the host name written in bounces (Reporting-MTA,
	// the Message-ID's domain). Required.
	ReportingMTA string
	// Postmaster is the From: address of bounces. Required.
	Postmaster string
	// IdempotencyTTL is how long an output's key is kept; 0 means
	// DefaultIdempotencyTTL.
	IdempotencyTTL time.Duration
	// MeterProvider receives the router's metrics; nil records none.
	MeterProvider metric.MeterProvider
	// Logger logs one line per message; nil discards.
	Logger *slog.Logger
	// Now is the clock of status records and bounces; nil is time.Now.
	Now func() time.Time
}

// Pipeline handles mail.inbound records. It is safe for concurrent use by
// several consumers.
type Pipeline struct {
	router       *routing.Router
	index        sitestate.MessageIndex
	keys         sitestate.Idempotency
	site         string
	reportingMTA string
	postmaster   string
	ttl          time.Duration
	log          *slog.Logger
	now          func() time.Time
	inst         instruments

	mu sync.Mutex
	// pending holds, per wire topic and partition, the Message-IDs the
	// record being handled there must record once its outputs are
	// published. A consumer handles one record of a partition at a time,
	// and a partition belongs to one consumer of the group, so one entry
	// per partition is enough (and bounds the map). During a rebalance two
	// consumers of this process may briefly handle the same record: they
	// set the same entry, and whichever AfterPublish takes it records the
	// Message-IDs (a later record of the partition is only set by a
	// consumer that finished this one).
	pending map[string]pendingIDs
}

type pendingIDs struct {
	offset  int64
	records []routing.MessageIDRecord
}

// New builds a Pipeline.
func New(o Options) (*Pipeline, error) {
	r, err := routing.New(o.Routing, o.Directory, o.Index)
	if err != nil {
		return nil, err
	}
	switch {
	case o.Index == nil || o.Keys == nil:
		return nil, errors.New("pipeline: the message index and the idempotency keys are required")
	case strings.TrimSpace(o.ReportingMTA) == "":
		return nil, errors.New("pipeline: the reporting MTA host name is required")
	case strings.TrimSpace(o.Postmaster) == "":
		return nil, errors.New("pipeline: the postmaster address is required")
	case o.IdempotencyTTL < 0:
		return nil, fmt.Errorf("pipeline: idempotency ttl %s is negative", o.IdempotencyTTL)
	}
	p := &Pipeline{
		router: r, index: o.Index, keys: o.Keys, site: o.Routing.Site,
		reportingMTA: o.ReportingMTA, postmaster: o.Postmaster, ttl: o.IdempotencyTTL,
		log: o.Logger, now: o.Now, pending: map[string]pendingIDs{},
	}
	if p.ttl == 0 {
		p.ttl = DefaultIdempotencyTTL
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	mp := o.MeterProvider
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	if p.inst, err = newInstruments(mp); err != nil {
		return nil, fmt.Errorf("pipeline: metrics: %w", err)
	}
	return p, nil
}

// Subscription is the consumer of mail.inbound in group: Handle as the
// handler and AfterPublish after the outputs are acknowledged.
func (p *Pipeline) Subscription(group string) msgbus.Subscription {
	return msgbus.Subscription{
		Group: group, Topic: events.TopicInbound, Name: Name,
		Handler: p.Handle, AfterPublish: p.AfterPublish,
	}
}

// Handle routes one mail.inbound record and returns the records to publish
// (see the package documentation). A record that cannot be read, and a
// message routing dead-letters (a loop), are permanent errors; a directory
// or site state that does not answer is a temporary one.
func (p *Pipeline) Handle(ctx context.Context, rec msgbus.Record) ([]msgbus.Message, error) {
	in, err := events.DecodeInbound(rec.Event())
	if err != nil {
		p.inst.result(ctx, ResultMalformed)
		return nil, msgbus.Permanent(fmt.Errorf("mail.inbound record %s/%d at offset %d cannot be routed: %w", rec.WireTopic, rec.Partition, rec.Offset, err))
	}
	start := time.Now()
	dec, err := p.router.Route(ctx, in)
	p.inst.routeSeconds.Record(ctx, time.Since(start).Seconds())
	if err != nil {
		p.inst.result(ctx, ResultRetry)
		return nil, fmt.Errorf("routing %s: %w", in.ID, err)
	}
	if dec.DeadLetter != "" {
		p.inst.result(ctx, ResultDeadLetter)
		return nil, msgbus.Permanent(fmt.Errorf("message %s not routed: %s", in.ID, dec.DeadLetter))
	}

	// Every output with its key; those whose key is set were published
	// before and are left out, checked in one read.
	var (
		keys   []string
		topics []string
		recs   []events.Record
	)
	add := func(key, topic string, r events.Record) {
		keys, topics, recs = append(keys, key), append(topics, topic), append(recs, r)
	}
	for _, d := range dec.Deliveries {
		d.ReceivedAt = in.ReceivedAt // for the end-to-end latency the relay measures
		r, err := d.Encode()
		if err != nil {
			p.inst.result(ctx, ResultDeadLetter)
			return nil, msgbus.Permanent(fmt.Errorf("message %s: delivery %s: %w", in.ID, d.ID, err))
		}
		add(deliveryKey(d.ID), events.TopicDelivery, r)
	}
	statuses, err := p.statuses(in, dec.Rejections)
	if err != nil {
		p.inst.result(ctx, ResultDeadLetter)
		return nil, msgbus.Permanent(err)
	}
	for i, s := range statuses {
		add(statusKey(in.ID, dec.Rejections[i].Recipient), events.TopicStatus, s)
	}
	bounce, err := p.bounce(in, dec.Rejections)
	if err != nil {
		p.inst.result(ctx, ResultDeadLetter)
		return nil, msgbus.Permanent(fmt.Errorf("message %s: writing the bounce to %s: %w", in.ID, in.MailFrom, err))
	}
	if bounce != nil {
		add(dsnKey(bounce.ID), events.TopicInbound, mustEncode(bounce))
	}
	// The record itself has a key too, set once all its outputs are
	// published: a record routed before and redelivered (a router killed
	// between AfterPublish and the commit) yields nothing, even if the
	// directory changed meanwhile and routing it now would give other
	// outputs (a user moved to another site: new delivery ids).
	seen, err := p.keys.SeenAll(ctx, append(keys, inboundKey(in.ID)))
	switch {
	case errors.Is(err, sitestate.ErrInvalid):
		p.inst.result(ctx, ResultDeadLetter)
		return nil, msgbus.Permanent(fmt.Errorf("message %s: its outputs cannot have idempotency keys: %w", in.ID, err))
	case err != nil:
		p.inst.result(ctx, ResultRetry)
		return nil, fmt.Errorf("message %s: reading the idempotency keys of its %d outputs: %w", in.ID, len(keys), err)
	}
	var outs []msgbus.Message
	routedBefore := seen[len(keys)]
	for i := range keys {
		if !seen[i] && !routedBefore {
			outs = append(outs, msgbus.NewMessage(topics[i], recs[i]))
		}
	}

	p.setPending(rec, dec.RecordMessageIDs)
	result := ResultRouted
	switch {
	case routedBefore, len(outs) == 0 && (len(dec.Deliveries) > 0 || len(dec.Rejections) > 0):
		result = ResultDuplicate
	case len(dec.Deliveries) == 0:
		result = ResultRejected
	}
	p.inst.result(ctx, result)
	attrs := []any{
		slog.String("inbound_id", in.ID), slog.String("source", in.Source.Kind),
		slog.Int("deliveries", len(dec.Deliveries)), slog.Int("rejections", len(dec.Rejections)),
		slog.Int("outputs", len(outs)), slog.String("result", result),
	}
	if bounce != nil {
		attrs = append(attrs, slog.String("bounce_id", bounce.ID))
	}
	p.log.InfoContext(ctx, "message routed", attrs...)
	for _, r := range dec.Rejections {
		p.log.InfoContext(ctx, "recipient refused", slog.String("inbound_id", in.ID), slog.String("recipient", r.Recipient),
			slog.String("status", r.Status), slog.String("reason", r.Reason), slog.Bool("bounce", r.Bounce))
	}
	for _, s := range dec.Skipped {
		p.log.DebugContext(ctx, "mailbox left out", slog.String("inbound_id", in.ID), slog.String("recipient", s.Recipient),
			slog.String("mailbox", s.Mailbox), slog.String("reason", s.Reason))
	}
	return outs, nil
}

// AfterPublish runs once the outputs of rec are acknowledged and before rec
// is committed: it sets the idempotency key of every published output and
// stores the Message-IDs routing asked to record. The keys are set in one
// Idempotency.ClaimAll call. An error is temporary (the bus retries it).
func (p *Pipeline) AfterPublish(ctx context.Context, rec msgbus.Record, published []msgbus.Message) error {
	deliveries := map[string]int64{}
	rejections := int64(0)
	var keys []string
	for _, m := range published {
		key, dest := keyOf(m)
		if key == "" {
			continue
		}
		keys = append(keys, key)
		switch {
		case m.Topic == events.TopicDelivery:
			deliveries[dest]++
		case m.Topic == events.TopicStatus:
			rejections++
		}
	}
	if id, _ := rec.Event().Get(events.HeaderID); id != "" {
		keys = append(keys, inboundKey(id))
	}
	// One call (one transaction, one fsync on SQLite) for all the keys.
	if _, err := p.keys.ClaimAll(ctx, keys, p.ttl); err != nil {
		return fmt.Errorf("setting the idempotency keys of %d published outputs: %w", len(keys), err)
	}
	for _, r := range p.takePending(rec) {
		err := p.index.Put(ctx, r.MessageID, r.Record, r.TTL)
		switch {
		case errors.Is(err, sitestate.ErrInvalid):
			// Cannot ever be stored: replies will be routed by name.
			p.log.WarnContext(ctx, "message-id not recorded", slog.String("message_id", r.MessageID), slog.Any("error", err))
		case err != nil:
			return fmt.Errorf("recording message-id %s: %w", r.MessageID, err)
		}
	}
	p.donePending(rec)
	for dest, n := range deliveries {
		p.inst.deliveries.Add(ctx, n, metric.WithAttributes(attrDestination.String(dest)))
	}
	if rejections > 0 {
		p.inst.rejections.Add(ctx, rejections)
	}
	return nil
}

// statuses returns one mail.status record per rejection.
func (p *Pipeline) statuses(in events.Inbound, rejs []routing.Rejection) ([]events.Record, error) {
	if len(rejs) == 0 {
		return nil, nil
	}
	msgID := messageID(in.Message)
	at := p.now().UTC()
	out := make([]events.Record, 0, len(rejs))
	for _, r := range rejs {
		s := events.Status{
			InboundID: in.ID, Site: p.site, Stage: "router", Recipient: r.Recipient,
			Outcome: events.OutcomeRejected, Reason: r.Status + " " + r.Reason, At: at,
			MessageID: msgID, Source: in.Source, OriginalRecipient: r.Recipient,
			ReceivedAt: in.ReceivedAt,
		}
		rec, err := s.Encode()
		if err != nil {
			return nil, fmt.Errorf("message %s: status of %s: %w", in.ID, r.Recipient, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// bounce returns the DSN to the envelope sender for the rejections that
// call for one, nil if none does (or the sender is null).
func (p *Pipeline) bounce(in events.Inbound, rejs []routing.Rejection) (*events.Inbound, error) {
	if in.MailFrom == "" {
		return nil, nil // never a bounce to <>
	}
	var rcpts []dsn.Recipient
	for _, r := range rejs {
		if !r.Bounce {
			continue
		}
		rcpts = append(rcpts, dsn.Recipient{
			Final: r.Recipient, Original: r.Recipient, Action: dsn.ActionFailed, Status: r.Status,
			Diagnostic: "smtp; " + smtpCode(r.Status) + " " + r.Status + " " + r.Reason,
		})
	}
	if len(rcpts) == 0 {
		return nil, nil
	}
	b, err := dsn.Inbound(dsn.Report{
		ReportingMTA: p.reportingMTA, Postmaster: p.postmaster, To: in.MailFrom,
		EnvelopeID: in.ID, ArrivalDate: in.ReceivedAt, Recipients: rcpts,
		Original: in.Message, Now: p.now(),
	}, p.site)
	if errors.Is(err, dsn.ErrNullSender) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// smtpCode is the basic reply code that goes with an enhanced status code.
func smtpCode(status string) string {
	switch {
	case strings.HasPrefix(status, "4."):
		return "450"
	case strings.HasPrefix(status, "5.6.") || strings.HasPrefix(status, "5.3."):
		return "554"
	}
	return "550"
}

// messageID returns the message's Message-ID field, "" if it has none or
// its header cannot be read.
func messageID(msg []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(h.Get("Message-Id"))
}

func mustEncode(in *events.Inbound) events.Record {
	r, err := in.Encode()
	if err != nil {
		// dsn.Inbound validated it.
		panic(fmt.Sprintf("pipeline: bounce %s does not encode: %v", in.ID, err))
	}
	return r
}

// Idempotency keys of the outputs.
func deliveryKey(id string) string { return "route:" + id }
func statusKey(inboundID, rcpt string) string {
	return "route:status:" + inboundID + ":" + strings.ToLower(strings.TrimSpace(rcpt))
}
func dsnKey(id string) string { return "route:dsn:" + id }

// inboundKey is set when every output of the mail.inbound record id is
// published.
func inboundKey(id string) string { return "route:inbound:" + id }

// keyOf returns the idempotency key of a published output and, for a
// delivery, its destination.
func keyOf(m msgbus.Message) (key, destination string) {
	ev := m.Event()
	switch m.Topic {
	case events.TopicDelivery:
		id, _ := ev.Get(events.HeaderDeliveryID)
		dest, _ := ev.Get(events.HeaderDestination)
		if id == "" {
			return "", ""
		}
		return deliveryKey(id), dest
	case events.TopicStatus:
		s, err := events.DecodeStatus(ev)
		if err != nil {
			return "", ""
		}
		return statusKey(s.InboundID, s.Recipient), ""
	case events.TopicInbound:
		id, _ := ev.Get(events.HeaderID)
		if id == "" {
			return "", ""
		}
		return dsnKey(id), ""
	}
	return "", ""
}

func partitionKey(rec msgbus.Record) string {
	return rec.WireTopic + "/" + strconv.Itoa(rec.Partition)
}

func (p *Pipeline) setPending(rec msgbus.Record, recs []routing.MessageIDRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(recs) == 0 {
		delete(p.pending, partitionKey(rec))
		return
	}
	p.pending[partitionKey(rec)] = pendingIDs{offset: rec.Offset, records: recs}
}

func (p *Pipeline) takePending(rec msgbus.Record) []routing.MessageIDRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.pending[partitionKey(rec)]; ok && e.offset == rec.Offset {
		return e.records
	}
	return nil
}

func (p *Pipeline) donePending(rec msgbus.Record) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.pending[partitionKey(rec)]; ok && e.offset == rec.Offset {
		delete(p.pending, partitionKey(rec))
	}
}

// Metric attribute keys (Prometheus labels).
var (
	attrResult      = attribute.Key("result")
	attrDestination = attribute.Key("destination")
)

// instruments are the router's metrics; in Prometheus
// postern_router_messages_total{result}, postern_router_deliveries_total{destination},
// postern_router_rejections_total and postern_router_route_seconds.
type instruments struct {
	messages     metric.Int64Counter
	deliveries   metric.Int64Counter
	rejections   metric.Int64Counter
	routeSeconds metric.Float64Histogram
}

func newInstruments(mp metric.MeterProvider) (instruments, error) {
	m := mp.Meter("github.com/postern/postern/services/router")
	var (
		in   instruments
		errs [4]error
	)
	in.messages, errs[0] = m.Int64Counter("postern.router.messages", metric.WithUnit("{message}"),
		metric.WithDescription("mail.inbound records handled, by result (routed, rejected, duplicate, deadletter, malformed, retry)."))
	in.deliveries, errs[1] = m.Int64Counter("postern.router.deliveries", metric.WithUnit("{delivery}"),
		metric.WithDescription("mail.delivery records published, by destination (local, site, outbound)."))
	in.rejections, errs[2] = m.Int64Counter("postern.router.rejections", metric.WithUnit("{recipient}"),
		metric.WithDescription("Recipients refused by the router (a mail.status rejection published)."))
	in.routeSeconds, errs[3] = m.Float64Histogram("postern.router.route", metric.WithUnit("s"),
		metric.WithDescription("Time to decide the routes of one message (directory and index lookups included)."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	return in, errors.Join(errs[:]...)
}

// DeclareMetrics creates the package's metric instruments on mp and drops
// them: for checks of the metric names operators query (the Grafana
// dashboards' test in deployments/), which need every instrument, not only
// those a run happened to record.
func DeclareMetrics(mp metric.MeterProvider) error {
	_, err := newInstruments(mp)
	return err
}

func (in instruments) result(ctx context.Context, r string) {
	in.messages.Add(ctx, 1, metric.WithAttributes(attrResult.String(r)))
}
