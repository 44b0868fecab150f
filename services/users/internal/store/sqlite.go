package store

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

var sqliteDialect = &dialect{
	name:       DriverSQLite,
	readTx:     &sql.TxOptions{ReadOnly: true},
	anonParams: true,
}

// OpenSQLite opens the SQLite database at path (creating it and its
// directory if need be) and brings its schema up to date.
//
// The database runs in WAL mode with synchronous=FULL (a write the API
// acknowledged survives a power cut) and foreign keys on. Writes go through
// one connection in BEGIN IMMEDIATE transactions, so writers of this process
// queue in database/sql instead of failing with SQLITE_BUSY; busy_timeout
// covers other processes. Reads use a pool of read-only connections, each
// read transaction one consistent view of the last commit.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	if err := checkSQLitePath(path); err != nil {
		return nil, fmt.Errorf("users store: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("users store: create the directory of %s: %w", path, err)
	}
	w, err := sql.Open("sqlite", path+"?_txlock=immediate&_busy_timeout=10000&_journal_mode=WAL&_synchronous=FULL&_foreign_keys=1")
	if err != nil {
		return nil, fmt.Errorf("users store: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w, sqliteDialect); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("users store: migrate %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", path+"?_busy_timeout=10000&_foreign_keys=1&_query_only=1")
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("users store: open %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	if err := r.PingContext(ctx); err != nil {
		_ = w.Close()
		_ = r.Close()
		return nil, fmt.Errorf("users store: open %s: %w", path, err)
	}
	// Planner statistics: SQLite keeps none unless asked. This is what its
	// documentation recommends for long-lived connections: optimize at
	// open, then every few hours (optimizeLoop).
	if _, err := w.ExecContext(ctx, "PRAGMA optimize=0x10002"); err != nil {
		_ = w.Close()
		_ = r.Close()
		return nil, fmt.Errorf("users store: optimize %s: %w", path, err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	s := &sqlStore{d: sqliteDialect, w: w, r: r, stopBackground: cancel, backgroundDone: make(chan struct{})}
	go s.optimizeLoop(bctx)
	return s, nil
}

// optimizeInterval is how often the SQLite store refreshes the planner's
// statistics (ANALYZE of the tables that changed a lot).
const optimizeInterval = time.Hour

func (s *sqlStore) optimizeLoop(ctx context.Context) {
	defer close(s.backgroundDone)
	t := time.NewTicker(optimizeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.w.ExecContext(ctx, "PRAGMA optimize"); err != nil && ctx.Err() == nil {
				slog.Warn("users store: PRAGMA optimize", "error", err)
			}
		}
	}
}
