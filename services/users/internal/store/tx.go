package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/users/internal/directory"
)

// txn implements Tx. Every write method first checks everything that can
// refuse it, collecting the typed errors, and only then changes rows; so a
// typed error leaves the transaction as it was. Any other error marks the
// transaction broken, and Update then refuses to commit it.
type txn struct {
	reader
	s   *sqlStore
	tx  *sql.Tx
	now time.Time

	seq     int64              // the last seq handed out (lockSeq, then one per change)
	changes []directory.Change // written at commit, once the actor is known
	actor   string             // of the first audit entry
	audits  int
	done    bool  // fn has returned
	broken  error // an untyped error from a write
}

var _ Tx = (*txn)(nil)

func newID() string { return uuid.Must(uuid.NewV7()).String() }

// start is the first call of every write method.
func (t *txn) start() error {
	if t.done {
		return fmt.Errorf("users store: %w", ErrTxDone)
	}
	if t.broken != nil {
		return fmt.Errorf("users store: an earlier write of this transaction failed: %w", t.broken)
	}
	return nil
}

// end is deferred by every write method.
func (t *txn) end(errp *error) {
	if *errp != nil && !isTyped(*errp) && t.broken == nil {
		t.broken = *errp
	}
}

// finish writes the change log and moves the counter; Update calls it just
// before committing.
func (t *txn) finish(ctx context.Context) error {
	if len(t.changes) == 0 {
		return nil
	}
	if t.audits == 0 {
		return fmt.Errorf("users store: %w", ErrNoAudit)
	}
	rows := make([][]any, len(t.changes))
	for i := range t.changes {
		c := &t.changes[i]
		c.Actor = t.actor
		var data any
		if c.Data != nil {
			data = string(c.Data)
		}
		rows[i] = []any{c.Seq, c.At.UnixMicro(), c.Kind, c.ID, c.Op, c.Actor, data}
	}
	if err := t.insertRows(ctx, "changes", []string{"seq", "at_us", "kind", "object_id", "op", "actor", "data"}, rows); err != nil {
		return fmt.Errorf("users store: append to change log: %w", err)
	}
	if _, err := t.tx.ExecContext(ctx, `UPDATE change_seq SET seq = $1 WHERE id = 1`, t.seq); err != nil {
		return fmt.Errorf("users store: advance change log: %w", err)
	}
	if t.s.d.notify != "" {
		if _, err := t.tx.ExecContext(ctx, t.s.d.notify); err != nil {
			return fmt.Errorf("users store: notify: %w", err)
		}
	}
	return nil
}

func (t *txn) logUpsert(kind, id string, obj any) error {
	data, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("users store: encode %s %s: %w", kind, id, err)
	}
	t.seq++
	t.changes = append(t.changes, directory.Change{Seq: t.seq, At: t.now, Kind: kind, ID: id, Op: events.OpUpsert, Data: data})
	return nil
}

func (t *txn) logDelete(kind, id string) {
	t.seq++
	t.changes = append(t.changes, directory.Change{Seq: t.seq, At: t.now, Kind: kind, ID: id, Op: events.OpDelete})
}

