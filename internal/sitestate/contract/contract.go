// Package contract is the test suite every sitestate.Store implementation
// runs, so that the Redis and SQLite backends mean the same thing.
package contract

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/internal/sitestate"
)

// Run runs the contract against the stores open returns. open is called once
// per subtest and must return a new, empty store that no other subtest sees
// (subtests run in parallel); it arranges for the store to be closed with
// t.Cleanup. A subtest may close the store itself, so Close must tolerate a
// second call.
func Run(t *testing.T, open func(t *testing.T) sitestate.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s sitestate.Store)
	}{
		{"Directory/PutGetLookupList", testDirectoryBasics},
		{"Directory/DataRoundTrip", testDirectoryData},
		{"Directory/ReplaceDropsOldKeys", testDirectoryReplace},
		{"Directory/DeleteRemovesKeys", testDirectoryDelete},
		{"Directory/SnapshotReplacesAll", testDirectorySnapshot},
		{"Directory/StaleVersionIgnored", testDirectoryStale},
		{"Directory/KeyClaimedByTwoEntries", testDirectoryKeyConflict},
		{"Directory/CursorAndSyncState", testDirectorySyncState},
		{"Directory/InvalidSetChangesNothing", testDirectoryInvalid},
		{"Directory/ReaderNeverSeesPartialSet", testDirectoryAtomicity},
		{"Directory/ConcurrentWriters", testDirectoryConcurrentWriters},
		{"Ledger/HandoffAndDelivery", testLedgerDelivery},
		{"Ledger/HandoffIdempotent", testLedgerIdempotent},
		{"Ledger/MarkDeleted", testLedgerDeleted},
		{"Ledger/ListAndForget", testLedgerListForget},
		{"Ledger/MissingAndInvalid", testLedgerErrors},
		{"Ledger/ConcurrentMarkDelivered", testLedgerConcurrent},
		{"Idempotency/ClaimSeenForget", testIdempotencyBasics},
		{"Idempotency/ClaimExactlyOnce", testIdempotencyConcurrent},
		{"Idempotency/Expiry", testIdempotencyExpiry},
		{"Idempotency/Invalid", testIdempotencyInvalid},
		{"Idempotency/ClaimAllSeenAll", testIdempotencyBatch},
		{"Idempotency/ClaimAllExactlyOnce", testIdempotencyBatchConcurrent},
		{"Idempotency/ClaimAllExpiry", testIdempotencyBatchExpiry},
		{"Idempotency/ClaimAllInvalid", testIdempotencyBatchInvalid},
		{"MessageIndex/Normalisation", testMessageIndexNormalisation},
		{"MessageIndex/OverwriteAndMissing", testMessageIndexOverwrite},
		{"MessageIndex/Expiry", testMessageIndexExpiry},
		{"MessageIndex/Invalid", testMessageIndexInvalid},
		{"RateLimits/HitCountReset", testRateLimitsBasics},
		{"RateLimits/WindowExpiry", testRateLimitsExpiry},
		{"RateLimits/ConcurrentHits", testRateLimitsConcurrent},
		{"RateLimits/Invalid", testRateLimitsInvalid},
		{"TraceIndex/AppendAndListInOrder", testTraceOrder},
		{"TraceIndex/AppendIsIdempotent", testTraceIdempotent},
		{"TraceIndex/ConcurrentAppendOnce", testTraceConcurrent},
		{"TraceIndex/BoundDropsOldest", testTraceBound},
		{"TraceIndex/Expiry", testTraceExpiry},
		{"TraceIndex/Invalid", testTraceInvalid},
		{"PingAndClose", testPingClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// ---------------------------------------------------------------------------
// helpers

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds, failing the test after a deadline.
// TTL tests use it: expiry must happen, how fast is not asserted.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: did not happen within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isUTC(t *testing.T, what string, tm time.Time) {
	t.Helper()
	if !tm.IsZero() && tm.Location() != time.UTC {
		t.Errorf("%s = %v: not in UTC", what, tm)
	}
}

func user(id string, version int64, data string, keys ...string) sitestate.Entry {
	e := sitestate.Entry{Kind: "user", ID: id, Version: version, Keys: keys}
	if data != "" {
		e.Data = json.RawMessage(data)
	}
	return e
}

func sameEntry(t *testing.T, got, want sitestate.Entry) {
	t.Helper()
	if got.Kind != want.Kind || got.ID != want.ID || got.Version != want.Version ||
		string(got.Data) != string(want.Data) || !slices.Equal(got.Keys, want.Keys) {
		t.Errorf("entry = %+v (data %s), want %+v (data %s)", got, got.Data, want, want.Data)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("%s: err = %v, want ErrNotFound", what, err)
	}
}

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, sitestate.ErrInvalid) {
		t.Errorf("%s: err = %v, want ErrInvalid", what, err)
	}
}

func ids(es []sitestate.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

// ---------------------------------------------------------------------------
// Directory

func testDirectoryBasics(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()

	if l, err := d.List(ctx, "user"); err != nil || len(l) != 0 {
		t.Fatalf("List of empty replica = %v, %v", l, err)
	}
	_, err := d.Get(ctx, "user", "u1")
	wantNotFound(t, "Get on empty replica", err)
	_, err = d.Lookup(ctx, "user", "alice@example.com")
	wantNotFound(t, "Lookup on empty replica", err)

	alice := user("u1", 1, `{"name":"Alice"}`, "alice@example.com", "alice")
	bob := user("u2", 7, `{"name":"Bob"}`, "bob@example.com", "bob@example.com", "bob")
	group := sitestate.Entry{Kind: "group", ID: "g1", Version: 3, Data: json.RawMessage(`{"members":["u1","u2"]}`), Keys: []string{"staff@example.com"}}
	// The same key in another kind is another key.
	mbox := sitestate.Entry{Kind: "shared_mailbox", ID: "m1", Version: 1, Keys: []string{"alice"}}
	must(t, d.Apply(ctx, sitestate.ChangeSet{Cursor: "c1", Put: []sitestate.Entry{bob, alice, group, mbox}}))

	bobWant := bob
	bobWant.Keys = []string{"bob@example.com", "bob"} // duplicates dropped, order kept
	for _, tc := range []struct {
		kind, id string
		want     sitestate.Entry
	}{
		{"user", "u1", alice}, {"user", "u2", bobWant}, {"group", "g1", group}, {"shared_mailbox", "m1", mbox},
	} {
		got, err := d.Get(ctx, tc.kind, tc.id)
		must(t, err)
		sameEntry(t, got, tc.want)
	}
	for _, tc := range []struct {
		kind, key, wantID string
	}{
		{"user", "alice@example.com", "u1"},
		{"user", "alice", "u1"},
		{"user", "bob", "u2"},
		{"group", "staff@example.com", "g1"},
		{"shared_mailbox", "alice", "m1"},
		{"user", "ALICE", ""}, // keys are compared exactly
		{"user", "staff@example.com", ""},
		{"group", "alice", ""},
		{"site", "alice", ""},
	} {
		got, err := d.Lookup(ctx, tc.kind, tc.key)
		if tc.wantID == "" {
			wantNotFound(t, fmt.Sprintf("Lookup(%s, %s)", tc.kind, tc.key), err)
			continue
		}
		if err != nil {
			t.Errorf("Lookup(%s, %s): %v", tc.kind, tc.key, err)
			continue
		}
		if got.ID != tc.wantID || got.Kind != tc.kind {
			t.Errorf("Lookup(%s, %s) = %s/%s, want %s", tc.kind, tc.key, got.Kind, got.ID, tc.wantID)
		}
	}
	l, err := d.List(ctx, "user")
	must(t, err)
	if !slices.Equal(ids(l), []string{"u1", "u2"}) {
		t.Errorf("List(user) = %v, want [u1 u2] in order", ids(l))
	}
	sameEntry(t, l[1], bobWant)
	if l, err := d.List(ctx, "site"); err != nil || len(l) != 0 {
		t.Errorf("List(site) = %v, %v; want nothing", l, err)
	}
}

func testDirectoryData(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	e := user("u1", 1, " {\n \"html\" : \"<b>&amp;</b>\", \"n\": [1, 2.5e3] ,\"u\":\"\u00e9\\u00e9\"}\n", "k")
	none := user("u2", 1, "")
	null := user("u3", 1, "null")
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{e, none, null}}))
	got, err := d.Get(ctx, "user", "u1")
	must(t, err)
	if want := `{"html":"<b>&amp;</b>","n":[1,2.5e3],"u":"` + "\u00e9" + `\u00e9"}`; string(got.Data) != want {
		t.Errorf("Data = %s, want it compacted, otherwise unchanged: %s", got.Data, want)
	}
	got, err = d.Get(ctx, "user", "u2")
	must(t, err)
	if got.Data != nil || got.Keys != nil {
		t.Errorf("entry without data and keys = %+v, want nil Data and Keys", got)
	}
	got, err = d.Get(ctx, "user", "u3")
	must(t, err)
	if string(got.Data) != "null" {
		t.Errorf("Data = %q, want null", got.Data)
	}
}

