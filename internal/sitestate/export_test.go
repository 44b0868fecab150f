package sitestate

import "context"

// PurgeSQLite runs the SQLite store's purge of expired rows now.
func PurgeSQLite(ctx context.Context, s Store) error { return s.(*sqliteStore).purge(ctx) }

// SQLiteRows counts the rows of a table of the SQLite store, expired or not.
func SQLiteRows(ctx context.Context, s Store, table string) (int, error) {
	var n int
	err := s.(*sqliteStore).r.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}
