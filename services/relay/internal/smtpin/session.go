package smtpin

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
)

// kind is what a listener is for.
type kind int

const (
	kindSubmission kind = iota
	kindInbound
	kindIntersite
)

// backend makes the sessions of one listener.
type backend struct {
	s        *Server
	listener string
	kind     kind
}

// NewSession is called at EHLO/HELO (again after STARTTLS).
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	sc := connOf(c.Conn())
	sess := &session{srv: s, listener: b.listener, kind: b.kind, conn: c, sc: sc}
	if sc != nil {
		sess.id = sc.id
	}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		sess.remote = ap
		sess.ip = ap.Addr().Unmap()
	}
	sess.trusted = sess.ip.IsValid() && s.isTrusted(sess.ip)
	state, isTLS := c.TLSConnectionState()
	sess.tls = isTLS
	sess.log = s.log.With("listener", b.listener, "session", sess.id, "remote", sess.remote.String())
	if isTLS && s.caPool != nil && b.kind != kindSubmission {
		site, err := s.siteOfCert(s.baseCtx, state)
		if err != nil {
			sess.log.Error("smtp: site of client certificate", "error", err)
			return nil, errTemporary
		}
		sess.site = site
	}
	if b.kind == kindIntersite && isTLS && sess.site == "" {
		s.inst.rejected(b.listener, "intersite_cert")
		sess.log.Warn("smtp: client certificate names no site of the organisation")
		return nil, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Your certificate does not name a site of this organisation"}
	}
	return sess, nil
}

// connOf finds the sessionConn under a (possibly TLS) connection.
func connOf(c net.Conn) *sessionConn {
	for range 4 {
		switch v := c.(type) {
		case *sessionConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// session is one SMTP session (from EHLO to QUIT, or to STARTTLS).
type session struct {
	srv      *Server
	listener string
	kind     kind
	conn     *smtp.Conn
	sc       *sessionConn
	id       string
	remote   netip.AddrPort
	ip       netip.Addr
	tls      bool
	trusted  bool
	site     string        // the other site, authenticated by its certificate
	user     *replica.User // the user authenticated with AUTH
	log      *slog.Logger

	// The transaction.
	from    string
	hasFrom bool
	outside bool // mail from outside the organisation (the router's notion)
	rcpts   []string
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// Replies. Texts are fixed: nothing internal reaches a client.
var (
	errTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary local problem, please try again later"}
	errNeedTLS   = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errNeedAuth  = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errTooLarge  = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big for this server"}
	errRateLimit = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Too many messages, slow down and try again later"}
)

func reply(code int, class, subject, detail int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: msg}
}

// reject counts a refusal and returns it.
func (s *session) reject(reason string, err *smtp.SMTPError) error {
	s.srv.inst.rejected(s.listener, reason)
	s.log.Info("smtp refused", "reason", reason, "code", err.Code, "reply", err.Message)
	return err
}

// internal logs err and returns the generic temporary failure.
func (s *session) internal(op string, err error) error {
	s.srv.inst.rejected(s.listener, "internal")
	s.log.Error("smtp: "+op, "error", err)
	return errTemporary
}

func (s *session) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.srv.baseCtx, s.srv.cfg.Timeouts.Command)
}

// Reset discards the transaction.
func (s *session) Reset() {
	s.from, s.hasFrom, s.outside, s.rcpts = "", false, false, nil
}

// Logout ends the session.
func (s *session) Logout() error { return nil }

// needsTLS reports whether the listener requires TLS before MAIL.
func (s *session) needsTLS() bool { return s.kind != kindInbound }

// Mail checks the envelope sender.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if s.needsTLS() && !s.tls {
		return s.reject("tls_required", errNeedTLS)
	}
	if s.kind == kindSubmission && s.user == nil {
		return s.reject("auth_required", errNeedAuth)
	}
	if opts != nil && opts.Size > s.srv.maxBytes {
		return s.reject("too_large", errTooLarge)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	var addr address
	if from != "" {
		a, err := parseAddress(from)
		if err != nil {
			return s.reject("bad_address", reply(553, 5, 1, 7, "Sender address syntax not accepted"))
		}
		addr = a
	}
	switch {
	case s.kind == kindSubmission:
		if from == "" {
			return s.reject("sender_not_allowed", reply(553, 5, 7, 1, "The null sender is not accepted for submission"))
		}
		ok, err := s.maySendAs(ctx, addr)
		if err != nil {
			return s.internal("mail from: sender check", err)
		}
		if !ok {
			return s.reject("sender_not_allowed", reply(553, 5, 7, 1, "You may not send as <"+addr.String()+">"))
		}
	case s.site != "":
		// Another site's relay: any sender, the null one included
		// (bounces between sites).
	default: // inbound
		inOrg := false
		if from != "" {
			var err error
			if inOrg, err = s.srv.dir.InOrganisation(ctx, addr.domain); err != nil {
				return s.internal("mail from: domain lookup", err)
			}
		}
		if inOrg && !s.trusted {
			return s.reject("sender_spoofed", reply(550, 5, 7, 1, "Sender address in this organisation's domains: authenticate on the submission port"))
		}
		s.outside = !inOrg
	}
	if err := s.rateLimit(ctx); err != nil {
		return err
	}
	s.from, s.hasFrom = from, true
	return nil
}

