package smtpin

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instrumentationName names the meter and the tracer.
const instrumentationName = "github.com/postern/postern/services/relay/internal/smtpin"

// Attribute keys of the metrics (Prometheus labels).
const (
	attrListener = attribute.Key("listener")
	attrReason   = attribute.Key("reason")
)

// instruments are the SMTP servers' metrics. The Prometheus exporter names
// them postern_smtp_sessions_total{listener},
// postern_smtp_messages_accepted_total{listener},
// postern_smtp_rejections_total{listener,reason} and
// postern_smtp_auth_failures_total{listener}.
type instruments struct {
	sessions     metric.Int64Counter
	accepted     metric.Int64Counter
	rejections   metric.Int64Counter
	authFailures metric.Int64Counter
}

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	m := mp.Meter(instrumentationName)
	var (
		in   instruments
		errs [4]error
	)
	in.sessions, errs[0] = m.Int64Counter("postern.smtp.sessions",
		metric.WithUnit("{session}"), metric.WithDescription("SMTP connections admitted, by listener."))
	in.accepted, errs[1] = m.Int64Counter("postern.smtp.messages.accepted",
		metric.WithUnit("{message}"), metric.WithDescription("Messages answered 250 after they were published to mail.inbound, by listener."))
	in.rejections, errs[2] = m.Int64Counter("postern.smtp.rejections",
		metric.WithUnit("{rejection}"), metric.WithDescription("Commands, connections and messages refused, by listener and reason."))
	in.authFailures, errs[3] = m.Int64Counter("postern.smtp.auth.failures",
		metric.WithUnit("{failure}"), metric.WithDescription("Failed AUTH attempts (wrong credentials or locked out), by listener."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return &in, nil
}

// DeclareMetrics creates the package's metric instruments on mp and drops
// them: for checks of the metric names operators query (the Grafana
// dashboards' test in deployments/), which need every instrument, not only
// those a run happened to record.
func DeclareMetrics(mp metric.MeterProvider) error {
	_, err := newInstruments(mp)
	return err
}

func (in *instruments) session(listener string) {
	in.sessions.Add(context.Background(), 1, metric.WithAttributes(attrListener.String(listener)))
}

func (in *instruments) acceptedMessage(listener string) {
	in.accepted.Add(context.Background(), 1, metric.WithAttributes(attrListener.String(listener)))
}

func (in *instruments) rejected(listener, reason string) {
	in.rejections.Add(context.Background(), 1, metric.WithAttributes(attrListener.String(listener), attrReason.String(reason)))
}

func (in *instruments) authFailed(listener string) {
	in.authFailures.Add(context.Background(), 1, metric.WithAttributes(attrListener.String(listener)))
}
