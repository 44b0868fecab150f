// Package sitestate holds the state one site's services share: the read-only
// replica of the directory, the POP3 UIDL ledger, idempotency keys, the
// Message-ID index that routes replies to shared mailboxes, rate-limit
// counters, and the trace index that lets an operator follow a message.
//
// Two implementations exist, chosen by [Config.Backend] and built by [Open]:
// Redis (per-site deployments, where several processes share the state) and
// SQLite (single box). Both pass one contract test suite,
// [github.com/postern/postern/internal/sitestate/contract].
//
// A [Store] hands out one small interface per concern; a service depends on
// the ones it uses (the router on [DirectoryReader] and [MessageIndex], the
// fetcher on [Directory] and [Ledger], ...), not on the whole Store.
//
// Common rules:
//
//   - Every method takes a context and gives up when it is cancelled.
//   - Missing things are reported with an error matching [ErrNotFound].
//   - Input that can never succeed (an empty key, a non-positive TTL, a
//     malformed Message-ID) is reported with an error matching [ErrInvalid] and
//     nothing is written. Any other error (Redis unreachable, disk full) is
//     worth retrying.
//   - Times are stored with millisecond precision and returned in UTC.
//   - TTLs are measured by the backend's clock (Redis server time, or this
//     process's clock for SQLite); a TTL shorter than a millisecond is
//     rounded up to one.
package sitestate

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// ErrNotFound is matched (errors.Is) by the error returned when the thing
// asked for does not exist or has expired.
var ErrNotFound = errors.New("sitestate: not found")

// ErrInvalid is matched (errors.Is) by errors about arguments that can never
// be stored: retrying them is pointless.
var ErrInvalid = errors.New("sitestate: invalid argument")

// Store is the whole site state. It is safe for concurrent use; the values
// its accessors return are too, and stay usable until Close.
type Store interface {
	Directory() Directory
	Ledger() Ledger
	Idempotency() Idempotency
	MessageIndex() MessageIndex
	RateLimits() RateLimits
	TraceIndex() TraceIndex

	// Ping reports whether the backend answers (readiness).
	Ping(ctx context.Context) error
	// Close releases the store's resources. Calls made after Close fail.
	Close() error
}

// ---------------------------------------------------------------------------
// Directory replica

// Entry is one object of the directory replica: a user, a group, a site, a
// POP3 account, a shared mailbox, ... The replica does not interpret Data;
// the directory's schema is the business of its readers.
type Entry struct {
	// Kind names the type of object ("user", "group", ...): 1 to 64
	// characters from [a-z0-9_-].
	Kind string
	// ID identifies the object within its Kind: non-empty UTF-8.
	ID string
	// Version increases with every change of the object at the source. A Put
	// whose Version is lower than the stored entry's is ignored (a stale
	// replay); an equal Version overwrites. Must not be negative.
	Version int64
	// Data is the object as JSON, stored compacted (empty means none, returned
	// as nil).
	Data json.RawMessage
	// Keys are the lookup keys of the object within its Kind (addresses,
	// user names, ...): non-empty UTF-8, compared byte for byte. The replica
	// does not normalise them: the writer stores them normalised (e.g.
	// lower-cased addresses) and readers normalise what they look up the
	// same way. Duplicates are dropped.
	//
	// Keys should be unique within a Kind. If two entries claim one key,
	// the index follows the last Put; removing or replacing the other entry
	// then leaves the key alone.
	Keys []string
}

// Ref names an entry.
type Ref struct {
	Kind string
	ID   string
}

// ChangeSet is one atomic step of the replica, taken from the directory's
// change feed.
type ChangeSet struct {
	// Snapshot makes the set the whole replica: every entry not in Put
	// vanishes, with its lookup keys.
	Snapshot bool
	// Cursor is the feed position after this set. It is stored in the same
	// atomic step as the changes; empty leaves the stored cursor unchanged.
	Cursor string
	// Put adds or replaces entries (see Entry.Version for stale puts).
	// Replacing an entry drops the lookup keys it no longer has.
	Put []Entry
	// Delete removes entries and their lookup keys; deleting a missing
	// entry is not an error. Deletes are applied before puts, so a ref in
	// both is replaced; the writer should collapse the feed instead.
	Delete []Ref
}