// maySendAs reports whether the authenticated user may use a as sender:
// one of their addresses (with or without a +tag) or a shared mailbox they
// staff.
func (s *session) maySendAs(ctx context.Context, a address) (bool, error) {
	if s.user.HasAddress(a.String()) {
		return true, nil
	}
	if b, ok := a.withoutTag(); ok && s.user.HasAddress(b.String()) {
		return true, nil
	}
	m, err := s.srv.dir.SharedMailboxByAddress(ctx, a.String())
	if err != nil {
		return false, err
	}
	return m != nil && m.HasStaff(s.user.ID), nil
}

// rateLimit counts one transaction for the client address and the user.
func (s *session) rateLimit(ctx context.Context) error {
	rl := s.srv.cfg.RateLimits
	if n := rl.MessagesPerIPPerMinute; n > 0 && s.site == "" && s.ip.IsValid() {
		count, _, err := s.srv.limits.Hit(ctx, "smtp-rate:ip:"+s.ip.String(), time.Minute)
		if err != nil {
			return s.internal("rate limit", err)
		}
		if count > int64(n) {
			return s.reject("rate_ip", errRateLimit)
		}
	}
	if n := rl.MessagesPerUserPerHour; n > 0 && s.user != nil {
		count, _, err := s.srv.limits.Hit(ctx, "smtp-rate:user:"+s.user.ID, time.Hour)
		if err != nil {
			return s.internal("rate limit", err)
		}
		if count > int64(n) {
			return s.reject("rate_user", errRateLimit)
		}
	}
	return nil
}

