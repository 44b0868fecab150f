package mailbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
)

// LMTPConfig configures delivery over LMTP (RFC 2033) to Dovecot.
type LMTPConfig struct {
	// Address of the LMTP listener: "unix:/path/to/socket" or "host:port".
	Address string `yaml:"address" doc:"Dovecot's LMTP listener: unix:/path/to/socket or host:port"`
	// Timeout bounds connecting and each command, including the reply
	// after the message's final dot.
	Timeout time.Duration `yaml:"timeout" doc:"limit on connecting and on each LMTP command, including the reply after the message"`
	// MaxConnections is the number of LMTP sessions open at once; more
	// concurrent deliveries wait for one.
	MaxConnections int `yaml:"max_connections" doc:"LMTP sessions open at once (concurrent deliveries beyond it wait)"`
	// IdempotencyTTL is how long a delivered id is remembered (sitestate
	// idempotency key "lmtp:<id>").
	IdempotencyTTL time.Duration `yaml:"idempotency_ttl" doc:"how long delivered ids are remembered to drop duplicates"`
}

// Validate checks the settings; keys are relative ("address").
func (c LMTPConfig) Validate() error {
	var errs []error
	if path, ok := strings.CutPrefix(c.Address, "unix:"); ok {
		if path == "" {
			errs = append(errs, config.Errorf("address", "%q: unix: needs a socket path", c.Address))
		}
	} else if host, port, err := net.SplitHostPort(c.Address); err != nil || host == "" {
		errs = append(errs, config.Errorf("address", "%q: must be unix:/path or host:port", c.Address))
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		errs = append(errs, config.Errorf("address", "%q: port must be 1 to 65535", c.Address))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Errorf("timeout", "must be positive"))
	}
	if c.MaxConnections < 1 {
		errs = append(errs, config.Errorf("max_connections", "must be at least 1"))
	}
	if c.IdempotencyTTL <= 0 {
		errs = append(errs, config.Errorf("idempotency_ttl", "must be positive"))
	}
	return config.Join(errs...)
}

// LMTP delivers over LMTP with go-smtp's client: LHLO, MAIL FROM:<sender>,
// RCPT TO:<user name> (Dovecot's userdb is keyed by user name), DATA with
// the Delivered-To field prepended, and the recipient's reply after the
// final dot. Dovecot writes the Return-Path itself; configure it with
// lmtp_hdr_delivery_address = none (else it adds a second Delivered-To
// naming the user) and lmtp_add_received_header = no (see
// deployments/dovecot). A 5xx reply is permanent, a 4xx reply or a broken
// connection temporary. Sessions are kept open (up to MaxConnections),
// reused after RSET, and replaced when broken.
//
// Idempotency: before the transaction the key "lmtp:<id>" is looked up in
// the site state (found: nothing is sent); after the server's 250 it is
// claimed. Deliveries of one id in this process run one after the other.
// The window left: the relay dying between Dovecot's 250 and the claim (or
// the claim failing) delivers the message again when the record is
// redelivered. A Maildir deliverer has no such window.
type LMTP struct {
	cfg   LMTPConfig
	opts  Options
	state sitestate.Idempotency
	log   *slog.Logger
	host  string

	slots chan struct{} // one per open-or-in-use session
	keys  keyLocks

	mu     sync.Mutex
	idle   []*smtp.Client
	closed bool
}

var _ Deliverer = (*LMTP)(nil)

// NewLMTP returns an LMTP deliverer. It does not connect until the first
// delivery. opts.State is required.
func NewLMTP(cfg LMTPConfig, opts Options) (*LMTP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mailbox: lmtp: %w", err)
	}
	if opts.State == nil {
		return nil, errors.New("mailbox: lmtp: Options.State (the site state's idempotency keys) is required")
	}
	host := opts.Hostname
	if host == "" {
		var err error
		if host, err = os.Hostname(); err != nil || host == "" {
			host = "localhost"
		}
	}
	return &LMTP{
		cfg:   cfg,
		opts:  opts,
		state: opts.State,
		log:   opts.logger().With("component", "lmtp"),
		host:  host,
		slots: make(chan struct{}, cfg.MaxConnections),
	}, nil
}

// idempotencyKey is the site-state key of a delivery id.
func idempotencyKey(id string) string { return "lmtp:" + id }

// Deliver hands msg to the LMTP server (see LMTP).
func (l *LMTP) Deliver(ctx context.Context, msg Message) error {
	name, err := checkMessage(msg)
	if err != nil {
		return err
	}
	unlock, err := l.keys.lock(ctx, msg.DeliveryID)
	if err != nil {
		return fmt.Errorf("mailbox: waiting for another delivery of %s: %w", msg.DeliveryID, err)
	}
	defer unlock()
	log := l.log.With("delivery_id", msg.DeliveryID, "user", name)

	key := idempotencyKey(msg.DeliveryID)
	seen, err := l.state.Seen(ctx, key)
	if err != nil {
		return fmt.Errorf("mailbox: lmtp: checking delivery %s: %w", msg.DeliveryID, err)
	}
	if seen {
		log.Info("duplicate delivery dropped")
		return nil
	}

	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("mailbox: lmtp: waiting for a session: %w", ctx.Err())
	}
	defer func() { <-l.slots }()

	c, err := l.session(ctx)
	if err != nil {
		return err
	}
	reply, err := l.transaction(ctx, c, name, msg)
	if err != nil {
		if !IsPermanent(err) {
			log.Warn("lmtp delivery failed", "err", err)
		}
		return err
	}
	if claimed, err := l.state.Claim(context.WithoutCancel(ctx), key, l.cfg.IdempotencyTTL); err != nil {
		// Delivered: reporting a failure would deliver it again.
		log.Error("delivered, but the idempotency key could not be stored: a redelivery of this record would deliver it twice", "err", err)
	} else if !claimed {
		log.Warn("delivered while another process delivered the same id: the mailbox may hold it twice")
	}
	log.Info("delivered", "reply", reply, "size_bytes", len(msg.Data))
	return nil
}

