// Package smtpout sends messages to one SMTP server (the ISP smarthost, or
// another site's relay) over a small pool of reused sessions, with
// emersion/go-smtp's client.
//
// A [Pool] holds at most Options.MaxSessions sessions at a time: Send waits
// for a free one, reuses an idle session after an RSET (dialling a new one
// when the idle one turns out to be broken), and returns the session to the
// pool when it is still good. Every outcome is a [Result] per recipient;
// Send itself never fails: a connection problem is a temporary result for
// every recipient.
package smtpout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Transport security of a session.
const (
	TLSStartTLS = "starttls" // plain connection upgraded with STARTTLS before anything else (required)
	TLSImplicit = "tls"      // TLS from the first byte (port 465)
	TLSNone     = "none"     // plaintext (a trusted LAN sink only; no AUTH)
)

// Options configure a pool of sessions to one server.
type Options struct {
	// Name names the peer in logs ("smarthost", "site branch").
	Name string
	// Addr is host:port of the server.
	Addr string
	// TLS is TLSStartTLS, TLSImplicit or TLSNone.
	TLS string
	// TLSConfig verifies the server and may carry a client certificate
	// (mutual TLS). ServerName defaults to Addr's host. Nil: system roots.
	TLSConfig *tls.Config
	// Username and Password authenticate with AUTH PLAIN (or LOGIN when
	// the server offers only that), only over TLS. Empty: no AUTH.
	Username, Password string
	// Helo is the name this side gives in EHLO.
	Helo string
	// DialTimeout bounds connecting, TLS and the greeting.
	DialTimeout time.Duration
	// CommandTimeout bounds each command's reply.
	CommandTimeout time.Duration
	// DataTimeout bounds sending the message and the reply after the final dot.
	DataTimeout time.Duration
	// MaxSessions is the most sessions open at once (concurrency limit).
	MaxSessions int
	// IdleTimeout is how long an unused session is kept open.
	IdleTimeout time.Duration
	// MaxMessagesPerSession closes a session after that many messages (0: no limit).
	MaxMessagesPerSession int
	// OnSession is called with +1 when a session opens and -1 when it
	// closes (a gauge of open sessions). May be nil.
	OnSession func(delta int64)
	// Logger receives debug records about sessions. Nil: slog.Default().
	Logger *slog.Logger
}

// Result is the outcome of one recipient.
type Result struct {
	Recipient string
	// Code is the server's reply code; 0 when there was no reply (the
	// connection failed).
	Code int
	// Status is the enhanced status code ("5.1.1"), from the reply or
	// derived from the failure.
	Status string
	// Text is the server's reply text, "" when there was none.
	Text string
	// Permanent says a failure will not go away by retrying (a 5xx reply
	// to MAIL, RCPT or DATA). Failures while setting up the session
	// (connection, TLS, greeting, AUTH) are temporary whatever the code:
	// they are about the path, not the message.
	Permanent bool
	// Err is the failure for logs (nil when delivered). Never show it to
	// users: Reason is the text for them.
	Err error
	// Remote names the server that answered (Options.Name).
	Remote string
}

// Delivered reports whether the server accepted the message for the recipient.
func (r Result) Delivered() bool { return r.Err == nil }

// Reason is a human-readable account of the result, for a status record or
// a bounce: the server's reply when there was one, else a generic cause.
func (r Result) Reason() string {
	if r.Code != 0 {
		s := fmt.Sprintf("%d", r.Code)
		if r.Status != "" {
			s += " " + r.Status
		}
		if t := oneLine(r.Text); t != "" {
			s += " " + t
		}
		return s
	}
	if r.Err == nil {
		return "delivered"
	}
	var ce *causeError
	if errors.As(r.Err, &ce) {
		return ce.public
	}
	return "the connection to " + r.Remote + " failed"
}

// Diagnostic is the DSN Diagnostic-Code of a reply ("smtp; 550 5.1.1 ..."),
// "" when there was no reply.
func (r Result) Diagnostic() string {
	if r.Code == 0 {
		return ""
	}
	return "smtp; " + r.Reason()
}

// causeError carries a public, generic description of a local failure
// next to the real error (for logs).
type causeError struct {
	public string
	err    error
}

