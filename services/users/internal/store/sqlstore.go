package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/postern/postern/services/users/internal/directory"
)

// dialect is what differs between PostgreSQL and SQLite. The SQL itself is
// shared: $n placeholders, row values, RETURNING and ON CONFLICT mean the
// same in both, and the schemas have the same tables and columns.
type dialect struct {
	name string // directory under migrations/
	// readTx begins the read transactions of the Store's read methods and
	// Snapshot: one consistent view.
	readTx *sql.TxOptions
	// notify runs last in every write transaction that logged changes
	// (PostgreSQL: NOTIFY, delivered at commit), "" for none.
	notify string
	// migrateLock runs first in every migration transaction.
	migrateLock string
	// anonParams: long parameter lists use "?" (see placeholders).
	anonParams bool
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// sqlStore is the Store over database/sql, for both dialects.
type sqlStore struct {
	d *dialect
	w *sql.DB // write transactions (SQLite: one connection)
	r *sql.DB // reads (PostgreSQL: the same pool as w)

	hub hub

	stopBackground context.CancelFunc // nil when nothing runs in the background
	backgroundDone chan struct{}
	closeOnce      sync.Once
	closeErr       error
}

var _ Store = (*sqlStore)(nil)

// now is the time of a transaction: UTC, in microseconds, which both
// databases store exactly.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// Update implements Store.
func (s *sqlStore) Update(ctx context.Context, fn func(tx Tx) error) (err error) {
	sqlTx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("users store: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = sqlTx.Rollback()
		}
	}()
	seq, err := lockSeq(ctx, sqlTx)
	if err != nil {
		return err
	}
	t := &txn{reader: reader{q: sqlTx, d: s.d}, s: s, tx: sqlTx, seq: seq, now: now()}
	err = fn(t)
	t.done = true
	if err != nil {
		return err
	}
	if t.broken != nil {
		return fmt.Errorf("users store: not committed, a write failed: %w", t.broken)
	}
	if err := t.finish(ctx); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("users store: commit: %w", err)
	}
	committed = true
	if len(t.changes) > 0 {
		s.hub.notify()
	}
	return nil
}

// lockSeq takes the change log's counter for this transaction and returns
// its value.
//
// Why a single-row counter and not a sequence: a PostgreSQL sequence hands
// out numbers at nextval(), not at commit, so transaction A can take 7 and
// B take 8, B commit first, and a reader of ChangesSince(6) see 8, move its
// cursor to 8 and never see 7. Here every write transaction updates the one
// change_seq row first, which holds that row's lock until it commits or
// rolls back: the next writer waits, reads the committed value, and
// continues from it. Numbers are therefore handed out in commit order,
// without gaps (a rollback undoes its increments too), and a reader that
// sees entry n sees every entry below it.
//
// The price is that write transactions are serialised, across every
// process sharing the database. For a directory, written by
// administrators and imports, that is fine, and it has two more benefits:
// locking first means two writers never wait on each other's rows in
// opposite orders (no deadlocks), and the uniqueness and reference checks
// each write does before changing anything cannot race. SQLite serialises
// writers anyway (BEGIN IMMEDIATE on one connection); the same statement
// is harmless there.
func lockSeq(ctx context.Context, q querier) (int64, error) {
	var seq int64
	if err := q.QueryRowContext(ctx, `UPDATE change_seq SET seq = seq WHERE id = 1 RETURNING seq`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("users store: lock change log: %w", err)
	}
	return seq, nil
}

// read runs fn in a read transaction.
func (s *sqlStore) read(ctx context.Context, fn func(r *reader) error) error {
	tx, err := s.r.BeginTx(ctx, s.d.readTx)
	if err != nil {
		return fmt.Errorf("users store: begin read: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(&reader{q: tx, d: s.d}); err != nil {
		return err
	}
	return tx.Commit()
}

func read1[T any](ctx context.Context, s *sqlStore, fn func(r *reader) (T, error)) (T, error) {
	var out T
	err := s.read(ctx, func(r *reader) error {
		var err error
		out, err = fn(r)
		return err
	})
	return out, err
}

func readList[T any](ctx context.Context, s *sqlStore, fn func(r *reader) ([]T, string, int, error)) ([]T, string, int, error) {
	var (
		items []T
		next  string
		total int
	)
	err := s.read(ctx, func(r *reader) error {
		var err error
		items, next, total, err = fn(r)
		return err
	})
	if err != nil {
		return nil, "", 0, err
	}
	return items, next, total, nil
}

// The Reader methods of the Store, each in a read transaction.

func (s *sqlStore) GetSite(ctx context.Context, name string) (directory.Site, error) {
	return read1(ctx, s, func(r *reader) (directory.Site, error) { return r.GetSite(ctx, name) })
}

func (s *sqlStore) ListSites(ctx context.Context, page Page) ([]directory.Site, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.Site, string, int, error) { return r.ListSites(ctx, page) })
}

