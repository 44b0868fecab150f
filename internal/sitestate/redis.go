package sitestate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStore keeps the site state in Redis under one key prefix:
//
//	<p>dir:e:<kind>    hash  id → storedEntry JSON
//	<p>dir:k:<kind>    hash  lookup key → id
//	<p>dir:kinds       set   kinds that have (had) entries
//	<p>dir:state       hash  cursor, synced_ms
//	<p>dir:gen         int   incremented by every change set (the writers' lock)
//	<p>ledger:e:<len(account)>:<account>:<uidl>   storedLedger JSON
//	<p>ledger:a:<account>  set of the account's UIDLs
//	<p>idem:<key>      "1", PX ttl
//	<p>msgid:<id>      storedRecord JSON, PX ttl
//	<p>rl:<key>        counter, PX window
//	<p>trace:z:<key>   sorted set  entry id, scored by its time (Unix ms); PX ttl
//	<p>trace:d:<key>   hash  entry id → data, and "" → entries dropped; PX ttl
//
// Change sets and ledger updates are optimistic transactions (WATCH, then
// MULTI/EXEC, retried on conflict); a snapshot's MULTI deletes keys found
// inside the transaction, and the directory lookup is a Lua script. They are
// meant for a single Redis server: on a Redis Cluster they work only when
// the prefix is a hash tag ("{site1}:") putting every key in one slot.
type redisStore struct {
	c *redis.Client
	p string
}

// maxTxAttempts bounds the retries of an optimistic transaction that keeps
// meeting concurrent writers.
const maxTxAttempts = 100

// OpenRedis connects to the Redis server cfg names and pings it.
func OpenRedis(ctx context.Context, cfg RedisConfig) (Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sitestate: redis: %w", err)
	}
	opt := &redis.Options{
		Addr:     cfg.Addr,
		Username: cfg.Username,
		Password: cfg.Password.Reveal(),
		DB:       cfg.DB,
	}
	if cfg.TLS {
		host, _, _ := net.SplitHostPort(cfg.Addr)
		opt.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	c := redis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("sitestate: redis at %s: %w", cfg.Addr, err)
	}
	return &redisStore{c: c, p: cfg.KeyPrefix}, nil
}

func (s *redisStore) Directory() Directory       { return redisDirectory{s} }
func (s *redisStore) Ledger() Ledger             { return redisLedger{s} }
func (s *redisStore) Idempotency() Idempotency   { return redisIdempotency{s} }
func (s *redisStore) MessageIndex() MessageIndex { return redisMessageIndex{s} }
func (s *redisStore) RateLimits() RateLimits     { return redisRateLimits{s} }
func (s *redisStore) TraceIndex() TraceIndex     { return redisTraceIndex{s} }

func (s *redisStore) Ping(ctx context.Context) error {
	if err := s.c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("sitestate: ping redis: %w", err)
	}
	return nil
}

func (s *redisStore) Close() error {
	err := s.c.Close()
	if errors.Is(err, redis.ErrClosed) {
		return nil
	}
	return err
}

