package msgbus

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
)

// instrumentationName names the tracer and the meter.
const instrumentationName = "github.com/postern/postern/internal/msgbus"

// Attribute keys of the bus's metrics (OpenTelemetry messaging
// conventions where there is one). Prometheus shows the dots as
// underscores.
const (
	attrTopic   = attribute.Key("messaging.destination.name")
	attrGroup   = attribute.Key("messaging.consumer.group.name")
	attrHandler = attribute.Key("postern.handler")
	attrOutcome = attribute.Key("postern.outcome") // ok | deadletter
	attrReason  = attribute.Key("postern.reason")  // permanent | exhausted | panic | publish
)

// Outcomes and dead-letter reasons, the values of attrOutcome and attrReason.
const (
	outcomeOK         = "ok"
	outcomeDeadLetter = "deadletter"

	reasonPermanent = "permanent"
	reasonExhausted = "exhausted"
	reasonPanic     = "panic"
)

// instruments are the bus's metrics. The Prometheus exporter names them
// postern_bus_records_published_total, postern_bus_published_bytes_total,
// postern_bus_publish_duration_seconds, postern_bus_records_consumed_total,
// postern_bus_handle_duration_seconds, postern_bus_retries_total,
// postern_bus_deadletter_total and postern_bus_consumer_lag (a gauge).
type instruments struct {
	published       metric.Int64Counter     // records acknowledged by the broker
	publishedBytes  metric.Int64Counter     // their key and value bytes
	publishDuration metric.Float64Histogram // one Publish call
	consumed        metric.Int64Counter     // records done with (committed), by outcome
	handleDuration  metric.Float64Histogram // fetch to commit of one record
	retries         metric.Int64Counter     // temporary failures retried
	deadLetter      metric.Int64Counter     // records dead-lettered, by reason
	lag             metric.Int64ObservableGauge
}

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	m := mp.Meter(instrumentationName)
	var (
		in   instruments
		errs [8]error
	)
	in.published, errs[0] = m.Int64Counter("postern.bus.records.published",
		metric.WithUnit("{record}"), metric.WithDescription("Records published to the bus and acknowledged by every in-sync replica."))
	in.publishedBytes, errs[1] = m.Int64Counter("postern.bus.published.bytes",
		metric.WithUnit("By"), metric.WithDescription("Key and value bytes of the records published to the bus."))
	in.publishDuration, errs[2] = m.Float64Histogram("postern.bus.publish.duration",
		metric.WithUnit("s"), metric.WithDescription("Time for a publish to be acknowledged (acks=all)."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	in.consumed, errs[3] = m.Int64Counter("postern.bus.records.consumed",
		metric.WithUnit("{record}"), metric.WithDescription("Records a consumer finished with and committed, by outcome (ok or deadletter)."))
	in.handleDuration, errs[4] = m.Float64Histogram("postern.bus.handle.duration",
		metric.WithUnit("s"), metric.WithDescription("Time from fetching a record to committing it: handler, retries, publishing its outputs."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
	in.retries, errs[5] = m.Int64Counter("postern.bus.retries",
		metric.WithUnit("{retry}"), metric.WithDescription("Temporary failures of a handler (or of publishing its outputs) that were retried."))
	in.deadLetter, errs[6] = m.Int64Counter("postern.bus.deadletter",
		metric.WithUnit("{record}"), metric.WithDescription("Records sent to the dead-letter topic, by reason (permanent, exhausted, panic)."))
	in.lag, errs[7] = m.Int64ObservableGauge("postern.bus.consumer.lag",
		metric.WithUnit("{record}"), metric.WithDescription("Records of a topic its consumer group has not committed yet (high watermark minus committed offset, summed over partitions), for every group and topic this process consumes or consumed since it started."))
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
// those a run happened to record. The consumer lag gauge's callback is
// registered by New, not here.
func DeclareMetrics(mp metric.MeterProvider) error {
	_, err := newInstruments(mp)
	return err
}

// propagator resolves the configured propagator at every use, so that a
// global one set after New is honoured. Without any (the OpenTelemetry
// global is a no-op until set) it uses W3C trace context and baggage:
// following a message across services is not optional.
type propagator struct{ p propagation.TextMapPropagator }

var w3c = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func (p propagator) get() propagation.TextMapPropagator {
	if p.p != nil {
		return p.p
	}
	if g := otel.GetTextMapPropagator(); len(g.Fields()) > 0 {
		return g
	}
	return w3c
}

func (p propagator) inject(ctx context.Context, hs *[]Header) {
	p.get().Inject(ctx, headerCarrier{hs})
}

func (p propagator) extract(ctx context.Context, hs []Header) context.Context {
	return p.get().Extract(ctx, headerCarrier{&hs})
}
