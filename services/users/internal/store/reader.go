package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/postern/postern/services/users/internal/directory"
)

// reader implements Reader over a read or a write transaction.
type reader struct {
	q querier
	d *dialect
}

// inChunk is how many keys one IN (...) list holds.
const inChunk = 500

// placeholders returns the placeholders of n parameters numbered from
// from, which must follow every other parameter of the statement:
// "$from, $from+1, …" for PostgreSQL, "?, ?, …" for SQLite, where binding
// n named parameters costs n² (the driver looks each name up in a list).
func placeholders(d *dialect, from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		if d.anonParams {
			b.WriteByte('?')
			continue
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(from + i))
	}
	return b.String()
}

// chunks calls fn with keys inChunk at a time.
func chunks(keys []string, fn func(part []string) error) error {
	for len(keys) > 0 {
		n := min(len(keys), inChunk)
		if err := fn(keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

func anys(keys []string) []any {
	out := make([]any, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out
}

// queryIn runs query, whose "%s" becomes the placeholders of keys (which
// follow args), once per chunk of keys, calling scan for every row.
func (r *reader) queryIn(ctx context.Context, query string, args []any, keys []string, scan func(rows *sql.Rows) error) error {
	return chunks(keys, func(part []string) error {
		q := fmt.Sprintf(query, placeholders(r.d, len(args)+1, len(part)))
		rows, err := r.q.QueryContext(ctx, q, append(append([]any{}, args...), anys(part)...)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

// pairs maps the first column of query's rows to the second.
func (r *reader) pairs(ctx context.Context, query string, keys []string) (map[string]string, error) {
	out := make(map[string]string, len(keys))
	err := r.queryIn(ctx, query, nil, keys, func(rows *sql.Rows) error {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		out[k] = v
		return nil
	})
	return out, err
}

// getData reads the data column of one row into dst.
func (r *reader) getData(ctx context.Context, dst any, kind, key, query string, args ...any) error {
	var data []byte
	err := r.q.QueryRowContext(ctx, query, args...).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return &NotFoundError{Kind: kind, Key: key}
	}
	if err != nil {
		return fmt.Errorf("users store: get %s %q: %w", kind, key, err)
	}
	if err := json.Unmarshal(data, dst); err != nil {
		return fmt.Errorf("users store: decode %s %q: %w", kind, key, err)
	}
	return nil
}

// allData decodes the data column of every row of query.
func allData[T any](ctx context.Context, r *reader, kind, query string, args ...any) ([]T, error) {
	rows, err := r.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("users store: read %ss: %w", kind, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("users store: read %ss: %w", kind, err)
		}
		var v T
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, fmt.Errorf("users store: decode %s: %w", kind, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("users store: read %ss: %w", kind, err)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Derived fields: memberships live in their own tables.

// fillUsers sets the Groups of us (sorted names). With all, it reads every
// membership instead of those of us (Snapshot).
func (r *reader) fillUsers(ctx context.Context, us []directory.User, all bool) error {
	groups := map[string][]string{}
	scan := func(rows *sql.Rows) error {
		var uid, name string
		if err := rows.Scan(&uid, &name); err != nil {
			return err
		}
		groups[uid] = append(groups[uid], name)
		return nil
	}
	const q = `SELECT m.user_id, g.name FROM group_members m JOIN mail_groups g ON g.id = m.group_id WHERE `
	var err error
	if all {
		err = r.scanAll(ctx, q+`m.user_id IS NOT NULL ORDER BY g.name`, scan)
	} else if len(us) > 0 {
		ids := make([]string, len(us))
		for i := range us {
			ids[i] = us[i].ID
		}
		err = r.queryIn(ctx, q+`m.user_id IN (%s) ORDER BY g.name`, nil, ids, scan)
	}
	if err != nil {
		return fmt.Errorf("users store: read group memberships: %w", err)
	}
	for i := range us {
		us[i].Groups = groups[us[i].ID]
		if us[i].Groups == nil {
			us[i].Groups = []string{}
		}
	}
	return nil
}

// fillGroups sets the Members of gs, in their stored order.
func (r *reader) fillGroups(ctx context.Context, gs []directory.Group, all bool) error {
	members := map[string][]directory.Member{}
	scan := func(rows *sql.Rows) error {
		var gid string
		var uid, mgid sql.NullString
		if err := rows.Scan(&gid, &uid, &mgid); err != nil {
			return err
		}
		m := directory.Member{Type: directory.MemberUser, ID: uid.String}
		if mgid.Valid {
			m = directory.Member{Type: directory.MemberGroup, ID: mgid.String}
		}
		members[gid] = append(members[gid], m)
		return nil
	}
	const q = `SELECT group_id, user_id, member_group_id FROM group_members `
	var err error
	if all {
		err = r.scanAll(ctx, q+`ORDER BY group_id, position`, scan)
	} else if len(gs) > 0 {
		ids := make([]string, len(gs))
		for i := range gs {
			ids[i] = gs[i].ID
		}
		err = r.queryIn(ctx, q+`WHERE group_id IN (%s) ORDER BY group_id, position`, nil, ids, scan)
	}
	if err != nil {
		return fmt.Errorf("users store: read group members: %w", err)
	}
	for i := range gs {
		gs[i].Members = members[gs[i].ID]
		if gs[i].Members == nil {
			gs[i].Members = []directory.Member{}
		}
	}
	return nil
}

// fillMailboxes sets the Staff of ms, in their stored order.
func (r *reader) fillMailboxes(ctx context.Context, ms []directory.SharedMailbox, all bool) error {
	staff := map[string][]string{}
	scan := func(rows *sql.Rows) error {
		var mid, uid string
		if err := rows.Scan(&mid, &uid); err != nil {
			return err
		}
		staff[mid] = append(staff[mid], uid)
		return nil
	}
	const q = `SELECT mailbox_id, user_id FROM shared_mailbox_staff `
	var err error
	if all {
		err = r.scanAll(ctx, q+`ORDER BY mailbox_id, position`, scan)
	} else if len(ms) > 0 {
		ids := make([]string, len(ms))
		for i := range ms {
			ids[i] = ms[i].ID
		}
		err = r.queryIn(ctx, q+`WHERE mailbox_id IN (%s) ORDER BY mailbox_id, position`, nil, ids, scan)
	}
	if err != nil {
		return fmt.Errorf("users store: read shared mailbox staff: %w", err)
	}
	for i := range ms {
		ms[i].Staff = staff[ms[i].ID]
		if ms[i].Staff == nil {
			ms[i].Staff = []string{}
		}
	}
	return nil
}

func (r *reader) scanAll(ctx context.Context, query string, scan func(rows *sql.Rows) error) error {
	rows, err := r.q.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ---------------------------------------------------------------------------
// Gets.

func (r *reader) GetSite(ctx context.Context, name string) (directory.Site, error) {
	var s directory.Site
	err := r.getData(ctx, &s, directory.KindSite, name, `SELECT data FROM sites WHERE id = $1`, name)
	return s, err
}

func (r *reader) getUser(ctx context.Context, key, query string, arg string) (directory.User, error) {
	var u directory.User
	if err := r.getData(ctx, &u, directory.KindUser, key, query, arg); err != nil {
		return u, err
	}
	us := []directory.User{u}
	if err := r.fillUsers(ctx, us, false); err != nil {
		return u, err
	}
	return us[0], nil
}

func (r *reader) GetUser(ctx context.Context, id string) (directory.User, error) {
	return r.getUser(ctx, id, `SELECT data FROM users WHERE id = $1`, id)
}

func (r *reader) GetUserByUsername(ctx context.Context, username string) (directory.User, error) {
	return r.getUser(ctx, username, `SELECT data FROM users WHERE username = $1`, username)
}

func (r *reader) getGroup(ctx context.Context, key, query string, arg string) (directory.Group, error) {
	var g directory.Group
	if err := r.getData(ctx, &g, directory.KindGroup, key, query, arg); err != nil {
		return g, err
	}
	gs := []directory.Group{g}
	if err := r.fillGroups(ctx, gs, false); err != nil {
		return g, err
	}
	return gs[0], nil
}

func (r *reader) GetGroup(ctx context.Context, id string) (directory.Group, error) {
	return r.getGroup(ctx, id, `SELECT data FROM mail_groups WHERE id = $1`, id)
}

func (r *reader) GetGroupByName(ctx context.Context, name string) (directory.Group, error) {
	return r.getGroup(ctx, name, `SELECT data FROM mail_groups WHERE name = $1`, name)
}

func (r *reader) GetPOP3Account(ctx context.Context, id string) (directory.POP3Account, error) {
	var a directory.POP3Account
	err := r.getData(ctx, &a, directory.KindPOP3Account, id, `SELECT data FROM pop3_accounts WHERE id = $1`, id)
	return a, err
}

func (r *reader) GetSharedMailbox(ctx context.Context, id string) (directory.SharedMailbox, error) {
	var m directory.SharedMailbox
	if err := r.getData(ctx, &m, directory.KindSharedMailbox, id, `SELECT data FROM shared_mailboxes WHERE id = $1`, id); err != nil {
		return m, err
	}
	ms := []directory.SharedMailbox{m}
	if err := r.fillMailboxes(ctx, ms, false); err != nil {
		return m, err
	}
	return ms[0], nil
}

func (r *reader) GetTemplate(ctx context.Context, id string) (directory.Template, error) {
	var t directory.Template
	err := r.getData(ctx, &t, directory.KindTemplate, id, `SELECT data FROM templates WHERE id = $1`, id)
	return t, err
}

func (r *reader) GetTemplateByName(ctx context.Context, name string) (directory.Template, error) {
	var t directory.Template
	err := r.getData(ctx, &t, directory.KindTemplate, name, `SELECT data FROM templates WHERE name = $1`, name)
	return t, err
}

func (r *reader) getToken(ctx context.Context, key, query, arg string) (directory.Token, error) {
	var (
		t        directory.Token
		data     []byte
		hash     string
		lastUsed sql.NullInt64
	)
	err := r.q.QueryRowContext(ctx, query, arg).Scan(&data, &hash, &lastUsed)
	if errors.Is(err, sql.ErrNoRows) {
		return t, &NotFoundError{Kind: directory.KindToken, Key: key}
	}
	if err != nil {
		return t, fmt.Errorf("users store: get token: %w", err)
	}
	if err := decodeToken(data, hash, lastUsed, &t); err != nil {
		return t, err
	}
	return t, nil
}

func decodeToken(data []byte, hash string, lastUsed sql.NullInt64, t *directory.Token) error {
	if err := json.Unmarshal(data, t); err != nil {
		return fmt.Errorf("users store: decode token: %w", err)
	}
	t.SecretHash = hash
	t.LastUsedAt = nil
	if lastUsed.Valid {
		at := fromMicros(lastUsed.Int64)
		t.LastUsedAt = &at
	}
	return nil
}

func (r *reader) GetToken(ctx context.Context, id string) (directory.Token, error) {
	return r.getToken(ctx, id, `SELECT data, secret_hash, last_used_us FROM tokens WHERE id = $1`, id)
}

func (r *reader) LookupAddress(ctx context.Context, address string) (Owner, error) {
	var o Owner
	err := r.q.QueryRowContext(ctx, `SELECT owner_kind, owner_id FROM addresses WHERE address = $1`, address).Scan(&o.Kind, &o.ID)
	if errors.Is(err, sql.ErrNoRows) {
		return o, &NotFoundError{Kind: "address", Key: address}
	}
	if err != nil {
		return o, fmt.Errorf("users store: look up address: %w", err)
	}
	return o, nil
}

// ---------------------------------------------------------------------------
// Lists.

// cursor is the position after the last item of a page: the sort key and
// ID of that item, and the kind of list it belongs to. It travels as
// base64url(JSON) so that clients treat it as opaque.
type cursor struct {
	Kind string `json:"k"`
	Key  string `json:"s"`
	ID   string `json:"i"`
}

func encodeCursor(kind, key, id string) string {
	b, _ := json.Marshal(cursor{Kind: kind, Key: key, ID: id})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(kind, s string) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &c) != nil || c.Kind != kind {
		return c, fmt.Errorf("users store: %w", ErrBadCursor)
	}
	return c, nil
}

func pageLimit(p Page) int {
	switch {
	case p.Limit <= 0:
		return DefaultLimit
	case p.Limit > MaxLimit:
		return MaxLimit
	}
	return p.Limit
}

// listSpec describes the list of one kind.
type listSpec struct {
	kind    string
	table   string
	sortCol string // the list order is sortCol, id
	cols    string // selected columns
}

// where collects the conditions and arguments of a list query.
type where struct {
	conds []string
	args  []any
}

// add appends a condition whose "?" is the placeholder of arg.
func (w *where) add(cond string, arg any) {
	w.args = append(w.args, arg)
	w.conds = append(w.conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(w.args))))
}

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return "1 = 1"
	}
	return strings.Join(w.conds, " AND ")
}

// list returns one page of spec's table: scan reads the selected columns of
// a row and returns the row's ID and sort key.
func (r *reader) list(ctx context.Context, spec listSpec, w where, page Page, scan func(rows *sql.Rows) (id, key string, err error)) (next string, total int, err error) {
	limit := pageLimit(page)
	if err := r.q.QueryRowContext(ctx, `SELECT count(*) FROM `+spec.table+` WHERE `+w.sql(), w.args...).Scan(&total); err != nil {
		return "", 0, fmt.Errorf("users store: count %ss: %w", spec.kind, err)
	}
	if page.Cursor != "" {
		c, err := decodeCursor(spec.kind, page.Cursor)
		if err != nil {
			return "", 0, err
		}
		w.args = append(w.args, c.Key, c.ID)
		n := len(w.args)
		w.conds = append(w.conds, fmt.Sprintf("(%s, id) > ($%d, $%d)", spec.sortCol, n-1, n))
	}
	w.args = append(w.args, limit+1)
	q := fmt.Sprintf(`SELECT %s FROM %s WHERE %s ORDER BY %s, id LIMIT $%d`, spec.cols, spec.table, w.sql(), spec.sortCol, len(w.args))
	rows, err := r.q.QueryContext(ctx, q, w.args...)
	if err != nil {
		return "", 0, fmt.Errorf("users store: list %ss: %w", spec.kind, err)
	}
	defer rows.Close()
	n := 0
	var lastID, lastKey string
	for rows.Next() {
		n++
		if n > limit {
			next = encodeCursor(spec.kind, lastKey, lastID)
			break
		}
		if lastID, lastKey, err = scan(rows); err != nil {
			return "", 0, fmt.Errorf("users store: list %ss: %w", spec.kind, err)
		}
	}
	if err := rows.Err(); err != nil {
		return "", 0, fmt.Errorf("users store: list %ss: %w", spec.kind, err)
	}
	return next, total, nil
}

// listData lists the objects of a table whose rows hold data, sortCol and id.
func listData[T any](ctx context.Context, r *reader, spec listSpec, w where, page Page) ([]T, string, int, error) {
	spec.cols = "data, " + spec.sortCol + ", id"
	out := []T{}
	next, total, err := r.list(ctx, spec, w, page, func(rows *sql.Rows) (string, string, error) {
		var (
			data    []byte
			key, id string
			v       T
		)
		if err := rows.Scan(&data, &key, &id); err != nil {
			return "", "", err
		}
		if err := json.Unmarshal(data, &v); err != nil {
			return "", "", err
		}
		out = append(out, v)
		return id, key, nil
	})
	if err != nil {
		return nil, "", 0, err
	}
	return out, next, total, nil
}

var (
	siteList     = listSpec{kind: directory.KindSite, table: "sites", sortCol: "id"}
	userList     = listSpec{kind: directory.KindUser, table: "users", sortCol: "username"}
	groupList    = listSpec{kind: directory.KindGroup, table: "mail_groups", sortCol: "name"}
	pop3List     = listSpec{kind: directory.KindPOP3Account, table: "pop3_accounts", sortCol: "name"}
	mailboxList  = listSpec{kind: directory.KindSharedMailbox, table: "shared_mailboxes", sortCol: "address"}
	templateList = listSpec{kind: directory.KindTemplate, table: "templates", sortCol: "name"}
	tokenList    = listSpec{kind: directory.KindToken, table: "tokens", sortCol: "name"}
)

func (r *reader) ListSites(ctx context.Context, page Page) ([]directory.Site, string, int, error) {
	return listData[directory.Site](ctx, r, siteList, where{}, page)
}

// likeEscape escapes s for a LIKE pattern with ESCAPE '\'.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// searchSep separates the fields of users.search; a query containing it
// matches nothing.
const searchSep = "\x1f"

func (r *reader) ListUsers(ctx context.Context, f UserFilter) ([]directory.User, string, int, error) {
	var w where
	if f.Site != "" {
		w.add("site = ?", f.Site)
	}
	if f.Enabled != nil {
		w.add("enabled = ?", *f.Enabled)
	}
	if f.Group != "" {
		w.add(`id IN (SELECT m.user_id FROM group_members m JOIN mail_groups g ON g.id = m.group_id WHERE g.name = ?)`, f.Group)
	}
	if f.Q != "" {
		if strings.Contains(f.Q, searchSep) {
			return []directory.User{}, "", 0, nil
		}
		q := strings.ToLower(f.Q)
		if r.d.anonParams { // SQLite: instr is a plain substring search, several times faster than LIKE
			w.add(`instr(search, ?) > 0`, q)
		} else { // PostgreSQL: LIKE, which a pg_trgm index could serve
			w.add(`search LIKE ? ESCAPE '\'`, "%"+likeEscape(q)+"%")
		}
	}
	us, next, total, err := listData[directory.User](ctx, r, userList, w, f.Page)
	if err != nil {
		return nil, "", 0, err
	}
	if err := r.fillUsers(ctx, us, false); err != nil {
		return nil, "", 0, err
	}
	return us, next, total, nil
}

func (r *reader) ListGroups(ctx context.Context, page Page) ([]directory.Group, string, int, error) {
	gs, next, total, err := listData[directory.Group](ctx, r, groupList, where{}, page)
	if err != nil {
		return nil, "", 0, err
	}
	if err := r.fillGroups(ctx, gs, false); err != nil {
		return nil, "", 0, err
	}
	return gs, next, total, nil
}

func (r *reader) ListPOP3Accounts(ctx context.Context, f POP3AccountFilter) ([]directory.POP3Account, string, int, error) {
	var w where
	if f.Site != "" {
		w.add("site = ?", f.Site)
	}
	return listData[directory.POP3Account](ctx, r, pop3List, w, f.Page)
}

func (r *reader) ListSharedMailboxes(ctx context.Context, page Page) ([]directory.SharedMailbox, string, int, error) {
	ms, next, total, err := listData[directory.SharedMailbox](ctx, r, mailboxList, where{}, page)
	if err != nil {
		return nil, "", 0, err
	}
	if err := r.fillMailboxes(ctx, ms, false); err != nil {
		return nil, "", 0, err
	}
	return ms, next, total, nil
}

func (r *reader) ListTemplates(ctx context.Context, page Page) ([]directory.Template, string, int, error) {
	return listData[directory.Template](ctx, r, templateList, where{}, page)
}

func (r *reader) ListTokens(ctx context.Context, f TokenFilter) ([]directory.Token, string, int, error) {
	var w where
	if f.Site != "" {
		w.add("site = ?", f.Site)
	}
	if f.Role != "" {
		w.add("role = ?", f.Role)
	}
	spec := tokenList
	spec.cols = "data, secret_hash, last_used_us, name, id"
	out := []directory.Token{}
	next, total, err := r.list(ctx, spec, w, f.Page, func(rows *sql.Rows) (string, string, error) {
		var (
			data           []byte
			hash, name, id string
			lastUsed       sql.NullInt64
			t              directory.Token
		)
		if err := rows.Scan(&data, &hash, &lastUsed, &name, &id); err != nil {
			return "", "", err
		}
		if err := decodeToken(data, hash, lastUsed, &t); err != nil {
			return "", "", err
		}
		out = append(out, t)
		return id, name, nil
	})
	if err != nil {
		return nil, "", 0, err
	}
	return out, next, total, nil
}

// listAudit lists audit entries newest first; the cursor holds the last ID.
func (r *reader) listAudit(ctx context.Context, f AuditFilter) ([]directory.AuditEntry, string, int, error) {
	var w where
	for _, c := range []struct{ col, v string }{
		{"actor", f.Actor}, {"action", f.Action}, {"target_kind", f.TargetKind}, {"target_id", f.TargetID},
	} {
		if c.v != "" {
			w.add(c.col+" = ?", c.v)
		}
	}
	if !f.Since.IsZero() {
		w.add("at_us >= ?", f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		w.add("at_us < ?", f.Until.UnixMicro())
	}
	var total int
	if err := r.q.QueryRowContext(ctx, `SELECT count(*) FROM audit_log WHERE `+w.sql(), w.args...).Scan(&total); err != nil {
		return nil, "", 0, fmt.Errorf("users store: count audit entries: %w", err)
	}
	if f.Cursor != "" {
		c, err := decodeCursor("audit", f.Cursor)
		if err != nil {
			return nil, "", 0, err
		}
		id, err := strconv.ParseInt(c.ID, 10, 64)
		if err != nil {
			return nil, "", 0, fmt.Errorf("users store: %w", ErrBadCursor)
		}
		w.add("id < ?", id)
	}
	limit := pageLimit(f.Page)
	w.args = append(w.args, limit+1)
	rows, err := r.q.QueryContext(ctx, `SELECT id, at_us, actor, action, target_kind, target_id, diff
		FROM audit_log WHERE `+w.sql()+` ORDER BY id DESC LIMIT $`+strconv.Itoa(len(w.args)), w.args...)
	if err != nil {
		return nil, "", 0, fmt.Errorf("users store: list audit entries: %w", err)
	}
	defer rows.Close()
	out := []directory.AuditEntry{}
	next := ""
	for rows.Next() {
		if len(out) == limit {
			next = encodeCursor("audit", "", strconv.FormatInt(out[len(out)-1].ID, 10))
			break
		}
		var (
			e    directory.AuditEntry
			at   int64
			diff []byte
		)
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.TargetKind, &e.TargetID, &diff); err != nil {
			return nil, "", 0, fmt.Errorf("users store: list audit entries: %w", err)
		}
		e.At = fromMicros(at)
		if diff != nil {
			e.Diff = json.RawMessage(diff)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", 0, fmt.Errorf("users store: list audit entries: %w", err)
	}
	return out, next, total, nil
}

// snapshot reads everything; run it in a read transaction.
func (r *reader) snapshot(ctx context.Context) (*Snapshot, error) {
	s := &Snapshot{}
	if err := r.q.QueryRowContext(ctx, `SELECT seq FROM change_seq WHERE id = 1`).Scan(&s.Seq); err != nil {
		return nil, fmt.Errorf("users store: snapshot: %w", err)
	}
	var err error
	if s.Sites, err = allData[directory.Site](ctx, r, directory.KindSite, `SELECT data FROM sites ORDER BY id`); err != nil {
		return nil, err
	}
	if s.Users, err = allData[directory.User](ctx, r, directory.KindUser, `SELECT data FROM users ORDER BY username, id`); err != nil {
		return nil, err
	}
	if err := r.fillUsers(ctx, s.Users, true); err != nil {
		return nil, err
	}
	if s.Groups, err = allData[directory.Group](ctx, r, directory.KindGroup, `SELECT data FROM mail_groups ORDER BY name, id`); err != nil {
		return nil, err
	}
	if err := r.fillGroups(ctx, s.Groups, true); err != nil {
		return nil, err
	}
	if s.POP3Accounts, err = allData[directory.POP3Account](ctx, r, directory.KindPOP3Account, `SELECT data FROM pop3_accounts ORDER BY name, id`); err != nil {
		return nil, err
	}
	if s.SharedMailboxes, err = allData[directory.SharedMailbox](ctx, r, directory.KindSharedMailbox, `SELECT data FROM shared_mailboxes ORDER BY address, id`); err != nil {
		return nil, err
	}
	if err := r.fillMailboxes(ctx, s.SharedMailboxes, true); err != nil {
		return nil, err
	}
	if s.Templates, err = allData[directory.Template](ctx, r, directory.KindTemplate, `SELECT data FROM templates ORDER BY name, id`); err != nil {
		return nil, err
	}
	s.Tokens = []directory.Token{}
	err = r.scanAll(ctx, `SELECT data, secret_hash, last_used_us FROM tokens ORDER BY name, id`, func(rows *sql.Rows) error {
		var (
			data     []byte
			hash     string
			lastUsed sql.NullInt64
			t        directory.Token
		)
		if err := rows.Scan(&data, &hash, &lastUsed); err != nil {
			return err
		}
		if err := decodeToken(data, hash, lastUsed, &t); err != nil {
			return err
		}
		s.Tokens = append(s.Tokens, t)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("users store: snapshot tokens: %w", err)
	}
	return s, nil
}
