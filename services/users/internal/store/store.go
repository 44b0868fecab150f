// Package store keeps the users service's directory: sites, users, groups,
// POP3 accounts, shared mailboxes, user templates, API tokens, the audit log
// and the change log that feeds /v1/sync and the directory.changes outbox.
//
// There are two implementations with one behaviour, checked by the contract
// suite in storetest: PostgreSQL (production) and SQLite (single box). Both
// bring their schema up to date at Open from the SQL files embedded under
// migrations/.
//
// Every write happens inside Store.Update, in one database transaction that
// also appends each changed object to the change log and records the audit
// entries the caller gives. The store enforces what needs the rest of the
// directory: unique names and addresses, that referenced objects exist, no
// group cycles, and the rules that refuse a delete (a user who manages a
// shared mailbox, a site that still has users). Checking the syntax of a
// single object is the caller's job (directory's Normalize methods).
package store

import (
	"context"
	"time"

	"github.com/postern/postern/services/users/internal/directory"
)

// AnyVersion, given as the expected version of an update or a delete, skips
// the optimistic-concurrency check.
const AnyVersion int64 = 0

// Page sizes of the List methods.
const (
	DefaultLimit = 100  // a Page with Limit 0
	MaxLimit     = 1000 // larger limits are lowered to this
)

// Page asks for one page of a list.
type Page struct {
	Limit  int    // items per page: 0 means DefaultLimit, more than MaxLimit means MaxLimit
	Cursor string // "" for the first page, else the next cursor a previous page returned
}

// UserFilter selects users. Empty fields do not filter.
type UserFilter struct {
	Page
	Site    string // home site name
	Group   string // name of a group the user is a direct member of
	Enabled *bool
	// Q matches users whose username, display name or any address contains
	// it, ignoring case.
	Q string
}

// POP3AccountFilter selects POP3 accounts.
type POP3AccountFilter struct {
	Page
	Site string // the site that downloads the account
}

// TokenFilter selects API tokens.
type TokenFilter struct {
	Page
	Site string
	Role string
}

// AuditFilter selects audit entries, which are listed newest first.
type AuditFilter struct {
	Page
	Actor      string
	Action     string
	TargetKind string
	TargetID   string
	Since      time.Time // entries at or after (zero: no bound)
	Until      time.Time // entries strictly before (zero: no bound)
}

// Owner names the object an address belongs to.
type Owner struct {
	Kind string // directory.KindUser, KindGroup or KindSharedMailbox
	ID   string
}

// Snapshot is the whole directory as of one change-log position: applying
// ChangesSince(Seq) to it gives the directory of any later moment.
type Snapshot struct {
	Seq             int64
	Sites           []directory.Site
	Users           []directory.User
	Groups          []directory.Group
	POP3Accounts    []directory.POP3Account
	SharedMailboxes []directory.SharedMailbox
	Templates       []directory.Template
	Tokens          []directory.Token
}

// Reader reads the directory. Lists are ordered by the object's name
// (users by username, shared mailboxes by address, sites by name) with the
// ID as tie-breaker; they return one page, the cursor of the next page (""
// after the last one) and the number of objects the filter matches over all
// pages. Iterating with the cursors while the directory changes returns
// every object that exists throughout at most once, in order.
//
// Objects come back in the form the sync feed publishes, secrets in their
// stored form (User.PasswordHash, POP3Account.PasswordEnc); the API removes
// them. Missing objects give an error matching ErrNotFound.
type Reader interface {
	GetSite(ctx context.Context, name string) (directory.Site, error)
	ListSites(ctx context.Context, page Page) ([]directory.Site, string, int, error)

	GetUser(ctx context.Context, id string) (directory.User, error)
	GetUserByUsername(ctx context.Context, username string) (directory.User, error)
	ListUsers(ctx context.Context, f UserFilter) ([]directory.User, string, int, error)

	GetGroup(ctx context.Context, id string) (directory.Group, error)
	GetGroupByName(ctx context.Context, name string) (directory.Group, error)
	ListGroups(ctx context.Context, page Page) ([]directory.Group, string, int, error)

	GetPOP3Account(ctx context.Context, id string) (directory.POP3Account, error)
	ListPOP3Accounts(ctx context.Context, f POP3AccountFilter) ([]directory.POP3Account, string, int, error)

	GetSharedMailbox(ctx context.Context, id string) (directory.SharedMailbox, error)
	ListSharedMailboxes(ctx context.Context, page Page) ([]directory.SharedMailbox, string, int, error)

	GetTemplate(ctx context.Context, id string) (directory.Template, error)
	GetTemplateByName(ctx context.Context, name string) (directory.Template, error)
	ListTemplates(ctx context.Context, page Page) ([]directory.Template, string, int, error)

	GetToken(ctx context.Context, id string) (directory.Token, error)
	ListTokens(ctx context.Context, f TokenFilter) ([]directory.Token, string, int, error)

	// LookupAddress says who owns a (lower-case) address.
	LookupAddress(ctx context.Context, address string) (Owner, error)
}

