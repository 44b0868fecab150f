package sitestate_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/sitestate/contract"
	"github.com/postern/postern/internal/testenv"
)

func TestSQLite(t *testing.T) {
	contract.Run(t, func(t *testing.T) sitestate.Store {
		return openSQLite(t, filepath.Join(t.TempDir(), "state", "site.db"))
	})
}

func TestRedis(t *testing.T) {
	addr := testenv.RedisAddr(t)
	contract.Run(t, func(t *testing.T) sitestate.Store {
		return openRedis(t, addr, testPrefix(t, addr))
	})
}

func openSQLite(t *testing.T, path string) sitestate.Store {
	t.Helper()
	s, err := sitestate.OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func openRedis(t *testing.T, addr, prefix string) sitestate.Store {
	t.Helper()
	s, err := sitestate.OpenRedis(t.Context(), sitestate.RedisConfig{Addr: addr, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// testPrefix returns a key prefix no other test uses and deletes the keys
// under it when the test ends (the server may be shared: no FLUSHDB).
func testPrefix(t testing.TB, addr string) string {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	prefix := "postern-test:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() { deleteKeys(t, addr, prefix) })
	return prefix
}

func deleteKeys(t testing.TB, addr, prefix string) {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var keys []string
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("scan keys %s*: %v", prefix, err)
		return
	}
	for chunk := range slices.Chunk(keys, 500) {
		if err := c.Del(ctx, chunk...).Err(); err != nil {
			t.Errorf("delete keys %s*: %v", prefix, err)
		}
	}
}

// fill writes something into every part of the store.
func fill(t *testing.T, s sitestate.Store) {
	t.Helper()
	ctx := t.Context()
	err := errors.Join(
		s.Directory().Apply(ctx, sitestate.ChangeSet{Cursor: "c7", Put: []sitestate.Entry{
			{Kind: "user", ID: "u1", Version: 3, Data: []byte(`{"n":1}`), Keys: []string{"a@x"}},
		}}),
		s.Directory().MarkSynced(ctx, "", time.UnixMilli(1_700_000_000_123)),
		func() error {
			_, _, err := s.Ledger().RecordHandoff(ctx, "acct", "U1", sitestate.Handoff{Recipients: []string{"a@x", "b@x"}})
			return err
		}(),
		func() error { _, err := s.Ledger().MarkDelivered(ctx, "acct", "U1", time.Time{}, "a@x"); return err }(),
		func() error { _, err := s.Idempotency().Claim(ctx, "k", time.Hour); return err }(),
		s.MessageIndex().Put(ctx, "<m@x>", sitestate.MessageRecord{StaffUserID: "u1"}, time.Hour),
		func() error { _, _, err := s.RateLimits().Hit(ctx, "r", time.Hour); return err }(),
		func() error {
			_, err := s.TraceIndex().Append(ctx, []string{"t"}, sitestate.TraceEntry{ID: "e1", Data: []byte(`{"n":1}`)},
				sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 10})
			return err
		}(),
	)
	if err != nil {
		t.Fatal(err)
	}
}

// checkFilled checks that what fill wrote is there.
func checkFilled(t *testing.T, s sitestate.Store) {
	t.Helper()
	ctx := t.Context()
	if e, err := s.Directory().Lookup(ctx, "user", "a@x"); err != nil || e.ID != "u1" || string(e.Data) != `{"n":1}` {
		t.Errorf("directory: %+v, %v", e, err)
	}
	if st, err := s.Directory().SyncState(ctx); err != nil || st.Cursor != "c7" || st.SyncedAt.UnixMilli() != 1_700_000_000_123 {
		t.Errorf("sync state: %+v, %v", st, err)
	}
	if e, err := s.Ledger().Get(ctx, "acct", "U1"); err != nil || len(e.Delivered) != 1 || e.AllDelivered() {
		t.Errorf("ledger: %+v, %v", e, err)
	}
	if ok, err := s.Idempotency().Claim(ctx, "k", time.Hour); err != nil || ok {
		t.Errorf("idempotency key lost: claimed again = %v, %v", ok, err)
	}
	if r, err := s.MessageIndex().Lookup(ctx, "m@x"); err != nil || r.StaffUserID != "u1" {
		t.Errorf("message index: %+v, %v", r, err)
	}
	if n, _, err := s.RateLimits().Count(ctx, "r"); err != nil || n != 1 {
		t.Errorf("rate limit: %d, %v", n, err)
	}
	if tr, err := s.TraceIndex().List(ctx, "t"); err != nil || len(tr.Entries) != 1 || string(tr.Entries[0].Data) != `{"n":1}` {
		t.Errorf("trace index: %+v, %v", tr, err)
	}
}

func TestSQLiteSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "site.db")
	cfg := sitestate.Config{Backend: sitestate.BackendSQLite, SQLitePath: path}
	s, err := sitestate.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sitestate.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkFilled(t, s)
}

func TestRedisSurvivesReconnect(t *testing.T) {
	addr := testenv.RedisAddr(t)
	prefix := testPrefix(t, addr)
	cfg := sitestate.Config{Backend: sitestate.BackendRedis, Redis: sitestate.RedisConfig{Addr: addr, KeyPrefix: prefix}}
	s, err := sitestate.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s)
	s.Close()
	s, err = sitestate.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkFilled(t, s)

	// Another prefix is another site.
	other := openRedis(t, addr, testPrefix(t, addr))
	if _, err := other.Directory().Get(t.Context(), "user", "u1"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("a store with another prefix sees the entry: %v", err)
	}
	if ok, err := other.Idempotency().Claim(t.Context(), "k", time.Minute); err != nil || !ok {
		t.Errorf("a store with another prefix cannot claim k: %v, %v", ok, err)
	}
}