// Audit implements Tx.
func (t *txn) Audit(ctx context.Context, e *directory.AuditEntry) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	if e.Actor == "" || e.Action == "" {
		return errors.New("users store: an audit entry needs an actor and an action")
	}
	var diff any
	if len(e.Diff) > 0 {
		if !json.Valid(e.Diff) {
			return errors.New("users store: audit entry: diff is not JSON")
		}
		diff = string(e.Diff)
	}
	e.At = t.now
	err = t.tx.QueryRowContext(ctx, `INSERT INTO audit_log (at_us, actor, action, target_kind, target_id, diff)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		e.At.UnixMicro(), e.Actor, e.Action, e.TargetKind, e.TargetID, diff).Scan(&e.ID)
	if err != nil {
		return fmt.Errorf("users store: record audit entry: %w", err)
	}
	t.audits++
	if t.actor == "" {
		t.actor = e.Actor
	}
	return nil
}

// ---------------------------------------------------------------------------
// SQL helpers.

// maxParams bounds the parameters of one statement (PostgreSQL allows
// 65535, SQLite 32766).
const maxParams = 8000

// insertRows inserts rows (each with one value per column) with as few
// statements as the parameter limit allows.
func (t *txn) insertRows(ctx context.Context, table string, cols []string, rows [][]any) error {
	per := max(1, maxParams/len(cols))
	head := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") VALUES "
	for len(rows) > 0 {
		n := min(per, len(rows))
		var b strings.Builder
		b.WriteString(head)
		args := make([]any, 0, n*len(cols))
		for i, row := range rows[:n] {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(" + placeholders(t.d, len(args)+1, len(cols)) + ")")
			args = append(args, row...)
		}
		if _, err := t.tx.ExecContext(ctx, b.String(), args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// execIn runs query, whose "%s" becomes the placeholders of keys (after
// args), once per chunk of keys.
func (t *txn) execIn(ctx context.Context, query string, args []any, keys []string) error {
	return chunks(keys, func(part []string) error {
		q := fmt.Sprintf(query, placeholders(t.d, len(args)+1, len(part)))
		_, err := t.tx.ExecContext(ctx, q, append(append([]any{}, args...), anys(part)...)...)
		return err
	})
}

func (t *txn) exec(ctx context.Context, what, query string, args ...any) error {
	if _, err := t.tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("users store: %s: %w", what, err)
	}
	return nil
}

// strings1 returns the first column of query's rows.
func (t *txn) strings1(ctx context.Context, query string, args ...any) ([]string, error) {
	var out []string
	err := t.rows(ctx, query, args, func(rows *sql.Rows) error {
		var s string
		if err := rows.Scan(&s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	return out, err
}

// pairs2 returns the first two columns of query's rows.
func (t *txn) pairs2(ctx context.Context, query string, args ...any) ([][2]string, error) {
	var out [][2]string
	err := t.rows(ctx, query, args, func(rows *sql.Rows) error {
		var a, b string
		if err := rows.Scan(&a, &b); err != nil {
			return err
		}
		out = append(out, [2]string{a, b})
		return nil
	})
	return out, err
}

func (t *txn) rows(ctx context.Context, query string, args []any, scan func(*sql.Rows) error) error {
	rows, err := t.tx.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("users store: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("users store: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("users store: %w", err)
	}
	return nil
}

// lookup returns the first column of query's first row, "" when none.
func (t *txn) lookup(ctx context.Context, query string, args ...any) (string, error) {
	var s string
	err := t.tx.QueryRowContext(ctx, query, args...).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("users store: %w", err)
	}
	return s, nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func checkVersion(kind, id string, actual, expected int64) error {
	if expected != AnyVersion && expected != actual {
		return &StaleError{Kind: kind, ID: id, Expected: expected, Actual: actual}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// joinErrors joins errs, sorting ItemErrors by index; nil when empty.
func joinErrors(errs []error) error {
	slices.SortStableFunc(errs, func(a, b error) int {
		var ia, ib *ItemError
		if errors.As(a, &ia) && errors.As(b, &ib) {
			return cmp.Compare(ia.Index, ib.Index)
		}
		return 0
	})
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// ---------------------------------------------------------------------------
// Uniqueness and references.

// claim is an address an object being written wants.
type claim struct {
	field string // JSON field it comes from
	addr  string
	idx   int // index of the object in a batch
}

// ownerName is the name of an address's owner, for a ConflictError.
func (t *txn) ownerName(ctx context.Context, o Owner) string {
	var q string
	switch o.Kind {
	case directory.KindUser:
		q = `SELECT username FROM users WHERE id = $1`
	case directory.KindGroup:
		q = `SELECT name FROM mail_groups WHERE id = $1`
	case directory.KindSharedMailbox:
		q = `SELECT address FROM shared_mailboxes WHERE id = $1`
	default:
		return ""
	}
	name, _ := t.lookup(ctx, q, o.ID)
	return name
}

// addrConflicts returns a ConflictError (wrapped in an ItemError with the
// claim's index when batch) for every claim whose address another object
// than owner(idx) holds.
func (t *txn) addrConflicts(ctx context.Context, kind string, claims []claim, owner func(idx int) string, batch bool) ([]error, error) {
	if len(claims) == 0 {
		return nil, nil
	}
	addrs := make([]string, len(claims))
	for i, c := range claims {
		addrs[i] = c.addr
	}
	owners := map[string]Owner{}
	err := t.queryIn(ctx, `SELECT address, owner_kind, owner_id FROM addresses WHERE address IN (%s)`, nil, addrs, func(rows *sql.Rows) error {
		var a string
		var o Owner
		if err := rows.Scan(&a, &o.Kind, &o.ID); err != nil {
			return err
		}
		owners[a] = o
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("users store: check addresses: %w", err)
	}
	var errs []error
	for _, c := range claims {
		o, taken := owners[c.addr]
		if !taken || (o.Kind == kind && o.ID == owner(c.idx)) {
			continue
		}
		var e error = &ConflictError{Kind: kind, Field: c.field, Value: c.addr, OwnerKind: o.Kind, OwnerID: o.ID, OwnerName: t.ownerName(ctx, o)}
		if batch {
			e = &ItemError{Index: c.idx, Err: e}
		}
		errs = append(errs, e)
	}
	return errs, nil
}

// replaceAddresses makes the addresses of (kind, id) be next instead of prev.
func (t *txn) replaceAddresses(ctx context.Context, kind, id string, prev, next []string) error {
	gone := diff(prev, next)
	added := diff(next, prev)
	if err := t.execIn(ctx, `DELETE FROM addresses WHERE owner_kind = $1 AND owner_id = $2 AND address IN (%s)`, []any{kind, id}, gone); err != nil {
		return fmt.Errorf("users store: remove addresses: %w", err)
	}
	rows := make([][]any, len(added))
	for i, a := range added {
		rows[i] = []any{a, kind, id}
	}
	if err := t.insertRows(ctx, "addresses", []string{"address", "owner_kind", "owner_id"}, rows); err != nil {
		return fmt.Errorf("users store: add addresses: %w", err)
	}
	return nil
}

// diff returns the non-empty elements of a that are not in b.
func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if s != "" && !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// existing returns which of keys query (SELECT key, key … IN (%s)) finds.
func (t *txn) existing(ctx context.Context, query string, keys []string) (map[string]string, error) {
	m, err := t.pairs(ctx, query, keys)
	if err != nil {
		return nil, fmt.Errorf("users store: %w", err)
	}
	return m, nil
}

// checkSite returns a ReferenceError when site (non-empty or required)
// does not exist.
func (t *txn) checkSite(ctx context.Context, kind, site string, required bool) (error, error) {
	if site == "" && !required {
		return nil, nil
	}
	found, err := t.lookup(ctx, `SELECT id FROM sites WHERE id = $1`, site)
	if err != nil {
		return nil, err
	}
	if found == "" {
		return &ReferenceError{Kind: kind, Field: "site", RefKind: directory.KindSite, Value: site}, nil
	}
	return nil, nil
}

// checkUsers returns a ReferenceError for every id (in field) that is not a user.
func (t *txn) checkUsers(ctx context.Context, kind, field string, ids ...string) ([]error, error) {
	var want []string
	for _, id := range ids {
		if id != "" {
			want = append(want, id)
		}
	}
	found, err := t.existing(ctx, `SELECT id, id FROM users WHERE id IN (%s)`, want)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, id := range want {
		if _, ok := found[id]; !ok {
			errs = append(errs, &ReferenceError{Kind: kind, Field: field, RefKind: directory.KindUser, Value: id})
		}
	}
	return errs, nil
}

// ---------------------------------------------------------------------------
// Cascades: objects whose stored form changes because another one did.

// touch gives the objects of table with ids a new version and logs them.
func touch[T any](ctx context.Context, t *txn, kind, table, order string, ids []string,
	fill func([]T) error, meta func(*T) *directory.Meta, stored func(*T) (string, error)) error {
	if len(ids) == 0 {
		return nil
	}
	var objs []T
	err := chunks(slices.Sorted(slices.Values(ids)), func(part []string) error {
		q := fmt.Sprintf(`SELECT data FROM %s WHERE id IN (%s) ORDER BY %s, id`, table, placeholders(t.d, 1, len(part)), order)
		got, err := allData[T](ctx, &t.reader, kind, q, anys(part)...)
		objs = append(objs, got...)
		return err
	})
	if err != nil {
		return err
	}
	if err := fill(objs); err != nil {
		return err
	}
	for i := range objs {
		o := &objs[i]
		m := meta(o)
		m.Version++
		m.UpdatedAt = t.now
		data, err := stored(o)
		if err != nil {
			return err
		}
		if err := t.exec(ctx, "update "+kind, `UPDATE `+table+` SET version = $2, data = $3 WHERE id = $1`, m.ID, m.Version, data); err != nil {
			return err
		}
		if err := t.logUpsert(kind, m.ID, o); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) touchUsers(ctx context.Context, ids []string) error {
	return touch(ctx, t, directory.KindUser, "users", "username", ids,
		func(us []directory.User) error { return t.fillUsers(ctx, us, false) },
		func(u *directory.User) *directory.Meta { return &u.Meta }, storedUser)
}

func (t *txn) touchGroups(ctx context.Context, ids []string) error {
	return touch(ctx, t, directory.KindGroup, "mail_groups", "name", ids,
		func(gs []directory.Group) error { return t.fillGroups(ctx, gs, false) },
		func(g *directory.Group) *directory.Meta { return &g.Meta }, storedGroup)
}

func (t *txn) touchMailboxes(ctx context.Context, ids []string) error {
	return touch(ctx, t, directory.KindSharedMailbox, "shared_mailboxes", "address", ids,
		func(ms []directory.SharedMailbox) error { return t.fillMailboxes(ctx, ms, false) },
		func(m *directory.SharedMailbox) *directory.Meta { return &m.Meta }, storedMailbox)
}

// Stored forms: the object's JSON without the memberships kept in tables.

func marshalString(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("users store: encode: %w", err)
	}
	return string(b), nil
}

func storedUser(u *directory.User) (string, error) {
	c := *u
	c.Groups = nil
	return marshalString(c)
}

func storedGroup(g *directory.Group) (string, error) {
	c := *g
	c.Members = nil
	return marshalString(c)
}

func storedMailbox(m *directory.SharedMailbox) (string, error) {
	c := *m
	c.Staff = nil
	return marshalString(c)
}

// ---------------------------------------------------------------------------
// Sites.

func normSite(s *directory.Site) {
	s.ID = s.Name
	if s.Domains == nil {
		s.Domains = []string{}
	}
}

// CreateSite implements Tx.
func (t *txn) CreateSite(ctx context.Context, s *directory.Site) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normSite(s)
	found, err := t.lookup(ctx, `SELECT id FROM sites WHERE id = $1`, s.ID)
	if err != nil {
		return err
	}
	if found != "" {
		return &ConflictError{Kind: directory.KindSite, Field: "name", Value: s.Name, OwnerKind: directory.KindSite, OwnerID: s.ID, OwnerName: s.Name}
	}
	s.Version, s.CreatedAt, s.UpdatedAt = 1, t.now, t.now
	data, err := marshalString(s)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create site", `INSERT INTO sites (id, version, data) VALUES ($1, $2, $3)`, s.ID, s.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindSite, s.ID, s)
}

// UpdateSite implements Tx.
func (t *txn) UpdateSite(ctx context.Context, s *directory.Site, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normSite(s)
	cur, err := t.GetSite(ctx, s.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindSite, s.ID, cur.Version, ifVersion); err != nil {
		return err
	}
	s.Version, s.CreatedAt, s.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := marshalString(s)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update site", `UPDATE sites SET version = $2, data = $3 WHERE id = $1`, s.ID, s.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindSite, s.ID, s)
}

// DeleteSite implements Tx.
func (t *txn) DeleteSite(ctx context.Context, name string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetSite(ctx, name)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindSite, name, cur.Version, ifVersion); err != nil {
		return err
	}
	var errs []error
	for _, ref := range []struct{ kind, table, nameCol string }{
		{directory.KindUser, "users", "username"},
		{directory.KindPOP3Account, "pop3_accounts", "name"},
		{directory.KindTemplate, "templates", "name"},
		{directory.KindToken, "tokens", "name"},
	} {
		var n int
		if err := t.tx.QueryRowContext(ctx, `SELECT count(*) FROM `+ref.table+` WHERE site = $1`, name).Scan(&n); err != nil {
			return fmt.Errorf("users store: check site %s: %w", name, err)
		}
		if n == 0 {
			continue
		}
		first, err := t.pairs2(ctx, `SELECT id, `+ref.nameCol+` FROM `+ref.table+` WHERE site = $1 ORDER BY `+ref.nameCol+`, id LIMIT 1`, name)
		if err != nil || len(first) == 0 {
			return fmt.Errorf("users store: check site %s: %v", name, err)
		}
		errs = append(errs, &InUseError{Kind: directory.KindSite, ID: name, ByKind: ref.kind, ByID: first[0][0], ByName: first[0][1], Role: RoleHomeSite, Count: n})
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	if err := t.exec(ctx, "delete site", `DELETE FROM sites WHERE id = $1`, name); err != nil {
		return err
	}
	t.logDelete(directory.KindSite, name)
	return nil
}

// ---------------------------------------------------------------------------
// Users.

func normUser(u *directory.User) {
	if u.Aliases == nil {
		u.Aliases = []string{}
	}
	groups := slices.Clone(u.Groups)
	slices.Sort(groups)
	u.Groups = slices.Compact(groups)
	if u.Groups == nil {
		u.Groups = []string{}
	}
}

func userClaims(u *directory.User) []claim {
	var out []claim
	if u.PrimaryAddress != "" {
		out = append(out, claim{field: "primary_address", addr: u.PrimaryAddress})
	}
	for _, a := range u.Aliases {
		out = append(out, claim{field: "aliases", addr: a})
	}
	return out
}

func userAddresses(u *directory.User) []string {
	out := []string{u.PrimaryAddress}
	return append(out, u.Aliases...)
}

// userSearch is what UserFilter.Q searches: the username, display name
// and addresses, lower-cased, separated by searchSep.
func userSearch(u *directory.User) string {
	parts := append([]string{u.Username, u.DisplayName, u.PrimaryAddress}, u.Aliases...)
	return strings.ToLower(strings.Join(parts, searchSep))
}

// CreateUser implements Tx.
func (t *txn) CreateUser(ctx context.Context, u *directory.User) error {
	err := t.CreateUsers(ctx, []*directory.User{u})
	if err == nil {
		return nil
	}
	// One user: drop the ItemError wrappers.
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for i, e := range errs {
		if ie, ok := e.(*ItemError); ok {
			errs[i] = ie.Err
		}
	}
	return joinErrors(errs)
}

// CreateUsers implements Tx.
func (t *txn) CreateUsers(ctx context.Context, us []*directory.User) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	if len(us) == 0 {
		return nil
	}
	var errs []error
	fail := func(i int, e error) { errs = append(errs, &ItemError{Index: i, Err: e}) }
	conflict := func(field, value string, owner *directory.User) error {
		return &ConflictError{Kind: directory.KindUser, Field: field, Value: value, OwnerKind: directory.KindUser, OwnerID: owner.ID, OwnerName: owner.Username}
	}

	// Within the batch.
	ids, names, claimed := map[string]int{}, map[string]int{}, map[string]int{}
	sites, groupNames := map[string]bool{}, map[string]bool{}
	var claims []claim
	for i, u := range us {
		normUser(u)
		if u.ID == "" {
			u.ID = newID()
		}
		if j, dup := ids[u.ID]; dup {
			fail(i, conflict("id", u.ID, us[j]))
		} else {
			ids[u.ID] = i
		}
		if j, dup := names[u.Username]; dup {
			fail(i, conflict("username", u.Username, us[j]))
		} else {
			names[u.Username] = i
		}
		for _, c := range userClaims(u) {
			if j, dup := claimed[c.addr]; dup {
				fail(i, conflict(c.field, c.addr, us[j]))
				continue
			}
			claimed[c.addr] = i
			c.idx = i
			claims = append(claims, c)
		}
		sites[u.Site] = true
		for _, g := range u.Groups {
			groupNames[g] = true
		}
	}

	// Against the database.
	taken, err := t.existing(ctx, `SELECT id, username FROM users WHERE id IN (%s)`, sortedKeys(ids))
	if err != nil {
		return err
	}
	for id, name := range taken {
		fail(ids[id], &ConflictError{Kind: directory.KindUser, Field: "id", Value: id, OwnerKind: directory.KindUser, OwnerID: id, OwnerName: name})
	}
	if taken, err = t.existing(ctx, `SELECT username, id FROM users WHERE username IN (%s)`, sortedKeys(names)); err != nil {
		return err
	}
	for name, id := range taken {
		fail(names[name], &ConflictError{Kind: directory.KindUser, Field: "username", Value: name, OwnerKind: directory.KindUser, OwnerID: id, OwnerName: name})
	}
	cerrs, err := t.addrConflicts(ctx, directory.KindUser, claims, func(i int) string { return us[i].ID }, true)
	if err != nil {
		return err
	}
	errs = append(errs, cerrs...)
	siteFound, err := t.existing(ctx, `SELECT id, id FROM sites WHERE id IN (%s)`, sortedKeys(sites))
	if err != nil {
		return err
	}
	groupIDs, err := t.existing(ctx, `SELECT name, id FROM mail_groups WHERE name IN (%s)`, sortedKeys(groupNames))
	if err != nil {
		return err
	}
	for i, u := range us {
		if _, ok := siteFound[u.Site]; !ok {
			fail(i, &ReferenceError{Kind: directory.KindUser, Field: "site", RefKind: directory.KindSite, Value: u.Site})
		}
		for _, g := range u.Groups {
			if _, ok := groupIDs[g]; !ok {
				fail(i, &ReferenceError{Kind: directory.KindUser, Field: "groups", RefKind: directory.KindGroup, Value: g})
			}
		}
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}

	// Write.
	userRows := make([][]any, 0, len(us))
	var addrRows [][]any
	joins := map[string][]string{} // group ID → new user members
	for _, u := range us {
		u.Version, u.CreatedAt, u.UpdatedAt = 1, t.now, t.now
		data, err := storedUser(u)
		if err != nil {
			return err
		}
		userRows = append(userRows, []any{u.ID, u.Username, u.Site, u.Enabled, userSearch(u), u.Version, data})
		for _, c := range userClaims(u) {
			addrRows = append(addrRows, []any{c.addr, directory.KindUser, u.ID})
		}
		for _, g := range u.Groups {
			joins[groupIDs[g]] = append(joins[groupIDs[g]], u.ID)
		}
	}
	if err := t.insertRows(ctx, "users", []string{"id", "username", "site", "enabled", "search", "version", "data"}, userRows); err != nil {
		return fmt.Errorf("users store: create users: %w", err)
	}
	if err := t.insertRows(ctx, "addresses", []string{"address", "owner_kind", "owner_id"}, addrRows); err != nil {
		return fmt.Errorf("users store: create users' addresses: %w", err)
	}
	if err := t.joinGroups(ctx, joins); err != nil {
		return err
	}
	for _, u := range us {
		if err := t.logUpsert(directory.KindUser, u.ID, u); err != nil {
			return err
		}
	}
	return t.touchGroups(ctx, sortedKeys(joins))
}

// joinGroups appends users to the members of groups (group ID → user IDs).
func (t *txn) joinGroups(ctx context.Context, joins map[string][]string) error {
	var rows [][]any
	for _, gid := range sortedKeys(joins) {
		var next int
		if err := t.tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(position), -1) + 1 FROM group_members WHERE group_id = $1`, gid).Scan(&next); err != nil {
			return fmt.Errorf("users store: add group members: %w", err)
		}
		for _, uid := range joins[gid] {
			rows = append(rows, []any{gid, next, uid})
			next++
		}
	}
	if err := t.insertRows(ctx, "group_members", []string{"group_id", "position", "user_id"}, rows); err != nil {
		return fmt.Errorf("users store: add group members: %w", err)
	}
	return nil
}

