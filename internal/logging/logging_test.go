package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/postern/postern/internal/config"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		keys []string
	}{
		{"default", DefaultConfig(), nil},
		{"debug json", Config{Level: "debug", Format: "json"}, nil},
		{"upper case", Config{Level: "WARN", Format: "Text"}, nil},
		{"bad level", Config{Level: "verbose", Format: "json"}, []string{"level"}},
		{"empty level", Config{Level: "", Format: "json"}, []string{"level"}},
		{"bad format", Config{Level: "info", Format: "xml"}, []string{"format"}},
		{"both bad", Config{Level: "x", Format: "y"}, []string{"level", "format"}},
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

func TestLevelFiltering(t *testing.T) {
	tests := []struct {
		level string
		want  []string // messages written
	}{
		{"debug", []string{"d", "i", "w", "e"}},
		{"info", []string{"i", "w", "e"}},
		{"warn", []string{"w", "e"}},
		{"error", []string{"e"}},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			log := New(Config{Level: tt.level, Format: "json"}, &buf)
			log.Debug("d")
			log.Info("i")
			log.Warn("w")
			log.Error("e")
			var got []string
			for _, rec := range decodeJSON(t, &buf) {
				got = append(got, rec["msg"].(string))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("messages = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFormats(t *testing.T) {
	var buf bytes.Buffer
	New(Config{Level: "info", Format: "json"}, &buf).Info("hello", "mail_from", "a@example.org")
	recs := decodeJSON(t, &buf)
	if len(recs) != 1 || recs[0]["msg"] != "hello" || recs[0]["mail_from"] != "a@example.org" || recs[0]["level"] != "INFO" {
		t.Errorf("json record = %v", recs)
	}

	buf.Reset()
	New(Config{Level: "info", Format: "text"}, &buf).Info("hello", "mail_from", "a@example.org")
	line := buf.String()
	if strings.HasPrefix(line, "{") || !strings.Contains(line, "level=INFO") || !strings.Contains(line, "msg=hello") || !strings.Contains(line, "mail_from=a@example.org") {
		t.Errorf("text line = %q", line)
	}

	// auto on something that is not a terminal is JSON.
	buf.Reset()
	New(Config{Level: "info", Format: "auto"}, &buf).Info("hello")
	if !strings.HasPrefix(buf.String(), "{") {
		t.Errorf("auto on a buffer = %q, want JSON", buf.String())
	}
}

func TestTraceIDs(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := span.SpanContext()
	traceID, spanID := sc.TraceID().String(), sc.SpanID().String()

	var buf bytes.Buffer
	log := New(Config{Level: "info", Format: "json"}, &buf)

	log.InfoContext(ctx, "inside")
	log.InfoContext(context.Background(), "outside")
	log.Info("no context")
	log.With("site", "hq").InfoContext(ctx, "with attrs")
	log.WithGroup("smtp").With("session", "s1").InfoContext(ctx, "grouped", "rcpt", "b@example.org")
	log.WithGroup("smtp").InfoContext(context.Background(), "grouped outside", "rcpt", "c@example.org")

	recs := decodeJSON(t, &buf)
	if len(recs) != 6 {
		t.Fatalf("got %d records, want 6", len(recs))
	}
	for _, i := range []int{0, 3, 4} {
		if recs[i][TraceIDKey] != traceID || recs[i][SpanIDKey] != spanID {
			t.Errorf("record %q: trace_id=%v span_id=%v, want %s %s", recs[i]["msg"], recs[i][TraceIDKey], recs[i][SpanIDKey], traceID, spanID)
		}
	}
	for _, i := range []int{1, 2, 5} {
		if _, ok := recs[i][TraceIDKey]; ok {
			t.Errorf("record %q outside a span has trace_id", recs[i]["msg"])
		}
		if _, ok := recs[i][SpanIDKey]; ok {
			t.Errorf("record %q outside a span has span_id", recs[i]["msg"])
		}
	}
	if recs[3]["site"] != "hq" {
		t.Errorf("With attrs lost through the wrapper: %v", recs[3])
	}
	g, ok := recs[4]["smtp"].(map[string]any)
	if !ok || g["session"] != "s1" || g["rcpt"] != "b@example.org" {
		t.Errorf("group lost through the wrapper: %v", recs[4])
	}
	if _, ok := g[TraceIDKey]; ok {
		t.Errorf("trace_id landed inside the group: %v", recs[4])
	}
	g, ok = recs[5]["smtp"].(map[string]any)
	if !ok || g["rcpt"] != "c@example.org" {
		t.Errorf("group lost outside a span: %v", recs[5])
	}
}

func TestTraceIDsText(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()

	var buf bytes.Buffer
	New(Config{Level: "info", Format: "text"}, &buf).WithGroup("g").InfoContext(ctx, "x", "k", "v")
	line := buf.String()
	for _, want := range []string{
		"trace_id=" + span.SpanContext().TraceID().String(),
		"span_id=" + span.SpanContext().SpanID().String(),
		"g.k=v",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("text line %q lacks %q", line, want)
		}
	}
}

func TestWithTraceIdempotent(t *testing.T) {
	h := WithTrace(slog.NewJSONHandler(&bytes.Buffer{}, nil))
	if WithTrace(h) != h {
		t.Error("WithTrace wrapped its own handler twice")
	}
}

func TestSecretMasked(t *testing.T) {
	const password = "hunter2-very-secret"
	secret := config.Secret(password)
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log := New(Config{Level: "info", Format: format}, &buf)
			log.Info("login", "password", secret)
			log.Info("login", slog.Any("password", secret))
			log.With("token", secret).Info("with")
			log.Info("group", slog.Group("pop3", "password", secret))
			out := buf.String()
			if strings.Contains(out, password) {
				t.Fatalf("secret leaked in %s output:\n%s", format, out)
			}
			if n := strings.Count(out, "********"); n != 4 {
				t.Errorf("mask appears %d times, want 4:\n%s", n, out)
			}
		})
	}
}

func decodeJSON(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var recs []map[string]any
	dec := json.NewDecoder(buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("decode %q: %v", buf.String(), err)
		}
		recs = append(recs, m)
	}
	return recs
}
