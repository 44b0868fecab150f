package msgbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/api/events"
)

// TestTraceAcrossKafka: the span that publishes a record is the parent of
// the span in which the consumer's handler runs, in the same trace, and
// what the handler produces carries that trace on.
func TestTraceAcrossKafka(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	b := newBus(t, testConfig(addrs), Options{TracerProvider: tp, Propagator: propagation.TraceContext{}})
	if err := b.EnsureTopics(ctx, events.TopicInbound, events.TopicDelivery); err != nil {
		t.Fatal(err)
	}

	// The fetcher's side: a span around downloading and publishing.
	pctx, root := tp.Tracer("test").Start(ctx, "pop3 download")
	if err := b.Publish(pctx, Message{Topic: events.TopicInbound, Value: []byte("From: a@example.com\r\n\r\nhi")}); err != nil {
		t.Fatal(err)
	}
	root.End()
	rootSC := root.SpanContext()

	// The router's side.
	handlerSC := make(chan trace.SpanContext, 1)
	consumeInBackground(t, b, Subscription{Group: "router", Topic: events.TopicInbound, Name: "route", Handler: func(ctx context.Context, r Record) ([]Message, error) {
		handlerSC <- trace.SpanContextFromContext(ctx)
		return []Message{{Topic: events.TopicDelivery, Value: r.Value}}, nil
	}})
	var hsc trace.SpanContext
	select {
	case hsc = <-handlerSC:
	case <-ctx.Done():
		t.Fatal("handler not called")
	}
	if hsc.TraceID() != rootSC.TraceID() {
		t.Fatalf("handler runs in trace %s, want the producer's %s", hsc.TraceID(), rootSC.TraceID())
	}
	eventually(t, 30*time.Second, "the router's output", func() bool {
		return len(topicRecords(t, ctx, addrs[0], events.TopicDelivery)) == 1
	})
	out := topicRecords(t, ctx, addrs[0], events.TopicDelivery)[0]
	tpHeader, _ := header(out, "traceparent")
	if !strings.Contains(tpHeader, rootSC.TraceID().String()) {
		t.Errorf("output traceparent %q does not carry trace %s", tpHeader, rootSC.TraceID())
	}

	var send, process, sendOut sdktrace.ReadOnlySpan
	eventually(t, 10*time.Second, "the spans to end", func() bool {
		for _, s := range rec.Ended() {
			switch {
			case s.Name() == "send mail.inbound":
				send = s
			case s.Name() == "process mail.inbound":
				process = s
			case s.Name() == "send mail.delivery":
				sendOut = s
			}
		}
		return send != nil && process != nil && sendOut != nil
	})
	if send.Parent().SpanID() != rootSC.SpanID() || send.SpanKind() != trace.SpanKindProducer {
		t.Errorf("producer span: parent %s kind %s, want parent %s (the publishing span), kind producer", send.Parent().SpanID(), send.SpanKind(), rootSC.SpanID())
	}
	if process.Parent().SpanID() != send.SpanContext().SpanID() || !process.Parent().IsRemote() || process.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("consumer span: parent %s (remote %v) kind %s, want the producer span %s, remote, kind consumer",
			process.Parent().SpanID(), process.Parent().IsRemote(), process.SpanKind(), send.SpanContext().SpanID())
	}
	if hsc.SpanID() != process.SpanContext().SpanID() {
		t.Errorf("handler's span %s, want the consumer span %s", hsc.SpanID(), process.SpanContext().SpanID())
	}
	if sendOut.Parent().SpanID() != process.SpanContext().SpanID() || sendOut.SpanContext().TraceID() != rootSC.TraceID() {
		t.Errorf("output's producer span is not a child of the consumer span in the same trace")
	}
	attrs := map[string]string{}
	for _, kv := range process.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{
		"messaging.system": "kafka", "messaging.operation.type": "process",
		"messaging.destination.name": "mail.inbound", "messaging.consumer.group.name": "router",
	} {
		if attrs[k] != v {
			t.Errorf("consumer span attribute %s = %q, want %q", k, attrs[k], v)
		}
	}
}