// UpdateUser implements Tx.
func (t *txn) UpdateUser(ctx context.Context, u *directory.User, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normUser(u)
	cur, err := t.GetUser(ctx, u.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindUser, u.ID, cur.Version, ifVersion); err != nil {
		return err
	}

	var errs []error
	if u.Username != cur.Username {
		id, err := t.lookup(ctx, `SELECT id FROM users WHERE username = $1`, u.Username)
		if err != nil {
			return err
		}
		if id != "" {
			errs = append(errs, &ConflictError{Kind: directory.KindUser, Field: "username", Value: u.Username, OwnerKind: directory.KindUser, OwnerID: id, OwnerName: u.Username})
		}
	}
	if u.Site != cur.Site {
		e, err := t.checkSite(ctx, directory.KindUser, u.Site, true)
		if err != nil {
			return err
		}
		if e != nil {
			errs = append(errs, e)
		}
	}
	seen := map[string]bool{}
	var claims []claim
	for _, c := range userClaims(u) {
		if seen[c.addr] {
			errs = append(errs, &ConflictError{Kind: directory.KindUser, Field: c.field, Value: c.addr, OwnerKind: directory.KindUser, OwnerID: u.ID, OwnerName: u.Username})
			continue
		}
		seen[c.addr] = true
		claims = append(claims, c)
	}
	cerrs, err := t.addrConflicts(ctx, directory.KindUser, claims, func(int) string { return u.ID }, false)
	if err != nil {
		return err
	}
	errs = append(errs, cerrs...)
	groupIDs, err := t.existing(ctx, `SELECT name, id FROM mail_groups WHERE name IN (%s)`, u.Groups)
	if err != nil {
		return err
	}
	for _, g := range u.Groups {
		if _, ok := groupIDs[g]; !ok {
			errs = append(errs, &ReferenceError{Kind: directory.KindUser, Field: "groups", RefKind: directory.KindGroup, Value: g})
		}
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}

	// Write.
	u.Version, u.CreatedAt, u.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := storedUser(u)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update user", `UPDATE users SET username = $2, site = $3, enabled = $4, search = $5, version = $6, data = $7 WHERE id = $1`,
		u.ID, u.Username, u.Site, u.Enabled, userSearch(u), u.Version, data); err != nil {
		return err
	}
	if err := t.replaceAddresses(ctx, directory.KindUser, u.ID, userAddresses(&cur), userAddresses(u)); err != nil {
		return err
	}
	prev, err := t.strings1(ctx, `SELECT group_id FROM group_members WHERE user_id = $1`, u.ID)
	if err != nil {
		return err
	}
	next := slices.Collect(maps.Values(groupIDs))
	left, joined := diff(prev, next), diff(next, prev)
	if err := t.execIn(ctx, `DELETE FROM group_members WHERE user_id = $1 AND group_id IN (%s)`, []any{u.ID}, left); err != nil {
		return fmt.Errorf("users store: remove group members: %w", err)
	}
	joins := map[string][]string{}
	for _, gid := range joined {
		joins[gid] = []string{u.ID}
	}
	if err := t.joinGroups(ctx, joins); err != nil {
		return err
	}
	if err := t.logUpsert(directory.KindUser, u.ID, u); err != nil {
		return err
	}
	return t.touchGroups(ctx, append(left, joined...))
}

