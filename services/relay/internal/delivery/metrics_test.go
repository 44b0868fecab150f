package delivery_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
	// Accepted at the edge two seconds ago: the latency is at least that.
	received := time.Now().Add(-2 * time.Second).UTC()
	m1, m2 := outbound("m1", "zs@example.com", "c@example.net"), outbound("m2", "zs@example.com", "gone@example.net")
	m1.ReceivedAt, m2.ReceivedAt = received, received
	e.publish(m1)
	e.publish(m2)
	for _, st := range e.final("c@example.net", "gone@example.net") {
		if !st.ReceivedAt.Equal(received) {
			t.Errorf("%s status of %s: received_at %v, want the delivery's %v", st.Outcome, st.Recipient, st.ReceivedAt, received)
		}
	}

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
		// Final outcomes only: not the deferred first attempt of m1.
		{"postern_mail_latency_seconds", map[string]string{"destination": events.DestOutbound, "outcome": "delivered"}, 1},
		{"postern_mail_latency_seconds", map[string]string{"destination": events.DestOutbound, "outcome": "bounced"}, 1},
	} {
		if v := value(c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if mf := got["postern_mail_latency_seconds"]; mf != nil {
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h.GetSampleCount() > 0 && h.GetSampleSum() < 2*float64(h.GetSampleCount()) {
				t.Errorf("latency sum %v over %d recipients accepted 2s ago, want at least 2s each", h.GetSampleSum(), h.GetSampleCount())
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == events.OutcomeDeferred {
					t.Errorf("latency recorded for a deferred outcome")
				}
			}
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
