// Package download is the fetcher's POP3 downloader: it polls the POP3
// accounts of the site's directory replica, publishes every new message to
// mail.inbound, records the hand-off in the UIDL ledger, and deletes a
// message from the server once mail.status reports every recipient done (or
// as the account's keep policy says).
//
// # The guarantees
//
//   - Nothing is lost: a message is recorded as handed off only after
//     mail.inbound acknowledged it (acks=all), and deleted from the server
//     only once the ledger shows a final outcome for every recipient. A
//     message the bus cannot carry (larger than its record limit) or whose
//     recipient cannot be determined is left on the server and reported
//     (log and postern_pop3_errors_total), never dropped.
//   - Nothing is doubled: the ledger stops re-downloads; a message handled
//     again after a crash between the publish and the ledger write is
//     published with the same id (deterministic from account, UIDL and
//     Message-ID), which downstream idempotency drops; the same Message-ID
//     for the same recipient through two accounts within the duplicate
//     window is published once (see dedup.go for the crash-safe claim).
//   - A server without UIDL is an error for that account and nothing is
//     downloaded from it: without unique ids a message could be downloaded
//     twice.
//
// # Recipients
//
// A single-drop account delivers every message to its target user's
// primary address. A multi-drop account reads the account's envelope
// headers in order (default replica.DefaultEnvelopeHeaders): the first
// field, top down, naming an address in the organisation's domains (the
// account's local_domains, else every site's domains) gives the recipients;
// Received fields count by their "for <addr>" clause. With
// fallback_to_headers, To, Cc and Bcc are read next. A message still without
// a recipient goes to the account's postmaster user (logged and counted in
// postern_pop3_postmaster_total), never dropped nor guessed silently.
//
// # Deletion
//
// RunStatus reads mail.status and marks, for each message downloaded from
// POP3, the envelope recipients with a final outcome (delivered, bounced,
// rejected) in the ledger. A status naming a mailbox the router expanded an
// envelope recipient to (an alias of the same user, a member of a group, the
// manager or staff of a shared mailbox) marks that envelope recipient: the
// first final outcome of its expansion counts, the message being safe in
// mail.delivery by then. At the account's next session a message whose
// recipients are all marked is deleted as its keep policy says (DELE, then
// QUIT, then the ledger notes the deletion); a ledger entry whose UIDL left
// the server is forgotten.
//
// # Scheduling
//
// Each enabled account is polled on its own interval (poll_interval_seconds,
// with jitter), at most Config.Concurrency at a time. A failing account waits
// longer each time (Config.Backoff, never less than its interval) without
// affecting the others; an account whose login the ISP refuses waits much
// longer (Config.AuthBackoff). Before every cycle (a moment when some
// accounts are due) the BeforeCycle hook runs — the AUM sync — and the
// accounts are read again from the replica, so an account added, edited or
// removed is in effect at the next cycle; an edited account starts afresh,
// without its backoff.
//
// The status consumer (RunStatus) and the downloader share in-memory state
// for statuses that overtake the ledger write: run one fetcher per site.
package download

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// Bus is what the downloader needs of the message bus (*msgbus.Bus).
type Bus interface {
	Publish(ctx context.Context, msgs ...msgbus.Message) error
	Consume(ctx context.Context, s msgbus.Subscription) error
}

// Options are the downloader's collaborators.
type Options struct {
	// Site is this site's name, written on every published record.
	Site string
	// Bus publishes to mail.inbound and consumes mail.status.
	Bus Bus
	// MaxMessageBytes is the largest message the bus carries
	// (msgbus.Config.MaxRecordBytes); bigger ones are left on the server
	// and reported.
	MaxMessageBytes int64
	// Directory is the site's directory replica (the POP3 accounts, users
	// and sites).
	Directory sitestate.DirectoryReader
	// Ledger is the UIDL ledger.
	Ledger sitestate.Ledger
	// Idempotency holds the duplicate-suppression keys.
	Idempotency sitestate.Idempotency
	// BeforeCycle, if set, runs before every download cycle (the AUM sync).
	// An error skips the cycle: the accounts due are tried again at their
	// next interval.
	BeforeCycle func(ctx context.Context) error
	// Logger receives the downloader's logs (nil: slog.Default()).
	Logger *slog.Logger
	// MeterProvider makes the metrics (nil: none).
	MeterProvider metric.MeterProvider
	// TLSConfig is the base TLS configuration of POP3 connections (nil:
	// the system roots). The accounts' skip-verify and fingerprint
	// settings apply on top of it.
	TLSConfig *tls.Config
	// Now is the clock (nil: time.Now); tests set it for keep_days.
	Now func() time.Time
}