func testDirectoryReplace(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("u1", 1, `{"v":1}`, "old@example.com", "kept")}}))
	repl := user("u1", 2, `{"v":2}`, "kept", "new@example.com")
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{repl}}))

	_, err := d.Lookup(ctx, "user", "old@example.com")
	wantNotFound(t, "key the replacement dropped", err)
	for _, k := range []string{"kept", "new@example.com"} {
		got, err := d.Lookup(ctx, "user", k)
		must(t, err)
		sameEntry(t, got, repl)
	}
	// An equal version overwrites (replaying a set is harmless).
	again := user("u1", 2, `{"v":"2b"}`, "kept")
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{again}}))
	got, err := d.Get(ctx, "user", "u1")
	must(t, err)
	sameEntry(t, got, again)
	_, err = d.Lookup(ctx, "user", "new@example.com")
	wantNotFound(t, "key dropped by an equal-version put", err)
}

func testDirectoryDelete(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{
		user("u1", 1, "", "a", "b"), user("u2", 1, "", "c"),
	}}))
	must(t, d.Apply(ctx, sitestate.ChangeSet{Delete: []sitestate.Ref{
		{Kind: "user", ID: "u1"}, {Kind: "user", ID: "missing"}, {Kind: "group", ID: "u2"},
	}}))
	_, err := d.Get(ctx, "user", "u1")
	wantNotFound(t, "deleted entry", err)
	for _, k := range []string{"a", "b"} {
		_, err := d.Lookup(ctx, "user", k)
		wantNotFound(t, "key of deleted entry", err)
	}
	if got, err := d.Lookup(ctx, "user", "c"); err != nil || got.ID != "u2" {
		t.Errorf("Lookup(c) = %v, %v; want u2 untouched", got.ID, err)
	}
	// Deletes come before puts within one set.
	must(t, d.Apply(ctx, sitestate.ChangeSet{
		Put:    []sitestate.Entry{user("u2", 2, "", "d")},
		Delete: []sitestate.Ref{{Kind: "user", ID: "u2"}},
	}))
	if got, err := d.Lookup(ctx, "user", "d"); err != nil || got.Version != 2 {
		t.Errorf("Lookup(d) = %+v, %v; want u2 version 2", got, err)
	}
	_, err = d.Lookup(ctx, "user", "c")
	wantNotFound(t, "key of deleted-then-put entry", err)
}

func testDirectorySnapshot(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	must(t, d.Apply(ctx, sitestate.ChangeSet{Cursor: "c1", Put: []sitestate.Entry{
		user("u1", 5, `{"v":1}`, "one"), user("u2", 5, "", "two"), user("u3", 5, "", "three"),
		{Kind: "group", ID: "g1", Version: 1, Keys: []string{"g"}},
	}}))
	snap := []sitestate.Entry{
		user("u2", 1, `{"v":"snap"}`, "two", "deux"), // lower version: a snapshot replaces regardless
		user("u4", 1, "", "four", "one"),             // takes over u1's key
		{Kind: "site", ID: "s1", Version: 1, Keys: []string{"branch"}},
	}
	must(t, d.Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "c9", Put: snap}))

	for _, kind := range []string{"user", "group", "site"} {
		l, err := d.List(ctx, kind)
		must(t, err)
		want := map[string][]string{"user": {"u2", "u4"}, "site": {"s1"}}[kind]
		if !slices.Equal(ids(l), want) {
			t.Errorf("List(%s) after snapshot = %v, want %v", kind, ids(l), want)
		}
	}
	for _, r := range []sitestate.Ref{{Kind: "user", ID: "u1"}, {Kind: "user", ID: "u3"}, {Kind: "group", ID: "g1"}} {
		_, err := d.Get(ctx, r.Kind, r.ID)
		wantNotFound(t, "entry absent from snapshot: "+r.ID, err)
	}
	for _, k := range []sitestate.Ref{{Kind: "user", ID: "three"}, {Kind: "group", ID: "g"}} {
		_, err := d.Lookup(ctx, k.Kind, k.ID)
		wantNotFound(t, "key of entry absent from snapshot: "+k.ID, err)
	}
	for key, id := range map[string]string{"one": "u4", "two": "u2", "deux": "u2", "four": "u4"} {
		if got, err := d.Lookup(ctx, "user", key); err != nil || got.ID != id {
			t.Errorf("Lookup(%s) = %q, %v; want %s", key, got.ID, err, id)
		}
	}
	got, err := d.Get(ctx, "user", "u2")
	must(t, err)
	sameEntry(t, got, snap[0])
	st, err := d.SyncState(ctx)
	must(t, err)
	if st.Cursor != "c9" {
		t.Errorf("cursor = %q, want c9", st.Cursor)
	}

	// An empty snapshot empties the replica.
	must(t, d.Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "c10"}))
	for _, kind := range []string{"user", "site"} {
		if l, err := d.List(ctx, kind); err != nil || len(l) != 0 {
			t.Errorf("List(%s) after empty snapshot = %v, %v", kind, ids(l), err)
		}
	}
	_, err = d.Lookup(ctx, "site", "branch")
	wantNotFound(t, "key after empty snapshot", err)
}

func testDirectoryStale(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	cur := user("u1", 10, `{"v":10}`, "new")
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{cur}}))
	must(t, d.Apply(ctx, sitestate.ChangeSet{Cursor: "c2", Put: []sitestate.Entry{
		user("u1", 9, `{"v":9}`, "old"),
		user("u2", 1, "", "other"), // the rest of the set still applies
	}}))
	got, err := d.Get(ctx, "user", "u1")
	must(t, err)
	sameEntry(t, got, cur)
	_, err = d.Lookup(ctx, "user", "old")
	wantNotFound(t, "key of a stale put", err)
	if _, err := d.Get(ctx, "user", "u2"); err != nil {
		t.Errorf("Get(u2) = %v; the rest of a set with a stale put must apply", err)
	}
	// Within one set, puts apply in order.
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{
		user("u3", 2, `{"v":2}`, "x"), user("u3", 1, `{"v":1}`, "y"), user("u3", 3, `{"v":3}`, "z"),
	}}))
	got, err = d.Get(ctx, "user", "u3")
	must(t, err)
	if got.Version != 3 || !slices.Equal(got.Keys, []string{"z"}) {
		t.Errorf("u3 = %+v, want version 3 with key z", got)
	}
	for _, k := range []string{"x", "y"} {
		_, err := d.Lookup(ctx, "user", k)
		wantNotFound(t, "key "+k, err)
	}
}

func testDirectoryKeyConflict(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("a", 1, "", "shared", "a-only")}}))
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("b", 1, "", "shared")}}))
	owner := func() string {
		t.Helper()
		got, err := d.Lookup(ctx, "user", "shared")
		if errors.Is(err, sitestate.ErrNotFound) {
			return ""
		}
		must(t, err)
		return got.ID
	}
	if o := owner(); o != "b" {
		t.Fatalf("owner of shared key = %q, want b (the last put)", o)
	}
	// Replacing or deleting a, which lost the key, leaves b's key alone.
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("a", 2, "", "a-only")}}))
	if o := owner(); o != "b" {
		t.Errorf("after replacing a: owner = %q, want b", o)
	}
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("a", 3, "", "shared")}}))
	must(t, d.Apply(ctx, sitestate.ChangeSet{Delete: []sitestate.Ref{{Kind: "user", ID: "b"}}}))
	if o := owner(); o != "a" {
		t.Errorf("after a re-took the key and b was deleted: owner = %q, want a", o)
	}
}

func testDirectorySyncState(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	st, err := d.SyncState(ctx)
	must(t, err)
	if st != (sitestate.SyncState{}) {
		t.Errorf("SyncState of a new replica = %+v, want zero", st)
	}
	must(t, d.Apply(ctx, sitestate.ChangeSet{Cursor: "42", Put: []sitestate.Entry{user("u1", 1, "")}}))
	st, err = d.SyncState(ctx)
	must(t, err)
	if st.Cursor != "42" || !st.SyncedAt.IsZero() {
		t.Errorf("after Apply: %+v, want cursor 42 and no sync time (MarkSynced records it)", st)
	}
	must(t, d.Apply(ctx, sitestate.ChangeSet{Put: []sitestate.Entry{user("u2", 1, "")}}))
	if st, _ = d.SyncState(ctx); st.Cursor != "42" {
		t.Errorf("an empty cursor in a set changed the cursor to %q", st.Cursor)
	}

	at := time.Date(2026, 3, 4, 5, 6, 7, 891_234_567, time.FixedZone("CET", 3600))
	must(t, d.MarkSynced(ctx, "43", at))
	st, err = d.SyncState(ctx)
	must(t, err)
	if want := at.Truncate(time.Millisecond); st.Cursor != "43" || !st.SyncedAt.Equal(want) {
		t.Errorf("after MarkSynced: %+v, want cursor 43 at %v", st, want)
	}
	isUTC(t, "SyncedAt", st.SyncedAt)

	// A sync without changes refreshes the time and keeps the cursor.
	later := at.Add(time.Minute)
	must(t, d.MarkSynced(ctx, "", later))
	st, err = d.SyncState(ctx)
	must(t, err)
	if st.Cursor != "43" || !st.SyncedAt.Equal(later.Truncate(time.Millisecond)) {
		t.Errorf("after MarkSynced without cursor: %+v", st)
	}
	// The zero time means now.
	before := time.Now().Add(-time.Second)
	must(t, d.MarkSynced(ctx, "44", time.Time{}))
	st, err = d.SyncState(ctx)
	must(t, err)
	if st.Cursor != "44" || st.SyncedAt.Before(before) || st.SyncedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("after MarkSynced(zero time): %+v, want about now", st)
	}
}