// DeleteUser implements Tx.
func (t *txn) DeleteUser(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetUser(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindUser, id, cur.Version, ifVersion); err != nil {
		return err
	}
	var errs []error
	for _, ref := range []struct{ kind, role, query string }{
		{directory.KindSharedMailbox, RoleManager, `SELECT id, address FROM shared_mailboxes WHERE manager = $1 ORDER BY address, id`},
		{directory.KindSharedMailbox, RoleOnlyStaff, `SELECT m.id, m.address FROM shared_mailbox_staff s JOIN shared_mailboxes m ON m.id = s.mailbox_id
			WHERE s.user_id = $1 AND (SELECT count(*) FROM shared_mailbox_staff o WHERE o.mailbox_id = s.mailbox_id) = 1 ORDER BY m.address, m.id`},
		{directory.KindPOP3Account, RoleTargetUser, `SELECT id, name FROM pop3_accounts WHERE target_user = $1 ORDER BY name, id`},
		{directory.KindPOP3Account, RolePostmaster, `SELECT id, name FROM pop3_accounts WHERE postmaster = $1 ORDER BY name, id`},
	} {
		by, err := t.pairs2(ctx, ref.query, id)
		if err != nil {
			return err
		}
		for _, b := range by {
			errs = append(errs, &InUseError{Kind: directory.KindUser, ID: id, ByKind: ref.kind, ByID: b[0], ByName: b[1], Role: ref.role, Count: 1})
		}
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}

	groups, err := t.strings1(ctx, `SELECT group_id FROM group_members WHERE user_id = $1`, id)
	if err != nil {
		return err
	}
	mailboxes, err := t.strings1(ctx, `SELECT mailbox_id FROM shared_mailbox_staff WHERE user_id = $1`, id)
	if err != nil {
		return err
	}
	for _, s := range []struct{ what, query string }{
		{"leave groups", `DELETE FROM group_members WHERE user_id = $1`},
		{"leave shared mailboxes", `DELETE FROM shared_mailbox_staff WHERE user_id = $1`},
		{"delete addresses", `DELETE FROM addresses WHERE owner_kind = 'user' AND owner_id = $1`},
		{"delete user", `DELETE FROM users WHERE id = $1`},
	} {
		if err := t.exec(ctx, s.what, s.query, id); err != nil {
			return err
		}
	}
	if err := t.touchGroups(ctx, groups); err != nil {
		return err
	}
	if err := t.touchMailboxes(ctx, mailboxes); err != nil {
		return err
	}
	t.logDelete(directory.KindUser, id)
	return nil
}

