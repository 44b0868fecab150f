package delivery

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const instrumentationName = "github.com/postern/postern/services/relay/internal/delivery"

// Metric attribute keys (Prometheus labels).
const (
	attrDestination = attribute.Key("destination") // local, site, outbound
	attrOutcome     = attribute.Key("outcome")     // delivered, deferred, bounced
	attrTier        = attribute.Key("tier")        // retry tier, from 0
)

// instruments are the delivery metrics. The Prometheus exporter names them
// postern_relay_deliveries_total{destination,outcome} (recipients),
// postern_relay_delivery_seconds{destination} (one attempt at one
// delivery record), postern_relay_retries_scheduled_total{tier},
// postern_relay_bounces_total (bounce messages written) and
// postern_relay_outbound_sessions{destination} (open SMTP sessions to the
// smarthosts and other sites) and postern_mail_latency_seconds{destination,
// outcome} (acceptance at the edge to a final outcome, per recipient).
type instruments struct {
	deliveries metric.Int64Counter
	duration   metric.Float64Histogram
	retries    metric.Int64Counter
	bounces    metric.Int64Counter
	sessions   metric.Int64UpDownCounter
	latency    metric.Float64Histogram
}

// latencyBuckets are the boundaries of postern.mail.latency, in seconds:
// from a local delivery in milliseconds to an outbound message delivered
// (or bounced as expired) after days of retries.
var latencyBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600}

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	m := mp.Meter(instrumentationName)
	var (
		in   instruments
		errs [6]error
	)
	in.deliveries, errs[0] = m.Int64Counter("postern.relay.deliveries",
		metric.WithUnit("{recipient}"), metric.WithDescription("Delivery outcomes per recipient, by destination (local, site, outbound) and outcome (delivered, deferred, bounced)."))
	in.duration, errs[1] = m.Float64Histogram("postern.relay.delivery",
		metric.WithUnit("s"), metric.WithDescription("Time of one delivery attempt of one mail.delivery record, all its recipients."))
	in.retries, errs[2] = m.Int64Counter("postern.relay.retries.scheduled",
		metric.WithUnit("{record}"), metric.WithDescription("Deliveries published to a retry tier after a temporary failure, by tier."))
	in.bounces, errs[3] = m.Int64Counter("postern.relay.bounces",
		metric.WithUnit("{message}"), metric.WithDescription("Bounces (delivery status notifications) written to mail.inbound."))
	in.sessions, errs[4] = m.Int64UpDownCounter("postern.relay.outbound.sessions",
		metric.WithUnit("{session}"), metric.WithDescription("SMTP sessions open to smarthosts (destination outbound) and other sites (destination site)."))
	in.latency, errs[5] = m.Float64Histogram("postern.mail.latency",
		metric.WithUnit("s"), metric.WithDescription("Time from the message's acceptance at the edge (POP3 download or SMTP 250) to a final outcome (delivered or bounced) for one recipient, by destination and outcome. For destination site it ends at the other site's relay, where a new measurement starts."),
		metric.WithExplicitBucketBoundaries(latencyBuckets...))
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return &in, nil
}

// DeclareMetrics creates the package's metric instruments on mp and drops
// them: for checks of the metric names operators query (the Grafana
// dashboards' test in deployments/), which need every instrument, not only
// those a run happened to record.
func DeclareMetrics(mp metric.MeterProvider) error {
	_, err := newInstruments(mp)
	if err == nil {
		_, err = newAmbiguousCounter(mp) // attempt.go
	}
	return err
}

func (in *instruments) delivered(ctx context.Context, destination, outcome string) {
	in.deliveries.Add(ctx, 1, metric.WithAttributes(attrDestination.String(destination), attrOutcome.String(outcome)))
}

// observeLatency records the end-to-end latency of one recipient's final
// outcome; nothing for a record without its acceptance time (written before
// mail.delivery carried it). A negative span (clocks of two hosts apart)
// counts as zero.
func (in *instruments) observeLatency(ctx context.Context, destination, outcome string, receivedAt, now time.Time) {
	if receivedAt.IsZero() {
		return
	}
	in.latency.Record(ctx, max(now.Sub(receivedAt).Seconds(), 0),
		metric.WithAttributes(attrDestination.String(destination), attrOutcome.String(outcome)))
}

func (in *instruments) observeDuration(ctx context.Context, destination string, d time.Duration) {
	in.duration.Record(ctx, d.Seconds(), metric.WithAttributes(attrDestination.String(destination)))
}

func (in *instruments) retryScheduled(ctx context.Context, tier int) {
	in.retries.Add(ctx, 1, metric.WithAttributes(attrTier.String(strconv.Itoa(tier))))
}

func (in *instruments) bounce(ctx context.Context) { in.bounces.Add(ctx, 1) }

// sessionsOf is a pool's OnSession hook.
func (in *instruments) sessionsOf(destination string) func(int64) {
	attrs := metric.WithAttributes(attrDestination.String(destination))
	return func(delta int64) { in.sessions.Add(context.Background(), delta, attrs) }
}