// watch runs fn as an optimistic transaction over keys, again while another
// client changes them first.
func (s *redisStore) watch(ctx context.Context, fn func(*redis.Tx) error, keys ...string) error {
	for attempt := 1; ; attempt++ {
		err := s.c.Watch(ctx, fn, keys...)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
		if attempt == maxTxAttempts {
			return fmt.Errorf("%d attempts met concurrent writers: %w", attempt, err)
		}
		// Jittered, capped backoff so that contenders spread out.
		d := time.Duration(float64(time.Millisecond) * min(50, float64(attempt)) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// ---------------------------------------------------------------------------

type redisDirectory struct{ s *redisStore }

func (d redisDirectory) entriesKey(kind string) string { return d.s.p + "dir:e:" + kind }
func (d redisDirectory) keysKey(kind string) string    { return d.s.p + "dir:k:" + kind }
func (d redisDirectory) kindsKey() string              { return d.s.p + "dir:kinds" }
func (d redisDirectory) stateKey() string              { return d.s.p + "dir:state" }
func (d redisDirectory) genKey() string                { return d.s.p + "dir:gen" }

func (d redisDirectory) Get(ctx context.Context, kind, id string) (Entry, error) {
	if err := checkRef(Ref{kind, id}); err != nil {
		return Entry{}, err
	}
	b, err := d.s.c.HGet(ctx, d.entriesKey(kind), id).Bytes()
	if errors.Is(err, redis.Nil) {
		return Entry{}, fmt.Errorf("directory entry %s/%s: %w", kind, id, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("get directory entry %s/%s: %w", kind, id, err)
	}
	return decodeEntry(kind, id, b)
}

// lookupScript reads a key's owner and the owner's entry in one step, so
// that a change set cannot come between the two.
var lookupScript = redis.NewScript(`
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local v = redis.call('HGET', KEYS[2], id)
if not v then return false end
return {id, v}
`)

func (d redisDirectory) Lookup(ctx context.Context, kind, key string) (Entry, error) {
	if err := checkKind(kind); err != nil {
		return Entry{}, err
	}
	if err := checkString("key", key); err != nil {
		return Entry{}, err
	}
	res, err := lookupScript.Run(ctx, d.s.c, []string{d.keysKey(kind), d.entriesKey(kind)}, key).StringSlice()
	if errors.Is(err, redis.Nil) {
		return Entry{}, fmt.Errorf("directory key %s/%q: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("look up directory key %s/%q: %w", kind, key, err)
	}
	if len(res) != 2 {
		return Entry{}, fmt.Errorf("look up directory key %s/%q: unexpected reply %q", kind, key, res)
	}
	return decodeEntry(kind, res[0], []byte(res[1]))
}

func (d redisDirectory) List(ctx context.Context, kind string) ([]Entry, error) {
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	m, err := d.s.c.HGetAll(ctx, d.entriesKey(kind)).Result()
	if err != nil {
		return nil, fmt.Errorf("list directory %s: %w", kind, err)
	}
	out := make([]Entry, 0, len(m))
	for id, v := range m {
		e, err := decodeEntry(kind, id, []byte(v))
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func (d redisDirectory) SyncState(ctx context.Context) (SyncState, error) {
	v, err := d.s.c.HMGet(ctx, d.stateKey(), "cursor", "synced_ms").Result()
	if err != nil {
		return SyncState{}, fmt.Errorf("read directory sync state: %w", err)
	}
	var st SyncState
	if c, ok := v[0].(string); ok {
		st.Cursor = c
	}
	if s, ok := v[1].(string); ok {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return SyncState{}, fmt.Errorf("read directory sync state: synced_ms %q: %w", s, err)
		}
		st.SyncedAt = fromMS(ms)
	}
	return st, nil
}

func (d redisDirectory) MarkSynced(ctx context.Context, cursor string, at time.Time) error {
	if err := checkCursor(cursor); err != nil {
		return err
	}
	vals := []any{"synced_ms", toMS(stamp(at))}
	if cursor != "" {
		vals = append(vals, "cursor", cursor)
	}
	if err := d.s.c.HSet(ctx, d.stateKey(), vals...).Err(); err != nil {
		return fmt.Errorf("mark directory synced: %w", err)
	}
	return nil
}

func (d redisDirectory) Apply(ctx context.Context, cs ChangeSet) error {
	cs, err := cleanChangeSet(cs)
	if err != nil {
		return err
	}
	// Every change set increments dir:gen, so watching it alone makes
	// concurrent change sets retry instead of interleaving.
	err = d.s.watch(ctx, func(tx *redis.Tx) error {
		a := &redisApply{
			ctx: ctx, tx: tx, d: d,
			entries: map[Ref]*pendingEntry{},
			owners:  map[Ref]string{},
			dirtyE:  map[Ref]bool{},
			dirtyK:  map[Ref]bool{},
			kinds:   map[string]bool{},
		}
		if !cs.Snapshot {
			if err := a.prefetch(cs); err != nil {
				return err
			}
		}
		if err := applyChangeSet(a, cs); err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			a.flush(p)
			return nil
		})
		return err
	}, d.genKey())
	if err != nil {
		return fmt.Errorf("apply directory change set: %w", err)
	}
	return nil
}

// pendingEntry is an entry as a change set leaves it; nil means absent.
type pendingEntry struct {
	e    Entry
	body []byte
}

// redisApply is the applyTarget of one optimistic transaction: it reads
// through the WATCHing connection, keeps what it read and what the change set
// did in memory, and flush queues the result into MULTI/EXEC. Lookup-key
// owners are kept in a map[Ref]string whose Ref.ID holds the key.
type redisApply struct {
	ctx context.Context
	tx  *redis.Tx
	d   redisDirectory

	cleared  bool
	oldKinds []string

	entries map[Ref]*pendingEntry // known entries; nil = known absent
	owners  map[Ref]string        // (kind, key) → owner id; "" = known absent
	dirtyE  map[Ref]bool
	dirtyK  map[Ref]bool
	kinds   map[string]bool
	cursor  string
}

// prefetch reads, in two round trips, the entries a change set touches and
// the owners of their old and new lookup keys.
func (a *redisApply) prefetch(cs ChangeSet) error {
	ids := map[string][]string{}
	for _, r := range cs.Delete {
		ids[r.Kind] = append(ids[r.Kind], r.ID)
	}
	for _, e := range cs.Put {
		ids[e.Kind] = append(ids[e.Kind], e.ID)
	}
	if err := a.load(ids, a.d.entriesKey, func(kind, id string, v any) error {
		s, ok := v.(string)
		if !ok {
			a.entries[Ref{kind, id}] = nil
			return nil
		}
		e, err := decodeEntry(kind, id, []byte(s))
		if err != nil {
			return err
		}
		a.entries[Ref{kind, id}] = &pendingEntry{e: e, body: []byte(s)}
		return nil
	}); err != nil {
		return err
	}
	keys := map[string][]string{}
	for _, p := range a.entries {
		if p != nil {
			keys[p.e.Kind] = append(keys[p.e.Kind], p.e.Keys...)
		}
	}
	for _, e := range cs.Put {
		keys[e.Kind] = append(keys[e.Kind], e.Keys...)
	}
	return a.load(keys, a.d.keysKey, func(kind, key string, v any) error {
		s, _ := v.(string)
		a.owners[Ref{kind, key}] = s
		return nil
	})
}

// load runs one HMGET per kind for fields and hands each value to set.
func (a *redisApply) load(fields map[string][]string, key func(kind string) string, set func(kind, field string, v any) error) error {
	type req struct {
		kind   string
		fields []string
		cmd    *redis.SliceCmd
	}
	var reqs []req
	_, err := a.tx.Pipelined(a.ctx, func(p redis.Pipeliner) error {
		for kind, fs := range fields {
			if len(fs) == 0 {
				continue
			}
			fs = slices.Compact(slices.Sorted(slices.Values(fs)))
			reqs = append(reqs, req{kind, fs, p.HMGet(a.ctx, key(kind), fs...)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range reqs {
		vals := r.cmd.Val()
		for i, f := range r.fields {
			if err := set(r.kind, f, vals[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *redisApply) clear() error {
	kinds, err := a.tx.SMembers(a.ctx, a.d.kindsKey()).Result()
	if err != nil {
		return err
	}
	a.cleared, a.oldKinds = true, kinds
	clear(a.entries)
	clear(a.owners)
	return nil
}

func (a *redisApply) get(kind, id string) (Entry, bool, error) {
	r := Ref{kind, id}
	if p, ok := a.entries[r]; ok {
		if p == nil {
			return Entry{}, false, nil
		}
		return p.e, true, nil
	}
	if a.cleared {
		return Entry{}, false, nil
	}
	b, err := a.tx.HGet(a.ctx, a.d.entriesKey(kind), id).Bytes()
	if errors.Is(err, redis.Nil) {
		a.entries[r] = nil
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	e, err := decodeEntry(kind, id, b)
	if err != nil {
		return Entry{}, false, err
	}
	a.entries[r] = &pendingEntry{e: e, body: b}
	return e, true, nil
}

func (a *redisApply) put(e Entry) error {
	body, err := encodeEntry(e)
	if err != nil {
		return err
	}
	r := Ref{e.Kind, e.ID}
	a.entries[r] = &pendingEntry{e: e, body: body}
	a.dirtyE[r] = true
	a.kinds[e.Kind] = true
	return nil
}

func (a *redisApply) del(kind, id string) error {
	r := Ref{kind, id}
	a.entries[r] = nil
	a.dirtyE[r] = true
	return nil
}

func (a *redisApply) owner(kind, key string) (string, bool, error) {
	r := Ref{kind, key}
	if id, ok := a.owners[r]; ok {
		return id, id != "", nil
	}
	if a.cleared {
		return "", false, nil
	}
	id, err := a.tx.HGet(a.ctx, a.d.keysKey(kind), key).Result()
	if errors.Is(err, redis.Nil) {
		id, err = "", nil
	}
	if err != nil {
		return "", false, err
	}
	a.owners[r] = id
	return id, id != "", nil
}

func (a *redisApply) setOwner(kind, key, id string) error {
	r := Ref{kind, key}
	a.owners[r] = id
	a.dirtyK[r] = true
	return nil
}

func (a *redisApply) delOwner(kind, key string) error {
	r := Ref{kind, key}
	a.owners[r] = ""
	a.dirtyK[r] = true
	return nil
}

func (a *redisApply) setCursor(cursor string) error {
	a.cursor = cursor
	return nil
}

// flush queues the change set's writes.
func (a *redisApply) flush(p redis.Pipeliner) {
	ctx, d := a.ctx, a.d
	if a.cleared {
		for _, kind := range a.oldKinds {
			p.Del(ctx, d.entriesKey(kind), d.keysKey(kind))
		}
		p.Del(ctx, d.kindsKey())
	}
	for r := range a.dirtyE {
		if pe := a.entries[r]; pe != nil {
			p.HSet(ctx, d.entriesKey(r.Kind), r.ID, pe.body)
		} else if !a.cleared {
			p.HDel(ctx, d.entriesKey(r.Kind), r.ID)
		}
	}
	for r := range a.dirtyK {
		if id := a.owners[r]; id != "" {
			p.HSet(ctx, d.keysKey(r.Kind), r.ID, id)
		} else if !a.cleared {
			p.HDel(ctx, d.keysKey(r.Kind), r.ID)
		}
	}
	for kind := range a.kinds {
		p.SAdd(ctx, d.kindsKey(), kind)
	}
	if a.cursor != "" {
		p.HSet(ctx, d.stateKey(), "cursor", a.cursor)
	}
	p.Incr(ctx, d.genKey())
}

// ---------------------------------------------------------------------------

type redisLedger struct{ s *redisStore }

func (l redisLedger) entryKey(account, uidl string) string {
	// The account's length makes the key unambiguous whatever the account
	// and UIDL contain.
	return l.s.p + "ledger:e:" + strconv.Itoa(len(account)) + ":" + account + ":" + uidl
}

func (l redisLedger) indexKey(account string) string { return l.s.p + "ledger:a:" + account }

// update runs fn on the entry (account, uidl) in an optimistic transaction
// and stores what it returns when it asks to.
func (l redisLedger) update(ctx context.Context, account, uidl string,
	fn func(e LedgerEntry, exists bool) (next LedgerEntry, write bool, err error)) (LedgerEntry, error) {
	key := l.entryKey(account, uidl)
	var out LedgerEntry
	err := l.s.watch(ctx, func(tx *redis.Tx) error {
		var cur LedgerEntry
		b, err := tx.Get(ctx, key).Bytes()
		exists := err == nil
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return err
		default:
			if cur, err = decodeLedger(account, uidl, b); err != nil {
				return err
			}
		}
		next, write, err := fn(cur, exists)
		if err != nil {
			return err
		}
		out = next
		if !write {
			return nil
		}
		body, err := encodeLedger(next)
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, body, 0)
			p.SAdd(ctx, l.indexKey(account), uidl)
			return nil
		})
		return err
	}, key)
	return out, err
}

func (l redisLedger) RecordHandoff(ctx context.Context, account, uidl string, h Handoff) (LedgerEntry, bool, error) {
	e, err := newLedgerEntry(account, uidl, h)
	if err != nil {
		return LedgerEntry{}, false, err
	}
	created := false
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		created = !exists
		if exists {
			return cur, false, nil
		}
		return e, true, nil
	})
	if err != nil {
		return LedgerEntry{}, false, fmt.Errorf("record hand-off %s/%s: %w", account, uidl, err)
	}
	return out, created, nil
}

func (l redisLedger) MarkDelivered(ctx context.Context, account, uidl string, at time.Time, recipients ...string) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	at = stamp(at)
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		if !exists {
			return cur, false, ErrNotFound
		}
		return cur, markDelivered(&cur, at, recipients), nil
	})
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("mark %s/%s delivered: %w", account, uidl, err)
	}
	return out, nil
}

func (l redisLedger) MarkDeleted(ctx context.Context, account, uidl string, at time.Time) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	at = stamp(at)
	out, err := l.update(ctx, account, uidl, func(cur LedgerEntry, exists bool) (LedgerEntry, bool, error) {
		if !exists {
			return cur, false, ErrNotFound
		}
		return cur, markDeleted(&cur, at), nil
	})
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("mark %s/%s deleted: %w", account, uidl, err)
	}
	return out, nil
}

func (l redisLedger) Get(ctx context.Context, account, uidl string) (LedgerEntry, error) {
	if err := checkLedgerKey(account, uidl); err != nil {
		return LedgerEntry{}, err
	}
	b, err := l.s.c.Get(ctx, l.entryKey(account, uidl)).Bytes()
	if errors.Is(err, redis.Nil) {
		return LedgerEntry{}, fmt.Errorf("ledger entry %s/%s: %w", account, uidl, ErrNotFound)
	}
	if err != nil {
		return LedgerEntry{}, fmt.Errorf("get ledger entry %s/%s: %w", account, uidl, err)
	}
	return decodeLedger(account, uidl, b)
}

func (l redisLedger) List(ctx context.Context, account string) ([]LedgerEntry, error) {
	if err := checkString("account", account); err != nil {
		return nil, err
	}
	uidls, err := l.s.c.SMembers(ctx, l.indexKey(account)).Result()
	if err != nil {
		return nil, fmt.Errorf("list ledger %s: %w", account, err)
	}
	if len(uidls) == 0 {
		return nil, nil
	}
	keys := make([]string, len(uidls))
	for i, u := range uidls {
		keys[i] = l.entryKey(account, u)
	}
	vals, err := l.s.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("list ledger %s: %w", account, err)
	}
	var out []LedgerEntry
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // forgotten since SMEMBERS
		}
		e, err := decodeLedger(account, uidls[i], []byte(s))
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	slices.SortFunc(out, compareLedger)
	return out, nil
}