// Tx is one write transaction, valid only inside the function given to
// Store.Update. Its reads see its own writes.
//
// Create methods assign the ID (a UUIDv7; sites use their name) unless the
// object has one, and set Version to 1 and both times to the transaction's
// time. Update methods replace the whole stored object, memberships
// included (User.Groups, Group.Members, SharedMailbox.Staff): read, modify,
// write. They fail with a *StaleError (ErrStale) when ifVersion is not
// AnyVersion and differs from the stored version, keep CreatedAt, and
// increment Version. Every method updates the given object to what was
// stored.
//
// Every object whose stored form changes gets a new version and a change-log
// entry, including those changed as a consequence: a user's groups when a
// group's members change, the groups and shared mailboxes a deleted user is
// removed from. Consequences are logged after the object that caused them
// for creates and updates, before it for deletes (so a reader applying the
// log in order never sees a reference to a deleted object).
//
// A method that fails with one of the typed errors of this package
// (*ConflictError, *ReferenceError, *InUseError, *CycleError, *StaleError,
// ErrNotFound, or several joined) has changed nothing, and the transaction
// may go on: an import can collect every problem before giving up. After
// any other error the transaction can only be rolled back.
type Tx interface {
	Reader

	CreateSite(ctx context.Context, s *directory.Site) error
	UpdateSite(ctx context.Context, s *directory.Site, ifVersion int64) error
	// DeleteSite fails with *InUseError while users, POP3 accounts,
	// templates or tokens refer to the site.
	DeleteSite(ctx context.Context, name string, ifVersion int64) error

	// CreateUser stores u and makes it a member of the groups u.Groups names.
	CreateUser(ctx context.Context, u *directory.User) error
	// CreateUsers is CreateUser for many users at once, with fewer
	// statements (imports). It checks every user before writing any, and
	// reports every problem, each wrapped in an *ItemError.
	CreateUsers(ctx context.Context, us []*directory.User) error
	UpdateUser(ctx context.Context, u *directory.User, ifVersion int64) error
	// DeleteUser fails with *InUseError when the user manages a shared
	// mailbox, is the only staff of one, or receives a POP3 account's mail
	// (target user or postmaster); otherwise it also removes the user from
	// its groups and from the staff of shared mailboxes.
	DeleteUser(ctx context.Context, id string, ifVersion int64) error

	// CreateGroup and UpdateGroup fail with *CycleError when a member group
	// contains the group, directly or not.
	CreateGroup(ctx context.Context, g *directory.Group) error
	UpdateGroup(ctx context.Context, g *directory.Group, ifVersion int64) error
	// DeleteGroup also removes the group from the groups it is a member of.
	DeleteGroup(ctx context.Context, id string, ifVersion int64) error

	CreatePOP3Account(ctx context.Context, a *directory.POP3Account) error
	UpdatePOP3Account(ctx context.Context, a *directory.POP3Account, ifVersion int64) error
	DeletePOP3Account(ctx context.Context, id string, ifVersion int64) error

	CreateSharedMailbox(ctx context.Context, m *directory.SharedMailbox) error
	UpdateSharedMailbox(ctx context.Context, m *directory.SharedMailbox, ifVersion int64) error
	DeleteSharedMailbox(ctx context.Context, id string, ifVersion int64) error

	// Template.Groups are names that are not checked: a template may name
	// a group that does not exist (any more); users created from it then fail.
	CreateTemplate(ctx context.Context, t *directory.Template) error
	UpdateTemplate(ctx context.Context, t *directory.Template, ifVersion int64) error
	DeleteTemplate(ctx context.Context, id string, ifVersion int64) error

	// CreateToken stores a token; SecretHash is required and unique.
	CreateToken(ctx context.Context, t *directory.Token) error
	// DeleteToken revokes a token.
	DeleteToken(ctx context.Context, id string, ifVersion int64) error

	// Audit records an audit entry (Actor and Action required) and sets
	// its ID and At. A transaction that wrote anything must record at least
	// one, or Update fails with ErrNoAudit and writes nothing. The actor of
	// the first entry is the actor of the transaction's change-log entries.
	Audit(ctx context.Context, e *directory.AuditEntry) error
}

