package sitestate_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
)

func TestConfigValidate(t *testing.T) {
	redisCfg := func(f func(*sitestate.Config)) sitestate.Config {
		c := sitestate.DefaultConfig()
		c.Backend = sitestate.BackendRedis
		f(&c)
		return c
	}
	sqliteCfg := func(f func(*sitestate.Config)) sitestate.Config {
		c := sitestate.DefaultConfig()
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name     string
		cfg      sitestate.Config
		wantKeys []string
	}{
		{"defaults", sitestate.DefaultConfig(), nil},
		{"redis defaults", redisCfg(func(*sitestate.Config) {}), nil},
		{"empty backend", sqliteCfg(func(c *sitestate.Config) { c.Backend = "" }), []string{"backend"}},
		{"unknown backend", sqliteCfg(func(c *sitestate.Config) { c.Backend = "postgres" }), []string{"backend"}},
		{"no sqlite path", sqliteCfg(func(c *sitestate.Config) { c.SQLitePath = "" }), []string{"sqlite_path"}},
		{"sqlite path with query", sqliteCfg(func(c *sitestate.Config) { c.SQLitePath = "a.db?mode=ro" }), []string{"sqlite_path"}},
		{"sqlite in memory", sqliteCfg(func(c *sitestate.Config) { c.SQLitePath = ":memory:" }), []string{"sqlite_path"}},
		{"redis settings ignored for sqlite", sqliteCfg(func(c *sitestate.Config) { c.Redis.Addr = "" }), nil},
		{"no redis addr", redisCfg(func(c *sitestate.Config) { c.Redis.Addr = "" }), []string{"redis.addr"}},
		{"redis addr without port", redisCfg(func(c *sitestate.Config) { c.Redis.Addr = "localhost" }), []string{"redis.addr"}},
		{"redis bad port", redisCfg(func(c *sitestate.Config) { c.Redis.Addr = "localhost:99999" }), []string{"redis.addr"}},
		{"redis ipv6", redisCfg(func(c *sitestate.Config) { c.Redis.Addr = "[::1]:6379" }), nil},
		{"several redis errors", redisCfg(func(c *sitestate.Config) {
			c.Redis.Addr, c.Redis.DB, c.Redis.KeyPrefix = ":6379", -1, ""
		}), []string{"redis.addr", "redis.db", "redis.key_prefix"}},
		{"sqlite settings ignored for redis", redisCfg(func(c *sitestate.Config) { c.SQLitePath = "" }), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if got := config.Keys(err); !slices.Equal(got, tc.wantKeys) {
				t.Errorf("Validate() = %v; keys %v, want %v", err, got, tc.wantKeys)
			}
		})
	}
}

func TestConfigSecretNotPrinted(t *testing.T) {
	c := sitestate.DefaultConfig()
	c.Redis.Password = "hunter2"
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	_, err := sitestate.Open(t.Context(), sitestate.Config{Backend: "nope"})
	if got := config.Keys(err); !slices.Equal(got, []string{"backend"}) {
		t.Errorf("Open with a bad backend: %v (keys %v)", err, got)
	}
}

func TestOpenSQLiteCreatesDirectory(t *testing.T) {
	cfg := sitestate.DefaultConfig()
	cfg.SQLitePath = filepath.Join(t.TempDir(), "var", "state", "site.db")
	s, err := sitestate.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}