func (e *causeError) Error() string { return e.public + ": " + e.err.Error() }
func (e *causeError) Unwrap() error { return e.err }

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// Pool is a bounded set of reusable sessions to one server. It is safe for
// concurrent use.
type Pool struct {
	opts Options
	log  *slog.Logger
	sem  chan struct{}

	mu     sync.Mutex
	idle   []*session
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

type session struct {
	c        *smtp.Client
	conn     net.Conn // the connection under c (TLS included), for deadlines
	lastUsed time.Time
	sent     int
}

// NewPool returns a pool; it dials nothing until Send.
func NewPool(opts Options) (*Pool, error) {
	if _, _, err := net.SplitHostPort(opts.Addr); err != nil {
		return nil, fmt.Errorf("smtpout %s: address %q: %w", opts.Name, opts.Addr, err)
	}
	switch opts.TLS {
	case TLSStartTLS, TLSImplicit:
	case TLSNone:
		if opts.Username != "" {
			return nil, fmt.Errorf("smtpout %s: AUTH without TLS would send the password in clear", opts.Name)
		}
	default:
		return nil, fmt.Errorf("smtpout %s: TLS mode %q is not %q, %q or %q", opts.Name, opts.TLS, TLSStartTLS, TLSImplicit, TLSNone)
	}
	if opts.MaxSessions < 1 {
		opts.MaxSessions = 1
	}
	if opts.Helo == "" {
		opts.Helo = "localhost"
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 30 * time.Second
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = 5 * time.Minute
	}
	if opts.DataTimeout <= 0 {
		opts.DataTimeout = 10 * time.Minute
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Pool{
		opts: opts,
		log:  opts.Logger.With(slog.String("peer", opts.Name), slog.String("addr", opts.Addr)),
		sem:  make(chan struct{}, opts.MaxSessions),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go p.janitor()
	return p, nil
}

// Name returns Options.Name.
func (p *Pool) Name() string { return p.opts.Name }

// janitor closes sessions idle for longer than IdleTimeout.
func (p *Pool) janitor() {
	defer close(p.done)
	t := time.NewTicker(max(p.opts.IdleTimeout/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		var stale []*session
		p.mu.Lock()
		keep := p.idle[:0]
		for _, s := range p.idle {
			if time.Since(s.lastUsed) > p.opts.IdleTimeout {
				stale = append(stale, s)
			} else {
				keep = append(keep, s)
			}
		}
		p.idle = keep
		p.mu.Unlock()
		for _, s := range stale {
			p.quit(s)
		}
	}
}

// Close closes the idle sessions and stops the pool; sessions in use are
// closed when their Send returns.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	for _, s := range idle {
		p.quit(s)
	}
	return nil
}

// Send delivers msg from the envelope sender from ("" is the null sender)
// to rcpts and returns one result per recipient, in order. A ctx
// cancelled mid-transaction aborts the session; the results are then
// temporary failures (and the server may or may not have the message).
func (p *Pool) Send(ctx context.Context, from string, rcpts []string, msg []byte) []Result {
	return p.SendHooked(ctx, from, rcpts, msg, Hooks{})
}

// Hooks let a caller act at the two moments of a mail transaction that
// decide whether a message can reach the server twice (RFC 1047): just
// before DATA, and just after the server's 250 to the final dot.
type Hooks struct {
	// BeforeData is called with the recipients the server accepted at
	// RCPT, just before the DATA command. An error aborts the transaction
	// (RSET) before anything of the message is sent: those recipients fail
	// temporarily (status 4.3.0) with the error as its cause.
	BeforeData func(rcpts []string) error
	// Accepted is called with the recipients the message was delivered to
	// as soon as the server answered 250 to the final dot, before the
	// session is reused or closed: the place to record that they are
	// sent, so that the time in which a crash forgets it is as short as it
	// can be.
	Accepted func(rcpts []string)
}

// SendHooked is Send, calling h's hooks during the transaction.
func (p *Pool) SendHooked(ctx context.Context, from string, rcpts []string, msg []byte, h Hooks) []Result {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return p.all(rcpts, Result{Err: &causeError{"delivery was interrupted", ctx.Err()}})
	}
	defer func() { <-p.sem }()

	fresh := false
	for {
		s, reused, err := p.get(ctx, fresh)
		if err != nil {
			p.log.DebugContext(ctx, "smtp session failed", slog.Any("error", err))
			return p.all(rcpts, setupFailure(err))
		}
		res, next := p.transact(ctx, s, reused, from, rcpts, msg, h)
		switch {
		case ctx.Err() != nil || next == drop || next == stale:
			p.discard(s)
		case next == keep:
			p.put(s)
		default:
			p.quit(s)
		}
		if next == stale {
			// The idle session was closed by the server before anything
			// was sent on it: send on a new one.
			fresh = true
			continue
		}
		return res
	}
}

func (p *Pool) all(rcpts []string, r Result) []Result {
	out := make([]Result, len(rcpts))
	for i, rc := range rcpts {
		out[i] = r
		out[i].Recipient = rc
		out[i].Remote = p.opts.Name
	}
	return out
}

// setupFailure is the result of a session that could not be set up.
func setupFailure(err error) Result {
	r := Result{Err: err, Status: "4.4.1"}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r.Code, r.Text = se.Code, se.Message
		r.Status = EnhancedStatus(se)
	}
	var ce *causeError
	if errors.As(err, &ce) && strings.Contains(ce.public, "TLS") {
		r.Status = "4.7.0"
	}
	return r // temporary whatever the code
}

