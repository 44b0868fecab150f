package download

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// instruments are the downloader's metrics. Prometheus names (see package
// telemetry for the translation):
//
//	postern_pop3_messages_downloaded_total{account}
//	postern_pop3_bytes_downloaded_total{account}
//	postern_pop3_errors_total{account,kind}
//	postern_pop3_last_success_timestamp_seconds{account}
//	postern_pop3_deleted_total{account}
//	postern_pop3_duplicates_total{account}            recipients dropped as duplicates
//	postern_pop3_postmaster_total{account}            messages sent to the postmaster (no recipient found)
//	postern_pop3_consecutive_failures{account}        failed sessions in a row (0 after a success)
//	postern_pop3_session_duration_seconds{account}    histogram of whole sessions
type instruments struct {
	downloaded  metric.Int64Counter
	bytes       metric.Int64Counter
	errors      metric.Int64Counter
	lastSuccess metric.Float64Gauge
	deleted     metric.Int64Counter
	duplicates  metric.Int64Counter
	postmaster  metric.Int64Counter
	failures    metric.Int64Gauge
	session     metric.Float64Histogram
}

const meterName = "github.com/postern/postern/services/fetcher/internal/download"

func newInstruments(mp metric.MeterProvider) (*instruments, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter(meterName)
	var (
		in   instruments
		errs [9]error
	)
	in.downloaded, errs[0] = m.Int64Counter("postern.pop3.messages.downloaded", metric.WithUnit("{message}"),
		metric.WithDescription("Messages downloaded from POP3 accounts and published to mail.inbound."))
	in.bytes, errs[1] = m.Int64Counter("postern.pop3.bytes.downloaded", metric.WithUnit("{byte}"),
		metric.WithDescription("Bytes of the messages downloaded from POP3 accounts."))
	in.errors, errs[2] = m.Int64Counter("postern.pop3.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Failures of POP3 sessions or of single messages, by kind."))
	in.lastSuccess, errs[3] = m.Float64Gauge("postern.pop3.last_success.timestamp", metric.WithUnit("s"),
		metric.WithDescription("Unix time of the account's last session that ended well."))
	in.deleted, errs[4] = m.Int64Counter("postern.pop3.deleted", metric.WithUnit("{message}"),
		metric.WithDescription("Messages deleted from the POP3 server after delivery (or as their keep policy says)."))
	in.duplicates, errs[5] = m.Int64Counter("postern.pop3.duplicates", metric.WithUnit("{recipient}"),
		metric.WithDescription("Recipients of a downloaded message dropped because the same Message-ID already went to them."))
	in.postmaster, errs[6] = m.Int64Counter("postern.pop3.postmaster", metric.WithUnit("{message}"),
		metric.WithDescription("Multi-drop messages whose recipient could not be determined, sent to the account's postmaster."))
	in.failures, errs[7] = m.Int64Gauge("postern.pop3.consecutive_failures", metric.WithUnit("{session}"),
		metric.WithDescription("Sessions with the account that failed in a row (0 after a success)."))
	in.session, errs[8] = m.Float64Histogram("postern.pop3.session.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of whole POP3 sessions."))
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

func acctAttr(name string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("account", name))
}

func (in *instruments) fail(ctx context.Context, account, kind string) {
	in.errors.Add(ctx, 1, metric.WithAttributes(attribute.String("account", account), attribute.String("kind", kind)))
}

func (in *instruments) success(ctx context.Context, account string, at time.Time) {
	in.lastSuccess.Record(ctx, float64(at.UnixNano())/1e9, acctAttr(account))
}