func (s *sqlStore) GetUser(ctx context.Context, id string) (directory.User, error) {
	return read1(ctx, s, func(r *reader) (directory.User, error) { return r.GetUser(ctx, id) })
}

func (s *sqlStore) GetUserByUsername(ctx context.Context, username string) (directory.User, error) {
	return read1(ctx, s, func(r *reader) (directory.User, error) { return r.GetUserByUsername(ctx, username) })
}

func (s *sqlStore) ListUsers(ctx context.Context, f UserFilter) ([]directory.User, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.User, string, int, error) { return r.ListUsers(ctx, f) })
}

func (s *sqlStore) GetGroup(ctx context.Context, id string) (directory.Group, error) {
	return read1(ctx, s, func(r *reader) (directory.Group, error) { return r.GetGroup(ctx, id) })
}

func (s *sqlStore) GetGroupByName(ctx context.Context, name string) (directory.Group, error) {
	return read1(ctx, s, func(r *reader) (directory.Group, error) { return r.GetGroupByName(ctx, name) })
}

func (s *sqlStore) ListGroups(ctx context.Context, page Page) ([]directory.Group, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.Group, string, int, error) { return r.ListGroups(ctx, page) })
}

func (s *sqlStore) GetPOP3Account(ctx context.Context, id string) (directory.POP3Account, error) {
	return read1(ctx, s, func(r *reader) (directory.POP3Account, error) { return r.GetPOP3Account(ctx, id) })
}

func (s *sqlStore) ListPOP3Accounts(ctx context.Context, f POP3AccountFilter) ([]directory.POP3Account, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.POP3Account, string, int, error) { return r.ListPOP3Accounts(ctx, f) })
}

func (s *sqlStore) GetSharedMailbox(ctx context.Context, id string) (directory.SharedMailbox, error) {
	return read1(ctx, s, func(r *reader) (directory.SharedMailbox, error) { return r.GetSharedMailbox(ctx, id) })
}

func (s *sqlStore) ListSharedMailboxes(ctx context.Context, page Page) ([]directory.SharedMailbox, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.SharedMailbox, string, int, error) {
		return r.ListSharedMailboxes(ctx, page)
	})
}

func (s *sqlStore) GetTemplate(ctx context.Context, id string) (directory.Template, error) {
	return read1(ctx, s, func(r *reader) (directory.Template, error) { return r.GetTemplate(ctx, id) })
}

func (s *sqlStore) GetTemplateByName(ctx context.Context, name string) (directory.Template, error) {
	return read1(ctx, s, func(r *reader) (directory.Template, error) { return r.GetTemplateByName(ctx, name) })
}

func (s *sqlStore) ListTemplates(ctx context.Context, page Page) ([]directory.Template, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.Template, string, int, error) { return r.ListTemplates(ctx, page) })
}

func (s *sqlStore) GetToken(ctx context.Context, id string) (directory.Token, error) {
	return read1(ctx, s, func(r *reader) (directory.Token, error) { return r.GetToken(ctx, id) })
}

func (s *sqlStore) ListTokens(ctx context.Context, f TokenFilter) ([]directory.Token, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.Token, string, int, error) { return r.ListTokens(ctx, f) })
}

func (s *sqlStore) LookupAddress(ctx context.Context, address string) (Owner, error) {
	return read1(ctx, s, func(r *reader) (Owner, error) { return r.LookupAddress(ctx, address) })
}

// ListAudit implements Store.
func (s *sqlStore) ListAudit(ctx context.Context, f AuditFilter) ([]directory.AuditEntry, string, int, error) {
	return readList(ctx, s, func(r *reader) ([]directory.AuditEntry, string, int, error) { return r.listAudit(ctx, f) })
}

// TouchToken implements Store.
func (s *sqlStore) TouchToken(ctx context.Context, id string, at time.Time) error {
	us := at.UTC().Truncate(time.Microsecond).UnixMicro()
	_, err := s.w.ExecContext(ctx, `UPDATE tokens SET last_used_us = $2
		WHERE id = $1 AND (last_used_us IS NULL OR last_used_us <= $3)`,
		id, us, us-TouchGranularity.Microseconds())
	if err != nil {
		return fmt.Errorf("users store: touch token %s: %w", id, err)
	}
	return nil
}

// ChangesSince implements Store.
func (s *sqlStore) ChangesSince(ctx context.Context, after int64, limit int) ([]directory.Change, error) {
	if limit <= 0 {
		limit = DefaultChangesLimit
	}
	limit = min(limit, MaxChangesLimit)
	rows, err := s.r.QueryContext(ctx, `SELECT seq, at_us, kind, object_id, op, actor, data
		FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("users store: changes since %d: %w", after, err)
	}
	defer rows.Close()
	out := make([]directory.Change, 0, min(limit, 256))
	for rows.Next() {
		var (
			c    directory.Change
			at   int64
			data []byte
		)
		if err := rows.Scan(&c.Seq, &at, &c.Kind, &c.ID, &c.Op, &c.Actor, &data); err != nil {
			return nil, fmt.Errorf("users store: changes since %d: %w", after, err)
		}
		c.At = fromMicros(at)
		if data != nil {
			c.Data = json.RawMessage(data)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("users store: changes since %d: %w", after, err)
	}
	return out, nil
}

// LastSeq implements Store.
func (s *sqlStore) LastSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT seq FROM change_seq WHERE id = 1`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("users store: last seq: %w", err)
	}
	return seq, nil
}

