package store

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. The typed errors below match them with errors.Is, so the
// API can map a class of error to a status without knowing the type.
var (
	ErrNotFound     = errors.New("not found")                                   // 404
	ErrStale        = errors.New("version changed since it was read")           // 412
	ErrConflict     = errors.New("already in use")                              // 409
	ErrReference    = errors.New("refers to an object that does not exist")     // 422
	ErrInUse        = errors.New("still referred to")                           // 409
	ErrCycle        = errors.New("group membership cycle")                      // 422
	ErrBadCursor    = errors.New("invalid cursor")                              // 400
	ErrNoAudit      = errors.New("a write transaction recorded no audit entry") // a bug in the caller
	ErrTxDone       = errors.New("transaction has already ended")
	ErrSchemaTooNew = errors.New("database schema is newer than this program")
)

// NotFoundError says which object does not exist; it matches ErrNotFound.
type NotFoundError struct {
	Kind string // directory.Kind*
	Key  string // the ID, name or address looked up
}

func (e *NotFoundError) Error() string { return fmt.Sprintf("%s %q not found", e.Kind, e.Key) }

// Is reports whether target is ErrNotFound.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// StaleError is an update or delete with an expected version that is not
// the stored one; it matches ErrStale.
type StaleError struct {
	Kind     string
	ID       string
	Expected int64
	Actual   int64
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("%s %s: version is %d, not %d: %v", e.Kind, e.ID, e.Actual, e.Expected, ErrStale)
}

// Is reports whether target is ErrStale.
func (e *StaleError) Is(target error) bool { return target == ErrStale }

// ConflictError is a unique value (a name, an address) that another object
// already has; it matches ErrConflict. OwnerKind and OwnerID name that
// object, OwnerName its name (username, group name, mailbox address).
type ConflictError struct {
	Kind      string // kind of the object being written
	Field     string // JSON name of the field: "username", "aliases", "address"…
	Value     string
	OwnerKind string
	OwnerID   string
	OwnerName string
}

func (e *ConflictError) Error() string {
	owner := e.OwnerKind
	if e.OwnerName != "" {
		owner += " " + e.OwnerName
	}
	if e.OwnerID != "" && e.OwnerID != e.OwnerName {
		owner += " (" + e.OwnerID + ")"
	}
	return fmt.Sprintf("%s %s %q is already used by %s", e.Kind, e.Field, e.Value, strings.ReplaceAll(owner, "_", " "))
}

// Is reports whether target is ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// ReferenceError is a field naming an object that does not exist; it
// matches ErrReference.
type ReferenceError struct {
	Kind    string // kind of the object being written
	Field   string // JSON name of the field: "site", "groups", "members", "staff"…
	RefKind string // kind of the missing object
	Value   string // the missing name or ID
}

func (e *ReferenceError) Error() string {
	return fmt.Sprintf("%s %s: %s %q does not exist", e.Kind, e.Field, strings.ReplaceAll(e.RefKind, "_", " "), e.Value)
}

// Is reports whether target is ErrReference.
func (e *ReferenceError) Is(target error) bool { return target == ErrReference }

// Roles of an InUseError: how the other object refers to the one in use.
const (
	RoleManager    = "manager"     // a shared mailbox's manager
	RoleOnlyStaff  = "only_staff"  // a shared mailbox's only staff member
	RoleTargetUser = "target_user" // a single-drop POP3 account's recipient
	RolePostmaster = "postmaster"  // a multi-drop POP3 account's postmaster
	RoleHomeSite   = "site"        // the site of users, POP3 accounts, templates, tokens
)

// InUseError refuses a delete because another object refers to the one to
// delete; it matches ErrInUse. For a site, Count says how many objects of
// ByKind refer to it and By* names the first.
type InUseError struct {
	Kind   string // kind of the object that cannot be deleted
	ID     string
	ByKind string
	ByID   string
	ByName string
	Role   string // Role*
	Count  int
}

func (e *InUseError) Error() string {
	by := strings.ReplaceAll(e.ByKind, "_", " ") + " " + e.ByName
	if e.ByID != "" && e.ByID != e.ByName {
		by += " (" + e.ByID + ")"
	}
	what := strings.ReplaceAll(e.Kind, "_", " ") + " " + e.ID
	switch e.Role {
	case RoleManager:
		return fmt.Sprintf("%s cannot be deleted: it is the manager of %s", what, by)
	case RoleOnlyStaff:
		return fmt.Sprintf("%s cannot be deleted: it is the only staff member of %s", what, by)
	case RoleTargetUser:
		return fmt.Sprintf("%s cannot be deleted: it receives the mail of %s", what, by)
	case RolePostmaster:
		return fmt.Sprintf("%s cannot be deleted: it is the postmaster of %s", what, by)
	}
	if e.Count > 1 {
		return fmt.Sprintf("%s cannot be deleted: %d %ss refer to it, such as %s", what, e.Count, strings.ReplaceAll(e.ByKind, "_", " "), by)
	}
	return fmt.Sprintf("%s cannot be deleted: %s refers to it", what, by)
}

// Is reports whether target is ErrInUse.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// CycleError refuses group members that would make a group contain itself;
// it matches ErrCycle. Path lists group IDs from the group back to itself.
type CycleError struct {
	Group string
	Path  []string
}

func (e *CycleError) Error() string {
	return fmt.Sprintf("group %s: members would form a cycle: %s", e.Group, strings.Join(e.Path, " > "))
}

// Is reports whether target is ErrCycle.
func (e *CycleError) Is(target error) bool { return target == ErrCycle }

// ItemError is the problem of one object of a batch (Tx.CreateUsers).
type ItemError struct {
	Index int // position in the batch
	Err   error
}

func (e *ItemError) Error() string { return fmt.Sprintf("item %d: %v", e.Index, e.Err) }

// Unwrap returns the item's error.
func (e *ItemError) Unwrap() error { return e.Err }

// isTyped reports whether every error in err is one that changes nothing
// and leaves a transaction usable (see Tx).
func isTyped(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !isTyped(e) {
				return false
			}
		}
		return true
	}
	if ie, ok := err.(*ItemError); ok {
		return isTyped(ie.Err)
	}
	switch err.(type) {
	case *NotFoundError, *StaleError, *ConflictError, *ReferenceError, *InUseError, *CycleError:
		return true
	}
	return false
}
