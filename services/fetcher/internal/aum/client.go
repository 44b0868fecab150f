// Package aum is the fetcher's AUM client: it keeps the site's read-only
// directory replica (sitestate.Directory) fed from the users service's
// change feed, GET /v1/sync, with the site's site_agent token.
//
// The first sync takes a snapshot (the whole view of the site, which
// replaces the replica); later ones take the changes after the stored
// cursor, page after page while the service says more. Each response is
// applied as one atomic change set together with its cursor, so a reader
// (internal/replica) never sees half of one, and a crash resumes from the
// last applied page. The fetcher calls BeforeCycle before every download
// cycle and runs Run between cycles, which long-polls the feed so that the
// replica stays current.
//
// When the users service cannot be reached the site goes on with its last
// replica (logged once per outage, and measured by the metric
// postern_directory_replica_age_seconds); Config.RefuseStale makes
// BeforeCycle refuse a replica older than Config.MaxAge instead.
package aum

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/backoff"
	"github.com/postern/postern/internal/sitestate"
)

// ErrStale is matched (errors.Is) by BeforeCycle's error when the users
// service cannot be reached, Config.RefuseStale is set and the replica is
// older than Config.MaxAge or was never synced: the cycle must not run.
var ErrStale = errors.New("aum: the directory replica is stale")

// ErrNeverSynced is returned by Age when the replica was never synced.
var ErrNeverSynced = errors.New("aum: the directory replica was never synced")

// ErrToken is matched (errors.Is) by the error of a sync the users service
// refused because of the token (401: unknown, revoked or expired; 403: not
// a site_agent token). The error says which; it never contains the token.
var ErrToken = errors.New("aum: the users service refused the site_agent token")

// Options are the client's collaborators; the zero value of each is a
// sensible default.
type Options struct {
	Logger     *slog.Logger         // nil: slog.Default()
	Meter      metric.MeterProvider // nil: the global meter provider
	HTTPClient *http.Client         // nil: a client trusting Config.CAFile (or the system's roots); a given client is used as it is. Leave its Timeout 0: each request gets Config.Timeout (plus the long poll's wait)
	Now        func() time.Time     // nil: time.Now
}

// Backoff of Run after a failed poll: capped exponential with jitter.
const (
	backoffInitial    = time.Second
	backoffMax        = time.Minute
	backoffMultiplier = 2.0
	backoffJitter     = 0.2
	// idlePause spaces polls that brought nothing, in case the users service
	// answers a long poll at once.
	idlePause = 250 * time.Millisecond
)

// Client keeps one site's directory replica in sync. It is safe for
// concurrent use: Sync, BeforeCycle and Run serialise their writes to the
// replica, so cursors are applied in order.
type Client struct {
	cfg  Config
	dir  sitestate.Directory
	api  *usersclient.ClientWithResponses
	base string // the users service's base URL, for messages
	log  *slog.Logger
	now  func() time.Time
	inst *instruments

	mu sync.Mutex // held while applying to the replica

	outMu    sync.Mutex // guards the outage state below
	failing  bool
	since    time.Time // start of the current outage
	failures int       // failed syncs in the current outage
}

