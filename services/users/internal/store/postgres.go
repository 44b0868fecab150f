package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

var postgresDialect = &dialect{
	name: DriverPostgres,
	// Read transactions see one snapshot (REPEATABLE READ) so that a list's
	// count and items, and a Snapshot's seq and objects, agree. Write
	// transactions run at READ COMMITTED: lockSeq serialises them, and
	// every statement after it sees every earlier commit.
	readTx:      &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true},
	notify:      `SELECT pg_notify('` + notifyChannel + `', '')`,
	migrateLock: `SELECT pg_advisory_xact_lock(7223401)`, // any constant of our own
}

// Pool sizes of the PostgreSQL store.
const (
	pgMaxConns    = 16
	pgMaxIdleTime = 5 * time.Minute
)

// OpenPostgres connects to the PostgreSQL database dsn names (a URL or
// key=value string), brings its schema up to date, and listens for the
// commits of other instances (WaitForChange).
func OpenPostgres(ctx context.Context, dsn string) (Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's message quotes the DSN with the password redacted; still,
		// say no more than needed.
		return nil, errors.New("users store: the PostgreSQL connection string does not parse")
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(pgMaxConns)
	db.SetMaxIdleConns(pgMaxConns)
	db.SetConnMaxIdleTime(pgMaxIdleTime)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("users store: connect to PostgreSQL: %w", err)
	}
	if err := migrate(ctx, db, postgresDialect); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("users store: migrate: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	s := &sqlStore{d: postgresDialect, w: db, r: db, stopBackground: cancel, backgroundDone: make(chan struct{})}
	go s.listen(lctx, cfg.Copy())
	return s, nil
}

// listen keeps a connection LISTENing to notifyChannel and wakes the
// waiters of WaitForChange on every notification, reconnecting with
// backoff when the connection fails. WaitForChange polls anyway, so a
// broken listener only delays wake-ups from other instances.
func (s *sqlStore) listen(ctx context.Context, cfg *pgx.ConnConfig) {
	defer close(s.backgroundDone)
	const minBackoff, maxBackoff = 500 * time.Millisecond, 30 * time.Second
	backoff := minBackoff
	for {
		start := time.Now()
		err := s.listenOnce(ctx, cfg)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > maxBackoff {
			backoff = minBackoff
		}
		slog.Warn("users store: LISTEN connection failed, reconnecting", "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (s *sqlStore) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	s.hub.notify() // a commit may have happened while we were not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		s.hub.notify()
	}
}