func (l redisLedger) Forget(ctx context.Context, account, uidl string) error {
	if err := checkLedgerKey(account, uidl); err != nil {
		return err
	}
	_, err := l.s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, l.entryKey(account, uidl))
		p.SRem(ctx, l.indexKey(account), uidl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget ledger entry %s/%s: %w", account, uidl, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type redisIdempotency struct{ s *redisStore }

func (i redisIdempotency) key(k string) string { return i.s.p + "idem:" + k }

func (i redisIdempotency) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if err := checkString("idempotency key", key); err != nil {
		return false, err
	}
	ms, err := ttlMS(ttl)
	if err != nil {
		return false, err
	}
	ok, err := i.s.c.SetNX(ctx, i.key(key), "1", time.Duration(ms)*time.Millisecond).Result()
	if err != nil {
		return false, fmt.Errorf("claim idempotency key %q: %w", key, err)
	}
	return ok, nil
}

// ClaimAll sends one SET NX PX per key in one MULTI/EXEC: one round trip,
// and Redis runs them all or none.
func (i redisIdempotency) ClaimAll(ctx context.Context, keys []string, ttl time.Duration) ([]bool, error) {
	ms, err := ttlMS(ttl)
	if err != nil {
		return nil, err
	}
	if err := checkIdempotencyKeys(keys); err != nil {
		return nil, err
	}
	claimed := make([]bool, len(keys))
	if len(keys) == 0 {
		return claimed, nil
	}
	cmds := make([]*redis.BoolCmd, len(keys))
	_, err = i.s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for j, k := range keys {
			cmds[j] = p.SetNX(ctx, i.key(k), "1", time.Duration(ms)*time.Millisecond)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", describeKeys(keys), err)
	}
	for j, c := range cmds {
		claimed[j] = c.Val()
	}
	return claimed, nil
}

