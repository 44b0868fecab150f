package smtpin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// countingStore is a site state whose rate limits the test can make fail
// or slow.
type countingStore struct {
	sitestate.Store
	limits *testLimits
}

func (s countingStore) RateLimits() sitestate.RateLimits { return s.limits }

type testLimits struct {
	sitestate.RateLimits
	failHits atomic.Bool
	// beforeCount, if set, runs before every Count.
	beforeCount func(ctx context.Context, key string)
	// hitNeeds, if set, is the time a Hit needs: one on a context with
	// less left fails, as a slow store's would.
	hitNeeds time.Duration
}

func (l *testLimits) Hit(ctx context.Context, key string, window time.Duration) (int64, time.Time, error) {
	if l.failHits.Load() {
		return 0, time.Time{}, errors.New("test: the site state refuses writes")
	}
	if dl, ok := ctx.Deadline(); l.hitNeeds > 0 && (ctx.Err() != nil || ok && time.Until(dl) < l.hitNeeds) {
		return 0, time.Time{}, context.DeadlineExceeded
	}
	return l.RateLimits.Hit(ctx, key, window)
}

func (l *testLimits) Count(ctx context.Context, key string) (int64, time.Time, error) {
	if l.beforeCount != nil {
		l.beforeCount(ctx, key)
	}
	return l.RateLimits.Count(ctx, key)
}

func startCounting(t *testing.T, lock LockoutConfig, mod func(*Config)) (*env, *testLimits) {
	t.Helper()
	st := newStore(t)
	limits := &testLimits{RateLimits: st.RateLimits()}
	e := startWith(t, testenv.Bus(t), countingStore{Store: st, limits: limits}, func(c *Config, _ *testPKI) {
		c.AuthLockout = lock
		if mod != nil {
			mod(c)
		}
	})
	return e, limits
}

func (e *env) auth(user, pw string) error {
	c := e.tlsDial(ListenerSubmission, e.clientTLS())
	return c.Auth(sasl.NewPlainClient("", user, pw))
}

func (e *env) failures(key string) int64 {
	e.t.Helper()
	n, _, err := e.state.RateLimits().Count(context.Background(), key)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestAuthLockoutFailsClosedWhenAFailureIsNotCounted: a failed attempt the
// site state does not count is not a free guess: it is answered 454, and
// the user's next attempts are refused unchecked, the right password too,
// until the failure is counted.
func TestAuthLockoutFailsClosedWhenAFailureIsNotCounted(t *testing.T) {
	// No per-address count: it would refuse the other user's login from
	// the same address (TestAuthIPLockoutFailsClosedWhenAFailureIsNotCounted).
	e, limits := startCounting(t, LockoutConfig{MaxFailuresPerUser: 3, Window: time.Hour}, nil)
	limits.failHits.Store(true)
	wantCode(t, "a guess the state does not count", e.auth("alice", "guess"), 454, "4.7.0")
	wantCode(t, "the right password while the failure is not counted", e.auth("alice", alicePW), 454, "4.7.0")
	wantCode(t, "another guess while the failure is not counted", e.auth("alice", "guess"), 454, "4.7.0")
	if n := e.failures("smtp-auth:user:u-alice"); n != 0 {
		t.Fatalf("failure count %d while the state refuses writes", n)
	}
	// Others are not refused for it.
	if err := e.auth("zhangsan", zsPW); err != nil {
		t.Fatalf("another user: %v", err)
	}

	limits.failHits.Store(false)
	wantCode(t, "a guess once the state counts again", e.auth("alice", "guess"), 535, "5.7.8")
	if n := e.failures("smtp-auth:user:u-alice"); n != 2 {
		t.Errorf("failure count %d, want 2 (the owed one and this one)", n)
	}
	wantCode(t, "third guess", e.auth("alice", "guess"), 535, "5.7.8")
	wantCode(t, "the right password once locked", e.auth("alice", alicePW), 454, "4.7.0")
}

// TestAuthIPLockoutFailsClosedWhenAFailureIsNotCounted: the same for the
// client address's count.
func TestAuthIPLockoutFailsClosedWhenAFailureIsNotCounted(t *testing.T) {
	e, limits := startCounting(t, LockoutConfig{MaxFailuresPerUser: 100, MaxFailuresPerIP: 2, Window: time.Hour}, nil)
	limits.failHits.Store(true)
	wantCode(t, "a spray the state does not count", e.auth("nobody1", "x"), 454, "4.7.0")
	wantCode(t, "from the same address while it is not counted", e.auth("alice", alicePW), 454, "4.7.0")
	limits.failHits.Store(false)
	wantCode(t, "spray 2", e.auth("nobody2", "x"), 535, "5.7.8")
	wantCode(t, "address locked", e.auth("alice", alicePW), 454, "4.7.0")
}

// TestAuthFailureIsCountedAfterASlowTurn: the failure is counted even when
// the attempt's command time is nearly spent by the time the password was
// checked (a long wait for the user's turn, a slow state).
func TestAuthFailureIsCountedAfterASlowTurn(t *testing.T) {
	e, limits := startCounting(t, LockoutConfig{MaxFailuresPerUser: 3, MaxFailuresPerIP: 1000, Window: time.Hour}, func(c *Config) {
		c.Timeouts.Command = 2 * time.Second
	})
	limits.hitNeeds = time.Second
	limits.beforeCount = func(ctx context.Context, key string) {
		if dl, ok := ctx.Deadline(); ok && strings.HasPrefix(key, "smtp-auth:user:") {
			time.Sleep(time.Until(dl) - 300*time.Millisecond)
		}
	}
	wantCode(t, "a guess late in its command time", e.auth("alice", "guess"), 535, "5.7.8")
	if n := e.failures("smtp-auth:user:u-alice"); n != 1 {
		t.Errorf("failure count %d, want 1", n)
	}
}

// TestAuthOwedFailuresAreBounded: while too many keys have failures not
// counted, every attempt is refused; once the state counts again, they
// are counted and logins work.
func TestAuthOwedFailuresAreBounded(t *testing.T) {
	e, limits := startCounting(t, LockoutConfig{MaxFailuresPerUser: 3, MaxFailuresPerIP: 1000, Window: time.Hour}, nil)
	for i := range maxOwed {
		e.srv.authTurns.owe(fmt.Sprintf("smtp-auth:user:test-%d", i), time.Hour)
	}
	limits.failHits.Store(true)
	wantCode(t, "login while too many failures are owed", e.auth("zhangsan", zsPW), 454, "4.7.0")
	limits.failHits.Store(false)
	if err := e.auth("zhangsan", zsPW); err != nil {
		t.Fatalf("login once the state counts again: %v", err)
	}
}
