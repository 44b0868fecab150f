package delivery_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/telemetry"
	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/smtpout/sinktest"
)

// TestMetrics checks the Prometheus names and labels operators will query.
func TestMetrics(t *testing.T) {
	tel, err := telemetry.Setup(context.Background(), telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "relay", Site: site})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })

	e := newEnv(t)
	var tries atomic.Int32
	sink := sinktest.Start(t, sinktest.Options{Rcpt: func(to string) error {
		if to == "gone@example.net" {
			return sinktest.Reply(550, [3]int{5, 1, 1}, "no such user")
		}
		if tries.Add(1) == 1 {
			return sinktest.Reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	}})
	svc, err := delivery.New(testConfig(sink.Addr), delivery.Deps{
		Bus: e.bus, Directory: e.state.Directory(), Idempotency: e.state.Idempotency(), Local: e.local, Site: site,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MeterProvider: tel.MeterProvider(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	e.publish(outbound("m1", "zs@example.com", "c@example.net"))
	e.publish(outbound("m2", "zs@example.com", "gone@example.net"))
	e.final("c@example.net", "gone@example.net")

	mfs, err := tel.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	value := func(name string, labels map[string]string) float64 {
		mf := got[name]
		if mf == nil {
			t.Errorf("no metric %s", name)
			return -1
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Errorf("no %s with labels %v", name, labels)
		return -1
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"postern_relay_deliveries_total", map[string]string{"destination": events.DestOutbound, "outcome": "delivered"}, 1},
		{"postern_relay_deliveries_total", map[string]string{"destination": events.DestOutbound, "outcome": "deferred"}, 1},
		{"postern_relay_deliveries_total", map[string]string{"destination": events.DestOutbound, "outcome": "bounced"}, 1},
		{"postern_relay_retries_scheduled_total", map[string]string{"tier": "0"}, 1},
		{"postern_relay_bounces_total", nil, 1},
		{"postern_relay_delivery_seconds", map[string]string{"destination": events.DestOutbound}, 3},
	} {
		if v := value(c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if v := value("postern_relay_outbound_sessions", map[string]string{"destination": events.DestOutbound}); v < 0 || v > 4 {
		t.Errorf("open sessions %v, want between 0 and the limit", v)
	}
	for name := range got {
		if strings.HasPrefix(name, "postern_relay_") && !strings.Contains("postern_relay_deliveries_total postern_relay_delivery_seconds postern_relay_retries_scheduled_total postern_relay_bounces_total postern_relay_outbound_sessions", name) {
			t.Logf("other relay metric: %s", name)
		}
	}
}