// Rcpt checks one recipient.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !s.hasFrom {
		return reply(503, 5, 5, 1, "MAIL first")
	}
	if len(s.rcpts) >= s.srv.cfg.MaxRecipients { // go-smtp checks too
		return s.reject("too_many_recipients", reply(452, 4, 5, 3, "Too many recipients"))
	}
	a, err := parseAddress(to)
	if err != nil {
		return s.reject("bad_address", reply(501, 5, 1, 3, "Recipient address syntax not accepted"))
	}
	ctx, cancel := s.ctx()
	defer cancel()
	inOrg, err := s.srv.dir.InOrganisation(ctx, a.domain)
	if err != nil {
		return s.internal("rcpt to: domain lookup", err)
	}
	if !inOrg {
		switch {
		case s.kind == kindSubmission:
			if !s.user.Permissions.InternetSend {
				return s.reject("no_internet_send", reply(550, 5, 7, 1, "You may not send mail outside the organisation"))
			}
		case s.site != "" || !s.trusted:
			return s.reject("relay_denied", reply(550, 5, 7, 1, "Relay access denied"))
		}
		s.rcpts = append(s.rcpts, to)
		return nil
	}
	if err := s.checkLocal(ctx, a); err != nil {
		return err
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

// checkLocal checks a recipient in the organisation's domains: a user's,
// a group's or a shared mailbox's address, or that address with a +tag —
// resolved in the router's order (the exact address first, then without
// the tag), so that what is accepted here is what the router delivers.
func (s *session) checkLocal(ctx context.Context, a address) error {
	candidates := []address{a}
	if b, ok := a.withoutTag(); ok {
		candidates = append(candidates, b)
	}
	for _, c := range candidates {
		found, err := s.checkAddress(ctx, c)
		if found || err != nil {
			return err
		}
	}
	return s.reject("unknown_recipient", reply(550, 5, 1, 1, "No such recipient here"))
}

// checkAddress checks one exact address: found reports whether anyone owns
// it; err is the reply refusing it (or an internal error).
func (s *session) checkAddress(ctx context.Context, a address) (found bool, err error) {
	u, err := s.srv.dir.UserByKey(ctx, a.String())
	if err != nil {
		return false, s.internal("rcpt to: user lookup", err)
	}
	if u != nil {
		switch {
		case !u.Enabled:
			return true, s.reject("recipient_disabled", reply(550, 5, 2, 1, "Mailbox disabled"))
		case s.outside && !u.Permissions.InternetReceive:
			return true, s.reject("no_internet_receive", reply(550, 5, 7, 1, "This recipient does not receive mail from outside the organisation"))
		}
		return true, nil
	}
	m, err := s.srv.dir.SharedMailboxByAddress(ctx, a.String())
	if err != nil {
		return false, s.internal("rcpt to: shared mailbox lookup", err)
	}
	if m != nil {
		return true, nil
	}
	g, err := s.srv.dir.GroupByKey(ctx, a.String())
	if err != nil {
		return false, s.internal("rcpt to: group lookup", err)
	}
	return g != nil, nil
}

// Data receives the message, publishes it to mail.inbound with acks=all and
// only then lets go-smtp answer 250.
func (s *session) Data(r io.Reader) error {
	if s.sc != nil {
		s.sc.busy.Store(true)
		defer s.sc.busy.Store(false)
	}
	if !s.hasFrom || len(s.rcpts) == 0 {
		return reply(503, 5, 5, 1, "RCPT first")
	}
	// go-smtp's reader stops at max_message_bytes (552 5.3.4) — also, as
	// it counts, for a message of exactly that size: the effective limit
	// is one byte less. The LimitReader guards the BDAT path.
	body, err := io.ReadAll(io.LimitReader(r, s.srv.maxBytes+1))
	if err != nil {
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se) && se.Code == errTooLarge.Code:
			return s.reject("too_large", errTooLarge)
		case errors.Is(err, smtp.ErrTooLongLine):
			return s.reject("line_too_long", reply(500, 5, 5, 2, "Line too long"))
		}
		s.log.Info("smtp: reading message data", "error", err)
		return errTemporary
	}
	if int64(len(body)) > s.srv.maxBytes {
		return s.reject("too_large", errTooLarge)
	}
	now := s.srv.now()
	var authUser string
	switch {
	case s.user != nil:
		authUser = s.user.ID
	case s.site != "":
		authUser = "site:" + s.site
	}
	// The id is derived from the sender, the envelope and the client's
	// bytes (before the Received field), so that a client sending the
	// message again after a lost 250 gets the same id and the copy is
	// dropped downstream; see id.go.
	id := s.inboundID(authUser, body)
	msg := make([]byte, 0, len(body)+512)
	msg = s.received(msg, id, now)
	msg = append(msg, body...)
	in := events.Inbound{
		ID:         id,
		Site:       s.srv.deps.Site,
		MailFrom:   s.from,
		Recipients: append([]string(nil), s.rcpts...),
		Source: events.Source{
			Kind:        events.SourceSMTP,
			SMTPSession: s.id,
			SMTPRemote:  s.remote.String(),
			SMTPHelo:    sanitizeHelo(s.conn.Hostname()),
			AuthUser:    authUser,
		},
		ReceivedAt: now,
		Message:    msg,
	}
	rec, err := in.Encode()
	if err != nil {
		return s.internal("encoding mail.inbound record", err)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	ctx, span := s.srv.tracer.Start(ctx, "smtp receive", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("postern.smtp.listener", s.listener), attribute.String("postern.smtp.session", s.id),
			attribute.String("postern.inbound.id", id), attribute.Int("postern.message.bytes", len(msg))))
	defer span.End()
	if err := s.srv.deps.Bus.Publish(ctx, msgbus.NewMessage(events.TopicInbound, rec)); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish failed")
		if errors.Is(err, msgbus.ErrTooLarge) {
			return s.reject("too_large", errTooLarge)
		}
		s.srv.inst.rejected(s.listener, "publish")
		s.log.Error("smtp: publishing to mail.inbound; answered 451", "id", id, "error", err)
		return errTemporary
	}
	s.srv.inst.acceptedMessage(s.listener)
	s.log.Info("smtp message accepted", "id", id, "recipients", len(in.Recipients), "bytes", len(msg), "auth_user", in.Source.AuthUser)
	return nil
}
