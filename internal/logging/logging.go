// Package logging builds the log/slog logger every Postern service uses:
// JSON in production, text on a terminal, snake_case keys, and the trace and
// span ids of the current OpenTelemetry span on every record logged with a
// context inside a trace.
package logging

import (
	"context"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/mattn/go-isatty"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/internal/config"
)

// Attribute keys added by WithTrace.
const (
	TraceIDKey = "trace_id"
	SpanIDKey  = "span_id"
)

// Config is the logging section of a service's configuration.
type Config struct {
	Level  string `yaml:"level" doc:"debug, info, warn or error"`
	Format string `yaml:"format" doc:"text, json, or auto (text on a terminal, json otherwise)"`
}

// DefaultConfig returns level info, format auto.
func DefaultConfig() Config {
	return Config{Level: "info", Format: "auto"}
}

// Validate checks the level and the format; keys are "level" and "format".
func (c Config) Validate() error {
	var errs []error
	if _, ok := parseLevel(c.Level); !ok {
		errs = append(errs, config.Errorf("level", "must be debug, info, warn or error, not %q", c.Level))
	}
	switch strings.ToLower(c.Format) {
	case "text", "json", "auto":
	default:
		errs = append(errs, config.Errorf("format", "must be text, json or auto, not %q", c.Format))
	}
	return config.Join(errs...)
}

func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return slog.LevelInfo, false
}

// New returns a logger writing to w as cfg says, wrapped with WithTrace.
// cfg should have been validated; an unknown level means info and an unknown
// format means auto. Format auto writes text when w is a terminal and JSON
// otherwise.
func New(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.Level)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(cfg.Format) {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		if isTerminal(w) {
			h = slog.NewTextHandler(w, opts)
		} else {
			h = slog.NewJSONHandler(w, opts)
		}
	}
	return slog.New(WithTrace(h))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

// WithTrace wraps h so that a record logged with a context holding a valid
// OpenTelemetry span context gets trace_id and span_id attributes (hex, as
// in W3C traceparent). The ids stay at the top level of the record even
// under WithGroup, so log pipelines find them in one place.
func WithTrace(h slog.Handler) slog.Handler {
	if th, ok := h.(*traceHandler); ok {
		return th
	}
	return &traceHandler{base: h, cur: h}
}

// traceHandler keeps the handler it wraps (base) and the chain of WithAttrs
// and WithGroup calls made since, applied (cur) and recorded (ops). Without
// groups the ids are added to the record itself; under a group they would
// land inside it, so the chain is replayed on base with the ids first. That
// costs a few allocations, only for traced records of grouped loggers.
type traceHandler struct {
	base    slog.Handler
	cur     slog.Handler
	ops     []op
	grouped bool
}

// op is one WithAttrs (group == "") or WithGroup call.
type op struct {
	group string
	attrs []slog.Attr
}

func (h *traceHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.cur.Enabled(ctx, l)
}

func (h *traceHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.cur.Handle(ctx, r)
	}
	ids := []slog.Attr{
		slog.String(TraceIDKey, sc.TraceID().String()),
		slog.String(SpanIDKey, sc.SpanID().String()),
	}
	if !h.grouped {
		r = r.Clone()
		r.AddAttrs(ids...)
		return h.cur.Handle(ctx, r)
	}
	hh := h.base.WithAttrs(ids)
	for _, o := range h.ops {
		if o.group != "" {
			hh = hh.WithGroup(o.group)
		} else {
			hh = hh.WithAttrs(o.attrs)
		}
	}
	return hh.Handle(ctx, r)
}

func (h *traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return &traceHandler{
		base:    h.base,
		cur:     h.cur.WithAttrs(attrs),
		ops:     append(h.ops[:len(h.ops):len(h.ops)], op{attrs: slices.Clone(attrs)}),
		grouped: h.grouped,
	}
}

func (h *traceHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &traceHandler{
		base:    h.base,
		cur:     h.cur.WithGroup(name),
		ops:     append(h.ops[:len(h.ops):len(h.ops)], op{group: name}),
		grouped: true,
	}
}
