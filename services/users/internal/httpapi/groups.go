package httpapi

import (
	"context"
	"slices"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func groupResponse(g directory.Group) usersapi.GroupJSONResponse {
	return usersapi.GroupJSONResponse{Body: groupOut(g), Headers: usersapi.GroupResponseHeaders{ETag: etag(g.Version)}}
}

func (h *Handlers) ListGroups(ctx context.Context, req usersapi.ListGroupsRequestObject) (usersapi.ListGroupsResponseObject, error) {
	if _, err := canRead(ctx, directory.KindGroup); err != nil {
		return nil, err
	}
	items, next, total, err := h.store.ListGroups(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListGroups200JSONResponse{Items: mapSlice(items, groupOut), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreateGroup(ctx context.Context, req usersapi.CreateGroupRequestObject) (usersapi.CreateGroupResponseObject, error) {
	p, err := canWrite(ctx, directory.KindGroup)
	if err != nil {
		return nil, err
	}
	b := req.Body
	g := directory.Group{Name: b.Name, Address: deref(b.Address), Description: deref(b.Description), Members: membersIn(deref(b.Members))}
	if err := g.Normalize(); err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateGroup(ctx, &g); err != nil {
			return err
		}
		return audit(ctx, tx, p, "group.create", directory.KindGroup, g.ID, nil, &g)
	})
	if err != nil {
		return nil, problemFor(err, &g)
	}
	return usersapi.CreateGroup201JSONResponse{Body: groupOut(g), Headers: usersapi.CreateGroup201ResponseHeaders{
		ETag: etag(g.Version), Location: location("groups", g.ID),
	}}, nil
}

func (h *Handlers) GetGroup(ctx context.Context, req usersapi.GetGroupRequestObject) (usersapi.GetGroupResponseObject, error) {
	if _, err := canRead(ctx, directory.KindGroup); err != nil {
		return nil, err
	}
	g, err := h.store.GetGroup(ctx, req.ID)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, g.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetGroup304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(g.Version)}}, nil
	}
	return usersapi.GetGroup200JSONResponse{GroupJSONResponse: groupResponse(g)}, nil
}

func (h *Handlers) UpdateGroup(ctx context.Context, req usersapi.UpdateGroupRequestObject) (usersapi.UpdateGroupResponseObject, error) {
	p, err := canWrite(ctx, directory.KindGroup)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	var g directory.Group
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetGroup(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		g = cur
		g.Members = slices.Clone(cur.Members)
		set(&g.Address, b.Address)
		set(&g.Description, b.Description)
		if b.Members != nil {
			g.Members = membersIn(*b.Members)
		}
		if err := g.Normalize(); err != nil {
			return err
		}
		if unchanged(cur, g) {
			g = cur
			return errNoChange
		}
		if err := tx.UpdateGroup(ctx, &g, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "group.update", directory.KindGroup, g.ID, &cur, &g)
	})
	if err != nil && err != errNoChange {
		return nil, problemFor(err, &g)
	}
	return usersapi.UpdateGroup200JSONResponse{GroupJSONResponse: groupResponse(g)}, nil
}

func (h *Handlers) DeleteGroup(ctx context.Context, req usersapi.DeleteGroupRequestObject) (usersapi.DeleteGroupResponseObject, error) {
	p, err := canWrite(ctx, directory.KindGroup)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetGroup(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteGroup(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		if err := audit(ctx, tx, p, "group.delete", directory.KindGroup, cur.ID, &cur, nil); err != nil {
			return err
		}
		// The store keeps templates' group names unchecked; the document
		// promises the group leaves them too.
		for cursor := ""; ; {
			tmpls, next, _, err := tx.ListTemplates(ctx, store.Page{Limit: store.MaxLimit, Cursor: cursor})
			if err != nil {
				return err
			}
			for _, t := range tmpls {
				if !slices.Contains(t.Groups, cur.Name) {
					continue
				}
				before := t
				t.Groups = slices.DeleteFunc(slices.Clone(t.Groups), func(n string) bool { return n == cur.Name })
				if err := tx.UpdateTemplate(ctx, &t, before.Version); err != nil {
					return err
				}
				if err := audit(ctx, tx, p, "template.update", directory.KindTemplate, t.ID, &before, &t); err != nil {
					return err
				}
			}
			if cursor = next; cursor == "" {
				return nil
			}
		}
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteGroup204Response{}, nil
}
