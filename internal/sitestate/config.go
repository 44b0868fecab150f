package sitestate

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/postern/postern/internal/config"
)

// Backends.
const (
	BackendSQLite = "sqlite"
	BackendRedis  = "redis"
)

// Config chooses and configures the site state's backend.
type Config struct {
	Backend    string      `yaml:"backend" doc:"sqlite (single box) or redis"`
	SQLitePath string      `yaml:"sqlite_path" doc:"SQLite database file (backend sqlite); its directory is created"`
	Redis      RedisConfig `yaml:"redis" doc:"Redis server (backend redis)"`
}

// RedisConfig says how to reach Redis.
type RedisConfig struct {
	Addr     string        `yaml:"addr" doc:"host:port of the Redis server"`
	Username string        `yaml:"username" doc:"ACL user name (empty: default user)"`
	Password config.Secret `yaml:"password" doc:"password (AUTH)"`
	DB       int           `yaml:"db" doc:"database number"`
	// KeyPrefix starts every key the store writes. Sites sharing one Redis
	// must use different prefixes. The store's atomic operations touch
	// several keys at once, so on a Redis Cluster the prefix must be a
	// hash tag ("{postern-site1}:") to keep them in one slot.
	KeyPrefix string `yaml:"key_prefix" doc:"prefix of every key; sites sharing one Redis use different ones"`
	TLS       bool   `yaml:"tls" doc:"connect with TLS, verifying the server's certificate"`
}

// DefaultConfig returns the single-box defaults.
func DefaultConfig() Config {
	return Config{
		Backend:    BackendSQLite,
		SQLitePath: "var/state/site.db",
		Redis: RedisConfig{
			Addr:      "127.0.0.1:6379",
			KeyPrefix: "postern:",
		},
	}
}

// Validate checks the settings of the chosen backend; errors are
// *config.FieldError naming keys relative to the section ("backend",
// "redis.addr").
func (c Config) Validate() error {
	switch c.Backend {
	case BackendSQLite:
		return checkSQLitePath(c.SQLitePath)
	case BackendRedis:
		return config.Prefix("redis", c.Redis.Validate())
	default:
		return config.Errorf("backend", "%q: must be %q or %q", c.Backend, BackendSQLite, BackendRedis)
	}
}

func checkSQLitePath(p string) error {
	switch {
	case p == "":
		return config.Errorf("sqlite_path", "must be set")
	case strings.ContainsAny(p, "?#"):
		return config.Errorf("sqlite_path", "%q: must not contain '?' or '#'", p)
	case strings.HasPrefix(p, "file:") || p == ":memory:":
		return config.Errorf("sqlite_path", "%q: must be a file path (the state must survive restarts)", p)
	}
	return nil
}

// Validate checks the Redis settings; keys are relative ("addr").
func (c RedisConfig) Validate() error {
	var errs []error
	if host, port, err := net.SplitHostPort(c.Addr); err != nil || host == "" {
		errs = append(errs, config.Errorf("addr", "%q: must be host:port", c.Addr))
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		errs = append(errs, config.Errorf("addr", "%q: port must be 1 to 65535", c.Addr))
	}
	if c.DB < 0 {
		errs = append(errs, config.Errorf("db", "%d: must not be negative", c.DB))
	}
	if c.KeyPrefix == "" {
		errs = append(errs, config.Errorf("key_prefix", "must be set"))
	}
	return config.Join(errs...)
}

// Open opens the store cfg chooses: for SQLite it creates the database file's
// directory and brings the schema up to date; for Redis it connects and
// pings. The caller closes the store.
func Open(ctx context.Context, cfg Config) (Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sitestate: %w", err)
	}
	switch cfg.Backend {
	case BackendRedis:
		return OpenRedis(ctx, cfg.Redis)
	default:
		return OpenSQLite(ctx, cfg.SQLitePath)
	}
}