// SyncState says how fresh the replica is.
type SyncState struct {
	// Cursor is the feed position the replica reflects ("" before the first
	// change set or MarkSynced).
	Cursor string
	// SyncedAt is when a sync last succeeded (MarkSynced), zero if never.
	// The replica's age is the time since then.
	SyncedAt time.Time
}

// DirectoryReader reads the replica. Every call sees the replica between two
// change sets, never in the middle of one.
type DirectoryReader interface {
	// Get returns the entry (kind, id), or ErrNotFound.
	Get(ctx context.Context, kind, id string) (Entry, error)
	// Lookup returns the entry of kind that owns key, or ErrNotFound.
	Lookup(ctx context.Context, kind, key string) (Entry, error)
	// List returns every entry of kind, ordered by ID.
	List(ctx context.Context, kind string) ([]Entry, error)
	// SyncState returns the cursor and the time of the last successful sync.
	SyncState(ctx context.Context) (SyncState, error)
}

// Directory is the replica as its writer, the fetcher, sees it.
type Directory interface {
	DirectoryReader
	// Apply applies cs atomically: a reader sees the replica before the set
	// or after it, never part of it, and an error leaves the replica as it
	// was. An invalid entry or ref rejects the whole set (ErrInvalid).
	// Concurrent Apply calls are serialised.
	Apply(ctx context.Context, cs ChangeSet) error
	// MarkSynced records that a sync ended well at at, whether or not it
	// found changes, and stores cursor unless it is empty.
	MarkSynced(ctx context.Context, cursor string, at time.Time) error
}

// ---------------------------------------------------------------------------
// POP3 UIDL ledger

// Handoff is what the fetcher records once a downloaded message has been
// published to mail.inbound.
type Handoff struct {
	MessageID string // the message's Message-ID, as published (may be empty)
	// Recipients are the envelope recipients the message was published
	// for: at least one; duplicates are dropped.
	Recipients []string
	At         time.Time // when it was published; zero means now
}

// LedgerEntry is the ledger's record of one message of one POP3 account.
type LedgerEntry struct {
	Account     string
	UIDL        string
	MessageID   string
	Recipients  []string
	HandedOffAt time.Time
	// Delivered maps each recipient marked delivered to when it was
	// marked. It only ever holds recipients from Recipients.
	Delivered map[string]time.Time
	// DeletedAt is when the message was deleted from the POP3 server, zero
	// while it is still there.
	DeletedAt time.Time
}

// AllDelivered reports whether every recipient has been marked delivered:
// the message may then be deleted from the POP3 server.
func (e LedgerEntry) AllDelivered() bool {
	for _, r := range e.Recipients {
		if _, ok := e.Delivered[r]; !ok {
			return false
		}
	}
	return len(e.Recipients) > 0
}

// Pending returns the recipients not yet marked delivered, in order.
func (e LedgerEntry) Pending() []string {
	var out []string
	for _, r := range e.Recipients {
		if _, ok := e.Delivered[r]; !ok {
			out = append(out, r)
		}
	}
	return out
}