// New builds a client for the replica dir. It validates cfg and contacts
// nothing: the first Sync (or BeforeCycle, or Run) does.
func New(cfg Config, dir sitestate.Directory, opts Options) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("aum: configuration: %w", err)
	}
	if dir == nil {
		return nil, errors.New("aum: no directory replica")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Meter == nil {
		opts.Meter = otel.GetMeterProvider()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	hc := opts.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if cfg.CAFile != "" {
			roots, err := loadRoots(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("aum: ca_file: %w", err)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
		hc = &http.Client{Transport: tr}
	}
	u, _ := url.Parse(cfg.URL) // checked by Validate
	token := cfg.Token.Reveal()
	api, err := usersclient.NewClientWithResponses(cfg.URL,
		usersclient.WithHTTPClient(hc),
		usersclient.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
	if err != nil {
		return nil, fmt.Errorf("aum: users service client: %w", err)
	}
	c := &Client{
		cfg:  cfg,
		dir:  dir,
		api:  api,
		base: u.Redacted(),
		log:  opts.Logger.With("component", "aum"),
		now:  opts.Now,
	}
	c.inst, err = newInstruments(opts.Meter, dir, c.ageOf)
	if err != nil {
		return nil, fmt.Errorf("aum: metrics: %w", err)
	}
	return c, nil
}

// Sync catches the replica up now, without waiting for news: it pages
// through /v1/sync until the users service says there is no more, applying
// each page atomically, and returns how many objects it put or deleted.
// On error the pages applied so far stay (each is whole), and the next
// Sync resumes after them.
func (c *Client) Sync(ctx context.Context) (changes int, err error) {
	c.mu.Lock()
	changes, err = c.catchUp(ctx)
	c.mu.Unlock()
	c.observe(ctx, err)
	return changes, err
}

// BeforeCycle syncs before a download cycle. When the sync fails the
// failure is logged (once per outage, and once more when it ends) and the
// cycle goes on with the last replica: BeforeCycle returns nil — unless
// Config.RefuseStale is set and the replica is older than Config.MaxAge or
// was never synced, when it returns an error matching ErrStale (and the
// sync's error). It returns ctx's error when ctx ends.
func (c *Client) BeforeCycle(ctx context.Context) error {
	_, err := c.Sync(ctx)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !c.cfg.RefuseStale {
		return nil
	}
	age, aerr := c.Age(ctx)
	switch {
	case errors.Is(aerr, ErrNeverSynced):
		return fmt.Errorf("%w: it was never synced, and the sync failed: %w", ErrStale, err)
	case aerr != nil:
		return fmt.Errorf("%w: its age is unknown (%v), and the sync failed: %w", ErrStale, aerr, err)
	case age > c.cfg.MaxAge:
		return fmt.Errorf("%w: last synced %s ago (max_age %s), and the sync failed: %w", ErrStale, age.Round(time.Second), c.cfg.MaxAge, err)
	}
	return nil
}

// Run keeps the replica current between download cycles: it long-polls
// /v1/sync (Config.Wait per poll) and applies what arrives, backing off
// with jitter while the users service fails. It returns nil when ctx is
// cancelled.
func (c *Client) Run(ctx context.Context) error {
	failures := 0
	for {
		n, err := c.poll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.observe(ctx, err)
		wait := time.Duration(0)
		switch {
		case err != nil:
			failures++
			wait = backoff.Jitter(backoff.Exp(backoffInitial, backoffMax, backoffMultiplier, failures), backoffJitter, rand.Float64())
		case n == 0:
			failures = 0
			wait = idlePause
		default:
			failures = 0
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// Age returns the time since the replica was last synced successfully
// (by any process sharing the site state), or ErrNeverSynced.
func (c *Client) Age(ctx context.Context) (time.Duration, error) {
	st, err := c.dir.SyncState(ctx)
	if err != nil {
		return 0, fmt.Errorf("aum: replica sync state: %w", err)
	}
	if st.SyncedAt.IsZero() {
		return 0, ErrNeverSynced
	}
	return max(c.now().Sub(st.SyncedAt), 0), nil
}

// ageOf is the age gauge's value: seconds since st.SyncedAt, if ever.
func (c *Client) ageOf(st sitestate.SyncState) (float64, bool) {
	if st.SyncedAt.IsZero() {
		return 0, false
	}
	return max(c.now().Sub(st.SyncedAt), 0).Seconds(), true
}

// catchUp pages from the stored cursor until more is false, then marks the
// replica synced. c.mu must be held.
func (c *Client) catchUp(ctx context.Context) (int, error) {
	cursor, err := c.storedCursor(ctx)
	if err != nil {
		return 0, err
	}
	total := 0
	for {
		resp, err := c.fetch(ctx, cursor, 0)
		if err != nil {
			return total, err
		}
		n, err := c.apply(ctx, cursor, resp)
		total += n
		if err != nil {
			return total, err
		}
		cursor = resp.Cursor
		if !resp.More {
			break
		}
	}
	return total, c.markSynced(ctx, cursor)
}

// poll is one long poll of Run. The request runs without the lock (it may
// wait for Config.Wait); its answer is applied only if nobody moved the
// cursor meanwhile, else it is dropped and the next poll starts from the
// new cursor.
func (c *Client) poll(ctx context.Context) (int, error) {
	cursor, err := c.storedCursor(ctx)
	if err != nil {
		return 0, err
	}
	resp, err := c.fetch(ctx, cursor, c.cfg.Wait)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now, err := c.storedCursor(ctx)
	if err != nil {
		return 0, err
	}
	if now != cursor {
		return 0, nil // a Sync went further meanwhile
	}
	n, err := c.apply(ctx, cursor, resp)
	if err != nil {
		return n, err
	}
	if resp.More {
		m, err := c.catchUp(ctx)
		return n + m, err
	}
	return n, c.markSynced(ctx, resp.Cursor)
}

// storedCursor is the replica's feed position, "0" (a snapshot) when it
// has none or one that is not a /v1/sync cursor.
func (c *Client) storedCursor(ctx context.Context) (string, error) {
	st, err := c.dir.SyncState(ctx)
	if err != nil {
		return "", fmt.Errorf("aum: replica sync state: %w", err)
	}
	if _, err := parseCursor(st.Cursor); err != nil {
		if st.Cursor != "" {
			c.log.Warn("the replica's cursor is not one /v1/sync gives; taking a snapshot", "cursor", st.Cursor)
		}
		return "0", nil
	}
	return st.Cursor, nil
}

// parseCursor parses a /v1/sync cursor: 1 to 19 decimal digits.
func parseCursor(s string) (uint64, error) {
	if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("cursor %q is not 1 to 19 digits", s)
	}
	return strconv.ParseUint(s, 10, 63)
}

// fetch asks /v1/sync for the changes after cursor, waiting up to wait for
// one when nothing is new.
func (c *Client) fetch(ctx context.Context, cursor string, wait time.Duration) (*usersclient.SyncResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout+wait)
	defer cancel()
	params := &usersclient.GetSyncParams{Cursor: &cursor}
	if secs := int(wait / time.Second); secs > 0 {
		params.Wait = &secs
	}
	r, err := c.api.GetSyncWithResponse(rctx, params)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// *url.Error names the method and the URL (never the header).
		return nil, fmt.Errorf("aum: users service: %w", err)
	}
	switch code := r.StatusCode(); {
	case code == http.StatusOK && r.JSON200 != nil:
	case code == http.StatusUnauthorized:
		return nil, fmt.Errorf("%w: 401 %s: the token is unknown, revoked or expired; give the AUM client (token) a valid site_agent token of this site (postern tokens add <name> --role site_agent --site <site>)",
			ErrToken, problemDetail(r.ApplicationProblemJSON401, r.Body))
	case code == http.StatusForbidden:
		return nil, fmt.Errorf("%w: 403 %s: the AUM client's token (token) must be a site_agent token of this site",
			ErrToken, problemDetail(r.ApplicationProblemJSON403, r.Body))
	case code == http.StatusOK:
		return nil, fmt.Errorf("aum: users service at %s: GET /v1/sync answered 200 with %q, not JSON", c.base, r.ContentType())
	default:
		var p *usersclient.Problem
		if r.ApplicationProblemJSON400 != nil {
			p = r.ApplicationProblemJSON400
		} else if r.ApplicationProblemJSONDefault != nil {
			p = r.ApplicationProblemJSONDefault
		}
		return nil, fmt.Errorf("aum: users service at %s: GET /v1/sync: %s %s", c.base, r.Status(), problemDetail(p, r.Body))
	}
	resp := r.JSON200
	after, _ := parseCursor(cursor)
	got, err := parseCursor(resp.Cursor)
	switch {
	case err != nil:
		return nil, fmt.Errorf("aum: users service at %s: GET /v1/sync: %w", c.base, err)
	case !resp.Snapshot && got < after:
		return nil, fmt.Errorf("aum: users service at %s: GET /v1/sync: cursor went back from %s to %s without a snapshot", c.base, cursor, resp.Cursor)
	case resp.More && !resp.Snapshot && got == after:
		return nil, fmt.Errorf("aum: users service at %s: GET /v1/sync: more changes announced but the cursor stayed at %s", c.base, cursor)
	}
	return resp, nil
}

// problemDetail is what an error response says, for a person to read.
func problemDetail(p *usersclient.Problem, body []byte) string {
	if p != nil {
		if p.Detail != "" {
			return strconv.Quote(p.Detail)
		}
		if p.Title != "" {
			return strconv.Quote(p.Title)
		}
	}
	const limit = 200
	s := strings.TrimSpace(string(body))
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	if s == "" {
		return "(no detail)"
	}
	return strconv.Quote(s)
}

// apply applies one response as one change set, and returns the number of
// objects put or deleted. c.mu must be held.
func (c *Client) apply(ctx context.Context, from string, resp *usersclient.SyncResponse) (int, error) {
	cs, skipped, err := changeSet(resp)
	if err != nil {
		return 0, fmt.Errorf("aum: /v1/sync after cursor %s: %w", from, err)
	}
	for kind, n := range skipped {
		c.log.Debug("ignored changes of a kind this site does not know", "kind", kind, "changes", n)
	}
	n := len(cs.Put) + len(cs.Delete)
	if n == 0 && !cs.Snapshot && resp.Cursor == from {
		return 0, nil
	}
	if err := c.dir.Apply(ctx, cs); err != nil {
		return 0, fmt.Errorf("aum: apply /v1/sync changes after cursor %s to the replica: %w", from, err)
	}
	c.inst.applied.Add(ctx, int64(n))
	if cs.Snapshot {
		c.log.Info("directory snapshot applied", "objects", len(cs.Put), "cursor", resp.Cursor)
	} else if n > 0 {
		c.log.Debug("directory changes applied", "puts", len(cs.Put), "deletes", len(cs.Delete), "cursor", resp.Cursor)
	}
	return n, nil
}

// markSynced records a successful sync at cursor.
func (c *Client) markSynced(ctx context.Context, cursor string) error {
	if err := c.dir.MarkSynced(ctx, cursor, c.now()); err != nil {
		return fmt.Errorf("aum: mark the replica synced: %w", err)
	}
	return nil
}

// observe counts a sync's result and logs the outages: a warning when the
// first sync fails, debug lines while it keeps failing, and one line when
// a sync works again. A sync cut short by ctx is not a result.
func (c *Client) observe(ctx context.Context, err error) {
	if err != nil && ctx.Err() != nil {
		return
	}
	mctx := context.WithoutCancel(ctx)
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if err == nil {
		c.inst.syncs.Add(mctx, 1, syncsOK)
		if c.failing {
			c.log.Info("directory sync works again", "users_url", c.base,
				"outage", c.now().Sub(c.since).Round(time.Second).String(), "failed_syncs", c.failures)
			c.failing, c.failures = false, 0
		}
		return
	}
	c.inst.syncs.Add(mctx, 1, syncsError)
	c.failures++
	if c.failing {
		c.log.Debug("directory sync still failing", "users_url", c.base, "error", err, "failed_syncs", c.failures)
		return
	}
	c.failing, c.since = true, c.now()
	attrs := []any{"users_url", c.base, "error", err}
	if age, aerr := c.Age(mctx); aerr == nil {
		attrs = append(attrs, "replica_age", age.Round(time.Second).String())
	} else if errors.Is(aerr, ErrNeverSynced) {
		attrs = append(attrs, "replica_age", "never synced")
	}
	if c.cfg.RefuseStale {
		attrs = append(attrs, "max_age", c.cfg.MaxAge.String())
		c.log.Warn("directory sync failed: download cycles go on with the last replica until it is older than max_age", attrs...)
	} else {
		c.log.Warn("directory sync failed: download cycles go on with the last replica", attrs...)
	}
}
