package relay

import (
	"errors"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/smtpin"
)

// DeclareMetrics creates every metric instrument of the relay (SMTP
// servers and delivery) on mp and drops them: for checks of the metric
// names operators query, such as the Grafana dashboards' test in
// deployments/. The bus's own metrics are msgbus.DeclareMetrics.
func DeclareMetrics(mp metric.MeterProvider) error {
	return errors.Join(smtpin.DeclareMetrics(mp), delivery.DeclareMetrics(mp))
}
