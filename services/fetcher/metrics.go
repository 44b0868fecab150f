package fetcher

import (
	"errors"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/services/fetcher/internal/aum"
	"github.com/postern/postern/services/fetcher/internal/download"
)

// DeclareMetrics creates every metric instrument of the fetcher (the AUM
// client and the POP3 downloader) on mp and drops them: for checks of the
// metric names operators query, such as the Grafana dashboards' test in
// deployments/. The bus's own metrics are msgbus.DeclareMetrics.
func DeclareMetrics(mp metric.MeterProvider) error {
	return errors.Join(aum.DeclareMetrics(mp), download.DeclareMetrics(mp))
}
