package routing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/postern/postern/internal/sitestate"
)

// Kinds of directory replica entries the router reads. They are the kinds of
// the users service's sync feed.
const (
	KindSite          = "site"
	KindUser          = "user"
	KindGroup         = "group"
	KindSharedMailbox = "shared_mailbox"
)

// Directory is the part of the site's directory replica the router reads
// ([sitestate.DirectoryReader] satisfies it). Lookup keys are lower-cased
// addresses, user names, group names and site domains, as the users service's
// sync feed writes them. Missing entries are reported with an error matching
// [sitestate.ErrNotFound]; any other error is treated as temporary.
type Directory interface {
	Get(ctx context.Context, kind, id string) (sitestate.Entry, error)
	Lookup(ctx context.Context, kind, key string) (sitestate.Entry, error)
	List(ctx context.Context, kind string) ([]sitestate.Entry, error)
}

// MessageIndex is the read side of the site's Message-ID index
// ([sitestate.MessageIndex] satisfies it). The router never writes it: the
// records to store are returned in [Decision.RecordMessageIDs].
type MessageIndex interface {
	Lookup(ctx context.Context, messageID string) (sitestate.MessageRecord, error)
}

// The read-side shapes of the sync feed's entries (the JSON of
// services/users/internal/directory, which this module cannot import). Only
// the fields the router uses are declared.

// Site is a location with its own gateway.
type Site struct {
	Name         string   `json:"name"`
	Domains      []string `json:"domains"`
	SMTPEndpoint string   `json:"smtp_endpoint"`
}

// Permissions of a user towards the Internet.
type Permissions struct {
	InternetReceive bool `json:"internet_receive"`
	InternetSend    bool `json:"internet_send"`
}

// User is one person or device with one primary mailbox.
type User struct {
	ID             string      `json:"id"`
	Username       string      `json:"username"`
	DisplayName    string      `json:"display_name"`
	PrimaryAddress string      `json:"primary_address"`
	Aliases        []string    `json:"aliases"`
	Site           string      `json:"site"`
	Groups         []string    `json:"groups"`
	Enabled        bool        `json:"enabled"`
	Permissions    Permissions `json:"permissions"`
}

// Member types of a group.
const (
	MemberUser  = "user"
	MemberGroup = "group"
)

// Member of a group: a user or another group.
type Member struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Group is a mail group (distribution list).
type Group struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Address string   `json:"address"`
	Members []Member `json:"members"`
}

// SharedMailbox is a unified external address worked by staff (seed 004).
type SharedMailbox struct {
	ID                    string   `json:"id"`
	Address               string   `json:"address"`
	DisplayName           string   `json:"display_name"`
	Manager               string   `json:"manager"`
	Staff                 []string `json:"staff"`
	ForwardToStaff        bool     `json:"forward_to_staff"`
	RewriteSender         bool     `json:"rewrite_sender"`
	CopyOutboundToManager bool     `json:"copy_outbound_to_manager"`
}

func (m *SharedMailbox) hasStaff(userID string) bool {
	for _, s := range m.Staff {
		if s == userID {
			return true
		}
	}
	return false
}

// decode unmarshals an entry's data; the entry's ID is authoritative.
func decode[T any](e sitestate.Entry, v *T) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("directory %s %s: no data", e.Kind, e.ID)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("directory %s %s: %w", e.Kind, e.ID, err)
	}
	return nil
}

// dirView is one Route call's view of the directory, with a cache so that
// every entry is read and decoded at most once per message.
type dirView struct {
	dir    Directory
	users  map[string]*User // by id; nil value: not found
	groups map[string]*Group
	org    map[string]bool // domain -> in the organisation
	shared []*SharedMailbox
	listed bool
}

func newDirView(d Directory) *dirView {
	return &dirView{dir: d, users: map[string]*User{}, groups: map[string]*Group{}, org: map[string]bool{}}
}

func notFound(err error) bool { return errors.Is(err, sitestate.ErrNotFound) }

// user returns the user with id, nil if there is none.
func (v *dirView) user(ctx context.Context, id string) (*User, error) {
	if u, ok := v.users[id]; ok {
		return u, nil
	}
	e, err := v.dir.Get(ctx, KindUser, id)
	if notFound(err) {
		v.users[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get user %s: %w", id, err)
	}
	return v.cacheUser(e)
}

func (v *dirView) cacheUser(e sitestate.Entry) (*User, error) {
	u := new(User)
	if err := decode(e, u); err != nil {
		return nil, err
	}
	u.ID = e.ID
	v.users[e.ID] = u
	return u, nil
}

// userByKey returns the user owning key (an address or a user name), nil if
// none.
func (v *dirView) userByKey(ctx context.Context, key string) (*User, error) {
	e, err := v.dir.Lookup(ctx, KindUser, key)
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lookup user %q: %w", key, err)
	}
	if u, ok := v.users[e.ID]; ok && u != nil {
		return u, nil
	}
	return v.cacheUser(e)
}