func TestRedisKeysExpire(t *testing.T) {
	// The keys that carry a TTL in the contract must carry it in Redis too,
	// not only look expired: nothing is left to pile up.
	addr := testenv.RedisAddr(t)
	prefix := testPrefix(t, addr)
	s := openRedis(t, addr, prefix)
	fill(t, s)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for _, k := range []string{"idem:k", "msgid:m@x", "rl:r", "trace:z:t", "trace:d:t"} {
		ttl, err := c.PTTL(t.Context(), prefix+k).Result()
		if err != nil || ttl <= 0 || ttl > time.Hour {
			t.Errorf("PTTL %s = %v, %v; want a TTL up to an hour", k, ttl, err)
		}
	}
}

func TestRedisOpenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := sitestate.OpenRedis(ctx, sitestate.RedisConfig{Addr: "127.0.0.1:1", KeyPrefix: "p:"})
	if err == nil {
		t.Fatal("OpenRedis of a closed port succeeded")
	}
}

func TestSQLitePurgeRemovesExpiredRows(t *testing.T) {
	ctx := t.Context()
	s := openSQLite(t, filepath.Join(t.TempDir(), "site.db"))
	const short = 50 * time.Millisecond
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Idempotency().Claim(ctx, "short", short)
	must(err)
	_, err = s.Idempotency().Claim(ctx, "long", time.Hour)
	must(err)
	must(s.MessageIndex().Put(ctx, "<short@x>", sitestate.MessageRecord{}, short))
	must(s.MessageIndex().Put(ctx, "<long@x>", sitestate.MessageRecord{}, time.Hour))
	_, _, err = s.RateLimits().Hit(ctx, "short", short)
	must(err)
	_, _, err = s.RateLimits().Hit(ctx, "long", time.Hour)
	must(err)
	_, err = s.TraceIndex().Append(ctx, []string{"short"}, sitestate.TraceEntry{ID: "e"}, sitestate.TracePolicy{TTL: short, MaxEntries: 10})
	must(err)
	_, err = s.TraceIndex().Append(ctx, []string{"long"}, sitestate.TraceEntry{ID: "e"}, sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 10})
	must(err)

	deadline := time.Now().Add(10 * time.Second)
	for {
		seen, err := s.Idempotency().Seen(ctx, "short")
		must(err)
		_, lerr := s.MessageIndex().Lookup(ctx, "<short@x>")
		n, _, err := s.RateLimits().Count(ctx, "short")
		must(err)
		_, terr := s.TraceIndex().List(ctx, "short")
		if !seen && errors.Is(lerr, sitestate.ErrNotFound) && n == 0 && errors.Is(terr, sitestate.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("short TTLs did not expire within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(sitestate.PurgeSQLite(ctx, s))
	for _, table := range []string{"idempotency", "message_index", "rate_limit", "trace_list", "trace_entry"} {
		n, err := sitestate.SQLiteRows(ctx, s, table)
		must(err)
		if n != 1 {
			t.Errorf("%s has %d rows after purge, want 1 (the unexpired one)", table, n)
		}
	}
}

func TestSQLiteTwoHandlesOneFile(t *testing.T) {
	// Two stores on one file stand for two processes (the server and the
	// CLI): concurrent writes wait for each other instead of failing with
	// SQLITE_BUSY, and a claim is still won once.
	path := filepath.Join(t.TempDir(), "site.db")
	stores := []sitestate.Store{openSQLite(t, path), openSQLite(t, path)}
	ctx := t.Context()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := map[string]int{}
	for i, s := range stores {
		for g := range 4 {
			wg.Go(func() {
				for k := range 25 {
					key := fmt.Sprintf("key-%d", k)
					ok, err := s.Idempotency().Claim(ctx, key, time.Hour)
					if err != nil {
						t.Errorf("store %d goroutine %d: %v", i, g, err)
						return
					}
					if ok {
						mu.Lock()
						wins[key]++
						mu.Unlock()
					}
					if err := s.Directory().Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{
						{Kind: "user", ID: fmt.Sprintf("s%d-g%d-%d", i, g, k), Version: 1},
					}}); err != nil {
						t.Errorf("store %d goroutine %d: %v", i, g, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for k := range 25 {
		if n := wins[fmt.Sprintf("key-%d", k)]; n != 1 {
			t.Errorf("key-%d won %d times", k, n)
		}
	}
	l, err := stores[1].Directory().List(ctx, "user")
	if err != nil || len(l) != 2*4*25 {
		t.Errorf("List = %d entries, %v; want %d", len(l), err, 2*4*25)
	}
}

// TestSQLiteUpgradesVersion1: a database written before the trace index
// (schema version 1) keeps its contents and gains the index on open.
func TestSQLiteUpgradesVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.db")
	s := openSQLite(t, path)
	fill(t, s)
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TABLE trace_entry`, `DROP TABLE trace_list`, `PRAGMA user_version = 1`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s = openSQLite(t, path)
	ctx := t.Context()
	if _, err := s.TraceIndex().List(ctx, "t"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("trace list in an upgraded database: %v, want ErrNotFound", err)
	}
	if _, err := s.TraceIndex().Append(ctx, []string{"t"}, sitestate.TraceEntry{ID: "e1", Data: []byte(`{"n":1}`)},
		sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 10}); err != nil {
		t.Fatal(err)
	}
	checkFilled(t, s)
}

func TestSQLiteRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.db")
	s := openSQLite(t, path)
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := sitestate.OpenSQLite(t.Context(), path); err == nil {
		s.Close()
		t.Fatal("opened a database with a newer schema")
	}
}