// TestMetrics: the bus counts what it publishes, consumes, retries and
// dead-letters, and the Prometheus exporter shows the names with units.
func TestMetrics(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		t.Fatal(err)
	}
	manual := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(manual), sdkmetric.WithReader(exporter))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	b := newBus(t, testConfig(addrs), Options{MeterProvider: mp})
	if err := b.EnsureTopics(ctx, "in", "out", events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"ok", "retry-once", "bad"} {
		if err := b.Publish(ctx, Message{Topic: "in", Key: []byte("k"), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	h := &countingHandler{fn: func(_ context.Context, rec Record, call int64) ([]Message, error) {
		switch {
		case string(rec.Value) == "bad":
			return nil, Permanent(errors.New("bad"))
		case string(rec.Value) == "retry-once" && call == 2:
			return nil, errors.New("later")
		}
		return []Message{{Topic: "out", Value: rec.Value}}, nil
	}}
	stop := consumeInBackground(t, b, Subscription{Group: "g", Topic: "in", Name: "h", Handler: h.handle})
	eventually(t, 30*time.Second, "all records handled", func() bool {
		return len(topicRecords(t, ctx, addrs[0], events.TopicDeadLetter)) == 1 &&
			len(topicRecords(t, ctx, addrs[0], "out")) == 2
	})
	eventually(t, 30*time.Second, "all committed", func() bool {
		sum := int64(0)
		for _, off := range committed(t, ctx, addrs[0], "g", "in", 3) {
			sum += max(off, 0)
		}
		return sum == 3
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := manual.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range s.DataPoints {
					key := m.Name
					if o, ok := dp.Attributes.Value(attrOutcome); ok {
						key += "{" + o.AsString() + "}"
					}
					sums[key] += dp.Value
				}
			}
		}
	}
	for name, want := range map[string]int64{
		"postern.bus.records.published":            3 + 2 + 1, // inputs, outputs, dead letter
		"postern.bus.records.consumed{ok}":         2,
		"postern.bus.records.consumed{deadletter}": 1,
		"postern.bus.retries":                      1,
		"postern.bus.deadletter":                   1,
		"postern.bus.published.bytes":              int64(len("ok")+len("retry-once")+len("bad")) + 3 + int64(len("ok")+len("retry-once")) + int64(len("bad")+1),
	} {
		if sums[name] != want {
			t.Errorf("%s = %d, want %d", name, sums[name], want)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "postern_") {
			names = append(names, f.GetName())
		}
	}
	for _, want := range []string{
		"postern_bus_records_published_total", "postern_bus_published_bytes_total",
		"postern_bus_publish_duration_seconds", "postern_bus_records_consumed_total",
		"postern_bus_handle_duration_seconds", "postern_bus_retries_total", "postern_bus_deadletter_total",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("Prometheus metric %s missing; have %v", want, names)
		}
	}
	t.Logf("Prometheus names: %v", names)
}

// TestConsumerLag: the lag gauge counts the records a group has not
// committed, per topic, also once the group's consumer has stopped, and the
// Prometheus exporter names it postern_bus_consumer_lag.
func TestConsumerLag(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		t.Fatal(err)
	}
	manual := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(manual), sdkmetric.WithReader(exporter))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	cfg := testConfig(addrs)
	cfg.TopicPrefix = "hq"
	b := newBus(t, cfg, Options{MeterProvider: mp})
	// Every collection measures anew here (reusing a recent measurement
	// is TestConsumerLagMeasurementIsReused).
	b.lag.maxAge = -1
	if err := b.EnsureTopics(ctx, "lagged"); err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		t.Helper()
		for i := range n {
			// Keys spread the records over the partitions.
			if err := b.Publish(ctx, Message{Topic: "lagged", Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	lag := func() (int64, bool) {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := manual.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if m.Name != "postern.bus.consumer.lag" {
					continue
				}
				for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
					topic, _ := dp.Attributes.Value(attrTopic)
					group, _ := dp.Attributes.Value(attrGroup)
					if topic.AsString() == "hq.lagged" && group.AsString() == "g" {
						return dp.Value, true
					}
				}
			}
		}
		return 0, false
	}
	if _, ok := lag(); ok {
		t.Errorf("lag reported before anything consumed the topic")
	}

	// A consumer takes everything there is, then stops.
	publish(5)
	stop := consumeInBackground(t, b, Subscription{Group: "g", Topic: "lagged", Name: "h",
		Handler: func(context.Context, Record) ([]Message, error) { return nil, nil }})
	eventually(t, 30*time.Second, "lag 0 once the 5 records are committed", func() bool {
		n, ok := lag()
		return ok && n == 0
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Records keep arriving with nobody consuming: each is lag.
	const n = 7
	publish(n)
	if got, ok := lag(); !ok || got != n {
		t.Errorf("lag after %d records with the consumer stopped = %d (reported %v), want %d", n, got, ok, n)
	}
	// A group that never committed lags by everything in the log.
	if got, err := b.ConsumerLag(ctx, "never", "lagged", "no-such-topic"); err != nil || len(got) != 1 || got["lagged"] != 5+n {
		t.Errorf("ConsumerLag(never) = %v, %v; want lagged: %d and nothing for a missing topic", got, err, 5+n)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		if f.GetName() != "postern_bus_consumer_lag" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["messaging_destination_name"] == "hq.lagged" && labels["messaging_consumer_group_name"] == "g" && m.GetGauge().GetValue() == n {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no postern_bus_consumer_lag{messaging_destination_name=\"hq.lagged\",messaging_consumer_group_name=\"g\"} %d in the Prometheus exposition", n)
	}

	// A closed bus stops reporting.
	b.Close()
	if _, ok := lag(); ok {
		t.Errorf("lag still reported after Close")
	}
}