// EnhancedStatus returns the reply's enhanced status code (RFC 3463), or
// class.0.0 when it has none.
func EnhancedStatus(se *smtp.SMTPError) string {
	e := se.EnhancedCode
	if e != smtp.EnhancedCodeNotSet && e != smtp.NoEnhancedCode && e[0] >= 2 && e[0] <= 5 {
		return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
	}
	if c := se.Code / 100; c == 4 || c == 5 {
		return fmt.Sprintf("%d.0.0", c)
	}
	return "4.0.0"
}

// get returns an idle session or, when there is none or fresh is set, a new one.
func (p *Pool) get(ctx context.Context, fresh bool) (s *session, reused bool, err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, &causeError{"the relay is shutting down", errors.New("smtpout: pool closed")}
	}
	for !fresh && len(p.idle) > 0 {
		s = p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if time.Since(s.lastUsed) <= p.opts.IdleTimeout {
			p.mu.Unlock()
			return s, true, nil
		}
		p.mu.Unlock()
		p.quit(s)
		p.mu.Lock()
	}
	p.mu.Unlock()
	s, err = p.dial(ctx)
	return s, false, err
}

func (p *Pool) put(s *session) {
	s.lastUsed = time.Now()
	p.mu.Lock()
	if !p.closed {
		p.idle = append(p.idle, s)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.quit(s)
}

// quit ends a good session politely.
func (p *Pool) quit(s *session) {
	_ = s.conn.SetDeadline(time.Now().Add(min(p.opts.CommandTimeout, 5*time.Second)))
	if err := s.c.Quit(); err != nil {
		_ = s.c.Close()
	}
	p.closed1()
}

// discard closes a session that cannot be reused.
func (p *Pool) discard(s *session) {
	_ = s.c.Close()
	p.closed1()
}

func (p *Pool) closed1() {
	if p.opts.OnSession != nil {
		p.opts.OnSession(-1)
	}
}

// dial opens and sets up a session: TCP, TLS, greeting, EHLO, AUTH.
func (p *Pool) dial(ctx context.Context) (*session, error) {
	o := p.opts
	dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(dctx, "tcp", o.Addr)
	if err != nil {
		return nil, &causeError{"could not connect to " + o.Name, err}
	}
	// Cancelling ctx (or the dial deadline) during setup closes the connection.
	stop := context.AfterFunc(dctx, func() { _ = raw.Close() })
	defer stop()

	host, _, _ := net.SplitHostPort(o.Addr)
	tcfg := o.TLSConfig
	if tcfg == nil {
		tcfg = &tls.Config{}
	}
	if tcfg.ServerName == "" {
		tcfg = tcfg.Clone()
		tcfg.ServerName = host
	}
	var conn net.Conn = raw
	switch o.TLS {
	case TLSImplicit:
		tc := tls.Client(raw, tcfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = raw.Close()
			return nil, &causeError{"TLS with " + o.Name + " failed", err}
		}
		conn = tc
	case TLSStartTLS:
		tc, err := startTLS(dctx, raw, o.Helo, tcfg, o.CommandTimeout)
		if err != nil {
			_ = raw.Close()
			return nil, err
		}
		conn = tc
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = o.CommandTimeout
	c.SubmissionTimeout = o.DataTimeout
	if err := c.Hello(o.Helo); err != nil {
		_ = c.Close()
		return nil, &causeError{o.Name + " refused the session", err}
	}
	if o.Username != "" {
		var a sasl.Client
		switch {
		case c.SupportsAuth("PLAIN"):
			a = sasl.NewPlainClient("", o.Username, o.Password)
		case c.SupportsAuth("LOGIN"):
			a = sasl.NewLoginClient(o.Username, o.Password)
		default:
			_ = c.Close()
			return nil, &causeError{"authentication at " + o.Name + " failed", errors.New("the server offers neither AUTH PLAIN nor AUTH LOGIN")}
		}
		if err := c.Auth(a); err != nil {
			_ = c.Close()
			return nil, &causeError{"authentication at " + o.Name + " failed", err}
		}
	}
	if ctx.Err() != nil {
		_ = c.Close()
		return nil, &causeError{"delivery was interrupted", ctx.Err()}
	}
	if o.OnSession != nil {
		o.OnSession(1)
	}
	p.log.DebugContext(ctx, "smtp session opened")
	return &session{c: c, conn: conn}, nil
}

// startTLS reads the greeting, says EHLO with our name, and upgrades the
// connection with STARTTLS; go-smtp's own STARTTLS helper would greet as
// "localhost". The returned connection replays a greeting so that a
// go-smtp client can start on it (it sends EHLO again, as RFC 3207 wants).
func startTLS(ctx context.Context, raw net.Conn, helo string, cfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	_ = raw.SetDeadline(time.Now().Add(timeout))
	tp := textproto.NewConn(raw)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, &causeError{"the server refused the session", protoErr(err)}
	}
	_, msg, err := cmd(tp, 250, "EHLO %s", helo)
	if err != nil {
		return nil, &causeError{"the server refused EHLO", protoErr(err)}
	}
	offered := false
	for _, line := range strings.Split(msg, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		return nil, &causeError{"TLS with the server failed", errors.New("the server does not offer STARTTLS")}
	}
	if _, _, err := cmd(tp, 220, "STARTTLS"); err != nil {
		return nil, &causeError{"TLS with the server failed", protoErr(err)}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, &causeError{"TLS with the server failed", err}
	}
	_ = raw.SetDeadline(time.Time{})
	return &greeted{Conn: tc, r: io.MultiReader(strings.NewReader("220 TLS started\r\n"), tc)}, nil
}

func cmd(tp *textproto.Conn, code int, format string, args ...any) (int, string, error) {
	id, err := tp.Cmd(format, args...)
	if err != nil {
		return 0, "", err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	return tp.ReadResponse(code)
}

func protoErr(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		return toSMTPError(te.Code, te.Msg)
	}
	return err
}

// toSMTPError parses an enhanced code at the start of msg, as go-smtp does.
func toSMTPError(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return se
	}
	var e smtp.EnhancedCode
	if n, _ := fmt.Sscanf(first, "%d.%d.%d", &e[0], &e[1], &e[2]); n == 3 {
		se.EnhancedCode, se.Message = e, rest
	}
	return se
}