// OldestSeq implements Store.
func (s *sqlStore) OldestSeq(ctx context.Context) (int64, error) {
	return read1(ctx, s, func(r *reader) (int64, error) {
		var oldest sql.NullInt64
		if err := r.q.QueryRowContext(ctx, `SELECT MIN(seq) FROM changes`).Scan(&oldest); err != nil {
			return 0, fmt.Errorf("users store: oldest seq: %w", err)
		}
		if oldest.Valid {
			return oldest.Int64, nil
		}
		var last int64
		if err := r.q.QueryRowContext(ctx, `SELECT seq FROM change_seq WHERE id = 1`).Scan(&last); err != nil {
			return 0, fmt.Errorf("users store: oldest seq: %w", err)
		}
		return last + 1, nil
	})
}

// Compact implements Store.
func (s *sqlStore) Compact(ctx context.Context, upTo int64, before time.Time) (int64, error) {
	beforeUS := int64(math.MaxInt64)
	if !before.IsZero() {
		beforeUS = before.UnixMicro()
	}
	res, err := s.w.ExecContext(ctx, `DELETE FROM changes WHERE seq <= $1 AND at_us < $2`, upTo, beforeUS)
	if err != nil {
		return 0, fmt.Errorf("users store: compact change log: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("users store: compact change log: %w", err)
	}
	return n, nil
}

// Snapshot implements Store.
func (s *sqlStore) Snapshot(ctx context.Context) (*Snapshot, error) {
	return read1(ctx, s, func(r *reader) (*Snapshot, error) { return r.snapshot(ctx) })
}

// SealedPOP3Passwords implements Store.
func (s *sqlStore) SealedPOP3Passwords(ctx context.Context) (map[string]string, error) {
	return read1(ctx, s, func(r *reader) (map[string]string, error) {
		accts, err := allData[directory.POP3Account](ctx, r, directory.KindPOP3Account, `SELECT data FROM pop3_accounts ORDER BY id`)
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, a := range accts {
			if a.PasswordEnc != "" {
				out[a.ID] = a.PasswordEnc
			}
		}
		return out, nil
	})
}

// OutboxPosition implements Store.
func (s *sqlStore) OutboxPosition(ctx context.Context, name string) (int64, error) {
	var seq int64
	err := s.r.QueryRowContext(ctx, `SELECT seq FROM outbox_positions WHERE name = $1`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("users store: outbox position of %s: %w", name, err)
	}
	return seq, nil
}

// SetOutboxPosition implements Store.
func (s *sqlStore) SetOutboxPosition(ctx context.Context, name string, seq int64) error {
	if name == "" || seq < 0 {
		return fmt.Errorf("users store: outbox position: need a name and a seq >= 0")
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO outbox_positions (name, seq) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, name, seq)
	if err != nil {
		return fmt.Errorf("users store: set outbox position of %s: %w", name, err)
	}
	return nil
}

// Ping implements Store.
func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("users store: ping: %w", err)
	}
	if s.r != s.w {
		if err := s.r.PingContext(ctx); err != nil {
			return fmt.Errorf("users store: ping: %w", err)
		}
	}
	return nil
}

// Close implements Store.
func (s *sqlStore) Close() error {
	s.closeOnce.Do(func() {
		if s.stopBackground != nil {
			s.stopBackground()
			<-s.backgroundDone
		}
		err := s.w.Close()
		if s.r != s.w {
			err = errors.Join(err, s.r.Close())
		}
		s.closeErr = err
	})
	return s.closeErr
}

// WaitForChange implements Store.
func (s *sqlStore) WaitForChange(ctx context.Context, after int64) (int64, error) {
	last := after
	for {
		woken := s.hub.wait() // before reading, so a commit in between wakes us
		seq, err := s.LastSeq(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, err
		}
		last = seq
		if seq > after {
			return seq, nil
		}
		poll := time.NewTimer(PollInterval)
		select {
		case <-woken:
		case <-poll.C:
		case <-ctx.Done():
			poll.Stop()
			return last, ctx.Err()
		}
		poll.Stop()
	}
}

// hub wakes the goroutines waiting for a change.
type hub struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next notify.
func (h *hub) wait() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch == nil {
		h.ch = make(chan struct{})
	}
	return h.ch
}

func (h *hub) notify() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch != nil {
		close(h.ch)
		h.ch = nil
	}
}
