package sitestate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// migrations bring the schema from version i (PRAGMA user_version) to i+1.
// Append only: a released migration is never edited.
var migrations = [][]string{
	// 0 → 1
	{
		`CREATE TABLE dir_entry (
			kind TEXT NOT NULL,
			id   TEXT NOT NULL,
			body BLOB NOT NULL, -- storedEntry JSON: version, keys, data
			PRIMARY KEY (kind, id)
		) WITHOUT ROWID`,
		`CREATE TABLE dir_key (
			kind TEXT NOT NULL,
			key  TEXT NOT NULL,
			id   TEXT NOT NULL, -- the entry (kind, id) that owns key
			PRIMARY KEY (kind, key)
		) WITHOUT ROWID`,
		`CREATE TABLE dir_state (
			one       INTEGER PRIMARY KEY CHECK (one = 1),
			cursor    TEXT    NOT NULL DEFAULT '',
			synced_ms INTEGER NOT NULL DEFAULT 0 -- Unix ms, UTC
		)`,
		`CREATE TABLE ledger (
			account       TEXT    NOT NULL,
			uidl          TEXT    NOT NULL,
			handed_off_ms INTEGER NOT NULL,
			body          BLOB    NOT NULL, -- storedLedger JSON
			PRIMARY KEY (account, uidl)
		) WITHOUT ROWID`,
		`CREATE TABLE idempotency (
			key        TEXT    PRIMARY KEY,
			expires_ms INTEGER NOT NULL
		) WITHOUT ROWID`,
		`CREATE INDEX idempotency_expires ON idempotency (expires_ms)`,
		`CREATE TABLE message_index (
			message_id TEXT    PRIMARY KEY,
			body       BLOB    NOT NULL, -- storedRecord JSON
			expires_ms INTEGER NOT NULL
		) WITHOUT ROWID`,
		`CREATE INDEX message_index_expires ON message_index (expires_ms)`,
		`CREATE TABLE rate_limit (
			key      TEXT    PRIMARY KEY,
			count    INTEGER NOT NULL,
			reset_ms INTEGER NOT NULL
		) WITHOUT ROWID`,
		`CREATE INDEX rate_limit_reset ON rate_limit (reset_ms)`,
	},
	// 1 → 2: the trace index
	{
		`CREATE TABLE trace_list (
			key        TEXT    PRIMARY KEY,
			expires_ms INTEGER NOT NULL,
			dropped    INTEGER NOT NULL DEFAULT 0
		) WITHOUT ROWID`,
		`CREATE INDEX trace_list_expires ON trace_list (expires_ms)`,
		`CREATE TABLE trace_entry (
			key   TEXT    NOT NULL, -- the trace_list it belongs to
			id    TEXT    NOT NULL,
			at_ms INTEGER NOT NULL,
			body  BLOB    NOT NULL, -- TraceEntry.Data, compacted ('' for none)
			PRIMARY KEY (key, id)
		) WITHOUT ROWID`,
		`CREATE INDEX trace_entry_order ON trace_entry (key, at_ms, id)`,
	},
}

// purgeInterval is how often expired idempotency keys, Message-IDs, rate
// limit windows and trace lists are removed from the SQLite file (reads ignore them anyway).
const purgeInterval = time.Minute

