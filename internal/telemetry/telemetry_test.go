package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	collmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	colltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/postern/postern/internal/config"
)

func TestValidate(t *testing.T) {
	withCfg := func(f func(*Config)) Config {
		c := DefaultConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		keys []string
	}{
		{"default", DefaultConfig(), nil},
		{"http endpoint", withCfg(func(c *Config) { c.OTLPEndpoint = "http://otel-collector:4318" }), nil},
		{"https endpoint with path", withCfg(func(c *Config) { c.OTLPEndpoint = "https://otel.example.org/otlp" }), nil},
		{"ratio 0", withCfg(func(c *Config) { c.SampleRatio = 0 }), nil},
		{"ratio 0.25", withCfg(func(c *Config) { c.SampleRatio = 0.25 }), nil},
		{"host only", withCfg(func(c *Config) { c.OTLPEndpoint = "otel-collector:4318" }), []string{"otlp_endpoint"}},
		{"grpc scheme", withCfg(func(c *Config) { c.OTLPEndpoint = "grpc://otel:4317" }), []string{"otlp_endpoint"}},
		{"no host", withCfg(func(c *Config) { c.OTLPEndpoint = "http://" }), []string{"otlp_endpoint"}},
		{"query", withCfg(func(c *Config) { c.OTLPEndpoint = "http://otel:4318/?x=1" }), []string{"otlp_endpoint"}},
		{"ratio above 1", withCfg(func(c *Config) { c.SampleRatio = 1.5 }), []string{"sample_ratio"}},
		{"ratio negative", withCfg(func(c *Config) { c.SampleRatio = -0.1 }), []string{"sample_ratio"}},
		{"zero interval", withCfg(func(c *Config) { c.ExportInterval = 0 }), []string{"export_interval"}},
		{"all bad", Config{OTLPEndpoint: "x", SampleRatio: 2, ExportInterval: -1}, []string{"otlp_endpoint", "sample_ratio", "export_interval"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if got := config.Keys(err); !slices.Equal(got, tt.keys) {
				t.Fatalf("Validate() keys = %v, want %v (err: %v)", got, tt.keys, err)
			}
		})
	}
}

func TestSignalURL(t *testing.T) {
	tests := []struct{ base, want string }{
		{"http://collector:4318", "http://collector:4318/v1/traces"},
		{"http://collector:4318/", "http://collector:4318/v1/traces"},
		{"https://otel.example.org/otlp/", "https://otel.example.org/otlp/v1/traces"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.base)
		if err != nil {
			t.Fatal(err)
		}
		if got := signalURL(u, "traces"); got != tt.want {
			t.Errorf("signalURL(%q) = %q, want %q", tt.base, got, tt.want)
		}
	}
}

