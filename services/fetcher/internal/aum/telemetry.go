package aum

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/internal/sitestate"
)

// instrumentationName names the meter.
const instrumentationName = "github.com/postern/postern/services/fetcher/internal/aum"

// attrResult is the outcome of a sync: resultOK or resultError.
const (
	attrResult  = attribute.Key("result")
	resultOK    = "ok"
	resultError = "error"
)

// instruments are the AUM client's metrics. The Prometheus exporter names
// them postern_directory_replica_age_seconds (gauge),
// postern_directory_syncs_total{result="ok|error"} and
// postern_directory_changes_applied_total.
type instruments struct {
	syncs   metric.Int64Counter // syncs (Sync calls and long polls), by result
	applied metric.Int64Counter // entries put or deleted in the replica
	reg     metric.Registration // the age gauge's callback
}

var (
	syncsOK    = metric.WithAttributeSet(attribute.NewSet(attrResult.String(resultOK)))
	syncsError = metric.WithAttributeSet(attribute.NewSet(attrResult.String(resultError)))
)

// DeclareMetrics creates the package's metric instruments on mp and drops
// them: for checks of the metric names operators query (the Grafana
// dashboards' test in deployments/), which need every instrument, not only
// those a run happened to record. Its
// replica age gauge reads a replica that was never synced, so it observes
// nothing.
func DeclareMetrics(mp metric.MeterProvider) error {
	in, err := newInstruments(mp, neverSynced{}, func(sitestate.SyncState) (float64, bool) { return 0, false })
	if err != nil {
		return err
	}
	return in.reg.Unregister()
}

// neverSynced is a replica without a sync, for DeclareMetrics.
type neverSynced struct{ sitestate.DirectoryReader }

func (neverSynced) SyncState(context.Context) (sitestate.SyncState, error) {
	return sitestate.SyncState{}, nil
}

// newInstruments creates the instruments; the age gauge reads dir's sync
// state at every collection, so it is right whichever process synced last.
func newInstruments(mp metric.MeterProvider, dir sitestate.DirectoryReader, age func(sitestate.SyncState) (float64, bool)) (*instruments, error) {
	m := mp.Meter(instrumentationName)
	var (
		in   instruments
		errs [4]error
		g    metric.Float64ObservableGauge
	)
	in.syncs, errs[0] = m.Int64Counter("postern.directory.syncs",
		metric.WithUnit("{sync}"), metric.WithDescription("Syncs of the directory replica with the users service (/v1/sync), by result (ok or error)."))
	in.applied, errs[1] = m.Int64Counter("postern.directory.changes.applied",
		metric.WithUnit("{change}"), metric.WithDescription("Directory objects put into or deleted from the site's replica (a snapshot counts every object)."))
	g, errs[2] = m.Float64ObservableGauge("postern.directory.replica.age",
		metric.WithUnit("s"), metric.WithDescription("Time since the directory replica was last synced with the users service; absent until the first sync."))
	if errs[2] == nil {
		in.reg, errs[3] = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
			st, err := dir.SyncState(ctx)
			if err != nil {
				return err
			}
			if v, ok := age(st); ok {
				o.ObserveFloat64(g, v)
			}
			return nil
		}, g)
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return &in, nil
}
