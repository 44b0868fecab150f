package opshttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/postern/postern/internal/config"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		listen string
		ok     bool
	}{
		{":9464", true},
		{"127.0.0.1:0", true},
		{"[::1]:9464", true},
		{"localhost:8080", true},
		{DefaultConfig().Listen, true},
		{"", false},
		{"9464", false},
		{"localhost", false},
		{":http", false},
		{":70000", false},
		{":-1", false},
	}
	for _, tt := range tests {
		err := Config{Listen: tt.listen}.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("Validate(%q) = %v, want ok=%v", tt.listen, err, tt.ok)
		}
		if err != nil && !slices.Equal(config.Keys(err), []string{"listen"}) {
			t.Errorf("Validate(%q) keys = %v, want [listen]", tt.listen, config.Keys(err))
		}
	}
}

// start runs a server on a free port of 127.0.0.1 and shuts it down at the
// end of the test.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Service == "" {
		opts.Service = "router"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := New(Config{Listen: "127.0.0.1:0"}, opts)
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

type reply struct {
	code   int
	header http.Header
	body   string
	json   readyBody // a /healthz answer fits too
}

func do(t *testing.T, method, url string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{code: resp.StatusCode, header: resp.Header, body: string(data)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && len(data) > 0 {
		if err := json.Unmarshal(data, &r.json); err != nil {
			t.Fatalf("%s %s: bad JSON %q: %v", method, url, data, err)
		}
	}
	return r
}

func TestHealthz(t *testing.T) {
	s := start(t, Options{Service: "relay", Checks: []Check{{"broker", func(context.Context) error { return errors.New("down") }}}})
	r := do(t, http.MethodGet, "http://"+s.Addr()+"/healthz")
	if r.code != http.StatusOK || r.json.Status != "ok" || r.json.Service != "relay" {
		t.Errorf("/healthz = %d %s", r.code, r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.header.Get("Cache-Control"))
	}
	// Liveness does not depend on readiness checks nor on draining.
	s.SetDraining()
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/healthz"); r.code != http.StatusOK {
		t.Errorf("/healthz while draining = %d", r.code)
	}
}

func TestReadyz(t *testing.T) {
	ok := func(context.Context) error { return nil }
	tests := []struct {
		name   string
		checks []Check
		code   int
		status string
		want   map[string]string
	}{
		{"no checks", nil, 200, "ready", map[string]string{}},
		{"all ok", []Check{{"broker", ok}, {"state", ok}}, 200, "ready", map[string]string{"broker": "ok", "state": "ok"}},
		{"one failing", []Check{
			{"broker", ok},
			{"state", func(context.Context) error { return errors.New("redis: connection refused") }},
		}, 503, "not ready", map[string]string{"broker": "ok", "state": "error: redis: connection refused"}},
		{"panicking", []Check{{"users-api", func(context.Context) error { panic("boom") }}},
			503, "not ready", map[string]string{"users-api": "error: panic: boom"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Options{Checks: tt.checks})
			r := do(t, http.MethodGet, "http://"+s.Addr()+"/readyz")
			if r.code != tt.code || r.json.Status != tt.status {
				t.Errorf("/readyz = %d %s, want %d %q", r.code, r.body, tt.code, tt.status)
			}
			if !maps.Equal(r.json.Checks, tt.want) {
				t.Errorf("checks = %v, want %v", r.json.Checks, tt.want)
			}
			if !strings.Contains(r.body, `"checks":{`) {
				t.Errorf("body lacks a checks object: %s", r.body)
			}
		})
	}
}

func TestReadyzChecksRunInParallel(t *testing.T) {
	// Each check waits for the other to have started: run one after the
	// other, both would time out.
	started := make(chan struct{}, 2)
	both := func(ctx context.Context) error {
		started <- struct{}{}
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			default:
			}
			if len(started) == 2 {
				return nil
			}
			time.Sleep(time.Millisecond)
		}
	}
	s := start(t, Options{Checks: []Check{{"a", both}, {"b", both}}, CheckTimeout: 5 * time.Second})
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/readyz"); r.code != 200 {
		t.Errorf("/readyz = %d %s", r.code, r.body)
	}
}

func TestReadyzTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var ctxSeen atomic.Bool
	s := start(t, Options{
		CheckTimeout: 50 * time.Millisecond,
		Checks: []Check{
			{"broker", func(context.Context) error { return nil }},
			// ignores its context entirely
			{"stuck", func(context.Context) error { <-release; return nil }},
			// honours its context
			{"slow", func(ctx context.Context) error {
				<-ctx.Done()
				ctxSeen.Store(true)
				return ctx.Err()
			}},
		},
	})
	r := do(t, http.MethodGet, "http://"+s.Addr()+"/readyz") // returns despite "stuck"
	if r.code != http.StatusServiceUnavailable || r.json.Status != "not ready" {
		t.Fatalf("/readyz = %d %s, want 503 not ready", r.code, r.body)
	}
	if r.json.Checks["broker"] != "ok" {
		t.Errorf("broker = %q", r.json.Checks["broker"])
	}
	if got := r.json.Checks["stuck"]; !strings.HasPrefix(got, "error: ") || !strings.Contains(got, "50ms") {
		t.Errorf("stuck = %q, want a timeout error", got)
	}
	if got := r.json.Checks["slow"]; !strings.HasPrefix(got, "error: ") {
		t.Errorf("slow = %q, want an error", got)
	}
}

func TestAddCheck(t *testing.T) {
	s := start(t, Options{})
	s.AddCheck(Check{"state", func(context.Context) error { return errors.New("no") }})
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/readyz"); r.code != 503 || r.json.Checks["state"] != "error: no" {
		t.Errorf("/readyz = %d %s", r.code, r.body)
	}
	s.AddCheck(Check{"state", func(context.Context) error { return nil }}) // replaces
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/readyz"); r.code != 200 || len(r.json.Checks) != 1 {
		t.Errorf("/readyz after replacing = %d %s", r.code, r.body)
	}
}

func TestDraining(t *testing.T) {
	var calls atomic.Int32
	s := start(t, Options{Checks: []Check{{"broker", func(context.Context) error { calls.Add(1); return nil }}}})
	url := "http://" + s.Addr() + "/readyz"
	if r := do(t, http.MethodGet, url); r.code != 200 {
		t.Fatalf("/readyz before draining = %d", r.code)
	}
	s.SetDraining()
	before := calls.Load()
	r := do(t, http.MethodGet, url)
	if r.code != http.StatusServiceUnavailable || r.json.Status != "draining" {
		t.Errorf("/readyz while draining = %d %s", r.code, r.body)
	}
	if calls.Load() != before {
		t.Error("checks ran while draining")
	}
}

func TestMetrics(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, "postern_bus_records_consumed_total 3\n")
	})
	s := start(t, Options{Metrics: metrics})
	r := do(t, http.MethodGet, "http://"+s.Addr()+"/metrics")
	if r.code != 200 || !strings.Contains(r.body, "postern_bus_records_consumed_total 3") {
		t.Errorf("/metrics = %d %q", r.code, r.body)
	}

	none := start(t, Options{})
	if r := do(t, http.MethodGet, "http://"+none.Addr()+"/metrics"); r.code != http.StatusNotFound {
		t.Errorf("/metrics without a handler = %d, want 404", r.code)
	}
}

func TestMethods(t *testing.T) {
	s := start(t, Options{Checks: []Check{{"broker", func(context.Context) error { return nil }}}})
	base := "http://" + s.Addr()
	for _, path := range []string{"/readyz", "/healthz"} {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			r := do(t, m, base+path)
			if r.code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s = %d, want 405", m, path, r.code)
			}
			if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "HEAD") {
				t.Errorf("%s %s: Allow = %q", m, path, allow)
			}
		}
	}
	r := do(t, http.MethodHead, base+"/readyz")
	if r.code != 200 || r.body != "" {
		t.Errorf("HEAD /readyz = %d %q", r.code, r.body)
	}
	s.SetDraining()
	if r := do(t, http.MethodHead, base+"/readyz"); r.code != 503 {
		t.Errorf("HEAD /readyz while draining = %d", r.code)
	}
	if r := do(t, http.MethodGet, base+"/nothing"); r.code != 404 {
		t.Errorf("GET /nothing = %d", r.code)
	}
}