// SeenAll reads the keys with one MGET (a missing or expired key is nil).
func (i redisIdempotency) SeenAll(ctx context.Context, keys []string) ([]bool, error) {
	if err := checkIdempotencyKeys(keys); err != nil {
		return nil, err
	}
	seen := make([]bool, len(keys))
	if len(keys) == 0 {
		return seen, nil
	}
	full := make([]string, len(keys))
	for j, k := range keys {
		full[j] = i.key(k)
	}
	vals, err := i.s.c.MGet(ctx, full...).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", describeKeys(keys), err)
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("read %s: redis answered %d values", describeKeys(keys), len(vals))
	}
	for j, v := range vals {
		seen[j] = v != nil
	}
	return seen, nil
}

func (i redisIdempotency) Seen(ctx context.Context, key string) (bool, error) {
	if err := checkString("idempotency key", key); err != nil {
		return false, err
	}
	n, err := i.s.c.Exists(ctx, i.key(key)).Result()
	if err != nil {
		return false, fmt.Errorf("read idempotency key %q: %w", key, err)
	}
	return n == 1, nil
}

func (i redisIdempotency) Forget(ctx context.Context, key string) error {
	if err := checkString("idempotency key", key); err != nil {
		return err
	}
	if err := i.s.c.Del(ctx, i.key(key)).Err(); err != nil {
		return fmt.Errorf("forget idempotency key %q: %w", key, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type redisMessageIndex struct{ s *redisStore }

func (m redisMessageIndex) key(id string) string { return m.s.p + "msgid:" + id }

func (m redisMessageIndex) Put(ctx context.Context, messageID string, rec MessageRecord, ttl time.Duration) error {
	id, body, ms, err := prepareMessageRecord(messageID, rec, ttl)
	if err != nil {
		return err
	}
	if err := m.s.c.Set(ctx, m.key(id), body, time.Duration(ms)*time.Millisecond).Err(); err != nil {
		return fmt.Errorf("index message-id %q: %w", id, err)
	}
	return nil
}

func (m redisMessageIndex) Lookup(ctx context.Context, messageID string) (MessageRecord, error) {
	id, err := NormalizeMessageID(messageID)
	if err != nil {
		return MessageRecord{}, err
	}
	b, err := m.s.c.Get(ctx, m.key(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return MessageRecord{}, fmt.Errorf("message-id %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return MessageRecord{}, fmt.Errorf("look up message-id %q: %w", id, err)
	}
	return decodeMessageRecord(id, b)
}

// ---------------------------------------------------------------------------

type redisRateLimits struct{ s *redisStore }

func (r redisRateLimits) key(k string) string { return r.s.p + "rl:" + k }

// hitScript counts a hit and opens the window when the counter is new.
var hitScript = redis.NewScript(`
local c = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
	redis.call('PEXPIRE', KEYS[1], ARGV[1])
	ttl = tonumber(ARGV[1])
end
return {c, ttl}
`)

func (r redisRateLimits) Hit(ctx context.Context, key string, window time.Duration) (int64, time.Time, error) {
	if err := checkString("rate-limit key", key); err != nil {
		return 0, time.Time{}, err
	}
	ms, err := ttlMS(window)
	if err != nil {
		return 0, time.Time{}, err
	}
	res, err := hitScript.Run(ctx, r.s.c, []string{r.key(key)}, ms).Int64Slice()
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("count hit on %q: %w", key, err)
	}
	if len(res) != 2 {
		return 0, time.Time{}, fmt.Errorf("count hit on %q: unexpected reply %v", key, res)
	}
	return res[0], resetAt(res[1]), nil
}

func (r redisRateLimits) Count(ctx context.Context, key string) (int64, time.Time, error) {
	if err := checkString("rate-limit key", key); err != nil {
		return 0, time.Time{}, err
	}
	var get *redis.StringCmd
	var pttl *redis.DurationCmd
	_, err := r.s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, r.key(key))
		pttl = p.PTTL(ctx, r.key(key))
		return nil
	})
	if errors.Is(err, redis.Nil) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read rate limit %q: %w", key, err)
	}
	n, err := get.Int64()
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read rate limit %q: %w", key, err)
	}
	ttl := pttl.Val()
	if ttl <= 0 {
		return n, time.Time{}, nil
	}
	return n, resetAt(ttl.Milliseconds()), nil
}

