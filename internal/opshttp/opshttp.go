// Package opshttp is the side HTTP server every Postern service runs for its
// operators and orchestrator: liveness (/healthz), readiness (/readyz, which
// runs the service's dependency checks), Prometheus metrics (/metrics), and
// whatever else a service adds with Handle.
//
// It listens on its own address, apart from any public API, so probes and
// scrapes keep working when the service's own port is saturated, and the
// readiness detail (which may name internal errors) is not exposed publicly.
package opshttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/postern/postern/internal/config"
)

// DefaultCheckTimeout bounds the readiness checks of one /readyz request
// when Options.CheckTimeout is zero.
const DefaultCheckTimeout = 2 * time.Second

// Config is the ops-server section of a service's configuration.
type Config struct {
	Listen string `yaml:"listen" doc:"address of the /healthz, /readyz and /metrics server"`
}

// DefaultConfig listens on port 9464 of every interface, the port
// OpenTelemetry's Prometheus exporters use by default.
func DefaultConfig() Config { return Config{Listen: ":9464"} }

// Validate checks that listen is a host:port (the host may be empty for
// every interface, the port 0 for any free port); the key is "listen".
func (c Config) Validate() error {
	if c.Listen == "" {
		return config.Errorf("listen", "is required (host:port, e.g. :9464 or 127.0.0.1:9464)")
	}
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return config.Errorf("listen", "must be host:port, not %q", c.Listen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return config.Errorf("listen", "port must be a number from 0 to 65535, not %q", port)
	}
	return nil
}

// Check is one readiness check: a dependency the service cannot work without
// ("broker", "state", "users-api"). Func must return promptly when ctx is
// done; one that does not is reported as timed out all the same.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// Options are what a service hands its ops server.
type Options struct {
	Service      string        // reported by /healthz and /readyz
	Metrics      http.Handler  // served at /metrics; nil: 404
	Checks       []Check       // run by /readyz
	Logger       *slog.Logger  // nil: slog.Default()
	CheckTimeout time.Duration // bound on all checks of one /readyz; zero: DefaultCheckTimeout
	Routes       []Route       // endpoints of the service's own, registered with Handle
}

// Route is an endpoint a service adds to its ops server (a message trace
// lookup): Pattern in http.ServeMux syntax ("GET /v1/trace").
type Route struct {
	Pattern string
	Handler http.Handler
}

// Path is the path of the route's pattern, without method or host
// ("/v1/trace" for "GET /v1/trace").
func (r Route) Path() string {
	p := r.Pattern
	if i := strings.IndexAny(p, " \t"); i >= 0 {
		p = strings.TrimLeft(p[i:], " \t")
	}
	if i := strings.IndexByte(p, '/'); i > 0 {
		p = p[i:] // a host
	}
	return p
}

// Server is the ops HTTP server. Its methods are safe for concurrent use.
type Server struct {
	listen  string
	service string
	metrics http.Handler
	log     *slog.Logger
	timeout time.Duration

	mux  *http.ServeMux
	http *http.Server

	mu       sync.Mutex
	checks   []Check
	ln       net.Listener
	started  bool
	draining atomic.Bool
	ready    atomic.Int32 // last /readyz outcome: readyUnknown, readyYes, readyNo
}

const (
	readyUnknown int32 = iota
	readyYes
	readyNo
)

// Paths of the built-in endpoints.
const (
	HealthPath  = "/healthz"
	ReadyPath   = "/readyz"
	MetricsPath = "/metrics"
)

// New returns a server for cfg (which should have been validated); it does
// not listen until Start.
func New(cfg Config, opts Options) *Server {
	s := &Server{
		listen:  cfg.Listen,
		service: opts.Service,
		metrics: opts.Metrics,
		log:     opts.Logger,
		timeout: opts.CheckTimeout,
		mux:     http.NewServeMux(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "opshttp")
	if s.timeout <= 0 {
		s.timeout = DefaultCheckTimeout
	}
	for _, c := range opts.Checks {
		s.AddCheck(c)
	}

	s.mux.HandleFunc("GET "+HealthPath, s.healthz)
	s.mux.HandleFunc("GET "+ReadyPath, s.readyz)
	if s.metrics != nil {
		s.mux.Handle("GET "+MetricsPath, s.metrics)
	} else {
		s.mux.Handle("GET "+MetricsPath, http.NotFoundHandler())
	}
	for _, r := range opts.Routes {
		s.Handle(r.Pattern, r.Handler)
	}

	// Spans and http.server.* metrics for the endpoints services add (a
	// message trace lookup), through the global providers; probes and
	// scrapes, every few seconds, would only be noise.
	handler := otelhttp.NewHandler(s.mux, "ops",
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case HealthPath, ReadyPath, MetricsPath:
				return false
			}
			return true
		}),
		otelhttp.WithServerName(s.service),
	)

	s.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      max(30*time.Second, s.timeout+10*time.Second),
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s
}

