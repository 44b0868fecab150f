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
// smarthosts and other sites).
type instruments struct {
	deliveries metric.Int64Counter
	duration   metric.Float64Histogram
	retries    metric.Int64Counter
	bounces    metric.Int64Counter
	sessions   metric.Int64UpDownCounter
}

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	m := mp.Meter(instrumentationName)
	var (
		in   instruments
		errs [5]error
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
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return &in, nil
}

func (in *instruments) delivered(ctx context.Context, destination, outcome string) {
	in.deliveries.Add(ctx, 1, metric.WithAttributes(attrDestination.String(destination), attrOutcome.String(outcome)))
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