func (v *dirView) group(ctx context.Context, id string) (*Group, error) {
	if g, ok := v.groups[id]; ok {
		return g, nil
	}
	e, err := v.dir.Get(ctx, KindGroup, id)
	if notFound(err) {
		v.groups[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get group %s: %w", id, err)
	}
	return v.cacheGroup(e)
}

func (v *dirView) cacheGroup(e sitestate.Entry) (*Group, error) {
	g := new(Group)
	if err := decode(e, g); err != nil {
		return nil, err
	}
	g.ID = e.ID
	v.groups[e.ID] = g
	return g, nil
}

// sharedMailboxes returns every shared mailbox, ordered by ID.
func (v *dirView) sharedMailboxes(ctx context.Context) ([]*SharedMailbox, error) {
	if v.listed {
		return v.shared, nil
	}
	es, err := v.dir.List(ctx, KindSharedMailbox)
	if err != nil {
		return nil, fmt.Errorf("list shared mailboxes: %w", err)
	}
	for _, e := range es {
		m := new(SharedMailbox)
		if err := decode(e, m); err != nil {
			return nil, err
		}
		m.ID = e.ID
		v.shared = append(v.shared, m)
	}
	v.listed = true
	return v.shared, nil
}

// staffOf returns the shared mailboxes userID works as staff, ordered by ID.
func (v *dirView) staffOf(ctx context.Context, userID string) ([]*SharedMailbox, error) {
	all, err := v.sharedMailboxes(ctx)
	if err != nil {
		return nil, err
	}
	var out []*SharedMailbox
	for _, m := range all {
		if m.hasStaff(userID) {
			out = append(out, m)
		}
	}
	return out, nil
}

// inOrg reports whether domain (lower-case) is one of the organisation's
// mail domains: the domains of every site, this one and the others.
func (v *dirView) inOrg(ctx context.Context, domain string) (bool, error) {
	if domain == "" {
		return false, nil
	}
	if in, ok := v.org[domain]; ok {
		return in, nil
	}
	_, err := v.dir.Lookup(ctx, KindSite, domain)
	switch {
	case notFound(err):
		v.org[domain] = false
	case err != nil:
		return false, fmt.Errorf("lookup site of domain %q: %w", domain, err)
	default:
		v.org[domain] = true
	}
	return v.org[domain], nil
}

// target is what an organisation address resolves to.
type target struct {
	user   *User
	group  *Group
	shared *SharedMailbox
}

func (t target) found() bool { return t.user != nil || t.group != nil || t.shared != nil }

// resolve finds the owner of an organisation address: the exact address
// first, then, for user+tag@domain, user@domain.
func (v *dirView) resolve(ctx context.Context, a Address) (target, error) {
	t, err := v.resolveExact(ctx, a.String())
	if err != nil || t.found() {
		return t, err
	}
	if base, ok := a.WithoutTag(); ok {
		return v.resolveExact(ctx, base.String())
	}
	return target{}, nil
}

func (v *dirView) resolveExact(ctx context.Context, key string) (target, error) {
	u, err := v.userByKey(ctx, key)
	if err != nil || u != nil {
		return target{user: u}, err
	}
	e, err := v.dir.Lookup(ctx, KindSharedMailbox, key)
	switch {
	case err == nil:
		all, err := v.sharedMailboxes(ctx)
		if err != nil {
			return target{}, err
		}
		for _, m := range all {
			if m.ID == e.ID {
				return target{shared: m}, nil
			}
		}
		m := new(SharedMailbox)
		if err := decode(e, m); err != nil {
			return target{}, err
		}
		m.ID = e.ID
		return target{shared: m}, nil
	case !notFound(err):
		return target{}, fmt.Errorf("lookup shared mailbox %q: %w", key, err)
	}
	e, err = v.dir.Lookup(ctx, KindGroup, key)
	switch {
	case err == nil:
		if g, ok := v.groups[e.ID]; ok && g != nil {
			return target{group: g}, nil
		}
		g, err := v.cacheGroup(e)
		return target{group: g}, err
	case !notFound(err):
		return target{}, fmt.Errorf("lookup group %q: %w", key, err)
	}
	return target{}, nil
}

// displayName is the name a user is known by in mail headers.
func (u *User) displayName() string {
	if n := strings.TrimSpace(u.DisplayName); n != "" {
		return n
	}
	return u.Username
}