// session returns an open session: an idle one that answers RSET, or a
// new one.
func (l *LMTP) session(ctx context.Context) (*smtp.Client, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, errors.New("mailbox: lmtp deliverer is closed")
		}
		var c *smtp.Client
		if n := len(l.idle); n > 0 {
			c, l.idle = l.idle[n-1], l.idle[:n-1]
		}
		l.mu.Unlock()
		if c == nil {
			break
		}
		if err := withContext(ctx, c, c.Reset); err == nil {
			return c, nil
		}
		c.Close() // stale: the server closed it or it broke
	}
	return l.dial(ctx)
}

// dial connects and says LHLO.
func (l *LMTP) dial(ctx context.Context) (*smtp.Client, error) {
	d := net.Dialer{Timeout: l.cfg.Timeout}
	network, addr := "tcp", l.cfg.Address
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", path
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("mailbox: lmtp: connecting to %s: %w", l.cfg.Address, err)
	}
	c := smtp.NewClientLMTP(conn)
	c.CommandTimeout = l.cfg.Timeout
	c.SubmissionTimeout = l.cfg.Timeout
	if err := withContext(ctx, c, func() error { return c.Hello(l.host) }); err != nil {
		c.Close()
		// A refusing greeting or LHLO is the server's state, not the
		// message's fault: temporary.
		return nil, fmt.Errorf("mailbox: lmtp: greeting of %s: %w", l.cfg.Address, err)
	}
	return c, nil
}

// transaction runs MAIL, RCPT and DATA on c, then returns c to the idle
// sessions if it is still usable (or closes it), and returns the server's
// reply to the message.
func (l *LMTP) transaction(ctx context.Context, c *smtp.Client, name string, msg Message) (reply string, err error) {
	usable := true
	defer func() {
		if usable {
			l.putIdle(c)
		} else {
			c.Close()
		}
	}()
	// classify turns a failed step into the error Deliver returns and
	// decides whether the session survives it.
	classify := func(step string, err error) error {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			if se.Code == 421 {
				usable = false
			}
			err = fmt.Errorf("mailbox: lmtp %s for %s: %w", step, name, se)
			if se.Code >= 500 {
				return permanent(err)
			}
			return err
		}
		usable = false
		if ctx.Err() != nil {
			return fmt.Errorf("mailbox: lmtp %s for %s: %w (%v)", step, name, ctx.Err(), err)
		}
		return fmt.Errorf("mailbox: lmtp %s for %s: %w", step, name, err)
	}
	reset := func() {
		if usable {
			if err := withContext(ctx, c, c.Reset); err != nil {
				usable = false
			}
		}
	}

	if err := withContext(ctx, c, func() error { return c.Mail(msg.MailFrom, nil) }); err != nil {
		err = classify("MAIL FROM", err)
		reset()
		return "", err
	}
	if err := withContext(ctx, c, func() error { return c.Rcpt(name, nil) }); err != nil {
		err = classify("RCPT TO", err)
		reset()
		return "", err
	}
	var replies map[string]*smtp.DataResponse
	err = withContext(ctx, c, func() error {
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(envelopeHeader(msg, false)); err != nil {
			return err
		}
		if _, err := w.Write(msg.Data); err != nil {
			return err
		}
		replies, err = w.CloseWithLMTPResponse()
		return err
	})
	if err != nil {
		var lerr smtp.LMTPDataError
		if errors.As(err, &lerr) {
			if se, ok := lerr[name]; ok {
				return "", classify("DATA", se)
			}
		}
		err = classify("DATA", err)
		reset()
		return "", err
	}
	if r, ok := replies[name]; ok {
		return r.StatusText, nil
	}
	return "", nil
}

func (l *LMTP) putIdle(c *smtp.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(l.idle) >= l.cfg.MaxConnections {
		c.Close()
		return
	}
	l.idle = append(l.idle, c)
}

// withContext runs f (commands on c) and closes c's connection if ctx ends
// meanwhile, so that f returns. What f returns stands: a command that
// completed as ctx ended did complete (the closed session fails the next
// command and is replaced).
func withContext(ctx context.Context, c *smtp.Client, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	return f()
}

// Close ends the idle sessions (QUIT). Deliveries must have returned.
func (l *LMTP) Close() error {
	l.mu.Lock()
	idle := l.idle
	l.idle, l.closed = nil, true
	l.mu.Unlock()
	for _, c := range idle {
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := c.Quit(); err != nil {
				c.Close()
			}
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
			c.Close()
			<-done
		}
	}
	return nil
}

// keyLocks serialises work per key, waiting with a context.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // holds one token while locked
	refs int
}

// lock takes the lock of key, or returns ctx's error; the caller calls
// the returned function to release it.
func (k *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	kl := k.m[key]
	if kl == nil {
		kl = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = kl
	}
	kl.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		kl.refs--
		if kl.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case kl.ch <- struct{}{}:
		return func() { <-kl.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