// ---------------------------------------------------------------------------
// Groups.

func normGroup(g *directory.Group) {
	seen := map[directory.Member]bool{}
	members := []directory.Member{}
	for _, m := range g.Members {
		if !seen[m] {
			seen[m] = true
			members = append(members, m)
		}
	}
	g.Members = members
}

func memberIDs(g *directory.Group, typ string) []string {
	var out []string
	for _, m := range g.Members {
		if m.Type == typ {
			out = append(out, m.ID)
		}
	}
	return out
}

// checkGroup returns the typed errors of writing g (cur is the stored
// group, nil for a create).
func (t *txn) checkGroup(ctx context.Context, g, cur *directory.Group) ([]error, error) {
	var errs []error
	if cur == nil || g.Name != cur.Name {
		id, err := t.lookup(ctx, `SELECT id FROM mail_groups WHERE name = $1`, g.Name)
		if err != nil {
			return nil, err
		}
		if id != "" {
			errs = append(errs, &ConflictError{Kind: directory.KindGroup, Field: "name", Value: g.Name, OwnerKind: directory.KindGroup, OwnerID: id, OwnerName: g.Name})
		}
	}
	if g.Address != "" && (cur == nil || g.Address != cur.Address) {
		cerrs, err := t.addrConflicts(ctx, directory.KindGroup, []claim{{field: "address", addr: g.Address}}, func(int) string { return g.ID }, false)
		if err != nil {
			return nil, err
		}
		errs = append(errs, cerrs...)
	}
	for _, m := range g.Members {
		if m.Type != directory.MemberUser && m.Type != directory.MemberGroup {
			errs = append(errs, &ReferenceError{Kind: directory.KindGroup, Field: "members", RefKind: m.Type, Value: m.ID})
		}
	}
	uerrs, err := t.checkUsers(ctx, directory.KindGroup, "members", memberIDs(g, directory.MemberUser)...)
	if err != nil {
		return nil, err
	}
	errs = append(errs, uerrs...)
	var subs []string
	for _, id := range memberIDs(g, directory.MemberGroup) {
		if id != g.ID { // a group in itself is a cycle, reported below
			subs = append(subs, id)
		}
	}
	found, err := t.existing(ctx, `SELECT id, id FROM mail_groups WHERE id IN (%s)`, subs)
	if err != nil {
		return nil, err
	}
	for _, id := range subs {
		if _, ok := found[id]; !ok {
			errs = append(errs, &ReferenceError{Kind: directory.KindGroup, Field: "members", RefKind: directory.KindGroup, Value: id})
		}
	}
	if len(subs) < len(memberIDs(g, directory.MemberGroup)) {
		errs = append(errs, &CycleError{Group: g.ID, Path: []string{g.ID, g.ID}})
	} else if len(subs) > 0 {
		edges := map[string][]directory.Member{}
		err := t.rows(ctx, `SELECT group_id, member_group_id FROM group_members WHERE member_group_id IS NOT NULL ORDER BY group_id, position`, nil,
			func(rows *sql.Rows) error {
				var from, to string
				if err := rows.Scan(&from, &to); err != nil {
					return err
				}
				edges[from] = append(edges[from], directory.Member{Type: directory.MemberGroup, ID: to})
				return nil
			})
		if err != nil {
			return nil, err
		}
		if path := directory.FindGroupCycle(g, func(id string) []directory.Member { return edges[id] }); path != nil {
			errs = append(errs, &CycleError{Group: g.ID, Path: path})
		}
	}
	return errs, nil
}