// Store is the directory's storage. It is safe for concurrent use.
type Store interface {
	Reader

	// Update runs fn in one write transaction and commits it if fn returns
	// nil; otherwise (or if fn panics) nothing fn wrote is kept, change-log
	// and audit entries included, and fn's error is returned. Writers are
	// serialised: one Update at a time writes, across processes too, so
	// keep fn short and free of network calls. fn reads through tx (the
	// Store's own read methods do not see its writes) and must not call
	// Update: the inner call would wait for the outer one forever.
	Update(ctx context.Context, fn func(tx Tx) error) error

	// TouchToken records that a token was used at at. To spare the
	// database a write per request, the stored time only moves when it is
	// TouchGranularity older than at. It is bookkeeping: no new version,
	// no change-log or audit entry.
	TouchToken(ctx context.Context, id string, at time.Time) error

	// ListAudit lists audit entries, newest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]directory.AuditEntry, string, int, error)

	// ChangesSince returns up to limit change-log entries with Seq > after,
	// in order (limit <= 0: DefaultChangesLimit). Sequence numbers have no
	// gaps: when it returns n, every entry between after and n was
	// committed, and no later commit can add one below n. Entries removed
	// by Compact are simply absent: check OldestSeq first.
	ChangesSince(ctx context.Context, after int64, limit int) ([]directory.Change, error)
	// LastSeq is the Seq of the last committed change (0 when none).
	LastSeq(ctx context.Context) (int64, error)
	// OldestSeq is the Seq of the oldest entry the log still holds, or
	// LastSeq()+1 when it holds none. ChangesSince(after) is complete when
	// after >= OldestSeq()-1; otherwise the reader needs a Snapshot.
	OldestSeq(ctx context.Context) (int64, error)
	// Compact deletes the change-log entries with Seq <= upTo committed
	// before before (zero: whenever), and returns how many it deleted.
	// The counter never goes back: LastSeq is unchanged.
	Compact(ctx context.Context, upTo int64, before time.Time) (int64, error)
	// Snapshot reads the whole directory at one point of the change log.
	Snapshot(ctx context.Context) (*Snapshot, error)
	// SealedPOP3Passwords returns the stored (sealed) POP3 passwords by
	// account id; accounts without a password are absent. The service
	// reads it at start, to tell whether it has the keys they need.
	SealedPOP3Passwords(ctx context.Context) (map[string]string, error)
	// WaitForChange returns as soon as LastSeq is greater than after, with
	// that LastSeq. It wakes on commits of this process at once, on other
	// processes' commits through PostgreSQL LISTEN/NOTIFY, and polls every
	// PollInterval as a fallback. When ctx ends first it returns the last
	// seen LastSeq and ctx's error.
	WaitForChange(ctx context.Context, after int64) (int64, error)

	// OutboxPosition is the last Seq the named publisher has published
	// (0 when it never has); SetOutboxPosition records it.
	OutboxPosition(ctx context.Context, name string) (int64, error)
	SetOutboxPosition(ctx context.Context, name string, seq int64) error

	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close releases the database; it may be called more than once.
	Close() error
}

// Tuning constants.
const (
	DefaultChangesLimit = 1000            // ChangesSince with limit <= 0
	MaxChangesLimit     = 10000           // larger limits are lowered to this
	TouchGranularity    = time.Minute     // see Store.TouchToken
	PollInterval        = 2 * time.Second // see Store.WaitForChange
	notifyChannel       = "postern_users_changes"
)
