// Package testenv finds the real services that integration tests talk to
// (Redis, PostgreSQL, Dovecot) from POSTERN_TEST_* environment variables.
//
// A test that cannot reach a service it needs fails when CI=true (CI must
// have started it: see .ci/run) and is skipped elsewhere, with a message
// saying how to start the service.
package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI (CI=true), where a missing
// service is a failure rather than a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// unavailable fails the test in CI and skips it elsewhere.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("required service unavailable (CI=true): %s", msg)
	}
	t.Skipf("skipping: %s", msg)
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func dialable(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// RedisAddr returns the address of a real redis-server
// (POSTERN_TEST_REDIS_ADDR, default 127.0.0.1:6379).
func RedisAddr(t testing.TB) string {
	t.Helper()
	addr := env("POSTERN_TEST_REDIS_ADDR", "127.0.0.1:6379")
	if err := dialable(addr); err != nil {
		unavailable(t, "redis at %s: %v; start one with `redis-server --bind 127.0.0.1 --port 6379 --save '' --daemonize yes` or set POSTERN_TEST_REDIS_ADDR", addr, err)
	}
	return addr
}

// PostgresDSN returns a connection string for a real PostgreSQL server
// (POSTERN_TEST_POSTGRES_DSN, default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable).
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := env("POSTERN_TEST_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	addr := env("POSTERN_TEST_POSTGRES_ADDR", "127.0.0.1:5432")
	if err := dialable(addr); err != nil {
		unavailable(t, "postgresql at %s: %v; start it with `pg_ctlcluster $(ls /etc/postgresql) main start` or set POSTERN_TEST_POSTGRES_DSN and POSTERN_TEST_POSTGRES_ADDR", addr, err)
	}
	return dsn
}

// Dovecot returns the path of the dovecot binary (POSTERN_TEST_DOVECOT,
// default: dovecot on PATH or /usr/sbin/dovecot). Tests start their own
// instance with their own configuration on 127.0.0.1.
func Dovecot(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("POSTERN_TEST_DOVECOT"); p != "" {
		if _, err := os.Stat(p); err != nil {
			unavailable(t, "dovecot at POSTERN_TEST_DOVECOT=%s: %v", p, err)
		}
		return p
	}
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/dovecot"); err == nil {
		return "/usr/sbin/dovecot"
	}
	unavailable(t, "dovecot not found; install it with `apt-get install dovecot-pop3d dovecot-imapd dovecot-lmtpd` or set POSTERN_TEST_DOVECOT")
	return ""
}
