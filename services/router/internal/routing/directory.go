package routing

import (
	"context"
	"fmt"

	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
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

// dirView is one Route call's view of the directory, with a cache so that
// every entry is read and decoded at most once per message. The objects are
// the read-side types of package replica (replica.User, replica.Group,
// replica.SharedMailbox), decoded with replica.Decode.
type dirView struct {
	dir    Directory
	users  map[string]*replica.User // by id; nil value: not found
	groups map[string]*replica.Group
	org    map[string]bool // domain -> in the organisation
	shared []*replica.SharedMailbox
	listed bool
}

func newDirView(d Directory) *dirView {
	return &dirView{dir: d, users: map[string]*replica.User{}, groups: map[string]*replica.Group{}, org: map[string]bool{}}
}

// notFound reports whether err says an entry does not exist.
func notFound(err error) bool { return replica.NotFound(err) }

// user returns the user with id, nil if there is none.
func (v *dirView) user(ctx context.Context, id string) (*replica.User, error) {
	if u, ok := v.users[id]; ok {
		return u, nil
	}
	e, err := v.dir.Get(ctx, replica.KindUser, id)
	if notFound(err) {
		v.users[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get user %s: %w", id, err)
	}
	return v.cacheUser(e)
}

func (v *dirView) cacheUser(e sitestate.Entry) (*replica.User, error) {
	u := new(replica.User)
	if err := replica.Decode(e, u); err != nil {
		return nil, err
	}
	u.ID = e.ID
	v.users[e.ID] = u
	return u, nil
}

// userByKey returns the user owning key (an address or a user name), nil if
// none.
func (v *dirView) userByKey(ctx context.Context, key string) (*replica.User, error) {
	e, err := v.dir.Lookup(ctx, replica.KindUser, key)
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

func (v *dirView) group(ctx context.Context, id string) (*replica.Group, error) {
	if g, ok := v.groups[id]; ok {
		return g, nil
	}
	e, err := v.dir.Get(ctx, replica.KindGroup, id)
	if notFound(err) {
		v.groups[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get group %s: %w", id, err)
	}
	return v.cacheGroup(e)
}

func (v *dirView) cacheGroup(e sitestate.Entry) (*replica.Group, error) {
	g := new(replica.Group)
	if err := replica.Decode(e, g); err != nil {
		return nil, err
	}
	g.ID = e.ID
	v.groups[e.ID] = g
	return g, nil
}

// sharedMailboxes returns every shared mailbox, ordered by ID.
func (v *dirView) sharedMailboxes(ctx context.Context) ([]*replica.SharedMailbox, error) {
	if v.listed {
		return v.shared, nil
	}
	es, err := v.dir.List(ctx, replica.KindSharedMailbox)
	if err != nil {
		return nil, fmt.Errorf("list shared mailboxes: %w", err)
	}
	for _, e := range es {
		m := new(replica.SharedMailbox)
		if err := replica.Decode(e, m); err != nil {
			return nil, err
		}
		m.ID = e.ID
		v.shared = append(v.shared, m)
	}
	v.listed = true
	return v.shared, nil
}

// staffOf returns the shared mailboxes userID works as staff, ordered by ID.
func (v *dirView) staffOf(ctx context.Context, userID string) ([]*replica.SharedMailbox, error) {
	all, err := v.sharedMailboxes(ctx)
	if err != nil {
		return nil, err
	}
	var out []*replica.SharedMailbox
	for _, m := range all {
		if m.HasStaff(userID) {
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
	_, err := v.dir.Lookup(ctx, replica.KindSite, domain)
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
	user   *replica.User
	group  *replica.Group
	shared *replica.SharedMailbox
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
	e, err := v.dir.Lookup(ctx, replica.KindSharedMailbox, key)
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
		m := new(replica.SharedMailbox)
		if err := replica.Decode(e, m); err != nil {
			return target{}, err
		}
		m.ID = e.ID
		return target{shared: m}, nil
	case !notFound(err):
		return target{}, fmt.Errorf("lookup shared mailbox %q: %w", key, err)
	}
	e, err = v.dir.Lookup(ctx, replica.KindGroup, key)
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