// setMembers replaces the member rows of g.
func (t *txn) setMembers(ctx context.Context, g *directory.Group) error {
	if err := t.exec(ctx, "replace group members", `DELETE FROM group_members WHERE group_id = $1`, g.ID); err != nil {
		return err
	}
	rows := make([][]any, len(g.Members))
	for i, m := range g.Members {
		if m.Type == directory.MemberUser {
			rows[i] = []any{g.ID, i, m.ID, nil}
		} else {
			rows[i] = []any{g.ID, i, nil, m.ID}
		}
	}
	if err := t.insertRows(ctx, "group_members", []string{"group_id", "position", "user_id", "member_group_id"}, rows); err != nil {
		return fmt.Errorf("users store: add group members: %w", err)
	}
	return nil
}

// CreateGroup implements Tx.
func (t *txn) CreateGroup(ctx context.Context, g *directory.Group) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normGroup(g)
	if g.ID == "" {
		g.ID = newID()
	} else if name, err := t.lookup(ctx, `SELECT name FROM mail_groups WHERE id = $1`, g.ID); err != nil {
		return err
	} else if name != "" {
		return &ConflictError{Kind: directory.KindGroup, Field: "id", Value: g.ID, OwnerKind: directory.KindGroup, OwnerID: g.ID, OwnerName: name}
	}
	errs, err := t.checkGroup(ctx, g, nil)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	g.Version, g.CreatedAt, g.UpdatedAt = 1, t.now, t.now
	data, err := storedGroup(g)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create group", `INSERT INTO mail_groups (id, name, version, data) VALUES ($1, $2, $3, $4)`, g.ID, g.Name, g.Version, data); err != nil {
		return err
	}
	if err := t.replaceAddresses(ctx, directory.KindGroup, g.ID, nil, []string{g.Address}); err != nil {
		return err
	}
	if err := t.setMembers(ctx, g); err != nil {
		return err
	}
	if err := t.logUpsert(directory.KindGroup, g.ID, g); err != nil {
		return err
	}
	return t.touchUsers(ctx, memberIDs(g, directory.MemberUser))
}

// UpdateGroup implements Tx.
func (t *txn) UpdateGroup(ctx context.Context, g *directory.Group, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normGroup(g)
	cur, err := t.GetGroup(ctx, g.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindGroup, g.ID, cur.Version, ifVersion); err != nil {
		return err
	}
	errs, err := t.checkGroup(ctx, g, &cur)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	g.Version, g.CreatedAt, g.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := storedGroup(g)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update group", `UPDATE mail_groups SET name = $2, version = $3, data = $4 WHERE id = $1`, g.ID, g.Name, g.Version, data); err != nil {
		return err
	}
	if err := t.replaceAddresses(ctx, directory.KindGroup, g.ID, []string{cur.Address}, []string{g.Address}); err != nil {
		return err
	}
	if err := t.setMembers(ctx, g); err != nil {
		return err
	}
	if err := t.logUpsert(directory.KindGroup, g.ID, g); err != nil {
		return err
	}
	// Users whose Groups changed: those who joined or left, or every
	// member when the name changed.
	prev, next := memberIDs(&cur, directory.MemberUser), memberIDs(g, directory.MemberUser)
	affected := append(diff(prev, next), diff(next, prev)...)
	if g.Name != cur.Name {
		affected = append(prev, diff(next, prev)...)
	}
	return t.touchUsers(ctx, affected)
}

// DeleteGroup implements Tx.
func (t *txn) DeleteGroup(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetGroup(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindGroup, id, cur.Version, ifVersion); err != nil {
		return err
	}
	parents, err := t.strings1(ctx, `SELECT group_id FROM group_members WHERE member_group_id = $1`, id)
	if err != nil {
		return err
	}
	for _, s := range []struct{ what, query string }{
		{"leave groups", `DELETE FROM group_members WHERE member_group_id = $1`},
		{"delete members", `DELETE FROM group_members WHERE group_id = $1`},
		{"delete address", `DELETE FROM addresses WHERE owner_kind = 'group' AND owner_id = $1`},
		{"delete group", `DELETE FROM mail_groups WHERE id = $1`},
	} {
		if err := t.exec(ctx, s.what, s.query, id); err != nil {
			return err
		}
	}
	if err := t.touchGroups(ctx, parents); err != nil {
		return err
	}
	if err := t.touchUsers(ctx, memberIDs(&cur, directory.MemberUser)); err != nil {
		return err
	}
	t.logDelete(directory.KindGroup, id)
	return nil
}

// ---------------------------------------------------------------------------
// POP3 accounts.

func normPOP3(a *directory.POP3Account) {
	if a.EnvelopeHeaders == nil {
		a.EnvelopeHeaders = []string{}
	}
	if a.LocalDomains == nil {
		a.LocalDomains = []string{}
	}
}

func (t *txn) checkPOP3(ctx context.Context, a, cur *directory.POP3Account) ([]error, error) {
	var errs []error
	if cur == nil || a.Name != cur.Name {
		id, err := t.lookup(ctx, `SELECT id FROM pop3_accounts WHERE name = $1`, a.Name)
		if err != nil {
			return nil, err
		}
		if id != "" {
			errs = append(errs, &ConflictError{Kind: directory.KindPOP3Account, Field: "name", Value: a.Name, OwnerKind: directory.KindPOP3Account, OwnerID: id, OwnerName: a.Name})
		}
	}
	e, err := t.checkSite(ctx, directory.KindPOP3Account, a.Site, true)
	if err != nil {
		return nil, err
	}
	if e != nil {
		errs = append(errs, e)
	}
	for _, f := range []struct{ field, id string }{{"target_user", a.TargetUser}, {"postmaster", a.Postmaster}} {
		uerrs, err := t.checkUsers(ctx, directory.KindPOP3Account, f.field, f.id)
		if err != nil {
			return nil, err
		}
		errs = append(errs, uerrs...)
	}
	return errs, nil
}

