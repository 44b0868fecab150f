// Package smtpin is the relay's SMTP intake: message submission for the
// site's users (STARTTLS then AUTH, and implicit TLS), inbound SMTP for the
// organisation's domains, and mail from other sites' relays authenticated by
// client certificate. Every message it answers 250 is in mail.inbound,
// acknowledged by every in-sync replica (acks=all), with a Received header
// field added in front and otherwise byte for byte as the client sent it.
//
// # Policy
//
// Submission (587, 465): AUTH PLAIN or LOGIN, only over TLS (not even
// advertised before), with the user name or primary address and the
// directory password; disabled users and users without a password cannot
// log in. MAIL is refused before AUTH (530 5.7.0). The sender must be one of
// the user's addresses (a +tag is allowed) or a shared mailbox they staff
// (else 553 5.7.1); the null sender is refused. A recipient outside the
// organisation's domains is refused at RCPT (550 5.7.1) for a user without
// internet_send.
//
// Inbound (25): recipients only in the organisation's domains (any site's),
// else 550 5.7.1 relay denied — unless the client is in a trusted network.
// A sender address in the organisation's domains is refused (550 5.7.1)
// unless the client is trusted or another site.
//
// Inter-site: a client certificate, verified against intersite.ca_file,
// whose DNS name (or common name) is a site in the directory; the session's
// messages carry Source.AuthUser "site:<name>". Recipients must be in the
// organisation's domains.
//
// Everywhere, a recipient in the organisation's domains must exist (a
// user's address, user+tag@ of one, a group's or a shared mailbox's
// address, else 550 5.1.1), must not be a disabled user (550 5.2.1), and,
// for mail from outside (inbound, sender not in the organisation's domains
// or null), must not be a user without internet_receive (550 5.7.1) — the
// router's rules, applied early so that the client gets the refusal and no
// bounce is needed.
//
// # Limits
//
// SIZE is advertised and enforced (552 5.3.4), recipients per message (452
// 4.5.3), connections per listener (421 4.7.0), messages per client address
// and minute and per user and hour (451 4.7.1), AUTH failures per user and
// per client address (454 4.7.0 while locked, even with the right password;
// a successful login clears the user's count). Counters live in the site
// state's RateLimits, keys "smtp-rate:ip:<ip>", "smtp-rate:user:<user id>",
// "smtp-auth:user:<user id or login name>", "smtp-auth:ip:<ip>". Every read
// waits at most timeouts.command, and a connection lasts at most
// timeouts.session. Replies never carry internal error text: that is logged
// and the client gets 451 4.3.0.
package smtpin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// receivedHeadroom is room kept in a bus record for the Received header
// field the relay adds.
const receivedHeadroom = 2048

// Deps are the server's collaborators.
type Deps struct {
	// Site is the name of this site (Inbound.Site of the published records).
	Site string
	// Bus publishes accepted messages to mail.inbound.
	Bus *msgbus.Bus
	// State holds the directory replica and the rate-limit counters.
	State sitestate.Store
	// Logger (nil: slog.Default()).
	Logger *slog.Logger
	// Meter (nil: the OpenTelemetry global).
	Meter metric.MeterProvider
	// Tracer (nil: the OpenTelemetry global).
	Tracer trace.TracerProvider
	// Now is the clock of Received dates and certificate checks (nil:
	// time.Now). Rate-limit windows use the site state's clock.
	Now func() time.Time
}

// Server is the relay's SMTP servers: one go-smtp server per configured
// listener.
type Server struct {
	cfg      Config
	deps     Deps
	log      *slog.Logger
	dir      replica.Reader
	limits   sitestate.RateLimits
	now      func() time.Time
	hostname string
	maxBytes int64
	trusted  []netip.Prefix
	cert     tls.Certificate
	caPool   *x509.CertPool
	inst     *instruments
	tracer   trace.Tracer
	// verifySem bounds concurrent password hashing (argon2id takes 64 MiB
	// each).
	verifySem chan struct{}
	// authTurns makes the AUTH attempts for one user take turns (auth.go).
	authTurns keyedTurns
	dummyOnce sync.Once
	dummyHash string

	// baseCtx outlives a drain (messages being published finish) and is
	// cancelled by Close.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	draining   atomic.Bool

	mu       sync.Mutex
	started  bool
	closed   bool
	servers  map[string]*smtp.Server
	addrs    map[string]string
	conns    map[*sessionConn]struct{}
	serveErr chan error
	serving  sync.WaitGroup
}