func TestHandle(t *testing.T) {
	s := New(Config{Listen: "127.0.0.1:0"}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.Handle("GET /trace/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "trace "+r.PathValue("id"))
	}))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/trace/abc"); r.code != 200 || r.body != "trace abc" {
		t.Errorf("GET /trace/abc = %d %q", r.code, r.body)
	}
}

// TestRoutes: the routes of Options are served next to the built-in
// endpoints.
func TestRoutes(t *testing.T) {
	route := Route{Pattern: "GET /v1/trace", Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "trace "+r.URL.Query().Get("message_id"))
	})}
	if p := route.Path(); p != "/v1/trace" {
		t.Errorf("Path() = %q", p)
	}
	for pattern, want := range map[string]string{"/x": "/x", "POST /a/{b}": "/a/{b}", "GET example.com/y": "/y"} {
		if got := (Route{Pattern: pattern}).Path(); got != want {
			t.Errorf("Route{%q}.Path() = %q, want %q", pattern, got, want)
		}
	}
	s := start(t, Options{Routes: []Route{route}})
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/v1/trace?message_id=a@b"); r.code != 200 || r.body != "trace a@b" {
		t.Errorf("GET /v1/trace = %d %q", r.code, r.body)
	}
	if r := do(t, http.MethodPost, "http://"+s.Addr()+"/v1/trace"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST /v1/trace = %d, want 405", r.code)
	}
	if r := do(t, http.MethodGet, "http://"+s.Addr()+"/healthz"); r.code != 200 {
		t.Errorf("GET /healthz = %d next to a route", r.code)
	}
}

// TestSpans: endpoints added with Handle are traced through the global
// tracer provider; probes and scrapes are not.
func TestSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	s := start(t, Options{Metrics: http.NotFoundHandler()})
	s.Handle("GET /trace/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/trace/abc"} {
		do(t, http.MethodGet, "http://"+s.Addr()+path)
	}
	var names []string
	for _, sp := range rec.Ended() {
		names = append(names, sp.Name())
	}
	if !slices.Equal(names, []string{"GET /trace/{id}"}) {
		t.Errorf("spans = %q, want only GET /trace/{id}", names)
	}
}

func TestStartOnTakenPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := New(Config{Listen: ln.Addr().String()}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.Start(); err == nil {
		s.Shutdown(context.Background())
		t.Fatal("Start on a port in use succeeded")
	} else if !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("error %q does not name the address", err)
	}
	if s.Addr() != "" {
		t.Errorf("Addr after a failed Start = %q", s.Addr())
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown of a server that never started: %v", err)
	}
}

func TestStartTwice(t *testing.T) {
	s := start(t, Options{})
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestAddr(t *testing.T) {
	s := start(t, Options{})
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Errorf("Addr = %q, want 127.0.0.1:<port>", s.Addr())
	}
}

func TestShutdownStopsServing(t *testing.T) {
	s := New(Config{Listen: "127.0.0.1:0"}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Error("still accepting connections after Shutdown")
	}
}

func TestReadinessLoggedOnChange(t *testing.T) {
	var buf syncBuffer
	var fail atomic.Bool
	s := start(t, Options{
		Logger: slog.New(slog.NewTextHandler(&buf, nil)),
		Checks: []Check{{"state", func(context.Context) error {
			if fail.Load() {
				return errors.New("down")
			}
			return nil
		}}},
	})
	url := "http://" + s.Addr() + "/readyz"
	do(t, http.MethodGet, url)
	do(t, http.MethodGet, url)
	fail.Store(true)
	do(t, http.MethodGet, url)
	do(t, http.MethodGet, url)
	out := buf.String()
	if n := strings.Count(out, "msg=ready"); n != 1 {
		t.Errorf("logged ready %d times, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, `msg="not ready"`); n != 1 {
		t.Errorf("logged not ready %d times, want 1:\n%s", n, out)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
