package httpapi

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func templateResponse(t directory.Template) usersapi.TemplateJSONResponse {
	return usersapi.TemplateJSONResponse{Body: templateOut(t), Headers: usersapi.TemplateResponseHeaders{ETag: etag(t.Version)}}
}

func (h *Handlers) ListTemplates(ctx context.Context, req usersapi.ListTemplatesRequestObject) (usersapi.ListTemplatesResponseObject, error) {
	if _, err := canRead(ctx, directory.KindTemplate); err != nil {
		return nil, err
	}
	items, next, total, err := h.store.ListTemplates(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListTemplates200JSONResponse{Items: mapSlice(items, templateOut), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreateTemplate(ctx context.Context, req usersapi.CreateTemplateRequestObject) (usersapi.CreateTemplateResponseObject, error) {
	p, err := canWrite(ctx, directory.KindTemplate)
	if err != nil {
		return nil, err
	}
	b := req.Body
	t := directory.Template{
		Name: b.Name, Site: deref(b.Site), Groups: derefOr(b.Groups, []string{}), Enabled: derefOr(b.Enabled, true),
		Permissions: defaultPermissions, QuotaBytes: deref(b.QuotaBytes),
	}
	setPermissions(&t.Permissions, b.Permissions)
	if err := t.Normalize(); err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := groupsExist(ctx, tx, t.Groups); err != nil {
			return err
		}
		if err := tx.CreateTemplate(ctx, &t); err != nil {
			return err
		}
		return audit(ctx, tx, p, "template.create", directory.KindTemplate, t.ID, nil, &t)
	})
	if err != nil {
		return nil, problemFor(err, &t)
	}
	return usersapi.CreateTemplate201JSONResponse{Body: templateOut(t), Headers: usersapi.CreateTemplate201ResponseHeaders{
		ETag: etag(t.Version), Location: location("templates", t.ID),
	}}, nil
}

func (h *Handlers) GetTemplate(ctx context.Context, req usersapi.GetTemplateRequestObject) (usersapi.GetTemplateResponseObject, error) {
	if _, err := canRead(ctx, directory.KindTemplate); err != nil {
		return nil, err
	}
	t, err := h.store.GetTemplate(ctx, req.ID)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, t.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetTemplate304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(t.Version)}}, nil
	}
	return usersapi.GetTemplate200JSONResponse{TemplateJSONResponse: templateResponse(t)}, nil
}

func (h *Handlers) UpdateTemplate(ctx context.Context, req usersapi.UpdateTemplateRequestObject) (usersapi.UpdateTemplateResponseObject, error) {
	p, err := canWrite(ctx, directory.KindTemplate)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	var t directory.Template
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetTemplate(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		t = cur
		t.Groups = slices.Clone(cur.Groups)
		set(&t.Site, b.Site)
		setList(&t.Groups, b.Groups)
		set(&t.Enabled, b.Enabled)
		setPermissions(&t.Permissions, b.Permissions)
		set(&t.QuotaBytes, b.QuotaBytes)
		if err := t.Normalize(); err != nil {
			return err
		}
		if unchanged(cur, t) {
			t = cur
			return errNoChange
		}
		if err := groupsExist(ctx, tx, t.Groups, cur.Groups...); err != nil {
			return err
		}
		if err := tx.UpdateTemplate(ctx, &t, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "template.update", directory.KindTemplate, t.ID, &cur, &t)
	})
	if err != nil && err != errNoChange {
		return nil, problemFor(err, &t)
	}
	return usersapi.UpdateTemplate200JSONResponse{TemplateJSONResponse: templateResponse(t)}, nil
}

func (h *Handlers) DeleteTemplate(ctx context.Context, req usersapi.DeleteTemplateRequestObject) (usersapi.DeleteTemplateResponseObject, error) {
	p, err := canWrite(ctx, directory.KindTemplate)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetTemplate(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteTemplate(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "template.delete", directory.KindTemplate, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteTemplate204Response{}, nil
}

// groupsExist refuses (422) group names that name no group, except the
// known ones (already stored): the store keeps a template's names
// unchecked, and users made from it would fail.
func groupsExist(ctx context.Context, r store.Reader, names []string, known ...string) error {
	var ve directory.ValidationError
	for i, n := range names {
		if slices.Contains(known, n) {
			continue
		}
		_, err := r.GetGroupByName(ctx, n)
		switch {
		case errors.Is(err, store.ErrNotFound):
			ve.Add(fmt.Sprintf("groups[%d]", i), "no group is named "+n)
		case err != nil:
			return err
		}
	}
	return ve.Err()
}
