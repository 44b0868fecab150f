package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/postern/postern/internal/config"
)

// Drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Config chooses and configures the database.
type Config struct {
	Driver      string        `yaml:"driver" doc:"sqlite (single box) or postgres"`
	SQLitePath  string        `yaml:"sqlite_path" doc:"SQLite database file (driver sqlite); its directory is created"`
	PostgresDSN config.Secret `yaml:"postgres_dsn" doc:"PostgreSQL connection string, URL or key=value (driver postgres); the role needs to create tables on first start"`
}

// DefaultConfig returns the single-box defaults.
func DefaultConfig() Config {
	return Config{Driver: DriverSQLite, SQLitePath: "var/users/users.db"}
}

// Validate checks the settings of the chosen driver; errors are
// *config.FieldError naming keys relative to the section.
func (c Config) Validate() error {
	switch c.Driver {
	case DriverSQLite:
		return checkSQLitePath(c.SQLitePath)
	case DriverPostgres:
		if !c.PostgresDSN.IsSet() {
			return config.Errorf("postgres_dsn", "must be set with driver %q", DriverPostgres)
		}
		// pgx's message quotes the string (password redacted); say less.
		if _, err := pgx.ParseConfig(c.PostgresDSN.Reveal()); err != nil {
			return config.Errorf("postgres_dsn", "is not a PostgreSQL connection string (postgres://user@host:5432/db?sslmode=... or host=... dbname=...)")
		}
		return nil
	default:
		return config.Errorf("driver", "%q: must be %q or %q", c.Driver, DriverSQLite, DriverPostgres)
	}
}

func checkSQLitePath(p string) error {
	switch {
	case p == "":
		return config.Errorf("sqlite_path", "must be set")
	case strings.ContainsAny(p, "?#"):
		return config.Errorf("sqlite_path", "%q: must not contain '?' or '#'", p)
	case strings.HasPrefix(p, "file:") || p == ":memory:":
		return config.Errorf("sqlite_path", "%q: must be a file path (the directory must survive restarts)", p)
	}
	return nil
}

// Open validates cfg and opens the store it chooses.
func Open(ctx context.Context, cfg Config) (Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("users store: %w", err)
	}
	if cfg.Driver == DriverPostgres {
		return OpenPostgres(ctx, cfg.PostgresDSN.Reveal())
	}
	return OpenSQLite(ctx, cfg.SQLitePath)
}