func setup(t *testing.T, cfg Config) *Telemetry {
	t.Helper()
	tel, err := Setup(context.Background(), cfg, Resource{ServiceName: "router", ServiceVersion: "1.2.3", Site: "hq"})
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

func scrape(t *testing.T, tel *Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics status %d: %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// TestPrometheusNames pins how OpenTelemetry instrument names and units come
// out in /metrics: dashboards and alerts query these names.
func TestPrometheusNames(t *testing.T) {
	tel := setup(t, DefaultConfig())
	ctx := context.Background()
	meter := tel.MeterProvider().Meter("github.com/postern/postern/internal/msgbus")

	consumed, err := meter.Int64Counter("postern.bus.records.consumed", metric.WithUnit("{record}"))
	if err != nil {
		t.Fatal(err)
	}
	consumed.Add(ctx, 3, metric.WithAttributes(attribute.String("messaging.destination.name", "mail.inbound")))

	duration, err := meter.Float64Histogram("postern.bus.handle.duration", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	duration.Record(ctx, 0.25)

	size, err := meter.Int64Gauge("postern.message.size", metric.WithUnit("By"))
	if err != nil {
		t.Fatal(err)
	}
	size.Record(ctx, 2048)

	sizes, err := meter.Int64Histogram("postern.message.received.size", metric.WithUnit("By"),
		metric.WithExplicitBucketBoundaries(SizeBuckets...))
	if err != nil {
		t.Fatal(err)
	}
	sizes.Record(ctx, 3000)

	inflight, err := meter.Int64UpDownCounter("postern.smtp.sessions.active", metric.WithUnit("{session}"))
	if err != nil {
		t.Fatal(err)
	}
	inflight.Add(ctx, 2)

	body := scrape(t, tel)
	for _, want := range []string{
		"# TYPE postern_bus_records_consumed_total counter",
		`postern_bus_records_consumed_total{messaging_destination_name="mail.inbound",otel_scope_name="github.com/postern/postern/internal/msgbus"`,
		"# TYPE postern_bus_handle_duration_seconds histogram",
		`postern_bus_handle_duration_seconds_bucket{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version="",le="0.25"} 1`,
		`postern_bus_handle_duration_seconds_sum{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version=""} 0.25`,
		`postern_bus_handle_duration_seconds_count{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version=""} 1`,
		// no advice: DurationBuckets, not the SDK's 0..10000
		`postern_bus_handle_duration_seconds_bucket{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version="",le="0.1"} 0`,
		`postern_bus_handle_duration_seconds_bucket{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version="",le="300"} 1`,
		"# TYPE postern_message_size_bytes gauge",
		// advice wins over the default buckets
		"# TYPE postern_message_received_size_bytes histogram",
		`postern_message_received_size_bytes_bucket{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version="",le="1024"} 0`,
		`postern_message_received_size_bytes_bucket{otel_scope_name="github.com/postern/postern/internal/msgbus",otel_scope_schema_url="",otel_scope_version="",le="4096"} 1`,
		"# TYPE postern_smtp_sessions_active gauge",
		// the resource, once
		"# TYPE target_info gauge",
		`postern_site="hq"`,
		`service_name="router"`,
		`service_version="1.2.3"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "postern_bus_records_consumed_total{") || !lineHasValue(body, "postern_bus_records_consumed_total{", "3") {
		t.Errorf("counter value 3 not in /metrics:\n%s", grep(body, "postern_bus"))
	}
	if t.Failed() {
		t.Logf("/metrics (postern_ and target_info):\n%s", grep(body, "postern_", "target_info"))
	}
}

func TestRuntimeCollectors(t *testing.T) {
	body := scrape(t, setup(t, DefaultConfig()))
	for _, want := range []string{"go_goroutines ", "go_memstats_alloc_bytes ", "process_cpu_seconds_total ", "process_resident_memory_bytes "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestOwnRegistry: two Setups (two services in one process, or tests) must
// not collide on prometheus.DefaultRegisterer.
func TestOwnRegistry(t *testing.T) {
	a := setup(t, DefaultConfig())
	b := setup(t, DefaultConfig())
	c, _ := a.MeterProvider().Meter("a").Int64Counter("postern.only.in.a")
	c.Add(context.Background(), 1)
	if !strings.Contains(scrape(t, a), "postern_only_in_a_total") {
		t.Error("counter missing from its own registry")
	}
	if strings.Contains(scrape(t, b), "postern_only_in_a_total") {
		t.Error("counter leaked into another Telemetry's registry")
	}
}

func TestGlobalsAndPropagator(t *testing.T) {
	tel := setup(t, DefaultConfig())
	if otel.GetTracerProvider() != tel.TracerProvider() {
		t.Error("global tracer provider not set")
	}
	if otel.GetMeterProvider() != tel.MeterProvider() {
		t.Error("global meter provider not set")
	}

	ctx, span := otel.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	member, _ := baggage.NewMember("postern.site", "hq")
	bag, _ := baggage.New(member)
	ctx = baggage.ContextWithBaggage(ctx, bag)

	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	tp := carrier.Get("traceparent")
	if !strings.Contains(tp, span.SpanContext().TraceID().String()) {
		t.Errorf("traceparent = %q, want trace id %s", tp, span.SpanContext().TraceID())
	}
	if carrier.Get("baggage") != "postern.site=hq" {
		t.Errorf("baggage = %q", carrier.Get("baggage"))
	}

	got := tel.Propagator().Extract(context.Background(), carrier)
	if sc := trace.SpanContextFromContext(got); sc.TraceID() != span.SpanContext().TraceID() || !sc.IsRemote() {
		t.Errorf("extracted span context = %v", sc)
	}
}

func TestSampling(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SampleRatio = 0
	tel := setup(t, cfg)
	tracer := tel.TracerProvider().Tracer("test")

	_, root := tracer.Start(context.Background(), "root")
	root.End()
	if root.SpanContext().IsSampled() {
		t.Error("ratio 0 sampled a new trace")
	}
	if !root.SpanContext().IsValid() {
		t.Error("an unsampled span should still have ids (for log correlation)")
	}

	// A trace sampled upstream stays sampled (parent-based).
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1},
		SpanID:     trace.SpanID{1},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	_, child := tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), parent), "child")
	child.End()
	if !child.SpanContext().IsSampled() {
		t.Error("child of a sampled remote parent was not sampled")
	}
}

// collector is a fake OTLP/HTTP collector that records what it receives.
type collector struct {
	mu      sync.Mutex
	paths   []string
	spans   []string // span names
	metrics []string // metric names
	service []string // service.name of each resource
	bounds  map[string][]float64
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.paths = append(c.paths, r.Method+" "+r.URL.Path)
	var resp proto.Message
	switch r.URL.Path {
	case "/v1/traces":
		var req colltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			c.service = append(c.service, serviceName(rs.GetResource().GetAttributes()))
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					c.spans = append(c.spans, s.Name)
				}
			}
		}
		resp = &colltracepb.ExportTraceServiceResponse{}
	case "/v1/metrics":
		var req collmetricpb.ExportMetricsServiceRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rm := range req.ResourceMetrics {
			c.service = append(c.service, serviceName(rm.GetResource().GetAttributes()))
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					c.metrics = append(c.metrics, m.Name)
					if h := m.GetHistogram(); h != nil && len(h.DataPoints) > 0 {
						if c.bounds == nil {
							c.bounds = map[string][]float64{}
						}
						c.bounds[m.Name] = h.DataPoints[0].ExplicitBounds
					}
				}
			}
		}
		resp = &collmetricpb.ExportMetricsServiceResponse{}
	default:
		http.NotFound(w, r)
		return
	}
	out, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func serviceName(attrs []*commonpb.KeyValue) string {
	for _, kv := range attrs {
		if kv.Key == "service.name" {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

func newCollector(t *testing.T) (*collector, string) {
	t.Helper()
	c := &collector{}
	srv := httptest.NewServer(c) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return c, srv.URL
}

func TestOTLPExport(t *testing.T) {
	col, endpoint := newCollector(t)
	cfg := DefaultConfig()
	cfg.OTLPEndpoint = endpoint
	cfg.ExportInterval = time.Hour // only Shutdown's flush sends metrics
	tel, err := Setup(context.Background(), cfg, Resource{ServiceName: "relay", Site: "branch1"})
	if err != nil {
		t.Fatal(err)
	}

	_, span := tel.TracerProvider().Tracer("test").Start(context.Background(), "smtp.deliver")
	span.End()
	counter, _ := tel.MeterProvider().Meter("test").Int64Counter("postern.relay.delivered", metric.WithUnit("{message}"))
	counter.Add(context.Background(), 1)
	hist, _ := tel.MeterProvider().Meter("test").Float64Histogram("postern.relay.delivery.duration", metric.WithUnit("s"))
	hist.Record(context.Background(), 1.5)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := tel.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	if !slices.Contains(col.paths, "POST /v1/traces") || !slices.Contains(col.paths, "POST /v1/metrics") {
		t.Errorf("collector got %v, want POST /v1/traces and POST /v1/metrics", col.paths)
	}
	if !slices.Contains(col.spans, "smtp.deliver") {
		t.Errorf("spans received = %v", col.spans)
	}
	if !slices.Contains(col.metrics, "postern.relay.delivered") {
		t.Errorf("metrics received = %v", col.metrics)
	}
	if got := col.bounds["postern.relay.delivery.duration"]; !slices.Equal(got, DurationBuckets) {
		t.Errorf("OTLP histogram bounds = %v, want DurationBuckets", got)
	}
	for _, s := range col.service {
		if s != "relay" {
			t.Errorf("resource service.name = %q, want relay", s)
		}
	}
}

func TestNoExportWithoutEndpoint(t *testing.T) {
	col, endpoint := newCollector(t)
	// Even with the standard variables pointing at a collector, an empty
	// otlp_endpoint means no export: configuration is explicit.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint+"/v1/traces")
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint+"/v1/metrics")

	cfg := DefaultConfig()
	cfg.ExportInterval = 10 * time.Millisecond
	tel, err := Setup(context.Background(), cfg, Resource{ServiceName: "relay"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider().Tracer("test").Start(context.Background(), "op")
	span.End()
	counter, _ := tel.MeterProvider().Meter("test").Int64Counter("postern.test")
	counter.Add(context.Background(), 1)
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.paths) != 0 {
		t.Errorf("collector got %v with no endpoint configured", col.paths)
	}
}

func TestSetupRejectsInvalidConfig(t *testing.T) {
	if _, err := Setup(context.Background(), Config{SampleRatio: 3}, Resource{ServiceName: "x"}); err == nil {
		t.Error("Setup accepted an invalid config")
	}
}

func lineHasValue(body, prefix, value string) bool {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) && strings.HasSuffix(line, " "+value) {
			return true
		}
	}
	return false
}

func grep(body string, prefixes ...string) string {
	var b bytes.Buffer
	for _, line := range strings.Split(body, "\n") {
		for _, p := range prefixes {
			if strings.Contains(line, p) {
				b.WriteString(line + "\n")
				break
			}
		}
	}
	return b.String()
}
