package httpapi

import (
	"context"
	"slices"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func mailboxResponse(m directory.SharedMailbox) usersapi.SharedMailboxJSONResponse {
	return usersapi.SharedMailboxJSONResponse{Body: mailboxOut(m), Headers: usersapi.SharedMailboxResponseHeaders{ETag: etag(m.Version)}}
}

func (h *Handlers) ListSharedMailboxes(ctx context.Context, req usersapi.ListSharedMailboxesRequestObject) (usersapi.ListSharedMailboxesResponseObject, error) {
	if _, err := canRead(ctx, directory.KindSharedMailbox); err != nil {
		return nil, err
	}
	items, next, total, err := h.store.ListSharedMailboxes(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListSharedMailboxes200JSONResponse{Items: mapSlice(items, mailboxOut), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreateSharedMailbox(ctx context.Context, req usersapi.CreateSharedMailboxRequestObject) (usersapi.CreateSharedMailboxResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSharedMailbox)
	if err != nil {
		return nil, err
	}
	b := req.Body
	m := directory.SharedMailbox{
		Address: b.Address, DisplayName: deref(b.DisplayName), Manager: b.Manager, Staff: derefOr(b.Staff, []string{}),
		ForwardToStaff: deref(b.ForwardToStaff), RewriteSender: derefOr(b.RewriteSender, true),
		CopyOutboundToManager: derefOr(b.CopyOutboundToManager, true),
	}
	if err := m.Normalize(); err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateSharedMailbox(ctx, &m); err != nil {
			return err
		}
		return audit(ctx, tx, p, "shared_mailbox.create", directory.KindSharedMailbox, m.ID, nil, &m)
	})
	if err != nil {
		return nil, problemFor(err, &m)
	}
	return usersapi.CreateSharedMailbox201JSONResponse{Body: mailboxOut(m), Headers: usersapi.CreateSharedMailbox201ResponseHeaders{
		ETag: etag(m.Version), Location: location("shared-mailboxes", m.ID),
	}}, nil
}

func (h *Handlers) GetSharedMailbox(ctx context.Context, req usersapi.GetSharedMailboxRequestObject) (usersapi.GetSharedMailboxResponseObject, error) {
	if _, err := canRead(ctx, directory.KindSharedMailbox); err != nil {
		return nil, err
	}
	m, err := h.store.GetSharedMailbox(ctx, req.ID)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, m.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetSharedMailbox304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(m.Version)}}, nil
	}
	return usersapi.GetSharedMailbox200JSONResponse{SharedMailboxJSONResponse: mailboxResponse(m)}, nil
}

func (h *Handlers) UpdateSharedMailbox(ctx context.Context, req usersapi.UpdateSharedMailboxRequestObject) (usersapi.UpdateSharedMailboxResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSharedMailbox)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	var m directory.SharedMailbox
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetSharedMailbox(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		m = cur
		m.Staff = slices.Clone(cur.Staff)
		set(&m.Address, b.Address)
		set(&m.DisplayName, b.DisplayName)
		set(&m.Manager, b.Manager)
		setList(&m.Staff, b.Staff)
		set(&m.ForwardToStaff, b.ForwardToStaff)
		set(&m.RewriteSender, b.RewriteSender)
		set(&m.CopyOutboundToManager, b.CopyOutboundToManager)
		if err := m.Normalize(); err != nil {
			return err
		}
		if unchanged(cur, m) {
			m = cur
			return errNoChange
		}
		if err := tx.UpdateSharedMailbox(ctx, &m, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "shared_mailbox.update", directory.KindSharedMailbox, m.ID, &cur, &m)
	})
	if err != nil && err != errNoChange {
		return nil, problemFor(err, &m)
	}
	return usersapi.UpdateSharedMailbox200JSONResponse{SharedMailboxJSONResponse: mailboxResponse(m)}, nil
}

func (h *Handlers) DeleteSharedMailbox(ctx context.Context, req usersapi.DeleteSharedMailboxRequestObject) (usersapi.DeleteSharedMailboxResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSharedMailbox)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetSharedMailbox(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteSharedMailbox(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "shared_mailbox.delete", directory.KindSharedMailbox, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteSharedMailbox204Response{}, nil
}
