package store_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/users/internal/store"
	"github.com/postern/postern/services/users/internal/store/storetest"
)

func openSQLite(t testing.TB) store.Store {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openPostgres(t testing.TB) store.Store {
	t.Helper()
	s, _ := openPostgresDSN(t)
	return s
}

func openPostgresDSN(t testing.TB) (store.Store, string) {
	t.Helper()
	dsn := testenv.PostgresDB(t)
	s, err := store.OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, dsn
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openSQLite(t) })
}

func TestPostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openPostgres(t) })
}

// A database migrated by a newer program is refused, and nothing is
// changed; reopening an up-to-date one is a no-op.
func TestSchemaTooNew(t *testing.T) {
	ctx := context.Background()
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "users.db")
		s, err := store.OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		if s, err = store.OpenSQLite(ctx, path); err != nil {
			t.Fatalf("reopen: %v", err)
		}
		_ = s.Close()
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (9999, '9999_future', 0)`); err != nil {
			t.Fatal(err)
		}
		_ = db.Close()
		if _, err := store.OpenSQLite(ctx, path); !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("open of a newer schema: %v", err)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := testenv.PostgresDB(t)
		s, err := store.OpenPostgres(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		if s, err = store.OpenPostgres(ctx, dsn); err != nil {
			t.Fatalf("reopen: %v", err)
		}
		_ = s.Close()
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (9999, '9999_future', 0)`); err != nil {
			t.Fatal(err)
		}
		_ = db.Close()
		if _, err := store.OpenPostgres(ctx, dsn); !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("open of a newer schema: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  store.Config
		keys []string
	}{
		{"default", store.DefaultConfig(), nil},
		{"postgres", store.Config{Driver: "postgres", PostgresDSN: "postgres://u@db:5432/users?sslmode=disable"}, nil},
		{"postgres key=value", store.Config{Driver: "postgres", PostgresDSN: "host=db dbname=users"}, nil},
		{"unknown driver", store.Config{Driver: "mysql"}, []string{"driver"}},
		{"postgres without dsn", store.Config{Driver: "postgres"}, []string{"postgres_dsn"}},
		{"bad dsn", store.Config{Driver: "postgres", PostgresDSN: "postgres://u:secret@[::1"}, []string{"postgres_dsn"}},
		{"no sqlite path", store.Config{Driver: "sqlite"}, []string{"sqlite_path"}},
		{"memory", store.Config{Driver: "sqlite", SQLitePath: ":memory:"}, []string{"sqlite_path"}},
		{"query in path", store.Config{Driver: "sqlite", SQLitePath: "x.db?mode=ro"}, []string{"sqlite_path"}},
	} {
		err := c.cfg.Validate()
		if got := config.Keys(err); !slices.Equal(got, c.keys) {
			t.Errorf("%s: keys %v (%v), want %v", c.name, got, err, c.keys)
		}
		if err != nil && c.cfg.PostgresDSN.IsSet() && containsSecret(err.Error()) {
			t.Errorf("%s: the message shows the DSN's password: %v", c.name, err)
		}
	}
	s, err := store.Open(context.Background(), store.Config{Driver: "sqlite", SQLitePath: filepath.Join(t.TempDir(), "a", "b.db")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
}

func containsSecret(s string) bool {
	for i := 0; i+6 <= len(s); i++ {
		if s[i:i+6] == "secret" {
			return true
		}
	}
	return false
}