// Downloader downloads the POP3 accounts of one site. It is safe for
// concurrent use; one account is never downloaded by two sessions at once.
type Downloader struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	in   *instruments
	dir  replica.Reader
	dup  *dedup

	mu       sync.Mutex
	busy     map[string]bool           // account id -> a session is running
	failed   map[string]map[string]int // account id -> UIDL -> failed attempts (tried last)
	reported map[string]bool           // account id, UIDL, kind -> logged already
	orphans  map[string]*orphan        // statuses that overtook their hand-off

	// Test hooks: afterPublish runs after a batch was acknowledged and
	// before its ledger writes; beforeQuit after DELE and before QUIT. An
	// error from either ends the session there, like a crash.
	afterPublish func(ctx context.Context, account, uidl string) error
	beforeQuit   func(ctx context.Context, account string) error
}

// New returns a downloader. It validates cfg and checks the options that
// must be set.
func New(cfg Config, opts Options) (*Downloader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	switch {
	case opts.Bus == nil:
		return nil, errors.New("download: Options.Bus is nil")
	case opts.Directory == nil:
		return nil, errors.New("download: Options.Directory is nil")
	case opts.Ledger == nil:
		return nil, errors.New("download: Options.Ledger is nil")
	case opts.Idempotency == nil && cfg.DuplicateWindow > 0:
		return nil, errors.New("download: Options.Idempotency is nil (needed with a duplicate window)")
	case opts.MaxMessageBytes <= 0:
		return nil, errors.New("download: Options.MaxMessageBytes must be positive")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	in, err := newInstruments(opts.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("download: metrics: %w", err)
	}
	return &Downloader{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Logger,
		in:       in,
		dir:      replica.Reader{D: opts.Directory},
		dup:      &dedup{idem: opts.Idempotency, window: cfg.DuplicateWindow},
		busy:     map[string]bool{},
		failed:   map[string]map[string]int{},
		reported: map[string]bool{},
		orphans:  map[string]*orphan{},
	}, nil
}

// Accounts returns the enabled POP3 accounts of the replica, ordered by id.
func (d *Downloader) Accounts(ctx context.Context) ([]*replica.POP3Account, error) {
	all, err := d.dir.POP3Accounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the pop3 accounts of the replica: %w", err)
	}
	var out []*replica.POP3Account
	for _, a := range all {
		if a.Enabled {
			out = append(out, a)
		}
	}
	return out, nil
}