// Ledger remembers, per POP3 account and UIDL, what happened to each
// downloaded message, so that a message is published once and deleted from
// the server only after it was delivered. Account IDs and UIDLs are opaque
// non-empty strings. Each method changes one entry atomically; concurrent
// calls on one entry do not lose each other's changes.
type Ledger interface {
	// RecordHandoff records that the message uidl of account was handed
	// off. It is idempotent: if the entry exists it is returned unchanged
	// (the first hand-off wins, delivery progress is kept) with created
	// false.
	RecordHandoff(ctx context.Context, account, uidl string, h Handoff) (e LedgerEntry, created bool, err error)
	// MarkDelivered marks recipients of the entry delivered at at (zero
	// means now) and returns the entry. "Delivered" means mail.status
	// reported a final outcome for the recipient. Recipients already marked
	// keep their first time; recipients the entry does not have are
	// ignored. ErrNotFound if there is no entry.
	MarkDelivered(ctx context.Context, account, uidl string, at time.Time, recipients ...string) (LedgerEntry, error)
	// MarkDeleted records that the message was deleted from the POP3
	// server at at (zero means now; a second call keeps the first time)
	// and returns the entry. ErrNotFound if there is no entry.
	MarkDeleted(ctx context.Context, account, uidl string, at time.Time) (LedgerEntry, error)
	// Get returns one entry, or ErrNotFound.
	Get(ctx context.Context, account, uidl string) (LedgerEntry, error)
	// List returns the account's entries ordered by HandedOffAt, then UIDL.
	List(ctx context.Context, account string) ([]LedgerEntry, error)
	// Forget removes the entry (once its UIDL is gone from the server).
	// Forgetting a missing entry is not an error.
	Forget(ctx context.Context, account, uidl string) error
}

// ---------------------------------------------------------------------------
// Idempotency keys

// Idempotency holds keys that say "this was done already", each for a limited
// time. Keys are opaque non-empty strings; callers namespace them
// ("deliver:<message>:<recipient>").
type Idempotency interface {
	// Claim sets key for ttl if it is not set (or has expired) and reports
	// whether this call set it: among concurrent callers exactly one wins
	// until the key expires or is forgotten. ttl must be positive.
	Claim(ctx context.Context, key string, ttl time.Duration) (claimed bool, err error)
	// ClaimAll claims keys for ttl in one atomic step (one transaction, one
	// round trip): claimed[i] is what Claim(ctx, keys[i], ttl) would have
	// reported had the keys been claimed one after the other, so a key
	// listed twice is claimed at its first place only. An empty or nil keys
	// claims nothing and returns an empty slice. An invalid key or ttl is
	// ErrInvalid and sets no key. After any other error either no key was
	// set or (the answer lost on its way back) all were: calling again is
	// safe. This is the call to use when several keys are set at once: on
	// SQLite one synchronous commit covers them all.
	ClaimAll(ctx context.Context, keys []string, ttl time.Duration) (claimed []bool, err error)
	// Seen reports whether key is set and unexpired.
	Seen(ctx context.Context, key string) (bool, error)
	// SeenAll reports, for each of keys, whether it is set and unexpired
	// (seen[i] is about keys[i]), reading them at one moment in one round
	// trip. An empty or nil keys returns an empty slice; an invalid key is
	// ErrInvalid.
	SeenAll(ctx context.Context, keys []string) (seen []bool, err error)
	// Forget removes key (so it can be claimed again); a missing key is
	// not an error.
	Forget(ctx context.Context, key string) error
}

// ---------------------------------------------------------------------------
// Message-ID index

// MessageRecord is what the router remembers about a message it sent on
// behalf of a shared mailbox, so that replies to it reach the mailbox.
type MessageRecord struct {
	StaffUserID     string    // the staff member who sent it
	SharedMailboxID string    // the shared mailbox it was sent as
	Sender          string    // the sender address written on the message
	At              time.Time // when it was sent
}

// MessageIndex maps Message-IDs to MessageRecords for a limited time.
// Message-IDs are normalised with NormalizeMessageID before they are used as
// keys, so "<Abc@Example.COM>" and "Abc@example.com" are the same message; a
// Message-ID that cannot be normalised is ErrInvalid.
type MessageIndex interface {
	// Put stores rec under messageID for ttl (positive), replacing any
	// record there.
	Put(ctx context.Context, messageID string, rec MessageRecord, ttl time.Duration) error
	// Lookup returns the record of messageID, or ErrNotFound.
	Lookup(ctx context.Context, messageID string) (MessageRecord, error)
}

