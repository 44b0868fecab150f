package deployments

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"
	"gopkg.in/yaml.v3"

	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/telemetry"
	"github.com/postern/postern/services/fetcher"
	"github.com/postern/postern/services/relay"
	"github.com/postern/postern/services/router"
)

// prometheusOwn are series Prometheus makes itself when it scrapes a target;
// a dashboard may use them although no Postern code registers them.
var prometheusOwn = []string{"up"}

// TestDashboardMetricsExist: every metric name in every query of every
// dashboard (panel targets and template variables) is one that a Postern
// service exposes on /metrics. The names are not written down here: every
// package's instruments are created (DeclareMetrics), then created again,
// with one observation each, on the real telemetry setup (the Prometheus
// exporter with its naming rules) and gathered from its registry.
func TestDashboardMetricsExist(t *testing.T) {
	known := exposedMetricNames(t)
	files := dashboardFiles(t)
	for _, f := range files {
		queries := dashboardQueries(t, f)
		if len(queries) == 0 {
			t.Errorf("%s: no queries found", f)
		}
		for _, q := range queries {
			names, err := queryMetricNames(q.expr)
			if err != nil {
				t.Errorf("%s: %s: %v", f, q.where, err)
				continue
			}
			if len(names) == 0 && !q.variable {
				t.Errorf("%s: %s: query %q names no metric", f, q.where, q.expr)
			}
			for _, n := range names {
				if !known[n] {
					t.Errorf("%s: %s: metric %s does not exist in the code (query %q)%s", f, q.where, n, q.expr, suggest(n, known))
				}
			}
		}
	}
}

// The check fails for a name that does not exist: the parser finds the
// made-up name, and it is not among the exposed ones.
func TestDashboardCheckCatchesUnknownMetric(t *testing.T) {
	known := exposedMetricNames(t)
	expr := `sum by (destination) (rate(postern_relay_deliveries_total[5m])) / sum(rate(postern_relay_made_up_total{site=~"$site"}[$__rate_interval]))`
	names, err := queryMetricNames(expr)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, n := range names {
		if !known[n] {
			missing = append(missing, n)
		}
	}
	if !slices.Equal(missing, []string{"postern_relay_made_up_total"}) {
		t.Errorf("missing = %v, want exactly the made-up name", missing)
	}
	// The histogram's base name is not a series: only _bucket, _sum, _count.
	if known["postern_mail_latency_seconds"] || !known["postern_mail_latency_seconds_bucket"] {
		t.Errorf("histogram names: base %v, _bucket %v; want false, true",
			known["postern_mail_latency_seconds"], known["postern_mail_latency_seconds_bucket"])
	}
}

func TestQueryMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`rate(a_total[5m])`, []string{"a_total"}},
		{`sum by (le, destination) (rate(x_bucket{site=~"$site", destination!="local"}[$__rate_interval]))`, []string{"x_bucket"}},
		{`histogram_quantile(0.99, sum without (instance) (rate(h_bucket[1h30m])))`, []string{"h_bucket"}},
		{`time() - max by (account) (ts_seconds{a="x"}) offset 5m`, []string{"ts_seconds"}},
		{`a / on (job) group_left (site) b and c unless d or bool e`, []string{"a", "b", "c", "d", "e"}},
		{`sum(rate(a{l="by (x) rate(b[5m])"}[5m]))`, []string{"a"}},
		{`max_over_time(g[1h:5m]) > 1e3`, []string{"g"}},
		{"count(x{l=`raw}`}) # a comment naming fake_metric", []string{"x"}},
		{`label_values(target_info, site)`, []string{"target_info"}},
		{`label_values(site)`, nil},
		{`query_result(topk(5, q_total))`, []string{"q_total"}},
		{`-inf < a and nan != b`, []string{"a", "b"}},
		{`${metric_var}`, nil},
		{`sum(x) by (le)`, []string{"x"}},
		{`max without (a) (y) / count by(b)(z)`, []string{"y", "z"}},
		{`a:recorded:rate5m`, []string{"a:recorded:rate5m"}},
	} {
		got, err := queryMetricNames(c.expr)
		if err != nil {
			t.Errorf("%q: %v", c.expr, err)
			continue
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.expr, got, c.want)
		}
	}
	for _, bad := range []string{`rate(a[5m]`, `a{b="c"`, `"unterminated`, `sum(a))`} {
		if _, err := queryMetricNames(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestDashboardsUseTheProvisionedDatasource: every panel and target names
// the Prometheus datasource the provisioning creates, by its uid.
func TestDashboardsUseTheProvisionedDatasource(t *testing.T) {
	var prov struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
		} `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &prov)
	uids := map[string]string{}
	for _, d := range prov.Datasources {
		uids[d.UID] = d.Type
	}
	seen := map[string]string{}
	for _, f := range dashboardFiles(t) {
		var d struct {
			UID string `json:"uid"`
		}
		readJSON(t, f, &d)
		if d.UID == "" {
			t.Errorf("%s: no uid", f)
		}
		if other, ok := seen[d.UID]; ok {
			t.Errorf("%s and %s have the same uid %q", f, other, d.UID)
		}
		seen[d.UID] = f
		var v any
		readJSON(t, f, &v)
		walk(v, func(m map[string]any) {
			ds, ok := m["datasource"].(map[string]any)
			if !ok {
				return
			}
			uid, _ := ds["uid"].(string)
			if typ, ok := uids[uid]; !ok || typ != ds["type"] {
				t.Errorf("%s: datasource %v is not the provisioned one (%v)", f, ds, uids)
			}
		})
	}
}

// ---------------------------------------------------------------- names

var (
	namesOnce sync.Once
	names     map[string]bool
	namesErr  error
)

// exposedMetricNames returns every series name the services' /metrics can
// show: counters (with _total), gauges, histograms' _bucket/_sum/_count, the
// Go and process collectors, target_info, plus prometheusOwn.
func exposedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	namesOnce.Do(func() { names, namesErr = gatherNames() })
	if namesErr != nil {
		t.Fatal(namesErr)
	}
	return names
}

func gatherNames() (map[string]bool, error) {
	rec := &recorder{}
	for name, declare := range map[string]func(metric.MeterProvider) error{
		"msgbus": msgbus.DeclareMetrics, "fetcher": fetcher.DeclareMetrics,
		"router": router.DeclareMetrics, "relay": relay.DeclareMetrics,
	} {
		if err := declare(rec); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if len(rec.instruments) < 20 {
		return nil, fmt.Errorf("only %d instruments declared: %v", len(rec.instruments), rec.instruments)
	}
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "deployments-test", Site: "test"})
	if err != nil {
		return nil, err
	}
	defer tel.Shutdown(ctx)
	for _, in := range rec.instruments {
		if err := in.replay(ctx, tel.MeterProvider()); err != nil {
			return nil, fmt.Errorf("%s %s: %w", in.kind, in.name, err)
		}
	}
	families, err := tel.Registry().Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, n := range prometheusOwn {
		out[n] = true
	}
	for _, f := range families {
		n := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[n+"_bucket"], out[n+"_sum"], out[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[n], out[n+"_sum"], out[n+"_count"] = true, true, true
		default:
			out[n] = true
		}
	}
	// Every declared instrument must have come out (an observation each).
	for _, in := range rec.instruments {
		if !strings.HasPrefix(in.name, "postern.") {
			return nil, fmt.Errorf("instrument %q is not named postern.*", in.name)
		}
		prefix := strings.ReplaceAll(in.name, ".", "_")
		found := false
		for n := range out {
			if strings.HasPrefix(n, prefix) {
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("instrument %s (%s) is not in the Prometheus exposition", in.name, in.kind)
		}
	}
	return out, nil
}

func suggest(name string, known map[string]bool) string {
	var close []string
	stem := name
	for _, suf := range []string{"_total", "_bucket", "_sum", "_count", "_seconds", "_bytes"} {
		stem = strings.TrimSuffix(stem, suf)
	}
	for n := range known {
		if strings.HasPrefix(n, stem) {
			close = append(close, n)
		}
	}
	if len(close) == 0 {
		return ""
	}
	sort.Strings(close)
	return fmt.Sprintf("; did you mean one of %v?", close)
}

// recorder is a MeterProvider that remembers every instrument created on
// it (and hands out no-op ones). Callbacks are never called.
type recorder struct {
	embedded.MeterProvider
	mu          sync.Mutex
	instruments []instrument
}

type instrument struct {
	scope, name, kind, unit string
}

func (r *recorder) Meter(name string, _ ...metric.MeterOption) metric.Meter {
	return &recMeter{r: r, scope: name}
}

func (r *recorder) add(scope, name, kind, unit string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.instruments = append(r.instruments, instrument{scope: scope, name: name, kind: kind, unit: unit})
}

type recMeter struct {
	noop.Meter
	r     *recorder
	scope string
}

func (m *recMeter) Int64Counter(name string, o ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	m.r.add(m.scope, name, "Int64Counter", metric.NewInt64CounterConfig(o...).Unit())
	return m.Meter.Int64Counter(name, o...)
}

func (m *recMeter) Int64UpDownCounter(name string, o ...metric.Int64UpDownCounterOption) (metric.Int64UpDownCounter, error) {
	m.r.add(m.scope, name, "Int64UpDownCounter", metric.NewInt64UpDownCounterConfig(o...).Unit())
	return m.Meter.Int64UpDownCounter(name, o...)
}

func (m *recMeter) Int64Histogram(name string, o ...metric.Int64HistogramOption) (metric.Int64Histogram, error) {
	m.r.add(m.scope, name, "Int64Histogram", metric.NewInt64HistogramConfig(o...).Unit())
	return m.Meter.Int64Histogram(name, o...)
}

func (m *recMeter) Int64Gauge(name string, o ...metric.Int64GaugeOption) (metric.Int64Gauge, error) {
	m.r.add(m.scope, name, "Int64Gauge", metric.NewInt64GaugeConfig(o...).Unit())
	return m.Meter.Int64Gauge(name, o...)
}

func (m *recMeter) Int64ObservableCounter(name string, o ...metric.Int64ObservableCounterOption) (metric.Int64ObservableCounter, error) {
	m.r.add(m.scope, name, "Int64ObservableCounter", metric.NewInt64ObservableCounterConfig(o...).Unit())
	return m.Meter.Int64ObservableCounter(name, o...)
}

func (m *recMeter) Int64ObservableUpDownCounter(name string, o ...metric.Int64ObservableUpDownCounterOption) (metric.Int64ObservableUpDownCounter, error) {
	m.r.add(m.scope, name, "Int64ObservableUpDownCounter", metric.NewInt64ObservableUpDownCounterConfig(o...).Unit())
	return m.Meter.Int64ObservableUpDownCounter(name, o...)
}

func (m *recMeter) Int64ObservableGauge(name string, o ...metric.Int64ObservableGaugeOption) (metric.Int64ObservableGauge, error) {
	m.r.add(m.scope, name, "Int64ObservableGauge", metric.NewInt64ObservableGaugeConfig(o...).Unit())
	return m.Meter.Int64ObservableGauge(name, o...)
}

func (m *recMeter) Float64Counter(name string, o ...metric.Float64CounterOption) (metric.Float64Counter, error) {
	m.r.add(m.scope, name, "Float64Counter", metric.NewFloat64CounterConfig(o...).Unit())
	return m.Meter.Float64Counter(name, o...)
}

func (m *recMeter) Float64UpDownCounter(name string, o ...metric.Float64UpDownCounterOption) (metric.Float64UpDownCounter, error) {
	m.r.add(m.scope, name, "Float64UpDownCounter", metric.NewFloat64UpDownCounterConfig(o...).Unit())
	return m.Meter.Float64UpDownCounter(name, o...)
}

func (m *recMeter) Float64Histogram(name string, o ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	m.r.add(m.scope, name, "Float64Histogram", metric.NewFloat64HistogramConfig(o...).Unit())
	return m.Meter.Float64Histogram(name, o...)
}

func (m *recMeter) Float64Gauge(name string, o ...metric.Float64GaugeOption) (metric.Float64Gauge, error) {
	m.r.add(m.scope, name, "Float64Gauge", metric.NewFloat64GaugeConfig(o...).Unit())
	return m.Meter.Float64Gauge(name, o...)
}

func (m *recMeter) Float64ObservableCounter(name string, o ...metric.Float64ObservableCounterOption) (metric.Float64ObservableCounter, error) {
	m.r.add(m.scope, name, "Float64ObservableCounter", metric.NewFloat64ObservableCounterConfig(o...).Unit())
	return m.Meter.Float64ObservableCounter(name, o...)
}

func (m *recMeter) Float64ObservableUpDownCounter(name string, o ...metric.Float64ObservableUpDownCounterOption) (metric.Float64ObservableUpDownCounter, error) {
	m.r.add(m.scope, name, "Float64ObservableUpDownCounter", metric.NewFloat64ObservableUpDownCounterConfig(o...).Unit())
	return m.Meter.Float64ObservableUpDownCounter(name, o...)
}

func (m *recMeter) Float64ObservableGauge(name string, o ...metric.Float64ObservableGaugeOption) (metric.Float64ObservableGauge, error) {
	m.r.add(m.scope, name, "Float64ObservableGauge", metric.NewFloat64ObservableGaugeConfig(o...).Unit())
	return m.Meter.Float64ObservableGauge(name, o...)
}

// replay creates the instrument again on mp, same scope, name, kind and
// unit, and gives it one observation so that the exporter shows it.
func (in instrument) replay(ctx context.Context, mp metric.MeterProvider) error {
	m := mp.Meter(in.scope)
	u := metric.WithUnit(in.unit)
	i64 := metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error { o.Observe(1); return nil })
	f64 := metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error { o.Observe(1); return nil })
	var err error
	switch in.kind {
	case "Int64Counter":
		var c metric.Int64Counter
		if c, err = m.Int64Counter(in.name, u); err == nil {
			c.Add(ctx, 1)
		}
	case "Int64UpDownCounter":
		var c metric.Int64UpDownCounter
		if c, err = m.Int64UpDownCounter(in.name, u); err == nil {
			c.Add(ctx, 1)
		}
	case "Int64Histogram":
		var h metric.Int64Histogram
		if h, err = m.Int64Histogram(in.name, u); err == nil {
			h.Record(ctx, 1)
		}
	case "Int64Gauge":
		var g metric.Int64Gauge
		if g, err = m.Int64Gauge(in.name, u); err == nil {
			g.Record(ctx, 1)
		}
	case "Int64ObservableCounter":
		_, err = m.Int64ObservableCounter(in.name, u, i64)
	case "Int64ObservableUpDownCounter":
		_, err = m.Int64ObservableUpDownCounter(in.name, u, i64)
	case "Int64ObservableGauge":
		_, err = m.Int64ObservableGauge(in.name, u, i64)
	case "Float64Counter":
		var c metric.Float64Counter
		if c, err = m.Float64Counter(in.name, u); err == nil {
			c.Add(ctx, 1)
		}
	case "Float64UpDownCounter":
		var c metric.Float64UpDownCounter
		if c, err = m.Float64UpDownCounter(in.name, u); err == nil {
			c.Add(ctx, 1)
		}
	case "Float64Histogram":
		var h metric.Float64Histogram
		if h, err = m.Float64Histogram(in.name, u); err == nil {
			h.Record(ctx, 1)
		}
	case "Float64Gauge":
		var g metric.Float64Gauge
		if g, err = m.Float64Gauge(in.name, u); err == nil {
			g.Record(ctx, 1)
		}
	case "Float64ObservableCounter":
		_, err = m.Float64ObservableCounter(in.name, u, f64)
	case "Float64ObservableUpDownCounter":
		_, err = m.Float64ObservableUpDownCounter(in.name, u, f64)
	case "Float64ObservableGauge":
		_, err = m.Float64ObservableGauge(in.name, u, f64)
	default:
		err = fmt.Errorf("unknown kind")
	}
	return err
}

// ---------------------------------------------------------------- dashboards

type query struct {
	where    string // panel title and refId, or the variable
	expr     string
	variable bool // a template variable's query
}

func dashboardFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("grafana/dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in grafana/dashboards (%v)", err)
	}
	return files
}

// dashboardQueries returns the PromQL of every target of every panel (rows'
// nested panels included) and the query of every template variable.
func dashboardQueries(t *testing.T, file string) []query {
	t.Helper()
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	readJSON(t, file, &d)
	var out []query
	var visit func([]panel)
	visit = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q target %s has no expr", file, p.Title, tg.RefID)
					continue
				}
				out = append(out, query{where: fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), expr: tg.Expr})
			}
			visit(p.Panels)
		}
	}
	visit(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Errorf("%s: variable %s: query is neither a string nor {query}: %s", file, v.Name, v.Query)
				continue
			}
			q = obj.Query
		}
		out = append(out, query{where: "variable " + v.Name, expr: q, variable: true})
	}
	return out
}

type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// queryMetricNames returns the metric names a PromQL expression selects, in
// order of first appearance. It also reads Grafana's variable queries
// label_values(expr, label), label_values(label) and query_result(expr).
// It is a lexer, not a full parser: it skips strings, label matchers,
// ranges, comments, Grafana variables, numbers and durations, the
// parenthesised label lists of by/without/on/ignoring/group_left/
// group_right, keywords, and identifiers followed by "(" (functions and
// aggregations, also when by/without comes before the "("); every other
// identifier is a metric name. Unbalanced
// brackets and unterminated strings are errors.
func queryMetricNames(expr string) ([]string, error) {
	s := strings.TrimSpace(expr)
	if inner, ok := grafanaFunc(s, "label_values"); ok {
		i := lastTopLevelComma(inner)
		if i < 0 {
			return nil, nil // label_values(label): all series, no metric named
		}
		s = inner[:i]
	} else if inner, ok := grafanaFunc(s, "query_result"); ok {
		s = inner
	}
	var names []string
	seen := map[string]bool{}
	depth := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '{':
			end, err := skipTo(s, i, '}')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end, err := skipTo(s, i, ']')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				end, err := skipTo(s, i, '}')
				if err != nil {
					return nil, err
				}
				i = end
			} else {
				for i < len(s) && isIdent(s[i]) {
					i++
				}
			}
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced ) at %d in %q", i, expr)
			}
			i++
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(s) && (isIdent(s[i]) || s[i] == ':') {
				i++
			}
			word := s[start:i]
			j := i
			for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n') {
				j++
			}
			followedByParen := j < len(s) && s[j] == '('
			if aggregation[strings.ToLower(word)] && !followedByParen {
				// sum by (le) (...): the grouping comes first
				k := j
				for k < len(s) && isIdent(s[k]) {
					k++
				}
				if g := strings.ToLower(s[j:k]); g == "by" || g == "without" {
					followedByParen = true
				}
			}
			switch {
			case labelListKeyword[strings.ToLower(word)]:
				if followedByParen { // by (a, b): label names, not metrics
					end, err := skipTo(s, j, ')')
					if err != nil {
						return nil, err
					}
					i = end
				}
			case keyword[strings.ToLower(word)]:
			case followedByParen: // a function or an aggregation
			default:
				if !seen[word] {
					seen[word] = true
					names = append(names, word)
				}
			}
		default:
			i++ // operators, commas
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced ( in %q", expr)
	}
	return names, nil
}

var labelListKeyword = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

var aggregation = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true, "count": true,
	"count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
}

var keyword = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true, "atan2": true}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// skipString returns the index after the string literal starting at s[i].
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d in %q", i, s)
}

// skipTo returns the index after the close that ends the bracket opened at
// s[i], skipping strings and nested brackets of the same kind.
func skipTo(s string, i int, close byte) (int, error) {
	open, depth := s[i], 0
	for j := i; j < len(s); j++ {
		switch c := s[j]; {
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = end - 1
		case c == open:
			depth++
		case c == close:
			depth--
			if depth == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unclosed %c at %d in %q", open, i, s)
}

// grafanaFunc returns what is inside name( ... ) when s is exactly that.
func grafanaFunc(s, name string) (string, bool) {
	rest, ok := strings.CutPrefix(s, name)
	if !ok {
		return "", false
	}
	rest = strings.TrimSpace(rest)
	if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
		return "", false
	}
	return rest[1 : len(rest)-1], true
}

// lastTopLevelComma returns the index of the last comma outside brackets
// and strings, or -1.
func lastTopLevelComma(s string) int {
	last, depth := -1, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\'', '`':
			if end, err := skipString(s, i); err == nil {
				i = end - 1
			}
		case '(', '{', '[':
			depth++
		case ')', '}', ']':
			depth--
		case ',':
			if depth == 0 {
				last = i
			}
		}
	}
	return last
}

// ---------------------------------------------------------------- helpers

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// walk calls fn for every JSON object in v.
func walk(v any, fn func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		fn(x)
		for _, e := range x {
			walk(e, fn)
		}
	case []any:
		for _, e := range x {
			walk(e, fn)
		}
	}
}
