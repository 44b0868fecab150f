package msgbus

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestConsumerLagMeasurementIsReused: collections within lagMaxAge of a
// measurement — several readers of one meter provider, as the metrics
// endpoints of `postern serve`, each scraped — report it again instead of
// asking the broker each; an older one, or a new subscription, is measured
// anew.
func TestConsumerLagMeasurementIsReused(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	r1, r2 := sdkmetric.NewManualReader(), sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r1), sdkmetric.WithReader(r2))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	b := newBus(t, testConfig(addrs), Options{MeterProvider: mp})
	if err := b.EnsureTopics(ctx, "lagged"); err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		t.Helper()
		for i := range n {
			if err := b.Publish(ctx, Message{Topic: "lagged", Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	lag := func(r *sdkmetric.ManualReader, group string) (int64, bool) {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := r.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if m.Name != "postern.bus.consumer.lag" {
					continue
				}
				for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
					g, _ := dp.Attributes.Value(attrGroup)
					if g.AsString() == group {
						return dp.Value, true
					}
				}
			}
		}
		return 0, false
	}
	rounds := func() int {
		b.lag.mu.Lock()
		defer b.lag.mu.Unlock()
		return b.lag.rounds
	}

	b.lag.add("g", "lagged")
	publish(3)
	for i, r := range []*sdkmetric.ManualReader{r1, r2, r1} {
		if got, ok := lag(r, "g"); !ok || got != 3 {
			t.Fatalf("collection %d: lag %d (reported %v), want 3", i+1, got, ok)
		}
	}
	if n := rounds(); n != 1 {
		t.Errorf("three collections at once measured %d times, want once", n)
	}
	// Within lagMaxAge a new record is not seen yet: the measurement is
	// reused.
	publish(1)
	if got, ok := lag(r2, "g"); !ok || got != 3 || rounds() != 1 {
		t.Errorf("lag %d (reported %v) after %d measurements; want the first one's 3 reused", got, ok, rounds())
	}

	// A new subscription is measured at once, whatever the age.
	b.lag.add("h", "lagged")
	if got, ok := lag(r1, "h"); !ok || got != 4 {
		t.Errorf("lag of the new group %d (reported %v), want 4", got, ok)
	}
	if n := rounds(); n != 2 {
		t.Errorf("measurements after a new subscription: %d, want 2", n)
	}

	// An older measurement is not reused.
	b.lag.mu.Lock()
	b.lag.maxAge = 100 * time.Millisecond
	b.lag.mu.Unlock()
	time.Sleep(150 * time.Millisecond)
	publish(1)
	if got, ok := lag(r2, "g"); !ok || got != 5 {
		t.Errorf("lag %d (reported %v) after the measurement aged, want 5", got, ok)
	}
	if n := rounds(); n != 3 {
		t.Errorf("measurements: %d, want 3", n)
	}
}