// sqliteStore keeps the site state in one SQLite file in WAL mode. Every
// write goes through one connection, in IMMEDIATE transactions, so writers
// in this process queue instead of failing with SQLITE_BUSY; busy_timeout
// covers other processes (the CLI). Reads use a pool of read-only
// connections and see the last committed transaction.
type sqliteStore struct {
	path string
	w    *sql.DB
	r    *sql.DB

	stopPurge context.CancelFunc
	purgeDone chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// OpenSQLite opens (creating it and its directory if need be) the SQLite
// database at path and brings its schema up to date.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	s, err := openSQLite(ctx, path)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func openSQLite(ctx context.Context, path string) (*sqliteStore, error) {
	if err := checkSQLitePath(path); err != nil {
		return nil, fmt.Errorf("sitestate: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("sitestate: create directory of %s: %w", path, err)
	}
	// synchronous=FULL: a committed ledger entry or idempotency key must
	// survive a power cut, or mail could be fetched or delivered twice.
	w, err := sql.Open("sqlite", path+"?_busy_timeout=10000&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sitestate: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("sitestate: migrate %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", path+"?_busy_timeout=10000&_query_only=1")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sitestate: open %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("sitestate: open %s: %w", path, err)
	}
	pctx, cancel := context.WithCancel(context.Background())
	s := &sqliteStore{path: path, w: w, r: r, stopPurge: cancel, purgeDone: make(chan struct{})}
	go s.purgeLoop(pctx)
	return s, nil
}

// migrate applies the migrations the database lacks, each in its own
// transaction together with the new user_version.
func migrate(ctx context.Context, db *sql.DB) error {
	for {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			tx.Rollback()
			return err
		}
		if v > len(migrations) {
			tx.Rollback()
			return fmt.Errorf("schema version %d is newer than this program knows (%d)", v, len(migrations))
		}
		if v == len(migrations) {
			return tx.Commit()
		}
		for _, stmt := range migrations[v] {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return fmt.Errorf("to version %d: %w", v+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
}

func (s *sqliteStore) purgeLoop(ctx context.Context) {
	defer close(s.purgeDone)
	t := time.NewTicker(purgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			func() {
				defer func() {
					if p := recover(); p != nil {
						slog.Error("sitestate: purge panicked", "panic", p)
					}
				}()
				if err := s.purge(ctx); err != nil && ctx.Err() == nil {
					slog.Warn("sitestate: purge expired rows", "path", s.path, "error", err)
				}
			}()
		}
	}
}

// purge deletes expired idempotency keys, Message-IDs, rate-limit windows
// and trace lists.
func (s *sqliteStore) purge(ctx context.Context) error {
	now := time.Now().UnixMilli()
	return s.write(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`DELETE FROM idempotency WHERE expires_ms <= ?`,
			`DELETE FROM message_index WHERE expires_ms <= ?`,
			`DELETE FROM rate_limit WHERE reset_ms <= ?`,
			`DELETE FROM trace_entry WHERE key IN (SELECT key FROM trace_list WHERE expires_ms <= ?)`,
			`DELETE FROM trace_list WHERE expires_ms <= ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, now); err != nil {
				return err
			}
		}
		return nil
	})
}

// write runs fn in an IMMEDIATE transaction on the writer connection.
func (s *sqliteStore) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (s *sqliteStore) Directory() Directory       { return sqliteDirectory{s} }
func (s *sqliteStore) Ledger() Ledger             { return sqliteLedger{s} }
func (s *sqliteStore) Idempotency() Idempotency   { return sqliteIdempotency{s} }
func (s *sqliteStore) MessageIndex() MessageIndex { return sqliteMessageIndex{s} }
func (s *sqliteStore) RateLimits() RateLimits     { return sqliteRateLimits{s} }
func (s *sqliteStore) TraceIndex() TraceIndex     { return sqliteTraceIndex{s} }

func (s *sqliteStore) Ping(ctx context.Context) error {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM dir_state`).Scan(&n); err != nil {
		return fmt.Errorf("sitestate: ping sqlite %s: %w", s.path, err)
	}
	return nil
}

func (s *sqliteStore) Close() error {
	s.closeOnce.Do(func() {
		s.stopPurge()
		<-s.purgeDone
		s.closeErr = errors.Join(s.r.Close(), s.w.Close())
	})
	return s.closeErr
}

// ---------------------------------------------------------------------------

type sqliteDirectory struct{ s *sqliteStore }

func (d sqliteDirectory) Get(ctx context.Context, kind, id string) (Entry, error) {
	if err := checkRef(Ref{kind, id}); err != nil {
		return Entry{}, err
	}
	var body []byte
	err := d.s.r.QueryRowContext(ctx, `SELECT body FROM dir_entry WHERE kind = ? AND id = ?`, kind, id).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, fmt.Errorf("directory entry %s/%s: %w", kind, id, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("get directory entry %s/%s: %w", kind, id, err)
	}
	return decodeEntry(kind, id, body)
}

func (d sqliteDirectory) Lookup(ctx context.Context, kind, key string) (Entry, error) {
	if err := checkKind(kind); err != nil {
		return Entry{}, err
	}
	if err := checkString("key", key); err != nil {
		return Entry{}, err
	}
	var id string
	var body []byte
	err := d.s.r.QueryRowContext(ctx, `
		SELECT e.id, e.body FROM dir_key k JOIN dir_entry e ON e.kind = k.kind AND e.id = k.id
		WHERE k.kind = ? AND k.key = ?`, kind, key).Scan(&id, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, fmt.Errorf("directory key %s/%q: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("look up directory key %s/%q: %w", kind, key, err)
	}
	return decodeEntry(kind, id, body)
}

func (d sqliteDirectory) List(ctx context.Context, kind string) ([]Entry, error) {
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	rows, err := d.s.r.QueryContext(ctx, `SELECT id, body FROM dir_entry WHERE kind = ? ORDER BY id`, kind)
	if err != nil {
		return nil, fmt.Errorf("list directory %s: %w", kind, err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			return nil, fmt.Errorf("list directory %s: %w", kind, err)
		}
		e, err := decodeEntry(kind, id, body)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list directory %s: %w", kind, err)
	}
	return out, nil
}

func (d sqliteDirectory) SyncState(ctx context.Context) (SyncState, error) {
	var st SyncState
	var ms int64
	err := d.s.r.QueryRowContext(ctx, `SELECT cursor, synced_ms FROM dir_state WHERE one = 1`).Scan(&st.Cursor, &ms)
	if errors.Is(err, sql.ErrNoRows) {
		return SyncState{}, nil
	}
	if err != nil {
		return SyncState{}, fmt.Errorf("read directory sync state: %w", err)
	}
	st.SyncedAt = fromMS(ms)
	return st, nil
}

func (d sqliteDirectory) Apply(ctx context.Context, cs ChangeSet) error {
	cs, err := cleanChangeSet(cs)
	if err != nil {
		return err
	}
	err = d.s.write(ctx, func(tx *sql.Tx) error {
		a := &sqliteApply{ctx: ctx, tx: tx}
		defer a.close()
		return applyChangeSet(a, cs)
	})
	if err != nil {
		return fmt.Errorf("apply directory change set: %w", err)
	}
	return nil
}

func (d sqliteDirectory) MarkSynced(ctx context.Context, cursor string, at time.Time) error {
	if err := checkCursor(cursor); err != nil {
		return err
	}
	_, err := d.s.w.ExecContext(ctx, `
		INSERT INTO dir_state (one, cursor, synced_ms) VALUES (1, ?1, ?2)
		ON CONFLICT (one) DO UPDATE SET
			synced_ms = excluded.synced_ms,
			cursor = CASE WHEN ?1 = '' THEN cursor ELSE excluded.cursor END`,
		cursor, toMS(stamp(at)))
	if err != nil {
		return fmt.Errorf("mark directory synced: %w", err)
	}
	return nil
}

// sqliteApply is the applyTarget of one SQLite transaction. It prepares
// each statement once per transaction: a snapshot runs them thousands of
// times.
type sqliteApply struct {
	ctx   context.Context
	tx    *sql.Tx
	stmts map[string]*sql.Stmt
}

func (a *sqliteApply) stmt(q string) (*sql.Stmt, error) {
	if st, ok := a.stmts[q]; ok {
		return st, nil
	}
	st, err := a.tx.PrepareContext(a.ctx, q)
	if err != nil {
		return nil, err
	}
	if a.stmts == nil {
		a.stmts = map[string]*sql.Stmt{}
	}
	a.stmts[q] = st
	return st, nil
}

func (a *sqliteApply) close() {
	for _, st := range a.stmts {
		st.Close()
	}
}

func (a *sqliteApply) exec(q string, args ...any) error {
	st, err := a.stmt(q)
	if err != nil {
		return err
	}
	_, err = st.ExecContext(a.ctx, args...)
	return err
}

func (a *sqliteApply) queryRow(q string, args ...any) *sql.Row {
	st, err := a.stmt(q)
	if err != nil {
		// Let Scan report the error.
		return a.tx.QueryRowContext(a.ctx, q, args...)
	}
	return st.QueryRowContext(a.ctx, args...)
}

func (a *sqliteApply) clear() error {
	if err := a.exec(`DELETE FROM dir_entry`); err != nil {
		return err
	}
	return a.exec(`DELETE FROM dir_key`)
}

func (a *sqliteApply) get(kind, id string) (Entry, bool, error) {
	var body []byte
	err := a.queryRow(`SELECT body FROM dir_entry WHERE kind = ? AND id = ?`, kind, id).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	e, err := decodeEntry(kind, id, body)
	return e, err == nil, err
}

func (a *sqliteApply) put(e Entry) error {
	body, err := encodeEntry(e)
	if err != nil {
		return err
	}
	return a.exec(`INSERT OR REPLACE INTO dir_entry (kind, id, body) VALUES (?, ?, ?)`, e.Kind, e.ID, body)
}

func (a *sqliteApply) del(kind, id string) error {
	return a.exec(`DELETE FROM dir_entry WHERE kind = ? AND id = ?`, kind, id)
}

func (a *sqliteApply) owner(kind, key string) (string, bool, error) {
	var id string
	err := a.queryRow(`SELECT id FROM dir_key WHERE kind = ? AND key = ?`, kind, key).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return id, err == nil, err
}

func (a *sqliteApply) setOwner(kind, key, id string) error {
	return a.exec(`INSERT OR REPLACE INTO dir_key (kind, key, id) VALUES (?, ?, ?)`, kind, key, id)
}

func (a *sqliteApply) delOwner(kind, key string) error {
	return a.exec(`DELETE FROM dir_key WHERE kind = ? AND key = ?`, kind, key)
}

func (a *sqliteApply) setCursor(cursor string) error {
	return a.exec(`INSERT INTO dir_state (one, cursor) VALUES (1, ?)
		ON CONFLICT (one) DO UPDATE SET cursor = excluded.cursor`, cursor)
}

// ---------------------------------------------------------------------------

type sqliteLedger struct{ s *sqliteStore }

// update runs fn on the entry (account, uidl) in one transaction and stores
// what it returns when it asks to.
func (l sqliteLedger) update(ctx context.Context, account, uidl string,
	fn func(e LedgerEntry, exists bool) (next LedgerEntry, write bool, err error)) (LedgerEntry, error) {
	var out LedgerEntry
	err := l.s.write(ctx, func(tx *sql.Tx) error {
		var body []byte
		var cur LedgerEntry
		err := tx.QueryRowContext(ctx, `SELECT body FROM ledger WHERE account = ? AND uidl = ?`, account, uidl).Scan(&body)
		exists := err == nil
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			if cur, err = decodeLedger(account, uidl, body); err != nil {
				return err
			}
		}
		next, write, err := fn(cur, exists)
		if err != nil {
			return err
		}
		out = next
		if !write {
			return nil
		}
		body, err = encodeLedger(next)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO ledger (account, uidl, handed_off_ms, body) VALUES (?, ?, ?, ?)`,
			account, uidl, toMS(next.HandedOffAt), body)
		return err
	})
	return out, err
}

func (l sqliteLedger) RecordHandoff(ctx context.Context, account, uidl string, h Handoff) (LedgerEntry, bool, error) {
	e, err := newLedgerEntry(account, uidl, h)
	if err != nil {
		return LedgerEntry{}, false, err
	}
	created := false
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		created = !exists
		if exists {
			return cur, false, nil
		}
		return e, true, nil
	})
	if err != nil {
		return LedgerEntry{}, false, fmt.Errorf("record hand-off %s/%s: %w", account, uidl, err)
	}
	return out, created, nil
}

func (l sqliteLedger) MarkDelivered(ctx context.Context, account, uidl string, at time.Time, recipients ...string) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	at = stamp(at)
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		if !exists {
			return cur, false, ErrNotFound
		}
		return cur, markDelivered(&cur, at, recipients), nil
	})
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("mark %s/%s delivered: %w", account, uidl, err)
	}
	return out, nil
}

func (l sqliteLedger) MarkDeleted(ctx context.Context, account, uidl string, at time.Time) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	at = stamp(at)
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		if !exists {
			return cur, false, ErrNotFound
		}
		return cur, markDeleted(&cur, at), nil
	})
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("mark %s/%s deleted: %w", account, uidl, err)
	}
	return out, nil
}

func (l sqliteLedger) Get(ctx context.Context, account, uidl string) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	var body []byte
	err := l.s.r.QueryRowContext(ctx, `SELECT body FROM ledger WHERE account = ? AND uidl = ?`, account, uidl).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return LedgerEntry{}, fmt.Errorf("ledger entry %s/%s: %w", account, uidl, ErrNotFound)
	}
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("get ledger entry %s/%s: %w", account, uidl, err)
	}
	return decodeLedger(account, uidl, body)
}

func (l sqliteLedger) List(ctx context.Context, account string) ([]LedgerEntry, error) {
	if err := checkString("account", account); err != nil {
		return nil, err
	}
	rows, err := l.s.r.QueryContext(ctx, `SELECT uidl, body FROM ledger WHERE account = ? ORDER BY handed_off_ms, uidl`, account)
	if err != nil {
		return nil, fmt.Errorf("list ledger %s: %w", account, err)
	}
	defer rows.Close()
	var out []LedgerEntry
	for rows.Next() {
		var uidl string
		var body []byte
		if err := rows.Scan(&uidl, &body); err != nil {
			return nil, fmt.Errorf("list ledger %s: %w", account, err)
		}
		e, err := decodeLedger(account, uidl, body)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list ledger %s: %w", account, err)
	}
	return out, nil
}

func (l sqliteLedger) Forget(ctx context.Context, account, uidl string) error {
	if err := checkLedgerKey(account, uidl); err != nil {
		return err
	}
	if _, err := l.s.w.ExecContext(ctx, `DELETE FROM ledger WHERE account = ? AND uidl = ?`, account, uidl); err != nil {
		return fmt.Errorf("forget ledger entry %s/%s: %w", account, uidl, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type sqliteIdempotency struct{ s *sqliteStore }

// sqliteClaim claims key ?1 until ?2 (Unix ms) at time ?3 in one statement:
// insert, or take over an expired key; an unexpired key is left alone and
// no row is affected.
const sqliteClaim = `
	INSERT INTO idempotency (key, expires_ms) VALUES (?1, ?2)
	ON CONFLICT (key) DO UPDATE SET expires_ms = excluded.expires_ms
	WHERE expires_ms <= ?3`

// sqliteSeenChunk bounds the keys of one SELECT ... IN (...) of SeenAll,
// well below SQLite's limit on bound parameters.
const sqliteSeenChunk = 500

func (i sqliteIdempotency) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if err := checkString("idempotency key", key); err != nil {
		return false, err
	}
	ms, err := ttlMS(ttl)
	if err != nil {
		return false, err
	}
	now := time.Now().UnixMilli()
	res, err := i.s.w.ExecContext(ctx, sqliteClaim, key, now+ms, now)
	if err != nil {
		return false, fmt.Errorf("claim idempotency key %q: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("claim idempotency key %q: %w", key, err)
	}
	return n == 1, nil
}

// ClaimAll claims every key in one IMMEDIATE transaction: one commit, so
// one fsync (synchronous=FULL) for the whole batch.
func (i sqliteIdempotency) ClaimAll(ctx context.Context, keys []string, ttl time.Duration) ([]bool, error) {
	ms, err := ttlMS(ttl)
	if err != nil {
		return nil, err
	}
	if err := checkIdempotencyKeys(keys); err != nil {
		return nil, err
	}
	claimed := make([]bool, len(keys))
	if len(keys) == 0 {
		return claimed, nil
	}
	now := time.Now().UnixMilli()
	err = i.s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, sqliteClaim)
		if err != nil {
			return err
		}
		defer st.Close()
		for j, k := range keys {
			res, err := st.ExecContext(ctx, k, now+ms, now)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			claimed[j] = n == 1
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", describeKeys(keys), err)
	}
	return claimed, nil
}

// SeenAll reads the keys with one SELECT per sqliteSeenChunk keys, in one
// read transaction (one snapshot of the WAL database).
func (i sqliteIdempotency) SeenAll(ctx context.Context, keys []string) ([]bool, error) {
	if err := checkIdempotencyKeys(keys); err != nil {
		return nil, err
	}
	seen := make([]bool, len(keys))
	if len(keys) == 0 {
		return seen, nil
	}
	tx, err := i.s.r.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", describeKeys(keys), err)
	}
	defer tx.Rollback()
	now := time.Now().UnixMilli()
	set := make(map[string]bool, len(keys))
	for chunk := range slices.Chunk(keys, sqliteSeenChunk) {
		args := make([]any, 0, len(chunk)+1)
		args = append(args, now)
		for _, k := range chunk {
			args = append(args, k)
		}
		q := `SELECT key FROM idempotency WHERE expires_ms > ? AND key IN (?` + strings.Repeat(`, ?`, len(chunk)-1) + `)`
		if err := scanKeys(ctx, tx, q, args, set); err != nil {
			return nil, fmt.Errorf("read %s: %w", describeKeys(keys), err)
		}
	}
	for j, k := range keys {
		seen[j] = set[k]
	}
	return seen, nil
}

// scanKeys runs q, which selects one TEXT column, and adds each value to set.
func scanKeys(ctx context.Context, tx *sql.Tx, q string, args []any, set map[string]bool) error {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return err
		}
		set[k] = true
	}
	return rows.Err()
}

func (i sqliteIdempotency) Seen(ctx context.Context, key string) (bool, error) {
	if err := checkString("idempotency key", key); err != nil {
		return false, err
	}
	var one int
	err := i.s.r.QueryRowContext(ctx, `SELECT 1 FROM idempotency WHERE key = ? AND expires_ms > ?`,
		key, time.Now().UnixMilli()).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read idempotency key %q: %w", key, err)
	}
	return true, nil
}

func (i sqliteIdempotency) Forget(ctx context.Context, key string) error {
	if err := checkString("idempotency key", key); err != nil {
		return err
	}
	if _, err := i.s.w.ExecContext(ctx, `DELETE FROM idempotency WHERE key = ?`, key); err != nil {
		return fmt.Errorf("forget idempotency key %q: %w", key, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type sqliteMessageIndex struct{ s *sqliteStore }

func (m sqliteMessageIndex) Put(ctx context.Context, messageID string, rec MessageRecord, ttl time.Duration) error {
	id, body, ms, err := prepareMessageRecord(messageID, rec, ttl)
	if err != nil {
		return err
	}
	_, err = m.s.w.ExecContext(ctx, `INSERT OR REPLACE INTO message_index (message_id, body, expires_ms) VALUES (?, ?, ?)`,
		id, body, time.Now().UnixMilli()+ms)
	if err != nil {
		return fmt.Errorf("index message-id %q: %w", id, err)
	}
	return nil
}

func (m sqliteMessageIndex) Lookup(ctx context.Context, messageID string) (MessageRecord, error) {
	id, err := NormalizeMessageID(messageID)
	if err != nil {
		return MessageRecord{}, err
	}
	var body []byte
	err = m.s.r.QueryRowContext(ctx, `SELECT body FROM message_index WHERE message_id = ? AND expires_ms > ?`,
		id, time.Now().UnixMilli()).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return MessageRecord{}, fmt.Errorf("message-id %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return MessageRecord{}, fmt.Errorf("look up message-id %q: %w", id, err)
	}
	return decodeMessageRecord(id, body)
}

// ---------------------------------------------------------------------------

type sqliteRateLimits struct{ s *sqliteStore }

func (r sqliteRateLimits) Hit(ctx context.Context, key string, window time.Duration) (int64, time.Time, error) {
	if err := checkString("rate-limit key", key); err != nil {
		return 0, time.Time{}, err
	}
	ms, err := ttlMS(window)
	if err != nil {
		return 0, time.Time{}, err
	}
	now := time.Now().UnixMilli()
	var count, reset int64
	// In an UPDATE every expression sees the row as it was, so both CASEs
	// test the old window.
	err = r.s.w.QueryRowContext(ctx, `
		INSERT INTO rate_limit (key, count, reset_ms) VALUES (?1, 1, ?2)
		ON CONFLICT (key) DO UPDATE SET
			count    = CASE WHEN reset_ms <= ?3 THEN 1 ELSE count + 1 END,
			reset_ms = CASE WHEN reset_ms <= ?3 THEN excluded.reset_ms ELSE reset_ms END
		RETURNING count, reset_ms`, key, now+ms, now).Scan(&count, &reset)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("count hit on %q: %w", key, err)
	}
	return count, fromMS(reset), nil
}

func (r sqliteRateLimits) Count(ctx context.Context, key string) (int64, time.Time, error) {
	if err := checkString("rate-limit key", key); err != nil {
		return 0, time.Time{}, err
	}
	var count, reset int64
	err := r.s.r.QueryRowContext(ctx, `SELECT count, reset_ms FROM rate_limit WHERE key = ? AND reset_ms > ?`,
		key, time.Now().UnixMilli()).Scan(&count, &reset)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read rate limit %q: %w", key, err)
	}
	return count, fromMS(reset), nil
}

func (r sqliteRateLimits) Reset(ctx context.Context, key string) error {
	if err := checkString("rate-limit key", key); err != nil {
		return err
	}
	if _, err := r.s.w.ExecContext(ctx, `DELETE FROM rate_limit WHERE key = ?`, key); err != nil {
		return fmt.Errorf("reset rate limit %q: %w", key, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type sqliteTraceIndex struct{ s *sqliteStore }

// Append updates every list in one IMMEDIATE transaction (one fsync). A
// list whose TTL ran out but that the purge has not removed yet is emptied
// first, so that it starts again as a new list.
func (x sqliteTraceIndex) Append(ctx context.Context, keys []string, e TraceEntry, p TracePolicy) (bool, error) {
	a, err := prepareTraceAppend(keys, e, p)
	if err != nil {
		return false, err
	}
	if a.data == nil {
		a.data = []byte{}
	}
	now := time.Now().UnixMilli()
	added := false
	err = x.s.write(ctx, func(tx *sql.Tx) error {
		for _, k := range a.keys {
			if _, err := tx.ExecContext(ctx, `DELETE FROM trace_entry WHERE key = ?1
				AND EXISTS (SELECT 1 FROM trace_list WHERE key = ?1 AND expires_ms <= ?2)`, k, now); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `
				INSERT INTO trace_list (key, expires_ms, dropped) VALUES (?1, ?2, 0)
				ON CONFLICT (key) DO UPDATE SET
					dropped    = CASE WHEN expires_ms <= ?3 THEN 0 ELSE dropped END,
					expires_ms = excluded.expires_ms`, k, now+a.ttlMS, now); err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO trace_entry (key, id, at_ms, body) VALUES (?, ?, ?, ?)`,
				k, a.id, a.atMS, a.data)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				continue
			}
			added = true
			var count int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM trace_entry WHERE key = ?`, k).Scan(&count); err != nil {
				return err
			}
			if over := count - a.max; over > 0 {
				if _, err := tx.ExecContext(ctx, `DELETE FROM trace_entry WHERE key = ?1 AND id IN (
					SELECT id FROM trace_entry WHERE key = ?1 ORDER BY at_ms, id LIMIT ?2)`, k, over); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE trace_list SET dropped = dropped + ? WHERE key = ?`, over, k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("append trace entry %q: %w", a.id, err)
	}
	return added, nil
}

// List reads the list in one read transaction (one snapshot).
func (x sqliteTraceIndex) List(ctx context.Context, key string) (Trace, error) {
	if err := checkTraceKey("trace key", key); err != nil {
		return Trace{}, err
	}
	tx, err := x.s.r.BeginTx(ctx, nil)
	if err != nil {
		return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
	}
	defer tx.Rollback()
	var t Trace
	err = tx.QueryRowContext(ctx, `SELECT dropped FROM trace_list WHERE key = ? AND expires_ms > ?`,
		key, time.Now().UnixMilli()).Scan(&t.Dropped)
	if errors.Is(err, sql.ErrNoRows) {
		return Trace{}, fmt.Errorf("trace %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, at_ms, body FROM trace_entry WHERE key = ? ORDER BY at_ms, id`, key)
	if err != nil {
		return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
	}
	defer rows.Close()
	for rows.Next() {
		var e TraceEntry
		var at int64
		var body []byte
		if err := rows.Scan(&e.ID, &at, &body); err != nil {
			return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
		}
		e.At, e.Data = fromMS(at), traceData(body)
		t.Entries = append(t.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
	}
	if len(t.Entries) == 0 {
		return Trace{}, fmt.Errorf("trace %q: %w", key, ErrNotFound)
	}
	return t, nil
}