// New checks cfg and builds the servers: it loads (or generates) the
// certificate and the inter-site CA, but does not listen yet (Start, Run).
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("smtpin: invalid configuration: %w", err)
	}
	if deps.Bus == nil || deps.State == nil {
		return nil, errors.New("smtpin: a bus and a site state are required")
	}
	if deps.Site == "" {
		return nil, errors.New("smtpin: the site name is required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.Default()
	}
	if deps.Meter == nil {
		deps.Meter = otel.GetMeterProvider()
	}
	if deps.Tracer == nil {
		deps.Tracer = otel.GetTracerProvider()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Server{
		cfg:       cfg,
		deps:      deps,
		log:       deps.Logger.With("component", "smtpin"),
		dir:       replica.Reader{D: deps.State.Directory()},
		limits:    deps.State.RateLimits(),
		now:       deps.Now,
		hostname:  cfg.Hostname,
		maxBytes:  cfg.MaxMessageBytes,
		tracer:    deps.Tracer.Tracer(instrumentationName),
		verifySem: make(chan struct{}, max(2, runtime.GOMAXPROCS(0))),
		servers:   map[string]*smtp.Server{},
		addrs:     map[string]string{},
		conns:     map[*sessionConn]struct{}{},
	}
	if s.hostname == "" {
		h, err := os.Hostname()
		if err != nil || !config.IsHostname(h) {
			h = "localhost"
		}
		s.hostname = h
	}
	if busMax := int64(deps.Bus.Config().MaxRecordBytes) - receivedHeadroom; s.maxBytes > busMax {
		s.log.Info("max_message_bytes capped to fit the bus's max_record_bytes", "max_message_bytes", cfg.MaxMessageBytes, "effective", busMax)
		s.maxBytes = busMax
	}
	for _, n := range cfg.TrustedNetworks {
		p, _ := parsePrefix(n) // validated
		s.trusted = append(s.trusted, p)
	}
	cert, err := serverCertificate(cfg.TLS, s.hostname, deps.Now())
	if err != nil {
		return nil, err
	}
	s.cert = cert
	if cfg.Intersite.CAFile != "" {
		if s.caPool, err = loadCAPool(cfg.Intersite.CAFile); err != nil {
			return nil, err
		}
	}
	if s.inst, err = newInstruments(deps.Meter); err != nil {
		return nil, fmt.Errorf("smtpin: metrics: %w", err)
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	return s, nil
}

// listenerSpec is one listener to start.
type listenerSpec struct {
	name     string
	kind     kind
	cfg      ListenerConfig
	implicit bool
	tls      *tls.Config
}

func (s *Server) specs() []listenerSpec {
	base := &tls.Config{Certificates: []tls.Certificate{s.cert}, MinVersion: tls.VersionTLS12}
	inbound := base.Clone()
	if s.caPool != nil {
		// Another site may present its certificate on port 25; anyone
		// else's certificate is ignored (checked in NewSession), so that
		// Internet servers with client certificates are not refused.
		inbound.ClientAuth = tls.RequestClientCert
	}
	intersite := base.Clone()
	intersite.ClientAuth = tls.RequireAndVerifyClientCert
	intersite.ClientCAs = s.caPool
	return []listenerSpec{
		{ListenerSubmission, kindSubmission, s.cfg.Submission, false, base},
		{ListenerSubmissions, kindSubmission, s.cfg.Submissions, true, base},
		{ListenerInbound, kindInbound, s.cfg.Inbound, false, inbound},
		{ListenerIntersite, kindIntersite, s.cfg.Intersite.ListenerConfig, s.cfg.Intersite.TLSMode == TLSModeImplicit, intersite},
	}
}

// Start listens on every configured address and serves in the background
// until Shutdown or Close. ctx bounds the start only. When a listener
// cannot be bound, the ones already bound are closed and the error names
// the listener.
func (s *Server) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return errors.New("smtpin: already started")
	}
	s.started = true
	type bound struct {
		spec listenerSpec
		ln   net.Listener
	}
	var ls []bound
	for _, sp := range s.specs() {
		if sp.cfg.Listen == "" {
			continue
		}
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", sp.cfg.Listen)
		if err != nil {
			for _, b := range ls {
				b.ln.Close()
			}
			return fmt.Errorf("smtpin: %s listener on %s: %w", sp.name, sp.cfg.Listen, err)
		}
		ls = append(ls, bound{sp, ln})
	}
	s.serveErr = make(chan error, len(ls))
	for _, b := range ls {
		sp := b.spec
		ss := smtp.NewServer(backend{s: s, listener: sp.name, kind: sp.kind})
		ss.Domain = s.hostname
		ss.MaxMessageBytes = s.maxBytes
		ss.MaxRecipients = s.cfg.MaxRecipients
		ss.TLSConfig = sp.tls
		ss.ErrorLog = errorLog{s.log.With("listener", sp.name)}
		// ReadTimeout and WriteTimeout stay 0: sessionConn applies the
		// time limits to every read and write, DATA included.
		var ln net.Listener = &limitListener{Listener: b.ln, srv: s, name: sp.name, sem: make(chan struct{}, sp.cfg.MaxConnections), plain: !sp.implicit}
		if sp.implicit {
			ln = tls.NewListener(ln, sp.tls)
		}
		s.servers[sp.name] = ss
		s.addrs[sp.name] = b.ln.Addr().String()
		s.log.Info("smtp listening", "listener", sp.name, "addr", b.ln.Addr().String(), "implicit_tls", sp.implicit)
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			if err := ss.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				s.serveErr <- fmt.Errorf("smtpin: %s listener: %w", sp.name, err)
			}
		}()
	}
	return nil
}