// CreatePOP3Account implements Tx.
func (t *txn) CreatePOP3Account(ctx context.Context, a *directory.POP3Account) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normPOP3(a)
	if a.ID == "" {
		a.ID = newID()
	} else if name, err := t.lookup(ctx, `SELECT name FROM pop3_accounts WHERE id = $1`, a.ID); err != nil {
		return err
	} else if name != "" {
		return &ConflictError{Kind: directory.KindPOP3Account, Field: "id", Value: a.ID, OwnerKind: directory.KindPOP3Account, OwnerID: a.ID, OwnerName: name}
	}
	errs, err := t.checkPOP3(ctx, a, nil)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	a.Version, a.CreatedAt, a.UpdatedAt = 1, t.now, t.now
	data, err := marshalString(a)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create POP3 account", `INSERT INTO pop3_accounts (id, name, site, target_user, postmaster, version, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, a.ID, a.Name, a.Site, nullable(a.TargetUser), nullable(a.Postmaster), a.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindPOP3Account, a.ID, a)
}

// UpdatePOP3Account implements Tx.
func (t *txn) UpdatePOP3Account(ctx context.Context, a *directory.POP3Account, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normPOP3(a)
	cur, err := t.GetPOP3Account(ctx, a.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindPOP3Account, a.ID, cur.Version, ifVersion); err != nil {
		return err
	}
	errs, err := t.checkPOP3(ctx, a, &cur)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	a.Version, a.CreatedAt, a.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := marshalString(a)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update POP3 account", `UPDATE pop3_accounts SET name = $2, site = $3, target_user = $4, postmaster = $5, version = $6, data = $7
		WHERE id = $1`, a.ID, a.Name, a.Site, nullable(a.TargetUser), nullable(a.Postmaster), a.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindPOP3Account, a.ID, a)
}

// DeletePOP3Account implements Tx.
func (t *txn) DeletePOP3Account(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetPOP3Account(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindPOP3Account, id, cur.Version, ifVersion); err != nil {
		return err
	}
	if err := t.exec(ctx, "delete POP3 account", `DELETE FROM pop3_accounts WHERE id = $1`, id); err != nil {
		return err
	}
	t.logDelete(directory.KindPOP3Account, id)
	return nil
}

// ---------------------------------------------------------------------------
// Shared mailboxes.

func normMailbox(m *directory.SharedMailbox) {
	staff := []string{}
	for _, s := range m.Staff {
		if !slices.Contains(staff, s) {
			staff = append(staff, s)
		}
	}
	m.Staff = staff
}

func (t *txn) checkMailbox(ctx context.Context, m, cur *directory.SharedMailbox) ([]error, error) {
	var errs []error
	if m.Address != "" && (cur == nil || m.Address != cur.Address) {
		cerrs, err := t.addrConflicts(ctx, directory.KindSharedMailbox, []claim{{field: "address", addr: m.Address}}, func(int) string { return m.ID }, false)
		if err != nil {
			return nil, err
		}
		errs = append(errs, cerrs...)
	}
	uerrs, err := t.checkUsers(ctx, directory.KindSharedMailbox, "manager", m.Manager)
	if err != nil {
		return nil, err
	}
	errs = append(errs, uerrs...)
	if uerrs, err = t.checkUsers(ctx, directory.KindSharedMailbox, "staff", m.Staff...); err != nil {
		return nil, err
	}
	return append(errs, uerrs...), nil
}

func (t *txn) setStaff(ctx context.Context, m *directory.SharedMailbox) error {
	if err := t.exec(ctx, "replace staff", `DELETE FROM shared_mailbox_staff WHERE mailbox_id = $1`, m.ID); err != nil {
		return err
	}
	rows := make([][]any, len(m.Staff))
	for i, uid := range m.Staff {
		rows[i] = []any{m.ID, i, uid}
	}
	if err := t.insertRows(ctx, "shared_mailbox_staff", []string{"mailbox_id", "position", "user_id"}, rows); err != nil {
		return fmt.Errorf("users store: add staff: %w", err)
	}
	return nil
}

// CreateSharedMailbox implements Tx.
func (t *txn) CreateSharedMailbox(ctx context.Context, m *directory.SharedMailbox) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normMailbox(m)
	if m.ID == "" {
		m.ID = newID()
	} else if addr, err := t.lookup(ctx, `SELECT address FROM shared_mailboxes WHERE id = $1`, m.ID); err != nil {
		return err
	} else if addr != "" {
		return &ConflictError{Kind: directory.KindSharedMailbox, Field: "id", Value: m.ID, OwnerKind: directory.KindSharedMailbox, OwnerID: m.ID, OwnerName: addr}
	}
	errs, err := t.checkMailbox(ctx, m, nil)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	m.Version, m.CreatedAt, m.UpdatedAt = 1, t.now, t.now
	data, err := storedMailbox(m)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create shared mailbox", `INSERT INTO shared_mailboxes (id, address, manager, version, data) VALUES ($1, $2, $3, $4, $5)`,
		m.ID, m.Address, nullable(m.Manager), m.Version, data); err != nil {
		return err
	}
	if err := t.replaceAddresses(ctx, directory.KindSharedMailbox, m.ID, nil, []string{m.Address}); err != nil {
		return err
	}
	if err := t.setStaff(ctx, m); err != nil {
		return err
	}
	return t.logUpsert(directory.KindSharedMailbox, m.ID, m)
}

// UpdateSharedMailbox implements Tx.
func (t *txn) UpdateSharedMailbox(ctx context.Context, m *directory.SharedMailbox, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normMailbox(m)
	cur, err := t.GetSharedMailbox(ctx, m.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindSharedMailbox, m.ID, cur.Version, ifVersion); err != nil {
		return err
	}
	errs, err := t.checkMailbox(ctx, m, &cur)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	m.Version, m.CreatedAt, m.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := storedMailbox(m)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update shared mailbox", `UPDATE shared_mailboxes SET address = $2, manager = $3, version = $4, data = $5 WHERE id = $1`,
		m.ID, m.Address, nullable(m.Manager), m.Version, data); err != nil {
		return err
	}
	if err := t.replaceAddresses(ctx, directory.KindSharedMailbox, m.ID, []string{cur.Address}, []string{m.Address}); err != nil {
		return err
	}
	if err := t.setStaff(ctx, m); err != nil {
		return err
	}
	return t.logUpsert(directory.KindSharedMailbox, m.ID, m)
}

// DeleteSharedMailbox implements Tx.
func (t *txn) DeleteSharedMailbox(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetSharedMailbox(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindSharedMailbox, id, cur.Version, ifVersion); err != nil {
		return err
	}
	for _, s := range []struct{ what, query string }{
		{"delete staff", `DELETE FROM shared_mailbox_staff WHERE mailbox_id = $1`},
		{"delete address", `DELETE FROM addresses WHERE owner_kind = 'shared_mailbox' AND owner_id = $1`},
		{"delete shared mailbox", `DELETE FROM shared_mailboxes WHERE id = $1`},
	} {
		if err := t.exec(ctx, s.what, s.query, id); err != nil {
			return err
		}
	}
	t.logDelete(directory.KindSharedMailbox, id)
	return nil
}

// ---------------------------------------------------------------------------
// Templates.

func normTemplate(tp *directory.Template) {
	if tp.Groups == nil {
		tp.Groups = []string{}
	}
}

func (t *txn) checkTemplate(ctx context.Context, tp, cur *directory.Template) ([]error, error) {
	var errs []error
	if cur == nil || tp.Name != cur.Name {
		id, err := t.lookup(ctx, `SELECT id FROM templates WHERE name = $1`, tp.Name)
		if err != nil {
			return nil, err
		}
		if id != "" {
			errs = append(errs, &ConflictError{Kind: directory.KindTemplate, Field: "name", Value: tp.Name, OwnerKind: directory.KindTemplate, OwnerID: id, OwnerName: tp.Name})
		}
	}
	e, err := t.checkSite(ctx, directory.KindTemplate, tp.Site, false)
	if err != nil {
		return nil, err
	}
	if e != nil {
		errs = append(errs, e)
	}
	return errs, nil
}

// CreateTemplate implements Tx.
func (t *txn) CreateTemplate(ctx context.Context, tp *directory.Template) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normTemplate(tp)
	if tp.ID == "" {
		tp.ID = newID()
	} else if name, err := t.lookup(ctx, `SELECT name FROM templates WHERE id = $1`, tp.ID); err != nil {
		return err
	} else if name != "" {
		return &ConflictError{Kind: directory.KindTemplate, Field: "id", Value: tp.ID, OwnerKind: directory.KindTemplate, OwnerID: tp.ID, OwnerName: name}
	}
	errs, err := t.checkTemplate(ctx, tp, nil)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	tp.Version, tp.CreatedAt, tp.UpdatedAt = 1, t.now, t.now
	data, err := marshalString(tp)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create template", `INSERT INTO templates (id, name, site, version, data) VALUES ($1, $2, $3, $4, $5)`,
		tp.ID, tp.Name, nullable(tp.Site), tp.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindTemplate, tp.ID, tp)
}

// UpdateTemplate implements Tx.
func (t *txn) UpdateTemplate(ctx context.Context, tp *directory.Template, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	normTemplate(tp)
	cur, err := t.GetTemplate(ctx, tp.ID)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindTemplate, tp.ID, cur.Version, ifVersion); err != nil {
		return err
	}
	errs, err := t.checkTemplate(ctx, tp, &cur)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	tp.Version, tp.CreatedAt, tp.UpdatedAt = cur.Version+1, cur.CreatedAt, t.now
	data, err := marshalString(tp)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "update template", `UPDATE templates SET name = $2, site = $3, version = $4, data = $5 WHERE id = $1`,
		tp.ID, tp.Name, nullable(tp.Site), tp.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindTemplate, tp.ID, tp)
}

// DeleteTemplate implements Tx.
func (t *txn) DeleteTemplate(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetTemplate(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindTemplate, id, cur.Version, ifVersion); err != nil {
		return err
	}
	if err := t.exec(ctx, "delete template", `DELETE FROM templates WHERE id = $1`, id); err != nil {
		return err
	}
	t.logDelete(directory.KindTemplate, id)
	return nil
}

// ---------------------------------------------------------------------------
// Tokens.

// CreateToken implements Tx.
func (t *txn) CreateToken(ctx context.Context, tok *directory.Token) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	if tok.SecretHash == "" {
		return errors.New("users store: a token needs its secret's hash")
	}
	if tok.ID == "" {
		tok.ID = newID()
	} else if name, err := t.lookup(ctx, `SELECT name FROM tokens WHERE id = $1`, tok.ID); err != nil {
		return err
	} else if name != "" {
		return &ConflictError{Kind: directory.KindToken, Field: "id", Value: tok.ID, OwnerKind: directory.KindToken, OwnerID: tok.ID, OwnerName: name}
	}
	var errs []error
	by, err := t.pairs2(ctx, `SELECT id, name FROM tokens WHERE secret_hash = $1`, tok.SecretHash)
	if err != nil {
		return err
	}
	for _, b := range by {
		// The value is a secret's hash: do not repeat it.
		errs = append(errs, &ConflictError{Kind: directory.KindToken, Field: "secret_hash", Value: "(hidden)", OwnerKind: directory.KindToken, OwnerID: b[0], OwnerName: b[1]})
	}
	e, err := t.checkSite(ctx, directory.KindToken, tok.Site, false)
	if err != nil {
		return err
	}
	if e != nil {
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	tok.Version, tok.CreatedAt, tok.UpdatedAt, tok.LastUsedAt = 1, t.now, t.now, nil
	data, err := marshalString(tok)
	if err != nil {
		return err
	}
	if err := t.exec(ctx, "create token", `INSERT INTO tokens (id, name, role, site, secret_hash, version, data) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		tok.ID, tok.Name, tok.Role, nullable(tok.Site), tok.SecretHash, tok.Version, data); err != nil {
		return err
	}
	return t.logUpsert(directory.KindToken, tok.ID, tok)
}

// DeleteToken implements Tx.
func (t *txn) DeleteToken(ctx context.Context, id string, ifVersion int64) (err error) {
	if err := t.start(); err != nil {
		return err
	}
	defer t.end(&err)
	cur, err := t.GetToken(ctx, id)
	if err != nil {
		return err
	}
	if err := checkVersion(directory.KindToken, id, cur.Version, ifVersion); err != nil {
		return err
	}
	if err := t.exec(ctx, "delete token", `DELETE FROM tokens WHERE id = $1`, id); err != nil {
		return err
	}
	t.logDelete(directory.KindToken, id)
	return nil
}