// resetAt turns a remaining TTL into the time the window ends.
func resetAt(ms int64) time.Time {
	return fromMS(time.Now().UnixMilli() + ms)
}

func (r redisRateLimits) Reset(ctx context.Context, key string) error {
	if err := checkString("rate-limit key", key); err != nil {
		return err
	}
	if err := r.s.c.Del(ctx, r.key(key)).Err(); err != nil {
		return fmt.Errorf("reset rate limit %q: %w", key, err)
	}
	return nil
}

// ---------------------------------------------------------------------------

type redisTraceIndex struct{ s *redisStore }

func (x redisTraceIndex) setKey(k string) string  { return x.s.p + "trace:z:" + k }
func (x redisTraceIndex) dataKey(k string) string { return x.s.p + "trace:d:" + k }

// traceAppendScript adds an entry to lists given as pairs of KEYS (sorted
// set, hash), trims each to its bound, oldest first, and restarts their
// TTL. ARGV: id, time (Unix ms), data, bound, TTL (ms). It returns 1 if the
// entry was new to a list. A sorted set orders equal scores by member, in
// byte order: the lists' order, At then ID.
var traceAppendScript = redis.NewScript(`
local added = 0
local bound = tonumber(ARGV[4])
for i = 1, #KEYS, 2 do
	local z, h = KEYS[i], KEYS[i + 1]
	if redis.call('ZADD', z, 'NX', ARGV[2], ARGV[1]) == 1 then
		added = 1
		redis.call('HSET', h, ARGV[1], ARGV[3])
		local over = redis.call('ZCARD', z) - bound
		if over > 0 then
			local old = redis.call('ZRANGE', z, 0, over - 1)
			redis.call('ZREMRANGEBYRANK', z, 0, over - 1)
			for j = 1, #old, 1000 do
				redis.call('HDEL', h, unpack(old, j, math.min(j + 999, #old)))
			end
			redis.call('HINCRBY', h, '', over)
		end
	end
	redis.call('PEXPIRE', z, ARGV[5])
	redis.call('PEXPIRE', h, ARGV[5])
end
return added
`)