// Cycle runs one download cycle now, whatever the schedule: BeforeCycle,
// then a session with every enabled account, Config.Concurrency at a time.
// It returns the results in account order and the failures joined (an
// error from BeforeCycle ends the cycle before any session).
func (d *Downloader) Cycle(ctx context.Context) ([]SessionResult, error) {
	if d.opts.BeforeCycle != nil {
		if err := d.opts.BeforeCycle(ctx); err != nil {
			return nil, &AccountError{Kind: KindSync, Err: err}
		}
	}
	accts, err := d.Accounts(ctx)
	if err != nil {
		return nil, &AccountError{Kind: KindState, Err: err}
	}
	results := make([]SessionResult, len(accts))
	errs := make([]error, len(accts))
	sem := make(chan struct{}, d.cfg.Concurrency)
	var wg sync.WaitGroup
	for i, a := range accts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			results[i], errs[i] = d.Session(ctx, a)
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// acctState is the scheduler's view of one account.
type acctState struct {
	acct      *replica.POP3Account
	next      time.Time // when the next session is due
	running   bool
	failures  int // failed sessions in a row (other than refused logins)
	authFails int // refused logins in a row
}

type sessionDone struct {
	id    string
	start time.Time
	res   SessionResult
	err   error
}

// Run polls the accounts on their schedules until ctx is cancelled, then
// waits for the running sessions (cancelled with ctx) and returns nil.
func (d *Downloader) Run(ctx context.Context) error {
	states := map[string]*acctState{}
	done := make(chan sessionDone)
	sem := make(chan struct{}, d.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	running := 0
	for {
		now := d.opts.Now()
		d.reconcile(ctx, states, now)
		if d.anyDue(states, now) {
			if err := d.beforeCycle(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				// Skip this cycle: the accounts due wait for their
				// next interval.
				d.log.Warn("download cycle skipped: the directory sync refused to go on", "error", err)
				for _, s := range states {
					if !s.running && !s.next.After(now) {
						s.next = now.Add(jitter(d.interval(s.acct), d.cfg.Jitter))
					}
				}
			} else {
				// The sync may have added, changed or removed accounts:
				// this cycle works on the replica as it is now.
				d.reconcile(ctx, states, now)
				for id, s := range states {
					if s.running || s.next.After(now) {
						continue
					}
					s.running = true
					running++
					acct := s.acct
					wg.Add(1)
					go func() {
						defer wg.Done()
						sd := sessionDone{id: id}
						defer func() {
							if r := recover(); r != nil {
								sd.err = fmt.Errorf("pop3 account %s: panic: %v", acct.Name, r)
								d.log.Error("pop3 session panicked", "account", acct.Name, "panic", r)
							}
							done <- sd
						}()
						select {
						case sem <- struct{}{}:
						case <-ctx.Done():
							sd.err = ctx.Err()
							return
						}
						defer func() { <-sem }()
						sd.start = d.opts.Now()
						sd.res, sd.err = d.Session(ctx, acct)
					}()
				}
			}
		}
		wake := now.Add(d.cfg.RescanInterval)
		for _, s := range states {
			if !s.running && s.next.Before(wake) {
				wake = s.next
			}
		}
		timer.Reset(max(wake.Sub(d.opts.Now()), time.Millisecond))
		select {
		case <-ctx.Done():
		case <-timer.C:
			continue
		case sd := <-done:
			running--
			d.finished(states, sd)
			continue
		}
		break
	}
	// Drain the sessions still running (their context is cancelled).
	for running > 0 {
		<-done
		running--
	}
	return nil
}

func (d *Downloader) beforeCycle(ctx context.Context) error {
	if d.opts.BeforeCycle == nil {
		return nil
	}
	return d.opts.BeforeCycle(ctx)
}

func (d *Downloader) anyDue(states map[string]*acctState, now time.Time) bool {
	for _, s := range states {
		if !s.running && !s.next.After(now) {
			return true
		}
	}
	return false
}

// interval is the account's poll interval.
func (d *Downloader) interval(a *replica.POP3Account) time.Duration {
	iv := time.Duration(a.PollIntervalSeconds) * time.Second
	if iv <= 0 {
		iv = d.cfg.DefaultPollInterval
	}
	return max(iv, d.cfg.MinPollInterval)
}

// reconcile brings the scheduler's accounts in line with the replica: new
// accounts are due now, changed ones (a new version) are due now without
// their backoff, removed or disabled ones are dropped (a running session
// ends normally).
func (d *Downloader) reconcile(ctx context.Context, states map[string]*acctState, now time.Time) {
	accts, err := d.Accounts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("cannot read the pop3 accounts; keeping the last known ones", "error", err)
		}
		return
	}
	seen := make(map[string]bool, len(accts))
	for _, a := range accts {
		seen[a.ID] = true
		s := states[a.ID]
		switch {
		case s == nil:
			states[a.ID] = &acctState{acct: a, next: now}
			d.log.Info("pop3 account added", "account", a.Name, "host", a.Host, "mode", a.Mode)
		case s.acct.Version != a.Version:
			s.acct, s.next, s.failures, s.authFails = a, now, 0, 0
			d.in.failures.Record(ctx, 0, acctAttr(a.Name))
			d.log.Info("pop3 account changed", "account", a.Name)
		default:
			s.acct = a
		}
	}
	for id, s := range states {
		if !seen[id] && !s.running {
			delete(states, id)
			d.log.Info("pop3 account removed or disabled", "account", s.acct.Name)
		}
	}
}

// finished reschedules an account after its session.
func (d *Downloader) finished(states map[string]*acctState, sd sessionDone) {
	s := states[sd.id]
	if s == nil {
		return
	}
	s.running = false
	now := d.opts.Now()
	iv := jitter(d.interval(s.acct), d.cfg.Jitter)
	ctx := context.Background()
	switch kind := ErrorKind(sd.err); {
	case sd.err == nil:
		s.failures, s.authFails = 0, 0
		s.next = sd.start.Add(iv)
		if s.next.Before(now) {
			s.next = now
		}
	case errors.Is(sd.err, context.Canceled):
		s.next = now
	case kind == KindAuth:
		s.authFails++
		wait := max(iv, jitter(d.cfg.AuthBackoff.delay(s.authFails), d.cfg.Jitter))
		s.next = now.Add(wait)
		d.log.Error("the POP3 server refused the login; waiting before trying again",
			"account", s.acct.Name, "host", s.acct.Host, "refusals_in_a_row", s.authFails, "retry_in", wait.Round(time.Second).String(), "error", sd.err)
	default:
		s.failures++
		wait := max(iv, jitter(d.cfg.Backoff.delay(s.failures), d.cfg.Jitter))
		s.next = now.Add(wait)
		d.log.Warn("pop3 session failed; waiting before trying again",
			"account", s.acct.Name, "kind", kind, "failures_in_a_row", s.failures, "retry_in", wait.Round(time.Second).String(), "error", sd.err)
	}
	d.in.failures.Record(ctx, int64(s.failures+s.authFails), acctAttr(s.acct.Name))
}
