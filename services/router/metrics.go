package router

import (
	"errors"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/services/router/internal/pipeline"
	"github.com/postern/postern/services/router/trace"
)

// DeclareMetrics creates every metric instrument of the router (its
// pipeline and its trace indexer) on mp and drops them: for checks of the
// metric names operators query, such as the Grafana dashboards' test in
// deployments/. The bus's own metrics are msgbus.DeclareMetrics.
func DeclareMetrics(mp metric.MeterProvider) error {
	return errors.Join(pipeline.DeclareMetrics(mp), trace.DeclareMetrics(mp))
}