func testDirectoryInvalid(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	orig := user("u1", 1, `{"v":1}`, "k1")
	must(t, d.Apply(ctx, sitestate.ChangeSet{Cursor: "c1", Put: []sitestate.Entry{orig}}))

	good := user("u1", 2, `{"v":2}`, "k2")
	bad := []struct {
		name string
		cs   sitestate.ChangeSet
	}{
		{"empty kind", sitestate.ChangeSet{Put: []sitestate.Entry{good, {ID: "x"}}}},
		{"upper-case kind", sitestate.ChangeSet{Put: []sitestate.Entry{good, {Kind: "User", ID: "x"}}}},
		{"kind with colon", sitestate.ChangeSet{Put: []sitestate.Entry{good, {Kind: "a:b", ID: "x"}}}},
		{"empty id", sitestate.ChangeSet{Put: []sitestate.Entry{good, {Kind: "user"}}}},
		{"negative version", sitestate.ChangeSet{Put: []sitestate.Entry{good, user("x", -1, "")}}},
		{"bad JSON", sitestate.ChangeSet{Put: []sitestate.Entry{good, user("x", 1, `{"a":`)}}},
		{"empty key", sitestate.ChangeSet{Put: []sitestate.Entry{good, user("x", 1, "", "ok", "")}}},
		{"non-UTF-8 key", sitestate.ChangeSet{Put: []sitestate.Entry{good, user("x", 1, "", "\xff")}}},
		{"non-UTF-8 id", sitestate.ChangeSet{Put: []sitestate.Entry{good, user("\xfe", 1, "")}}},
		{"bad delete", sitestate.ChangeSet{Put: []sitestate.Entry{good}, Delete: []sitestate.Ref{{Kind: "user"}}}},
		{"bad snapshot", sitestate.ChangeSet{Snapshot: true, Put: []sitestate.Entry{good, {Kind: "", ID: "x"}}}},
		{"non-UTF-8 cursor", sitestate.ChangeSet{Cursor: "\xff", Put: []sitestate.Entry{good}}},
	}
	for _, tc := range bad {
		cs := tc.cs
		if cs.Cursor == "" {
			cs.Cursor = "c2"
		}
		wantInvalid(t, tc.name, d.Apply(ctx, cs))
	}
	got, err := d.Get(ctx, "user", "u1")
	must(t, err)
	sameEntry(t, got, orig)
	if _, err := d.Lookup(ctx, "user", "k2"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("a rejected set left key k2 behind (err %v)", err)
	}
	st, err := d.SyncState(ctx)
	must(t, err)
	if st.Cursor != "c1" {
		t.Errorf("a rejected set moved the cursor to %q", st.Cursor)
	}

	_, err = d.Get(ctx, "User", "u1")
	wantInvalid(t, "Get with a bad kind", err)
	_, err = d.Lookup(ctx, "user", "")
	wantInvalid(t, "Lookup of an empty key", err)
	_, err = d.List(ctx, "")
	wantInvalid(t, "List of an empty kind", err)
	wantInvalid(t, "MarkSynced with a non-UTF-8 cursor", d.MarkSynced(ctx, "\xff", time.Now()))
}

// testDirectoryAtomicity applies change sets while readers check that what
// they see always belongs to one set. Set g stores every u<i> with
// {"gen":g} and keys "k<i>" and "g<g>-k<i>", and "extra" only when g is even
// (odd sets drop it: by snapshot or by delete, alternately).
func testDirectoryAtomicity(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	const (
		n    = 12 // entries per set
		sets = 50
	)
	type data struct {
		Gen int `json:"gen"`
	}
	set := func(g int) sitestate.ChangeSet {
		cs := sitestate.ChangeSet{Cursor: fmt.Sprint(g), Snapshot: g%4 == 1}
		body := fmt.Sprintf(`{"gen":%d}`, g)
		for i := range n {
			cs.Put = append(cs.Put, user(fmt.Sprintf("u%02d", i), int64(g), body,
				fmt.Sprintf("k%d", i), fmt.Sprintf("g%d-k%d", g, i)))
		}
		if g%2 == 0 {
			cs.Put = append(cs.Put, user("extra", int64(g), body, fmt.Sprintf("g%d-extra", g)))
		} else if !cs.Snapshot {
			cs.Delete = append(cs.Delete, sitestate.Ref{Kind: "user", ID: "extra"})
		}
		return cs
	}
	gen := func(e sitestate.Entry) int {
		var v data
		if err := json.Unmarshal(e.Data, &v); err != nil {
			t.Errorf("entry %s: data %s: %v", e.ID, e.Data, err)
		}
		return v.Gen
	}
	must(t, d.Apply(ctx, set(0)))

	var (
		done  atomic.Bool
		wg    sync.WaitGroup
		reads atomic.Int64
		bad   atomic.Int64
	)
	fail := func(format string, args ...any) {
		if bad.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}
	for r := range 3 {
		wg.Go(func() {
			// Bounded: stop when the writer is done, or after a fixed number
			// of reads on a very fast machine.
			for i := 0; i < 200_000 && !done.Load() && bad.Load() == 0; i++ {
				l, err := d.List(ctx, "user")
				if err != nil || len(l) == 0 {
					fail("reader %d: List = %v, %v", r, ids(l), err)
					return
				}
				g := gen(l[0])
				wantLen := n
				if g%2 == 0 {
					wantLen++
				}
				if len(l) != wantLen {
					fail("reader %d: List saw %d entries of generation %d, want %d: %v", r, len(l), g, wantLen, ids(l))
				}
				for _, e := range l {
					if eg := gen(e); eg != g || e.Version != int64(g) {
						fail("reader %d: List mixed generations %d and %d (entry %s)", r, g, eg, e.ID)
						break
					}
				}
				// A key of generation g leads to an entry of generation g,
				// or (once the next set is in) to nothing.
				j := int(reads.Load()) % n
				e, err := d.Lookup(ctx, "user", fmt.Sprintf("g%d-k%d", g, j))
				switch {
				case errors.Is(err, sitestate.ErrNotFound):
				case err != nil:
					fail("reader %d: Lookup: %v", r, err)
				case gen(e) != g:
					fail("reader %d: key of generation %d leads to generation %d", r, g, gen(e))
				}
				// A stable key leads to an entry that has it.
				e, err = d.Lookup(ctx, "user", fmt.Sprintf("k%d", j))
				if err != nil {
					fail("reader %d: Lookup(k%d): %v", r, j, err)
				} else if !slices.Contains(e.Keys, fmt.Sprintf("k%d", j)) || len(e.Keys) != 2 {
					fail("reader %d: Lookup(k%d) = %s with keys %v", r, j, e.ID, e.Keys)
				}
				reads.Add(1)
			}
		})
	}
	for g := 1; g <= sets; g++ {
		if err := d.Apply(ctx, set(g)); err != nil {
			t.Errorf("Apply(set %d): %v", g, err)
			break
		}
	}
	done.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Error("the readers read nothing")
	}
	t.Logf("%d sets applied under %d consistent reads", sets, reads.Load())

	l, err := d.List(ctx, "user")
	must(t, err)
	if wantLen := n + 1 - sets%2; len(l) != wantLen || gen(l[0]) != sets {
		t.Errorf("final replica: %d entries of generation %d, want %d of %d", len(l), gen(l[0]), wantLen, sets)
	}
	for g := 0; g < sets; g++ {
		if _, err := d.Lookup(ctx, "user", fmt.Sprintf("g%d-k0", g)); !errors.Is(err, sitestate.ErrNotFound) {
			t.Errorf("key of generation %d survived: %v", g, err)
		}
	}
}