// Handle registers h for pattern (http.ServeMux syntax, e.g.
// "GET /trace/{id}"). Call it before Start.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AddCheck adds a readiness check; a check with the same name as an earlier
// one replaces it.
func (s *Server) AddCheck(c Check) {
	if c.Name == "" || c.Func == nil {
		panic("opshttp: AddCheck needs a name and a func")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.checks {
		if s.checks[i].Name == c.Name {
			s.checks[i] = c
			return
		}
	}
	s.checks = append(s.checks, c)
}

// Start binds the listen address, so that Addr is known and a port in use
// is an error at once, then serves in the background until Shutdown.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("opshttp: already started")
	}
	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		return fmt.Errorf("opshttp: listen %s: %w", s.listen, err)
	}
	ln = &onceCloseListener{Listener: ln}
	s.ln, s.started = ln, true
	s.log.Info("ops server listening", "addr", ln.Addr().String())
	go func() {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("ops server panicked", "panic", fmt.Sprint(p))
			}
		}()
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("ops server stopped", "error", err)
		}
	}()
	return nil
}

// Addr returns the bound address (e.g. 127.0.0.1:43121), or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// SetDraining makes /readyz answer 503 {"status":"draining"} from now on, so
// that load balancers and orchestrators stop sending work while the service
// drains; /healthz still answers ok.
func (s *Server) SetDraining() {
	if !s.draining.Swap(true) {
		s.log.Info("draining: /readyz now answers 503")
	}
}

// Shutdown sets draining, stops accepting connections and waits, as long as
// ctx allows, for requests in progress. The ops server should be the last
// thing a service shuts down, so probes see it draining to the end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.SetDraining()
	s.mu.Lock()
	started, ln := s.started, s.ln
	s.mu.Unlock()
	if !started {
		return nil
	}
	// Close the listener here too: when Shutdown comes before the serving
	// goroutine reached Serve, http.Server does not know the listener yet
	// and new connections would still be accepted until it does.
	_ = ln.Close()
	if err := s.http.Shutdown(ctx); err != nil {
		return fmt.Errorf("opshttp: shutdown: %w", err)
	}
	return nil
}

type healthBody struct {
	Status  string `json:"status"`
	Service string `json:"service,omitempty"`
}

type readyBody struct {
	Status  string            `json:"status"`
	Service string            `json:"service,omitempty"`
	Checks  map[string]string `json:"checks"` // {} with no checks
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, healthBody{Status: "ok", Service: s.service})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, healthBody{Status: "draining", Service: s.service})
		return
	}
	results, ok := s.runChecks(r.Context())
	body := readyBody{Status: "ready", Service: s.service, Checks: results}
	code := http.StatusOK
	if !ok {
		body.Status, code = "not ready", http.StatusServiceUnavailable
	}
	s.noteReadiness(ok, results)
	writeJSON(w, code, body)
}

// noteReadiness logs when readiness changes, not on every probe.
func (s *Server) noteReadiness(ok bool, results map[string]string) {
	now := readyNo
	if ok {
		now = readyYes
	}
	prev := s.ready.Swap(now)
	switch {
	case prev == now:
	case ok:
		s.log.Info("ready")
	default:
		failed := make(map[string]string)
		for name, res := range results {
			if res != "ok" {
				failed[name] = res
			}
		}
		s.log.Warn("not ready", "checks", failed)
	}
}

type checkResult struct {
	name string
	err  error
}

// runChecks runs every check in parallel and returns each one's result, "ok"
// or "error: ...", and whether all passed. It returns by the timeout even if
// a check ignores its context; such a check is reported as timed out and
// finishes in the background.
func (s *Server) runChecks(ctx context.Context) (map[string]string, bool) {
	s.mu.Lock()
	checks := append([]Check(nil), s.checks...)
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	done := make(chan checkResult, len(checks)) // buffered: late checks never block
	for _, c := range checks {
		go func() {
			defer func() {
				if p := recover(); p != nil {
					done <- checkResult{c.Name, fmt.Errorf("panic: %v", p)}
				}
			}()
			done <- checkResult{c.Name, c.Func(ctx)}
		}()
	}

	results := make(map[string]string, len(checks))
	ok := true
	for range checks {
		select {
		case res := <-done:
			if res.err != nil {
				results[res.name], ok = "error: "+res.err.Error(), false
			} else {
				results[res.name] = "ok"
			}
		case <-ctx.Done():
			for drained := false; !drained; { // take answers that made it in time
				select {
				case res := <-done:
					results[res.name] = "ok"
					if res.err != nil {
						results[res.name] = "error: " + res.err.Error()
					}
				default:
					drained = true
				}
			}
			for _, c := range checks {
				if _, seen := results[c.Name]; !seen {
					results[c.Name] = fmt.Sprintf("error: no answer within %v", s.timeout)
				}
			}
			return results, false
		}
	}
	return results, ok
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(data, '\n'))
}

// onceCloseListener closes its listener once; later Close calls return nil,
// so that Shutdown and http.Server may both close it.
type onceCloseListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *onceCloseListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}