func (x redisTraceIndex) Append(ctx context.Context, keys []string, e TraceEntry, p TracePolicy) (bool, error) {
	a, err := prepareTraceAppend(keys, e, p)
	if err != nil {
		return false, err
	}
	rkeys := make([]string, 0, 2*len(a.keys))
	for _, k := range a.keys {
		rkeys = append(rkeys, x.setKey(k), x.dataKey(k))
	}
	n, err := traceAppendScript.Run(ctx, x.s.c, rkeys, a.id, a.atMS, a.data, a.max, a.ttlMS).Int()
	if err != nil {
		return false, fmt.Errorf("append trace entry %q: %w", a.id, err)
	}
	return n == 1, nil
}

// List reads the sorted set and the hash in one MULTI/EXEC.
func (x redisTraceIndex) List(ctx context.Context, key string) (Trace, error) {
	if err := checkTraceKey("trace key", key); err != nil {
		return Trace{}, err
	}
	var (
		order *redis.ZSliceCmd
		data  *redis.MapStringStringCmd
	)
	_, err := x.s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		order = p.ZRangeWithScores(ctx, x.setKey(key), 0, -1)
		data = p.HGetAll(ctx, x.dataKey(key))
		return nil
	})
	if err != nil {
		return Trace{}, fmt.Errorf("list trace %q: %w", key, err)
	}
	zs, m := order.Val(), data.Val()
	if len(zs) == 0 {
		return Trace{}, fmt.Errorf("trace %q: %w", key, ErrNotFound)
	}
	var t Trace
	if d, ok := m[""]; ok {
		if t.Dropped, err = strconv.ParseInt(d, 10, 64); err != nil {
			return Trace{}, fmt.Errorf("list trace %q: dropped count %q: %w", key, d, err)
		}
	}
	t.Entries = make([]TraceEntry, 0, len(zs))
	for _, z := range zs {
		id, _ := z.Member.(string)
		t.Entries = append(t.Entries, TraceEntry{ID: id, At: fromMS(int64(z.Score)), Data: traceData([]byte(m[id]))})
	}
	return t, nil
}
