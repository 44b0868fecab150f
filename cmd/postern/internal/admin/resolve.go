package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/postern/postern/api/usersclient"
)

// The API names users, groups, POP3 accounts, shared mailboxes, templates
// and tokens by id; people name them by username, name or address. These
// turn what was typed into an id. What matches no name is taken as an id,
// and the server says if no object has it.

// userID resolves a username (an exact match among the users that ?q=
// finds) or an id.
func (s *session) userID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	want := strings.ToLower(strings.TrimSpace(ref))
	var cursor *string
	for {
		p, err := pageFrom[usersclient.User](c.ListUsers(s.ctx, &usersclient.ListUsersParams{Q: &want, Limit: ptr(1000), Cursor: cursor}))
		if isClientError(err) {
			return ref, nil // such as a ref longer than q allows: not a username
		}
		if err != nil {
			return "", err
		}
		for _, u := range p.items {
			if u.Username == want {
				s.rememberUser(u.ID, u.Username)
				return u.ID, nil
			}
		}
		if p.next == "" {
			return ref, nil
		}
		cursor = ptr(p.next)
	}
}

// userIDs resolves several users.
func (s *session) userIDs(refs []string) ([]string, error) {
	ids := make([]string, 0, len(refs))
	for _, ref := range refs {
		id, err := s.userID(ref)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// byName finds the id of the one object whose name (compared without
// case) or id is ref, going through every page of a list; ref itself when
// none matches.
func byName[T any](s *session, kind, ref string, fetch func(cursor *string) (page[T], error), key func(T) (id, name string)) (string, error) {
	var cursor *string
	var found []string
	for {
		p, err := fetch(cursor)
		if err != nil {
			if isClientError(err) {
				return ref, nil
			}
			return "", err
		}
		for _, item := range p.items {
			id, name := key(item)
			if id == ref {
				return id, nil
			}
			if strings.EqualFold(name, strings.TrimSpace(ref)) {
				found = append(found, id)
			}
		}
		if p.next == "" {
			break
		}
		cursor = ptr(p.next)
	}
	switch len(found) {
	case 0:
		return ref, nil
	case 1:
		return found[0], nil
	default:
		return "", usageErrorf("%d %ss are named %q; give the id (one of %s)", len(found), kind, ref, strings.Join(found, ", "))
	}
}

func (s *session) groupID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	return byName(s, "group", ref, func(cursor *string) (page[usersclient.Group], error) {
		p, err := pageFrom[usersclient.Group](c.ListGroups(s.ctx, &usersclient.ListGroupsParams{Cursor: cursor, Limit: ptr(1000)}))
		for _, g := range p.items {
			s.rememberGroup(g.ID, g.Name)
		}
		return p, err
	}, func(g usersclient.Group) (string, string) { return g.ID, g.Name })
}

func (s *session) pop3ID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	return byName(s, "POP3 account", ref, func(cursor *string) (page[usersclient.POP3Account], error) {
		return pageFrom[usersclient.POP3Account](c.ListPOP3Accounts(s.ctx, &usersclient.ListPOP3AccountsParams{Cursor: cursor, Limit: ptr(1000)}))
	}, func(a usersclient.POP3Account) (string, string) { return a.ID, a.Name })
}

func (s *session) sharedID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	return byName(s, "shared mailbox", ref, func(cursor *string) (page[usersclient.SharedMailbox], error) {
		return pageFrom[usersclient.SharedMailbox](c.ListSharedMailboxes(s.ctx, &usersclient.ListSharedMailboxesParams{Cursor: cursor, Limit: ptr(1000)}))
	}, func(m usersclient.SharedMailbox) (string, string) { return m.ID, m.Address })
}

func (s *session) templateID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	return byName(s, "template", ref, func(cursor *string) (page[usersclient.Template], error) {
		return pageFrom[usersclient.Template](c.ListTemplates(s.ctx, &usersclient.ListTemplatesParams{Cursor: cursor, Limit: ptr(1000)}))
	}, func(t usersclient.Template) (string, string) { return t.ID, t.Name })
}

func (s *session) tokenID(ref string) (string, error) {
	c, err := s.connect()
	if err != nil {
		return "", err
	}
	return byName(s, "token", ref, func(cursor *string) (page[usersclient.Token], error) {
		return pageFrom[usersclient.Token](c.ListTokens(s.ctx, &usersclient.ListTokensParams{Cursor: cursor, Limit: ptr(1000)}))
	}, func(t usersclient.Token) (string, string) { return t.ID, t.Name })
}

// parseMembers reads --member values, user:USERNAME or group:NAME (an id
// works in place of either name).
func (s *session) parseMembers(refs []string) ([]usersclient.Member, error) {
	members := make([]usersclient.Member, 0, len(refs))
	for _, ref := range refs {
		kind, name, ok := strings.Cut(ref, ":")
		if !ok || name == "" {
			return nil, usageErrorf("--member %q: want user:USERNAME or group:NAME", ref)
		}
		var id string
		var err error
		switch usersclient.MemberType(kind) {
		case usersclient.MemberTypeUser:
			id, err = s.userID(name)
		case usersclient.MemberTypeGroup:
			id, err = s.groupID(name)
		default:
			return nil, usageErrorf("--member %q: want user:USERNAME or group:NAME", ref)
		}
		if err != nil {
			return nil, err
		}
		members = append(members, usersclient.Member{Type: usersclient.MemberType(kind), ID: id})
	}
	return members, nil
}

// ---------------------------------------------------------------- display

func (s *session) rememberUser(id, username string) {
	if s.userNames == nil {
		s.userNames = map[string]string{}
	}
	s.userNames[id] = username
}

func (s *session) rememberGroup(id, name string) {
	if s.groupNames == nil {
		s.groupNames = map[string]string{}
	}
	s.groupNames[id] = name
}

// username shows a user id as its username, for tables; the id itself
// when the user cannot be read.
func (s *session) username(id string) string {
	if id == "" {
		return ""
	}
	if name, ok := s.userNames[id]; ok {
		return name
	}
	name := id
	if c, err := s.connect(); err == nil {
		if r, err := c.GetUserWithResponse(s.ctx, id, nil); err == nil && r.JSON200 != nil {
			name = r.JSON200.Username
		}
	}
	s.rememberUser(id, name)
	return name
}

func (s *session) usernames(ids []string) []string {
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = s.username(id)
	}
	return names
}

// groupName shows a group id as its name.
func (s *session) groupName(id string) string {
	if name, ok := s.groupNames[id]; ok {
		return name
	}
	name := id
	if c, err := s.connect(); err == nil {
		if r, err := c.GetGroupWithResponse(s.ctx, id, nil); err == nil && r.JSON200 != nil {
			name = r.JSON200.Name
		}
	}
	s.rememberGroup(id, name)
	return name
}

func (s *session) memberNames(members []usersclient.Member) []string {
	names := make([]string, len(members))
	for i, m := range members {
		switch m.Type {
		case usersclient.MemberTypeUser:
			names[i] = "user:" + s.username(m.ID)
		case usersclient.MemberTypeGroup:
			names[i] = "group:" + s.groupName(m.ID)
		default:
			names[i] = fmt.Sprintf("%s:%s", m.Type, m.ID)
		}
	}
	return names
}

// isClientError is a 4xx answer (bad request, forbidden, not found).
func isClientError(err error) bool {
	e, ok := errors.AsType[*problemError](err)
	return ok && e.status >= 400 && e.status < 500 && e.status != http.StatusUnauthorized
}
