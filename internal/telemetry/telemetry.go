// Package telemetry sets up OpenTelemetry for a Postern service: a tracer
// provider (exporting over OTLP/HTTP when a collector is configured), a meter
// provider read both by a Prometheus exporter on the service's own registry
// and, with a collector, by a periodic OTLP push, and the W3C trace-context
// and baggage propagator that carries traces across Kafka and HTTP.
//
// # Metric names in Prometheus
//
// The Prometheus exporter translates OpenTelemetry names with the default
// "underscore escaping with suffixes" strategy: dots become underscores, the
// unit is appended in Prometheus words, and counters get _total. Unit
// annotations in braces ({record}, {message}) add nothing. So
//
//	counter   "postern.bus.records.consumed" unit "{record}" -> postern_bus_records_consumed_total
//	histogram "postern.bus.handle.duration"  unit "s"        -> postern_bus_handle_duration_seconds_{bucket,sum,count}
//	gauge     "postern.queue.size"           unit "By"       -> postern_queue_size_bytes
//
// Give the unit with metric.WithUnit, never in the instrument's name ("...
// .duration", not "...duration_seconds"), and no "total": the exporter adds
// both for Prometheus, and OTLP backends get the name as the conventions want.
// Every series also carries otel_scope_name (the meter's name) and
// otel_scope_version labels, and the resource is exposed once as target_info.
//
// # Histogram buckets
//
// Durations are recorded in seconds (unit "s"), as the semantic conventions
// say, so a histogram without advice gets DurationBuckets (5ms to 5min)
// instead of the SDK's millisecond-scale default (0 to 10000), which would put
// every observation in the first bucket. A histogram of anything else must
// say its boundaries when it is created, e.g.
//
//	meter.Int64Histogram("postern.message.size", metric.WithUnit("By"),
//		metric.WithExplicitBucketBoundaries(telemetry.SizeBuckets...))
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/internal/config"
)

// SiteKey is the resource attribute naming the Postern site a service runs at.
const SiteKey = attribute.Key("postern.site")

// DurationBuckets are the default histogram boundaries, in seconds: from a
// Kafka record handled in milliseconds to an SMTP delivery or a POP3
// download that takes minutes.
var DurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// SizeBuckets are histogram boundaries for message sizes in bytes, 1 KiB to
// 32 MiB (messages up to 25 MiB travel whole).
var SizeBuckets = []float64{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20}

// aggregationSelector is the SDK's default but with DurationBuckets for
// histograms; boundaries an instrument advises still win.
func aggregationSelector(kind sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	if kind == sdkmetric.InstrumentKindHistogram {
		return sdkmetric.AggregationExplicitBucketHistogram{Boundaries: slices.Clone(DurationBuckets)}
	}
	return sdkmetric.DefaultAggregationSelector(kind)
}

// Config is the telemetry section of a service's configuration.
type Config struct {
	// OTLPEndpoint is the base URL of an OTLP/HTTP collector; spans go to
	// <endpoint>/v1/traces and metrics to <endpoint>/v1/metrics. The scheme
	// decides transport security: http:// is plain, https:// is TLS.
	OTLPEndpoint   string        `yaml:"otlp_endpoint" doc:"OTLP/HTTP endpoint of a collector (http://host:4318, https:// for TLS); empty: no export"`
	SampleRatio    float64       `yaml:"sample_ratio" doc:"fraction of new traces sampled, 0 to 1; a trace started upstream keeps its parent's decision"`
	ExportInterval time.Duration `yaml:"export_interval" doc:"how often metrics are pushed to the OTLP endpoint"`
}

// DefaultConfig returns no export, every trace sampled, a 30s metric push.
func DefaultConfig() Config {
	return Config{SampleRatio: 1.0, ExportInterval: 30 * time.Second}
}

// Validate checks the section; keys are "otlp_endpoint", "sample_ratio" and
// "export_interval".
func (c Config) Validate() error {
	var errs []error
	if c.OTLPEndpoint != "" {
		if _, err := parseEndpoint(c.OTLPEndpoint); err != nil {
			errs = append(errs, config.Errorf("otlp_endpoint", "%v", err))
		}
	}
	if !(c.SampleRatio >= 0 && c.SampleRatio <= 1) { // also rejects NaN
		errs = append(errs, config.Errorf("sample_ratio", "must be between 0 and 1, not %v", c.SampleRatio))
	}
	if c.ExportInterval <= 0 {
		errs = append(errs, config.Errorf("export_interval", "must be positive, not %v", c.ExportInterval))
	}
	return config.Join(errs...)
}

func parseEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("must be an http:// or https:// URL, not %q", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("has no host: %q", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("must not have a query or fragment: %q", s)
	}
	return u, nil
}

// signalURL returns the endpoint with the OTLP path of one signal
// ("traces", "metrics") appended, as the OTLP spec does for a base endpoint.
func signalURL(base *url.URL, signal string) string {
	u := *base
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/" + signal
	u.RawPath = ""
	return u.String()
}

// Resource names what emits the telemetry.
type Resource struct {
	ServiceName    string // "users", "fetcher", "router", "relay", "postern"
	ServiceVersion string
	Site           string // the site code; empty for central services
}

// Telemetry holds the providers Setup built. Its methods are safe for
// concurrent use.
type Telemetry struct {
	tp       *sdktrace.TracerProvider
	mp       *sdkmetric.MeterProvider
	prop     propagation.TextMapPropagator
	registry *prometheus.Registry
	handler  http.Handler

	shutdownOnce sync.Once
	shutdownErr  error
}

// Setup builds the providers and installs them, and the propagator, as the
// OpenTelemetry globals. Call Shutdown before the process exits to flush.
// Errors the SDK meets later (a collector that cannot be reached) are logged
// through slog.Default.
func Setup(ctx context.Context, cfg Config, res Resource) (*Telemetry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	var endpoint *url.URL
	if cfg.OTLPEndpoint != "" {
		endpoint, _ = parseEndpoint(cfg.OTLPEndpoint)
	}

	attrs := []attribute.KeyValue{semconv.ServiceName(res.ServiceName)}
	if res.ServiceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(res.ServiceVersion))
	}
	if res.Site != "" {
		attrs = append(attrs, SiteKey.String(res.Site))
	}
	rsrc, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(attrs...),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}

	// Traces.
	tpOpts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(rsrc),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	}
	if endpoint != nil {
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(signalURL(endpoint, "traces")))
		if err != nil {
			return nil, fmt.Errorf("telemetry: otlp trace exporter: %w", err)
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}

	// Metrics: a Prometheus pull reader on the service's own registry, and
	// an OTLP push reader with a collector.
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry: go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry: process collector: %w", err)
	}
	promExp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithAggregationSelector(aggregationSelector),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mpOpts := []sdkmetric.Option{
		sdkmetric.WithResource(rsrc),
		sdkmetric.WithReader(promExp),
	}
	if endpoint != nil {
		exp, err := otlpmetrichttp.New(ctx,
			otlpmetrichttp.WithEndpointURL(signalURL(endpoint, "metrics")),
			otlpmetrichttp.WithAggregationSelector(aggregationSelector))
		if err != nil {
			return nil, fmt.Errorf("telemetry: otlp metric exporter: %w", err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(
			sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(cfg.ExportInterval))))
	}

	t := &Telemetry{
		tp:       sdktrace.NewTracerProvider(tpOpts...),
		mp:       sdkmetric.NewMeterProvider(mpOpts...),
		prop:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		registry: reg,
		handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:      promErrorLog{},
			ErrorHandling: promhttp.ContinueOnError,
		}),
	}
	otel.SetTracerProvider(t.tp)
	otel.SetMeterProvider(t.mp)
	otel.SetTextMapPropagator(t.prop)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		slog.Default().Warn("opentelemetry", "error", err)
	}))
	return t, nil
}

// TracerProvider returns the SDK tracer provider.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// MeterProvider returns the SDK meter provider.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.mp }

// Propagator returns the W3C TraceContext and Baggage propagator.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.prop }

// Registry returns the service's Prometheus registry, for collectors that
// are not OpenTelemetry instruments (a database pool's stats).
func (t *Telemetry) Registry() *prometheus.Registry { return t.registry }

// MetricsHandler serves the registry in the Prometheus exposition format.
func (t *Telemetry) MetricsHandler() http.Handler { return t.handler }

// Shutdown flushes buffered spans and metrics to the collector and stops
// the providers; ctx bounds how long it waits. Later calls return the first
// call's result.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() {
		var errs []error
		if err := t.tp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("tracer provider: %w", err))
		}
		if err := t.mp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("meter provider: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			t.shutdownErr = fmt.Errorf("telemetry shutdown: %w", err)
		}
	})
	return t.shutdownErr
}

// promErrorLog sends promhttp's errors to slog.Default.
type promErrorLog struct{}

func (promErrorLog) Println(v ...any) {
	slog.Default().Warn("prometheus metrics handler", "error", fmt.Sprint(v...))
}