func testDirectoryConcurrentWriters(t *testing.T, s sitestate.Store) {
	ctx, d := ctxFor(t), s.Directory()
	const writers, sets = 4, 8
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range sets {
				id := fmt.Sprintf("w%d-%d", w, i)
				cs := sitestate.ChangeSet{
					Cursor: id,
					Put:    []sitestate.Entry{{Kind: "site", ID: id, Version: 1, Keys: []string{"key-" + id, "common"}}},
				}
				if err := d.Apply(ctx, cs); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	l, err := d.List(ctx, "site")
	must(t, err)
	if len(l) != writers*sets {
		t.Errorf("List(site) has %d entries, want %d", len(l), writers*sets)
	}
	for _, e := range l {
		if got, err := d.Lookup(ctx, "site", "key-"+e.ID); err != nil || got.ID != e.ID {
			t.Errorf("Lookup(key-%s) = %q, %v", e.ID, got.ID, err)
		}
	}
	if got, err := d.Lookup(ctx, "site", "common"); err != nil {
		t.Errorf("Lookup(common): %v", err)
	} else if !slices.Contains(ids(l), got.ID) {
		t.Errorf("Lookup(common) = %q, not an entry", got.ID)
	}
}

// ---------------------------------------------------------------------------
// Ledger

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 678_901_234, time.FixedZone("EET", 2*3600))

func ms(t time.Time) time.Time { return t.Truncate(time.Millisecond) }

func testLedgerDelivery(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	e, created, err := l.RecordHandoff(ctx, "acct1", "UIDL-1", sitestate.Handoff{
		MessageID: "<m1@example.com>", Recipients: []string{"a@x", "b@x", "a@x", "c@x"}, At: t0,
	})
	must(t, err)
	if !created {
		t.Error("first RecordHandoff: created = false")
	}
	check := func(what string, e sitestate.LedgerEntry, delivered []string, all bool) {
		t.Helper()
		if e.Account != "acct1" || e.UIDL != "UIDL-1" || e.MessageID != "<m1@example.com>" ||
			!slices.Equal(e.Recipients, []string{"a@x", "b@x", "c@x"}) || !e.HandedOffAt.Equal(ms(t0)) {
			t.Errorf("%s: entry = %+v", what, e)
		}
		isUTC(t, what+": HandedOffAt", e.HandedOffAt)
		var got []string
		for r, at := range e.Delivered {
			got = append(got, r)
			isUTC(t, what+": delivery time", at)
		}
		slices.Sort(got)
		if !slices.Equal(got, delivered) {
			t.Errorf("%s: delivered = %v, want %v", what, got, delivered)
		}
		if e.AllDelivered() != all {
			t.Errorf("%s: AllDelivered = %v, want %v", what, e.AllDelivered(), all)
		}
	}
	check("after hand-off", e, nil, false)
	if p := e.Pending(); !slices.Equal(p, []string{"a@x", "b@x", "c@x"}) {
		t.Errorf("Pending = %v", p)
	}

	at1 := t0.Add(time.Second)
	e, err = l.MarkDelivered(ctx, "acct1", "UIDL-1", at1, "b@x", "stranger@x")
	must(t, err)
	check("after b", e, []string{"b@x"}, false)
	if !e.Delivered["b@x"].Equal(ms(at1)) {
		t.Errorf("b delivered at %v, want %v", e.Delivered["b@x"], ms(at1))
	}
	e, err = l.Get(ctx, "acct1", "UIDL-1")
	must(t, err)
	check("Get after b", e, []string{"b@x"}, false)
	if p := e.Pending(); !slices.Equal(p, []string{"a@x", "c@x"}) {
		t.Errorf("Pending = %v", p)
	}

	// Marking again keeps the first time.
	e, err = l.MarkDelivered(ctx, "acct1", "UIDL-1", at1.Add(time.Hour), "b@x", "a@x")
	must(t, err)
	check("after a", e, []string{"a@x", "b@x"}, false)
	if !e.Delivered["b@x"].Equal(ms(at1)) {
		t.Errorf("b's delivery time moved to %v", e.Delivered["b@x"])
	}
	e, err = l.MarkDelivered(ctx, "acct1", "UIDL-1", time.Time{}, "c@x")
	must(t, err)
	check("after c", e, []string{"a@x", "b@x", "c@x"}, true)
	if d := time.Since(e.Delivered["c@x"]); d < -time.Second || d > time.Minute {
		t.Errorf("zero time should mean now; c delivered at %v", e.Delivered["c@x"])
	}
	e, err = l.Get(ctx, "acct1", "UIDL-1")
	must(t, err)
	check("Get after all", e, []string{"a@x", "b@x", "c@x"}, true)
	if len(e.Pending()) != 0 {
		t.Errorf("Pending = %v", e.Pending())
	}
}

func testLedgerIdempotent(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	h := sitestate.Handoff{MessageID: "m", Recipients: []string{"a", "b"}, At: t0}
	_, created, err := l.RecordHandoff(ctx, "acct", "u1", h)
	must(t, err)
	if !created {
		t.Fatal("created = false on first hand-off")
	}
	_, err = l.MarkDelivered(ctx, "acct", "u1", t0, "a")
	must(t, err)

	// Recording again, even with other details, changes nothing.
	e, created, err := l.RecordHandoff(ctx, "acct", "u1", sitestate.Handoff{
		MessageID: "other", Recipients: []string{"z"}, At: t0.Add(time.Hour),
	})
	must(t, err)
	if created {
		t.Error("created = true on the second hand-off")
	}
	if e.MessageID != "m" || !slices.Equal(e.Recipients, []string{"a", "b"}) || !e.HandedOffAt.Equal(ms(t0)) {
		t.Errorf("second hand-off returned %+v, want the first one", e)
	}
	if _, ok := e.Delivered["a"]; !ok || len(e.Delivered) != 1 {
		t.Errorf("second hand-off reset delivery progress: %v", e.Delivered)
	}
	g, err := l.Get(ctx, "acct", "u1")
	must(t, err)
	if _, ok := g.Delivered["a"]; !ok || g.MessageID != "m" {
		t.Errorf("stored entry after second hand-off = %+v", g)
	}

	// Concurrent hand-offs of one UIDL: one creates.
	var wg sync.WaitGroup
	var creators atomic.Int32
	for range 8 {
		wg.Go(func() {
			_, c, err := l.RecordHandoff(ctx, "acct", "u2", h)
			if err != nil {
				t.Error(err)
			}
			if c {
				creators.Add(1)
			}
		})
	}
	wg.Wait()
	if n := creators.Load(); n != 1 {
		t.Errorf("%d concurrent hand-offs reported created, want 1", n)
	}
}

func testLedgerDeleted(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	_, _, err := l.RecordHandoff(ctx, "acct", "u1", sitestate.Handoff{Recipients: []string{"a"}, At: t0})
	must(t, err)
	e, err := l.Get(ctx, "acct", "u1")
	must(t, err)
	if !e.DeletedAt.IsZero() {
		t.Errorf("new entry has DeletedAt %v", e.DeletedAt)
	}
	del := t0.Add(48 * time.Hour)
	e, err = l.MarkDeleted(ctx, "acct", "u1", del)
	must(t, err)
	if !e.DeletedAt.Equal(ms(del)) {
		t.Errorf("DeletedAt = %v, want %v", e.DeletedAt, ms(del))
	}
	isUTC(t, "DeletedAt", e.DeletedAt)
	e, err = l.MarkDeleted(ctx, "acct", "u1", del.Add(time.Hour))
	must(t, err)
	if !e.DeletedAt.Equal(ms(del)) {
		t.Errorf("second MarkDeleted moved DeletedAt to %v", e.DeletedAt)
	}
	e, err = l.Get(ctx, "acct", "u1")
	must(t, err)
	if !e.DeletedAt.Equal(ms(del)) || e.AllDelivered() {
		t.Errorf("Get after MarkDeleted = %+v", e)
	}
}

func testLedgerListForget(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	if es, err := l.List(ctx, "acct"); err != nil || len(es) != 0 {
		t.Fatalf("List of empty ledger = %v, %v", es, err)
	}
	for _, h := range []struct {
		account, uidl string
		at            time.Time
	}{
		{"acct", "c", t0.Add(2 * time.Second)},
		{"acct", "b", t0},
		{"acct", "a", t0},
		{"acct", "d:x", t0.Add(time.Second)},
		{"acct:d", "x", t0}, // must not collide with acct / d:x
		{"other", "a", t0},
	} {
		_, _, err := l.RecordHandoff(ctx, h.account, h.uidl, sitestate.Handoff{Recipients: []string{h.account + "/" + h.uidl}, At: h.at})
		must(t, err)
	}
	uidls := func(account string) []string {
		t.Helper()
		es, err := l.List(ctx, account)
		must(t, err)
		var out []string
		for _, e := range es {
			if e.Account != account || e.Recipients[0] != account+"/"+e.UIDL {
				t.Errorf("List(%s) returned %+v", account, e)
			}
			out = append(out, e.UIDL)
		}
		return out
	}
	if got, want := uidls("acct"), []string{"a", "b", "d:x", "c"}; !slices.Equal(got, want) {
		t.Errorf("List(acct) = %v, want %v (by hand-off time, then UIDL)", got, want)
	}
	if got := uidls("acct:d"); !slices.Equal(got, []string{"x"}) {
		t.Errorf("List(acct:d) = %v", got)
	}
	must(t, l.Forget(ctx, "acct", "b"))
	must(t, l.Forget(ctx, "acct", "b"))
	must(t, l.Forget(ctx, "acct", "never"))
	_, err := l.Get(ctx, "acct", "b")
	wantNotFound(t, "forgotten entry", err)
	if got, want := uidls("acct"), []string{"a", "d:x", "c"}; !slices.Equal(got, want) {
		t.Errorf("List(acct) after Forget = %v, want %v", got, want)
	}
	if got := uidls("other"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("List(other) = %v", got)
	}
	// A forgotten UIDL can be handed off afresh.
	e, created, err := l.RecordHandoff(ctx, "acct", "b", sitestate.Handoff{Recipients: []string{"new"}})
	must(t, err)
	if !created || !slices.Equal(e.Recipients, []string{"new"}) || len(e.Delivered) != 0 {
		t.Errorf("hand-off after Forget = %+v, created %v", e, created)
	}
}