// Run starts the servers (unless Start already did), serves until ctx is
// cancelled, then drains them (Shutdown, at most timeouts.drain). It
// returns an error when a listener fails.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		if err := s.Start(ctx); err != nil {
			return err
		}
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-s.serveErr:
		s.log.Error("smtp listener failed", "error", runErr)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeouts.Drain)
	defer cancel()
	if err := s.Shutdown(dctx); err != nil && runErr == nil && ctx.Err() == nil {
		runErr = err
	}
	return runErr
}

// Addrs returns the address each started listener is bound to, by
// listener name (ListenerSubmission, ...).
func (s *Server) Addrs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.addrs))
	for k, v := range s.addrs {
		out[k] = v
	}
	return out
}

// Shutdown stops accepting connections, closes idle ones (421), lets the
// ones receiving or publishing a message finish until ctx ends, then closes
// what remains. Messages cut off were not answered 250: their clients try
// again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	servers := make([]*smtp.Server, 0, len(s.servers))
	for _, ss := range s.servers {
		servers = append(servers, ss)
	}
	s.mu.Unlock()

	s.draining.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, ss := range servers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = ss.Shutdown(ctx) // closes the listeners, waits for the connections
			}()
		}
		wg.Wait()
	}()
	s.interruptIdle()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("smtpin: drain: %w", ctx.Err())
		if !errors.Is(ctx.Err(), context.Canceled) {
			s.log.Warn("smtp drain deadline passed; closing the remaining connections")
		}
	}
	s.closeAll()
	<-done
	s.serving.Wait()
	s.cancelBase()
	return err
}

// Close closes every listener and connection at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (s *Server) track(c *sessionConn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	if s.draining.Load() {
		c.interrupt()
	}
}

func (s *Server) untrack(c *sessionConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// interruptIdle wakes every connection waiting for a command, so that it
// answers 421 and closes.
func (s *Server) interruptIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.interrupt()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	conns := make([]*sessionConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// isTrusted reports whether ip is in a trusted network.
func (s *Server) isTrusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// errorLog passes go-smtp's own messages (failed TLS handshakes, broken
// connections, recovered panics) to slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l errorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l errorLog) print(msg string) {
	if strings.Contains(msg, "panic serving") {
		first, _, _ := strings.Cut(msg, "\n")
		if !strings.Contains(msg, "internal/smtpin.") {
			// go-smtp keeps executing commands the client pipelined
			// after the connection was closed (QUIT, too many errors)
			// and trips over its nil session; it recovers and the
			// connection is gone already. Not our bug, and a client
			// can cause it at will: no stack trace, no error.
			l.log.Debug("smtp server: command after the connection was closed", "detail", first)
			return
		}
		l.log.Error("smtp server: recovered panic in a session", "panic", first, "stack", msg)
		return
	}
	l.log.Debug("smtp server: " + msg)
}