// ---------------------------------------------------------------------------
// Rate limits

// RateLimits counts events per key in fixed windows: the first hit on a key
// opens a window of the given length, hits inside it are counted, and the
// next hit after it ends opens a new one. Keys are opaque non-empty strings;
// callers namespace them ("auth:ip:192.0.2.1").
type RateLimits interface {
	// Hit counts one event on key atomically and returns the count in the
	// current window, including this one, and when the window ends. window
	// must be positive; it only matters for the hit that opens a window.
	Hit(ctx context.Context, key string, window time.Duration) (count int64, resetAt time.Time, err error)
	// Count returns the count in key's current window and when it ends;
	// zero and the zero time when no window is open.
	Count(ctx context.Context, key string) (count int64, resetAt time.Time, err error)
	// Reset closes key's window (e.g. to clear an AUTH lockout after a
	// success); a missing key is not an error.
	Reset(ctx context.Context, key string) error
}

// ---------------------------------------------------------------------------
// Trace index

// Limits of the trace index.
const (
	// MaxTraceEntries is the largest TracePolicy.MaxEntries accepted.
	MaxTraceEntries = 100_000
	// MaxTraceData is the largest TraceEntry.Data accepted, in bytes
	// (compacted).
	MaxTraceData = 64 << 10
	// MaxTraceKey is the longest trace list key or entry ID accepted, in
	// bytes: room for a namespace and the longest Message-ID.
	MaxTraceKey = 1024
)

// TraceEntry is one record in a trace list: for the router, one mail.status
// record of a message.
type TraceEntry struct {
	// ID identifies the record within a list: appending an ID the list
	// already holds changes nothing, so a record consumed twice is listed
	// once (the first one stays). Non-empty UTF-8, at most MaxTraceKey
	// bytes.
	ID string
	// At is when the record's event happened; a list is ordered by At,
	// then by ID (byte order). Zero means now.
	At time.Time
	// Data is the record as JSON, stored compacted (at most MaxTraceData
	// bytes; empty means none, returned as nil). The index does not
	// interpret it.
	Data json.RawMessage
}

// TracePolicy bounds a trace list, at each Append.
type TracePolicy struct {
	// TTL is how long a list is kept after its last Append (positive):
	// every Append, even of an entry already there, restarts it, and the
	// whole list expires at once.
	TTL time.Duration
	// MaxEntries is the most entries a list keeps, 1 to MaxTraceEntries.
	// An Append that takes a list past it removes the entries that sort
	// first (the oldest) and counts them in Trace.Dropped.
	MaxEntries int
}

// Trace is one trace list.
type Trace struct {
	// Entries are ordered by At, then ID.
	Entries []TraceEntry
	// Dropped counts the entries removed to keep the list within
	// TracePolicy.MaxEntries. Removed entries are forgotten: one appended
	// again (a redelivered record) is added, then removed again if it is
	// still the oldest, and counted again.
	Dropped int64
}

// TraceIndex keeps, under opaque keys that callers namespace
// ("msgid:<normalised Message-ID>", "inbound:<id>"), time-ordered lists of
// records for a limited time. Keys are non-empty UTF-8 of at most
// MaxTraceKey bytes.
type TraceIndex interface {
	// Append adds e to the list of each of keys (at least one; duplicates
	// are ignored) in one atomic step, applying p to each list. added
	// reports whether e was new to at least one list. An invalid key,
	// entry or policy is ErrInvalid and changes nothing.
	Append(ctx context.Context, keys []string, e TraceEntry, p TracePolicy) (added bool, err error)
	// List returns the list of key, or ErrNotFound if it has no entries
	// (never appended to, or expired).
	List(ctx context.Context, key string) (Trace, error)
}