func testLedgerErrors(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	_, err := l.Get(ctx, "acct", "nope")
	wantNotFound(t, "Get", err)
	_, err = l.MarkDelivered(ctx, "acct", "nope", time.Time{}, "a")
	wantNotFound(t, "MarkDelivered", err)
	_, err = l.MarkDeleted(ctx, "acct", "nope", time.Time{})
	wantNotFound(t, "MarkDeleted", err)
	if _, err := l.Get(ctx, "acct", "nope"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Error("MarkDelivered or MarkDeleted created a missing entry")
	}

	for _, tc := range []struct {
		name, account, uidl string
		h                   sitestate.Handoff
	}{
		{"no recipients", "acct", "u", sitestate.Handoff{}},
		{"empty recipient", "acct", "u", sitestate.Handoff{Recipients: []string{"a", ""}}},
		{"empty account", "", "u", sitestate.Handoff{Recipients: []string{"a"}}},
		{"empty uidl", "acct", "", sitestate.Handoff{Recipients: []string{"a"}}},
		{"non-UTF-8 uidl", "acct", "\xff", sitestate.Handoff{Recipients: []string{"a"}}},
		{"non-UTF-8 message-id", "acct", "u", sitestate.Handoff{MessageID: "\xff", Recipients: []string{"a"}}},
	} {
		_, _, err := l.RecordHandoff(ctx, tc.account, tc.uidl, tc.h)
		wantInvalid(t, tc.name, err)
	}
	if es, err := l.List(ctx, "acct"); err != nil || len(es) != 0 {
		t.Errorf("invalid hand-offs left %v, %v", es, err)
	}
	_, err = l.List(ctx, "")
	wantInvalid(t, "List of empty account", err)
	wantInvalid(t, "Forget with empty uidl", l.Forget(ctx, "acct", ""))
	_, err = l.MarkDelivered(ctx, "", "u", time.Time{}, "a")
	wantInvalid(t, "MarkDelivered with empty account", err)
}

