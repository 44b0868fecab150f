package harness

import (
	"path/filepath"
	"testing"
)

// StartUsersPostgres starts the users service in a process of its own, as
// StartUsers does, but on PostgreSQL (users.store.driver postgres) with the
// database dsn (testenv.PostgresDB gives a private one).
func StartUsersPostgres(t testing.TB, dsn string) *Users {
	t.Helper()
	return startUsers(t, map[string]any{
		"users.store.driver":       "postgres",
		"users.store.postgres_dsn": dsn,
	})
}

// StartBroker starts `postern broker` (the embedded Kafka-protocol broker
// alone) in dir with cfg (the common keys; broker.listen and
// broker.data_dir are set when missing) and waits until it prints its
// address, Addr("broker"). It is killed when the test ends.
func StartBroker(t testing.TB, name, dir string, cfg Config) *Process {
	t.Helper()
	cfg = cfg.Clone()
	if _, ok := cfg.Get("broker.listen"); !ok {
		cfg.Set("broker.listen", "127.0.0.1:0")
	}
	if _, ok := cfg.Get("broker.data_dir"); !ok {
		cfg.Set("broker.data_dir", filepath.Join(dir, name))
	}
	p := &Process{Name: name, Dir: dir, t: t, cfg: cfg, addrs: map[string]string{},
		command: "broker", listeners: []string{"broker"}}
	t.Cleanup(p.cleanup)
	p.Start()
	return p
}

// SplitSiteOptions describe a site whose services run as separate
// processes.
type SplitSiteOptions struct {
	// Name is the site's name in the directory. Required.
	Name string
	// Users is the users service the fetcher syncs from. Required.
	Users *Users
	// Token is the site_agent token; empty: one is created.
	Token string
	// Smarthost is the host:port of the SMTP sink outbound mail goes to;
	// empty: none.
	Smarthost string
	// RedisAddr is the Redis server of the site state (state.backend
	// redis, with a key prefix of the test's own). Required.
	RedisAddr string
	// Config holds further keys (dotted), applied last to every service
	// process (not to the broker).
	Config map[string]any
}

// SplitSite is one site run the way a per-site deployment runs it: the
// broker (`postern broker`, the embedded broker standing in for the site's
// Kafka cluster), and the fetcher, the router and the relay each in a
// `postern serve` process of its own with bus.brokers pointing at it,
// sharing the site state in Redis, with a private Dovecot serving the
// relay's Maildirs. Each process can be killed and started again alone.
//
// The embedded Site's Process is the relay's, so Site's helpers
// (DialSubmission, MaildirMessages, WaitForUsers, ...) work on it.
type SplitSite struct {
	*Site
	Broker  *Process
	Fetcher *Process
	Router  *Process
	Relay   *Process
	// KeyPrefix is the site state's Redis key prefix.
	KeyPrefix string
}

// Services returns the three service processes: fetcher, router, relay.
func (s *SplitSite) Services() []*Process { return []*Process{s.Fetcher, s.Router, s.Relay} }

// StartSplitSite starts Dovecot, the broker, then the relay, the router
// and the fetcher, in a new temporary directory. Use WaitForUsers before
// sending mail.
func StartSplitSite(t testing.TB, o SplitSiteOptions) *SplitSite {
	t.Helper()
	if o.Name == "" || o.Users == nil || o.RedisAddr == "" {
		t.Fatal("harness: StartSplitSite needs a site name, the users service and Redis")
	}
	if o.Token == "" {
		o.Token = o.Users.SiteAgentToken(t, o.Name)
	}
	dir, site := newSite(t, o.Name)
	s := &SplitSite{Site: site}
	s.KeyPrefix = RedisKeyPrefix(t, o.RedisAddr)

	s.Broker = StartBroker(t, "broker", dir, Config{
		"site":             o.Name,
		"log":              map[string]any{"format": "json"},
		"shutdown_timeout": "10s",
		"broker":           map[string]any{"data_dir": filepath.Join(dir, "broker")},
	})

	cfg := Config{}
	cfg.Merge(map[string]any{
		"site":                   o.Name,
		"log.format":             "json",
		"shutdown_timeout":       "10s",
		"bus.brokers":            []string{s.Broker.Addr("broker")},
		"state.backend":          "redis",
		"state.redis.addr":       o.RedisAddr,
		"state.redis.key_prefix": s.KeyPrefix,
	})
	cfg.Merge(s.pipelineConfig(t, MailboxMaildir, o.Smarthost))
	cfg.Merge(map[string]any{"fetcher.aum.url": o.Users.URL(), "fetcher.aum.token": o.Token})
	cfg.Merge(o.Config)
	start := func(service string) *Process {
		c := cfg.Clone()
		c.Set("services", []string{service})
		return StartProcess(t, service, dir, c)
	}
	s.Relay = start("relay")
	s.Site.Process = s.Relay
	s.Router = start("router")
	s.Fetcher = start("fetcher")
	return s
}