// greeted is a TLS connection whose first bytes read are a made-up 220
// greeting, for a client that expects one.
type greeted struct {
	net.Conn
	r io.Reader
}

func (g *greeted) Read(b []byte) (int, error) { return g.r.Read(b) }

// What to do with a session after a transaction.
type sessionState int

const (
	keep  sessionState = iota // reuse it
	quit                      // healthy but done (message limit): QUIT
	drop                      // broken: close
	stale                     // a reused session found dead before anything was sent: close, and send on a new one
)

// transact runs one mail transaction on s and says what to do with s next.
func (p *Pool) transact(ctx context.Context, s *session, reused bool, from string, rcpts []string, msg []byte, h Hooks) ([]Result, sessionState) {
	c := s.c
	stop := context.AfterFunc(ctx, func() { _ = s.conn.Close() })
	defer stop()

	results := p.all(rcpts, Result{})
	failAll := func(idx []int, r Result) {
		for _, i := range idx {
			rc := results[i].Recipient
			results[i] = r
			results[i].Recipient, results[i].Remote = rc, p.opts.Name
		}
	}
	every := make([]int, len(rcpts))
	for i := range every {
		every[i] = i
	}
	interrupted := func(err error) Result {
		if ctx.Err() != nil {
			return Result{Err: &causeError{"delivery was interrupted", ctx.Err()}, Status: "4.4.2"}
		}
		return Result{Err: &causeError{"the connection to " + p.opts.Name + " was lost", err}, Status: "4.4.2"}
	}
	// replyFailure turns a command's error into a result, and says whether
	// the session is still usable.
	replyFailure := func(err error) (Result, bool) {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return interrupted(err), false
		}
		r := Result{Code: se.Code, Text: se.Message, Status: EnhancedStatus(se), Err: err, Permanent: se.Code >= 500 && se.Code < 600}
		return r, se.Code != 421
	}

	if reused {
		if err := c.Reset(); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code == 421 {
				return nil, stale
			}
			failAll(every, interrupted(err))
			return results, drop
		}
	}

	opts := &smtp.MailOptions{Size: int64(len(msg))}
	if !ascii(from) || !allASCII(rcpts) {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			failAll(every, Result{Status: "5.6.7", Permanent: true,
				Err: &causeError{"an address is not ASCII and " + p.opts.Name + " does not support SMTPUTF8", errors.New("no SMTPUTF8")}})
			return results, keep
		}
		opts.UTF8 = true
	}
	if limit, ok := c.MaxMessageSize(); ok && limit > 0 && len(msg) > limit {
		failAll(every, Result{Status: "5.3.4", Permanent: true,
			Err: &causeError{fmt.Sprintf("the message (%d bytes) is larger than %s accepts (%d bytes)", len(msg), p.opts.Name, limit), errors.New("message too large")}})
		return results, keep
	}

	if err := c.Mail(from, opts); err != nil {
		var se *smtp.SMTPError
		if reused && !errors.As(err, &se) {
			return nil, stale
		}
		r, ok := replyFailure(err)
		failAll(every, r)
		return results, p.after(ok, c)
	}
	var accepted []int
	for i, rc := range rcpts {
		if err := c.Rcpt(rc, nil); err != nil {
			r, ok := replyFailure(err)
			if !ok {
				failAll(every[i:], r)
				failAll(accepted, r)
				return results, drop
			}
			failAll([]int{i}, r)
			continue
		}
		accepted = append(accepted, i)
	}
	if len(accepted) == 0 {
		return results, p.after(true, c)
	}
	if h.BeforeData != nil {
		names := make([]string, len(accepted))
		for k, i := range accepted {
			names[k] = rcpts[i]
		}
		if err := h.BeforeData(names); err != nil {
			failAll(accepted, Result{Status: "4.3.0", Err: &causeError{"the relay could not record the attempt", err}})
			return results, p.after(true, c)
		}
	}
	w, err := c.Data()
	if err != nil {
		r, ok := replyFailure(err)
		failAll(accepted, r)
		return results, p.after(ok, c)
	}
	_ = s.conn.SetDeadline(time.Now().Add(p.opts.DataTimeout))
	_, werr := w.Write(msg)
	_ = s.conn.SetDeadline(time.Time{})
	if werr != nil {
		failAll(accepted, interrupted(werr))
		return results, drop
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		r, ok := replyFailure(err)
		failAll(accepted, r)
		return results, p.after(ok, c)
	}
	for _, i := range accepted {
		results[i] = Result{Recipient: rcpts[i], Code: 250, Status: "2.0.0", Text: resp.StatusText, Remote: p.opts.Name}
	}
	if h.Accepted != nil {
		names := make([]string, len(accepted))
		for k, i := range accepted {
			names[k] = rcpts[i]
		}
		h.Accepted(names)
	}
	s.sent++
	if p.opts.MaxMessagesPerSession > 0 && s.sent >= p.opts.MaxMessagesPerSession {
		return results, quit
	}
	return results, keep
}

// after a refused command: a session that is still usable (ok) is reset
// and kept if the reset works.
func (p *Pool) after(ok bool, c *smtp.Client) sessionState {
	if ok && c.Reset() == nil {
		return keep
	}
	return drop
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !ascii(s) {
			return false
		}
	}
	return true
}