func testLedgerConcurrent(t *testing.T, s sitestate.Store) {
	ctx, l := ctxFor(t), s.Ledger()
	const n = 12
	var rcpts []string
	for i := range n {
		rcpts = append(rcpts, fmt.Sprintf("r%d@x", i))
	}
	_, _, err := l.RecordHandoff(ctx, "acct", "u", sitestate.Handoff{Recipients: rcpts})
	must(t, err)
	var wg sync.WaitGroup
	for _, r := range rcpts {
		wg.Go(func() {
			if _, err := l.MarkDelivered(ctx, "acct", "u", time.Time{}, r); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	e, err := l.Get(ctx, "acct", "u")
	must(t, err)
	if !e.AllDelivered() || len(e.Delivered) != n {
		t.Errorf("after %d concurrent MarkDelivered: %d delivered, pending %v", n, len(e.Delivered), e.Pending())
	}
}

// ---------------------------------------------------------------------------
// Idempotency

func testIdempotencyBasics(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	seen := func(key string, want bool) {
		t.Helper()
		got, err := id.Seen(ctx, key)
		must(t, err)
		if got != want {
			t.Errorf("Seen(%s) = %v, want %v", key, got, want)
		}
	}
	seen("k", false)
	for i, want := range []bool{true, false, false} {
		got, err := id.Claim(ctx, "k", time.Hour)
		must(t, err)
		if got != want {
			t.Errorf("Claim #%d = %v, want %v", i+1, got, want)
		}
	}
	seen("k", true)
	seen("k2", false)
	must(t, id.Forget(ctx, "k"))
	must(t, id.Forget(ctx, "k"))
	seen("k", false)
	if got, err := id.Claim(ctx, "k", time.Hour); err != nil || !got {
		t.Errorf("Claim after Forget = %v, %v; want true", got, err)
	}
}

func testIdempotencyConcurrent(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	const n = 32
	for _, key := range []string{"deliver:m1:a@x", "deliver:m1:b@x"} {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				ok, err := id.Claim(ctx, key, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if w := wins.Load(); w != 1 {
			t.Errorf("%d of %d concurrent claims of %s won, want exactly 1", w, n, key)
		}
	}
}

func testIdempotencyExpiry(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	ok, err := id.Claim(ctx, "short", 100*time.Millisecond)
	must(t, err)
	if !ok {
		t.Fatal("first claim lost")
	}
	ok, err = id.Claim(ctx, "long", time.Hour)
	must(t, err)
	if !ok {
		t.Fatal("first claim lost")
	}
	eventually(t, "short key expires", func() (bool, error) {
		seen, err := id.Seen(ctx, "short")
		return !seen, err
	})
	ok, err = id.Claim(ctx, "short", time.Hour)
	must(t, err)
	if !ok {
		t.Error("an expired key could not be claimed again")
	}
	ok, err = id.Claim(ctx, "short", time.Hour)
	must(t, err)
	if ok {
		t.Error("a re-claimed key was claimed twice")
	}
	if seen, err := id.Seen(ctx, "long"); err != nil || !seen {
		t.Errorf("Seen(long) = %v, %v; the long key expired with the short one", seen, err)
	}
	// A sub-millisecond TTL is valid (rounded up) and expires.
	ok, err = id.Claim(ctx, "tiny", time.Microsecond)
	must(t, err)
	if !ok {
		t.Error("claim with tiny TTL lost")
	}
	eventually(t, "tiny key expires", func() (bool, error) {
		ok, err := id.Claim(ctx, "tiny", time.Hour)
		return ok, err
	})
}

func testIdempotencyInvalid(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	for _, ttl := range []time.Duration{0, -time.Second} {
		_, err := id.Claim(ctx, "k", ttl)
		wantInvalid(t, fmt.Sprintf("Claim with ttl %v", ttl), err)
	}
	_, err := id.Claim(ctx, "", time.Second)
	wantInvalid(t, "Claim of empty key", err)
	_, err = id.Seen(ctx, "")
	wantInvalid(t, "Seen of empty key", err)
	wantInvalid(t, "Forget of empty key", id.Forget(ctx, ""))
	if seen, err := id.Seen(ctx, "k"); err != nil || seen {
		t.Errorf("an invalid claim set the key: %v, %v", seen, err)
	}
}

// testIdempotencyBatch: ClaimAll means Claim of each key in order, SeenAll
// Seen of each, and both agree with the one-key calls.
func testIdempotencyBatch(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	claimAll := func(keys []string, want ...bool) {
		t.Helper()
		got, err := id.ClaimAll(ctx, keys, time.Hour)
		must(t, err)
		if !slices.Equal(got, want) {
			t.Errorf("ClaimAll(%q) = %v, want %v", keys, got, want)
		}
	}
	seenAll := func(keys []string, want ...bool) {
		t.Helper()
		got, err := id.SeenAll(ctx, keys)
		must(t, err)
		if !slices.Equal(got, want) {
			t.Errorf("SeenAll(%q) = %v, want %v", keys, got, want)
		}
	}
	for _, empty := range [][]string{nil, {}} {
		got, err := id.ClaimAll(ctx, empty, time.Hour)
		if err != nil || len(got) != 0 {
			t.Errorf("ClaimAll(%#v) = %v, %v; want an empty result", empty, got, err)
		}
		got, err = id.SeenAll(ctx, empty)
		if err != nil || len(got) != 0 {
			t.Errorf("SeenAll(%#v) = %v, %v; want an empty result", empty, got, err)
		}
	}

	seenAll([]string{"a", "b"}, false, false)
	// A key listed twice is claimed at its first place only.
	claimAll([]string{"a", "b", "a"}, true, true, false)
	seenAll([]string{"a", "x", "b"}, true, false, true)
	// Keys set by Claim count for ClaimAll and the other way round.
	if ok, err := id.Claim(ctx, "c", time.Hour); err != nil || !ok {
		t.Fatalf("Claim(c) = %v, %v", ok, err)
	}
	claimAll([]string{"c", "d", "a"}, false, true, false)
	if ok, err := id.Claim(ctx, "d", time.Hour); err != nil || ok {
		t.Errorf("Claim(d) after ClaimAll set it = %v, %v; want false", ok, err)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		if seen, err := id.Seen(ctx, k); err != nil || !seen {
			t.Errorf("Seen(%s) = %v, %v; want true", k, seen, err)
		}
	}
	// Forget frees one key of a batch.
	must(t, id.Forget(ctx, "b"))
	seenAll([]string{"a", "b", "c", "d"}, true, false, true, true)
	claimAll([]string{"a", "b", "c", "d"}, false, true, false, false)

	// A large batch (more than one statement's worth of keys).
	const n = 1200
	var keys []string
	var want []bool
	for i := range n {
		keys = append(keys, fmt.Sprintf("big:%04d", i))
		want = append(want, i%3 != 0)
	}
	var first []string
	for i := 0; i < n; i += 3 {
		first = append(first, keys[i])
	}
	got, err := id.ClaimAll(ctx, first, time.Hour)
	must(t, err)
	if len(got) != len(first) || slices.Contains(got, false) {
		t.Fatalf("ClaimAll of %d new keys: %d results, %d true", len(first), len(got), count(got))
	}
	got, err = id.SeenAll(ctx, keys)
	must(t, err)
	if want := invert(want); !slices.Equal(got, want) {
		t.Errorf("SeenAll of %d keys, every third set: %d seen, want %d", n, count(got), count(want))
	}
	claimAll(keys, want...)
	got, err = id.SeenAll(ctx, keys)
	must(t, err)
	if count(got) != n {
		t.Errorf("SeenAll after claiming all %d keys: %d seen", n, count(got))
	}
}

func count(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func invert(bs []bool) []bool {
	out := make([]bool, len(bs))
	for i, b := range bs {
		out[i] = !b
	}
	return out
}

// testIdempotencyBatchConcurrent: batches over overlapping keys, in
// different orders, racing single claims: every key is won exactly once.
func testIdempotencyBatchConcurrent(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	keys := []string{"k1", "k2", "k3", "k4", "k5"}
	const n = 24
	var mu sync.Mutex
	wins := map[string]int{}
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			if g%4 == 3 {
				k := keys[g%len(keys)]
				ok, err := id.Claim(ctx, k, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					wins[k]++
					mu.Unlock()
				}
				return
			}
			// A rotation of the keys, with one listed twice.
			batch := append(slices.Clone(keys[g%len(keys):]), keys[:g%len(keys)]...)
			batch = append(batch, batch[0])
			got, err := id.ClaimAll(ctx, batch, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if got[len(got)-1] {
				t.Errorf("ClaimAll(%q) claimed the repeated key %s twice", batch, batch[0])
			}
			mu.Lock()
			for i, ok := range got {
				if ok {
					wins[batch[i]]++
				}
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, k := range keys {
		if wins[k] != 1 {
			t.Errorf("%s was won %d times by %d concurrent claims, want exactly once", k, wins[k], n)
		}
	}
}

// testIdempotencyBatchExpiry: keys set by ClaimAll expire with their ttl,
// and ClaimAll takes over expired keys next to live ones.
func testIdempotencyBatchExpiry(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	got, err := id.ClaimAll(ctx, []string{"short1", "short2"}, 100*time.Millisecond)
	must(t, err)
	if !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("first ClaimAll = %v", got)
	}
	if ok, err := id.Claim(ctx, "long", time.Hour); err != nil || !ok {
		t.Fatalf("Claim(long) = %v, %v", ok, err)
	}
	eventually(t, "short keys expire", func() (bool, error) {
		seen, err := id.SeenAll(ctx, []string{"short1", "short2"})
		return err == nil && !seen[0] && !seen[1], err
	})
	got, err = id.ClaimAll(ctx, []string{"short1", "long", "short2"}, time.Hour)
	must(t, err)
	if !slices.Equal(got, []bool{true, false, true}) {
		t.Errorf("ClaimAll(expired, live, expired) = %v, want [true false true]", got)
	}
	seen, err := id.SeenAll(ctx, []string{"short1", "long", "short2"})
	must(t, err)
	if !slices.Equal(seen, []bool{true, true, true}) {
		t.Errorf("SeenAll after re-claiming = %v, want all true", seen)
	}
}

// testIdempotencyBatchInvalid: one bad key or a bad ttl fails the whole
// batch with ErrInvalid, and nothing of it is set.
func testIdempotencyBatchInvalid(t *testing.T, s sitestate.Store) {
	ctx, id := ctxFor(t), s.Idempotency()
	for _, ttl := range []time.Duration{0, -time.Second} {
		_, err := id.ClaimAll(ctx, []string{"k"}, ttl)
		wantInvalid(t, fmt.Sprintf("ClaimAll with ttl %v", ttl), err)
	}
	_, err := id.ClaimAll(ctx, []string{"k", ""}, time.Hour)
	wantInvalid(t, "ClaimAll with an empty key", err)
	_, err = id.ClaimAll(ctx, []string{"k", "bad\xff"}, time.Hour)
	wantInvalid(t, "ClaimAll with a key that is not UTF-8", err)
	_, err = id.SeenAll(ctx, []string{"k", ""})
	wantInvalid(t, "SeenAll with an empty key", err)
	if seen, err := id.Seen(ctx, "k"); err != nil || seen {
		t.Errorf("an invalid ClaimAll set a key of its batch: %v, %v", seen, err)
	}
}

// ---------------------------------------------------------------------------
// Message-ID index

func testMessageIndexNormalisation(t *testing.T, s sitestate.Store) {
	ctx, m := ctxFor(t), s.MessageIndex()
	rec := sitestate.MessageRecord{StaffUserID: "u7", SharedMailboxID: "sm1", Sender: "support@example.com", At: t0}
	must(t, m.Put(ctx, "<Abc.123@Mail.Example.COM>", rec, time.Hour))
	for _, tc := range []struct {
		id    string
		found bool
	}{
		{"<Abc.123@Mail.Example.COM>", true},
		{"Abc.123@mail.example.com", true},
		{"  <Abc.123@mail.example.com>\r\n", true},
		{"< Abc.123@MAIL.example.com >", true},
		{"<abc.123@mail.example.com>", false}, // the left part is case-sensitive
		{"<Abc.123@mail.example.org>", false},
	} {
		got, err := m.Lookup(ctx, tc.id)
		if !tc.found {
			wantNotFound(t, "Lookup("+tc.id+")", err)
			continue
		}
		if err != nil {
			t.Errorf("Lookup(%q): %v", tc.id, err)
			continue
		}
		if got.StaffUserID != rec.StaffUserID || got.SharedMailboxID != rec.SharedMailboxID ||
			got.Sender != rec.Sender || !got.At.Equal(ms(rec.At)) {
			t.Errorf("Lookup(%q) = %+v, want %+v", tc.id, got, rec)
		}
		isUTC(t, "At", got.At)
	}
}

func testMessageIndexOverwrite(t *testing.T, s sitestate.Store) {
	ctx, m := ctxFor(t), s.MessageIndex()
	_, err := m.Lookup(ctx, "<none@example.com>")
	wantNotFound(t, "Lookup of unknown id", err)
	must(t, m.Put(ctx, "<a@b>", sitestate.MessageRecord{StaffUserID: "u1"}, time.Hour))
	must(t, m.Put(ctx, "a@B", sitestate.MessageRecord{StaffUserID: "u2", SharedMailboxID: "sm"}, time.Hour))
	got, err := m.Lookup(ctx, "<a@b>")
	must(t, err)
	if got != (sitestate.MessageRecord{StaffUserID: "u2", SharedMailboxID: "sm"}) {
		t.Errorf("Lookup after overwrite = %+v", got)
	}
}

func testMessageIndexExpiry(t *testing.T, s sitestate.Store) {
	ctx, m := ctxFor(t), s.MessageIndex()
	must(t, m.Put(ctx, "<short@x>", sitestate.MessageRecord{StaffUserID: "u"}, 100*time.Millisecond))
	must(t, m.Put(ctx, "<long@x>", sitestate.MessageRecord{StaffUserID: "u"}, time.Hour))
	eventually(t, "Message-ID expires", func() (bool, error) {
		_, err := m.Lookup(ctx, "<short@x>")
		if errors.Is(err, sitestate.ErrNotFound) {
			return true, nil
		}
		return false, err
	})
	if _, err := m.Lookup(ctx, "<long@x>"); err != nil {
		t.Errorf("Lookup(long) = %v", err)
	}
	// Putting it again revives it.
	must(t, m.Put(ctx, "<short@x>", sitestate.MessageRecord{StaffUserID: "v"}, time.Hour))
	if got, err := m.Lookup(ctx, "<short@x>"); err != nil || got.StaffUserID != "v" {
		t.Errorf("Lookup after re-Put = %+v, %v", got, err)
	}
}

func testMessageIndexInvalid(t *testing.T, s sitestate.Store) {
	ctx, m := ctxFor(t), s.MessageIndex()
	rec := sitestate.MessageRecord{StaffUserID: "u"}
	for _, id := range []string{"", "<>", "  ", "<a@b> <c@d>", "<a@b", "a b@c", "a@b\x00", "\xff@x"} {
		wantInvalid(t, fmt.Sprintf("Put(%q)", id), m.Put(ctx, id, rec, time.Hour))
		_, err := m.Lookup(ctx, id)
		wantInvalid(t, fmt.Sprintf("Lookup(%q)", id), err)
	}
	wantInvalid(t, "Put with zero ttl", m.Put(ctx, "<a@b>", rec, 0))
	wantInvalid(t, "Put with non-UTF-8 sender", m.Put(ctx, "<a@b>", sitestate.MessageRecord{Sender: "\xff"}, time.Hour))
	_, err := m.Lookup(ctx, "<a@b>")
	wantNotFound(t, "Lookup after invalid puts", err)
}

// ---------------------------------------------------------------------------
// Rate limits

func testRateLimitsBasics(t *testing.T, s sitestate.Store) {
	ctx, r := ctxFor(t), s.RateLimits()
	n, at, err := r.Count(ctx, "auth:ip:192.0.2.1")
	must(t, err)
	if n != 0 || !at.IsZero() {
		t.Errorf("Count of unknown key = %d, %v", n, at)
	}
	before := time.Now()
	var reset time.Time
	for i := int64(1); i <= 3; i++ {
		n, at, err := r.Hit(ctx, "auth:ip:192.0.2.1", time.Hour)
		must(t, err)
		if n != i {
			t.Errorf("hit %d: count = %d", i, n)
		}
		isUTC(t, "resetAt", at)
		if i == 1 {
			reset = at
			if at.Before(before.Add(time.Hour-time.Second)) || at.After(time.Now().Add(time.Hour+time.Second)) {
				t.Errorf("resetAt = %v, want about an hour from now", at)
			}
		} else if d := at.Sub(reset); d < -50*time.Millisecond || d > 50*time.Millisecond {
			// Redis computes it from the remaining TTL: allow rounding.
			t.Errorf("hit %d moved the window end from %v to %v", i, reset, at)
		}
	}
	// The window only matters on the hit that opens it.
	if n, _, err := r.Hit(ctx, "auth:ip:192.0.2.1", time.Millisecond); err != nil || n != 4 {
		t.Errorf("hit 4 with another window = %d, %v", n, err)
	}
	n, at, err = r.Count(ctx, "auth:ip:192.0.2.1")
	must(t, err)
	if n != 4 || at.Sub(reset).Abs() > 50*time.Millisecond {
		t.Errorf("Count = %d, %v; want 4, %v", n, at, reset)
	}
	if n, _, _ := r.Count(ctx, "auth:ip:192.0.2.2"); n != 0 {
		t.Errorf("another key counted %d", n)
	}
	must(t, r.Reset(ctx, "auth:ip:192.0.2.1"))
	must(t, r.Reset(ctx, "never-hit"))
	if n, at, err := r.Count(ctx, "auth:ip:192.0.2.1"); err != nil || n != 0 || !at.IsZero() {
		t.Errorf("Count after Reset = %d, %v, %v", n, at, err)
	}
	if n, _, err := r.Hit(ctx, "auth:ip:192.0.2.1", time.Hour); err != nil || n != 1 {
		t.Errorf("Hit after Reset = %d, %v; want 1", n, err)
	}
}

func testRateLimitsExpiry(t *testing.T, s sitestate.Store) {
	ctx, r := ctxFor(t), s.RateLimits()
	_, first, err := r.Hit(ctx, "k", 100*time.Millisecond)
	must(t, err)
	eventually(t, "window ends", func() (bool, error) {
		n, _, err := r.Count(ctx, "k")
		return n == 0, err
	})
	n, at, err := r.Hit(ctx, "k", time.Hour)
	must(t, err)
	if n != 1 || !at.After(first) {
		t.Errorf("first hit of a new window = %d, reset %v (old window ended %v)", n, at, first)
	}
}

func testRateLimitsConcurrent(t *testing.T, s sitestate.Store) {
	ctx, r := ctxFor(t), s.RateLimits()
	const n = 40
	counts := make([]int64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, _, err := r.Hit(ctx, "burst", time.Hour)
			if err != nil {
				t.Error(err)
			}
			counts[i] = c
		})
	}
	wg.Wait()
	slices.Sort(counts)
	for i, c := range counts {
		if c != int64(i+1) {
			t.Fatalf("concurrent hits returned counts %v, want 1..%d each once", counts, n)
		}
	}
	if c, _, err := r.Count(ctx, "burst"); err != nil || c != n {
		t.Errorf("Count = %d, %v; want %d", c, err, n)
	}
}

func testRateLimitsInvalid(t *testing.T, s sitestate.Store) {
	ctx, r := ctxFor(t), s.RateLimits()
	_, _, err := r.Hit(ctx, "k", 0)
	wantInvalid(t, "Hit with zero window", err)
	_, _, err = r.Hit(ctx, "", time.Second)
	wantInvalid(t, "Hit on empty key", err)
	_, _, err = r.Count(ctx, "")
	wantInvalid(t, "Count of empty key", err)
	wantInvalid(t, "Reset of empty key", r.Reset(ctx, ""))
	if n, _, err := r.Count(ctx, "k"); err != nil || n != 0 {
		t.Errorf("an invalid hit counted: %d, %v", n, err)
	}
}

// ---------------------------------------------------------------------------
// Trace index

var tracePolicy = sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 1000}

func traceIDs(tr sitestate.Trace) []string {
	var out []string
	for _, e := range tr.Entries {
		out = append(out, e.ID)
	}
	return out
}

func testTraceOrder(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	_, err := x.List(ctx, "msgid:m1@example.com")
	wantNotFound(t, "List of an empty index", err)

	keys := []string{"msgid:m1@example.com", "inbound:i1", "msgid:m1@example.com"}
	// Appended out of order; two at the same millisecond.
	for _, e := range []sitestate.TraceEntry{
		{ID: "c-delivered", At: t0.Add(2 * time.Second), Data: json.RawMessage(`{ "outcome" : "delivered" }`)},
		{ID: "b-deferred", At: t0.Add(time.Second), Data: json.RawMessage(`{"outcome":"deferred"}`)},
		{ID: "a-rejected", At: t0.Add(time.Second), Data: json.RawMessage(`{"outcome":"rejected"}`)},
		{ID: "z-first", At: t0},
	} {
		added, err := x.Append(ctx, keys, e, tracePolicy)
		must(t, err)
		if !added {
			t.Errorf("Append(%s): added = false for a new entry", e.ID)
		}
	}
	want := []string{"z-first", "a-rejected", "b-deferred", "c-delivered"}
	for _, k := range []string{"msgid:m1@example.com", "inbound:i1"} {
		tr, err := x.List(ctx, k)
		must(t, err)
		if !slices.Equal(traceIDs(tr), want) || tr.Dropped != 0 {
			t.Errorf("List(%s) = %v dropped %d, want %v (by time, then id) dropped 0", k, traceIDs(tr), tr.Dropped, want)
			continue
		}
		for i, at := range []time.Time{t0, t0.Add(time.Second), t0.Add(time.Second), t0.Add(2 * time.Second)} {
			if !tr.Entries[i].At.Equal(ms(at)) {
				t.Errorf("List(%s)[%d].At = %v, want %v", k, i, tr.Entries[i].At, ms(at))
			}
			isUTC(t, "At", tr.Entries[i].At)
		}
		if tr.Entries[0].Data != nil {
			t.Errorf("entry without data came back with %q", tr.Entries[0].Data)
		}
		if got := string(tr.Entries[3].Data); got != `{"outcome":"delivered"}` {
			t.Errorf("data = %s, want it compacted", got)
		}
	}
	// Another key is another list.
	_, err = x.List(ctx, "msgid:m2@example.com")
	wantNotFound(t, "List of another key", err)
	// A zero time is now.
	before := time.Now().Add(-time.Millisecond)
	_, err = x.Append(ctx, []string{"inbound:i2"}, sitestate.TraceEntry{ID: "now"}, tracePolicy)
	must(t, err)
	tr, err := x.List(ctx, "inbound:i2")
	must(t, err)
	if len(tr.Entries) != 1 || tr.Entries[0].At.Before(before) || tr.Entries[0].At.After(time.Now().Add(time.Millisecond)) {
		t.Errorf("entry appended with a zero time: %+v, want now", tr.Entries)
	}
}

func testTraceIdempotent(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	first := sitestate.TraceEntry{ID: "s1", At: t0, Data: json.RawMessage(`{"n":1}`)}
	again := sitestate.TraceEntry{ID: "s1", At: t0.Add(time.Minute), Data: json.RawMessage(`{"n":2}`)}
	added, err := x.Append(ctx, []string{"k1"}, first, tracePolicy)
	must(t, err)
	if !added {
		t.Error("first Append: added = false")
	}
	// The same record consumed again: nothing changes, the first stays.
	added, err = x.Append(ctx, []string{"k1"}, again, tracePolicy)
	must(t, err)
	if added {
		t.Error("Append of an id the list holds: added = true")
	}
	tr, err := x.List(ctx, "k1")
	must(t, err)
	if len(tr.Entries) != 1 || string(tr.Entries[0].Data) != `{"n":1}` || !tr.Entries[0].At.Equal(ms(t0)) {
		t.Errorf("after a repeated Append: %+v, want the first entry once", tr.Entries)
	}
	// New to one of the lists: added there, and only once in the other.
	added, err = x.Append(ctx, []string{"k1", "k2"}, again, tracePolicy)
	must(t, err)
	if !added {
		t.Error("Append new to k2: added = false")
	}
	for k, want := range map[string]string{"k1": `{"n":1}`, "k2": `{"n":2}`} {
		tr, err := x.List(ctx, k)
		must(t, err)
		if len(tr.Entries) != 1 || string(tr.Entries[0].Data) != want {
			t.Errorf("List(%s) = %+v, want one entry with %s", k, tr.Entries, want)
		}
	}
}

func testTraceConcurrent(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	const n = 20
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Every goroutine appends the same record, and one of its own.
			added, err := x.Append(ctx, []string{"msgid:x", "inbound:y"}, sitestate.TraceEntry{ID: "same", At: t0}, tracePolicy)
			if err != nil {
				t.Error(err)
			}
			if added {
				wins.Add(1)
			}
			if _, err := x.Append(ctx, []string{"msgid:x"}, sitestate.TraceEntry{ID: fmt.Sprintf("own-%02d", i), At: t0.Add(time.Second)}, tracePolicy); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if w := wins.Load(); w != 1 {
		t.Errorf("%d concurrent Appends of one record reported added, want 1", w)
	}
	tr, err := x.List(ctx, "msgid:x")
	must(t, err)
	if len(tr.Entries) != n+1 || tr.Entries[0].ID != "same" {
		t.Errorf("List = %v, want same then %d own entries", traceIDs(tr), n)
	}
}

func testTraceBound(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	p := sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 5}
	// Eight entries, out of order: the three oldest go.
	for _, i := range []int{3, 7, 0, 5, 1, 6, 2, 4} {
		_, err := x.Append(ctx, []string{"k"}, sitestate.TraceEntry{ID: fmt.Sprintf("e%d", i), At: t0.Add(time.Duration(i) * time.Second)}, p)
		must(t, err)
	}
	tr, err := x.List(ctx, "k")
	must(t, err)
	if want := []string{"e3", "e4", "e5", "e6", "e7"}; !slices.Equal(traceIDs(tr), want) || tr.Dropped != 3 {
		t.Errorf("List = %v dropped %d, want %v dropped 3", traceIDs(tr), tr.Dropped, want)
	}
	// A kept entry again: nothing changes.
	added, err := x.Append(ctx, []string{"k"}, sitestate.TraceEntry{ID: "e5", At: t0.Add(5 * time.Second)}, p)
	must(t, err)
	if added {
		t.Error("Append of a kept entry: added = true")
	}
	// A dropped one again (redelivered): still not kept, counted again.
	_, err = x.Append(ctx, []string{"k"}, sitestate.TraceEntry{ID: "e0", At: t0}, p)
	must(t, err)
	tr, err = x.List(ctx, "k")
	must(t, err)
	if want := []string{"e3", "e4", "e5", "e6", "e7"}; !slices.Equal(traceIDs(tr), want) || tr.Dropped != 4 {
		t.Errorf("after a dropped entry came again: %v dropped %d, want %v dropped 4", traceIDs(tr), tr.Dropped, want)
	}
	// A lower bound takes effect at the next Append.
	_, err = x.Append(ctx, []string{"k"}, sitestate.TraceEntry{ID: "e8", At: t0.Add(8 * time.Second)}, sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 2})
	must(t, err)
	tr, err = x.List(ctx, "k")
	must(t, err)
	if want := []string{"e7", "e8"}; !slices.Equal(traceIDs(tr), want) || tr.Dropped != 8 {
		t.Errorf("after lowering the bound: %v dropped %d, want %v dropped 8", traceIDs(tr), tr.Dropped, want)
	}
}

func testTraceExpiry(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	short := sitestate.TracePolicy{TTL: 100 * time.Millisecond, MaxEntries: 2}
	for i := range 3 {
		_, err := x.Append(ctx, []string{"short", "both"}, sitestate.TraceEntry{ID: fmt.Sprintf("s%d", i), At: t0.Add(time.Duration(i) * time.Second)}, short)
		must(t, err)
	}
	_, err := x.Append(ctx, []string{"long"}, sitestate.TraceEntry{ID: "l", At: t0}, tracePolicy)
	must(t, err)
	// An Append restarts the TTL of the whole list.
	_, err = x.Append(ctx, []string{"both"}, sitestate.TraceEntry{ID: "b", At: t0.Add(3 * time.Second)}, sitestate.TracePolicy{TTL: time.Hour, MaxEntries: 2})
	must(t, err)
	eventually(t, "trace list expires", func() (bool, error) {
		_, err := x.List(ctx, "short")
		if errors.Is(err, sitestate.ErrNotFound) {
			return true, nil
		}
		return false, err
	})
	if tr, err := x.List(ctx, "long"); err != nil || len(tr.Entries) != 1 {
		t.Errorf("List(long) = %+v, %v", tr, err)
	}
	if tr, err := x.List(ctx, "both"); err != nil || !slices.Equal(traceIDs(tr), []string{"s2", "b"}) {
		t.Errorf("List(both) = %v, %v; want [s2 b] (its TTL restarted by the last Append)", traceIDs(tr), err)
	}
	// An expired list starts again empty, its dropped count too.
	added, err := x.Append(ctx, []string{"short"}, sitestate.TraceEntry{ID: "s0", At: t0}, tracePolicy)
	must(t, err)
	if !added {
		t.Error("Append to an expired list: added = false")
	}
	tr, err := x.List(ctx, "short")
	must(t, err)
	if !slices.Equal(traceIDs(tr), []string{"s0"}) || tr.Dropped != 0 {
		t.Errorf("List after expiry and Append = %v dropped %d, want [s0] dropped 0", traceIDs(tr), tr.Dropped)
	}
}

func testTraceInvalid(t *testing.T, s sitestate.Store) {
	ctx, x := ctxFor(t), s.TraceIndex()
	ok := sitestate.TraceEntry{ID: "e", At: t0, Data: json.RawMessage(`{}`)}
	longKey := strings.Repeat("k", sitestate.MaxTraceKey+1)
	for _, tc := range []struct {
		what string
		keys []string
		e    sitestate.TraceEntry
		p    sitestate.TracePolicy
	}{
		{"no key", nil, ok, tracePolicy},
		{"an empty key", []string{"k", ""}, ok, tracePolicy},
		{"a key that is not UTF-8", []string{"k", "\xff"}, ok, tracePolicy},
		{"a key too long", []string{"k", longKey}, ok, tracePolicy},
		{"an empty id", []string{"k"}, sitestate.TraceEntry{At: t0}, tracePolicy},
		{"an id too long", []string{"k"}, sitestate.TraceEntry{ID: longKey}, tracePolicy},
		{"data that is not JSON", []string{"k"}, sitestate.TraceEntry{ID: "e", Data: json.RawMessage(`{"a":`)}, tracePolicy},
		{"data too large", []string{"k"}, sitestate.TraceEntry{ID: "e", Data: json.RawMessage(`"` + strings.Repeat("x", sitestate.MaxTraceData) + `"`)}, tracePolicy},
		{"a zero ttl", []string{"k"}, ok, sitestate.TracePolicy{MaxEntries: 10}},
		{"a zero bound", []string{"k"}, ok, sitestate.TracePolicy{TTL: time.Hour}},
		{"a bound too large", []string{"k"}, ok, sitestate.TracePolicy{TTL: time.Hour, MaxEntries: sitestate.MaxTraceEntries + 1}},
	} {
		_, err := x.Append(ctx, tc.keys, tc.e, tc.p)
		wantInvalid(t, "Append with "+tc.what, err)
	}
	_, err := x.List(ctx, "")
	wantInvalid(t, "List of an empty key", err)
	_, err = x.List(ctx, longKey)
	wantInvalid(t, "List of a key too long", err)
	_, err = x.List(ctx, "k")
	wantNotFound(t, "List after invalid Appends", err)
}

// ---------------------------------------------------------------------------

func testPingClose(t *testing.T, s sitestate.Store) {
	ctx := ctxFor(t)
	must(t, s.Ping(ctx))
	must(t, s.Close())
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping after Close succeeded")
	}
	if _, err := s.Idempotency().Claim(ctx, "k", time.Second); err == nil {
		t.Error("Claim after Close succeeded")
	}
	if _, err := s.Idempotency().ClaimAll(ctx, []string{"k", "l"}, time.Second); err == nil {
		t.Error("ClaimAll after Close succeeded")
	}
	if _, err := s.Idempotency().SeenAll(ctx, []string{"k", "l"}); err == nil {
		t.Error("SeenAll after Close succeeded")
	}
	if _, err := s.TraceIndex().Append(ctx, []string{"k"}, sitestate.TraceEntry{ID: "e"}, tracePolicy); err == nil {
		t.Error("trace Append after Close succeeded")
	}
}
