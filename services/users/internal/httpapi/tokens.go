package httpapi

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func (h *Handlers) ListTokens(ctx context.Context, req usersapi.ListTokensRequestObject) (usersapi.ListTokensResponseObject, error) {
	if _, err := canRead(ctx, directory.KindToken); err != nil {
		return nil, err
	}
	f := store.TokenFilter{Page: page(req.Params.Cursor, req.Params.Limit), Site: lowerTrim(deref(req.Params.Site)), Role: string(deref(req.Params.Role))}
	items, next, total, err := h.store.ListTokens(ctx, f)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListTokens200JSONResponse{Items: mapSlice(items, tokenOut), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreateToken(ctx context.Context, req usersapi.CreateTokenRequestObject) (usersapi.CreateTokenResponseObject, error) {
	p, err := canWrite(ctx, directory.KindToken)
	if err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("token id: %w", err)
	}
	secret, hash, err := auth.NewSecret(id.String())
	if err != nil {
		return nil, err
	}
	b := req.Body
	t := directory.Token{Meta: directory.Meta{ID: id.String()}, Name: b.Name, Role: string(b.Role), Site: deref(b.Site), ExpiresAt: b.ExpiresAt, SecretHash: hash}
	var extra directory.ValidationError
	if t.ExpiresAt != nil && !t.ExpiresAt.After(h.now()) {
		extra.Add("expires_at", "must be in the future")
	}
	if err := mergeValidation(t.Normalize(), extra.Err()); err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateToken(ctx, &t); err != nil {
			return err
		}
		return audit(ctx, tx, p, "token.create", directory.KindToken, t.ID, nil, &t)
	})
	if err != nil {
		return nil, problemFor(err, &t)
	}
	out := tokenOut(t)
	return usersapi.CreateToken201JSONResponse{
		Body: usersapi.CreatedToken{
			ID: out.ID, Version: out.Version, CreatedAt: out.CreatedAt, UpdatedAt: out.UpdatedAt, Name: out.Name,
			Role: out.Role, Site: out.Site, LastUsedAt: out.LastUsedAt, ExpiresAt: out.ExpiresAt, Secret: secret,
		},
		Headers: usersapi.CreateToken201ResponseHeaders{ETag: etag(t.Version), Location: location("tokens", t.ID)},
	}, nil
}

func (h *Handlers) GetToken(ctx context.Context, req usersapi.GetTokenRequestObject) (usersapi.GetTokenResponseObject, error) {
	if _, err := canRead(ctx, directory.KindToken); err != nil {
		return nil, err
	}
	t, err := h.store.GetToken(ctx, req.ID)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, t.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetToken304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(t.Version)}}, nil
	}
	return usersapi.GetToken200JSONResponse{TokenJSONResponse: usersapi.TokenJSONResponse{
		Body: tokenOut(t), Headers: usersapi.TokenResponseHeaders{ETag: etag(t.Version)},
	}}, nil
}

// DeleteToken revokes a token: an admin any, every token itself.
func (h *Handlers) DeleteToken(ctx context.Context, req usersapi.DeleteTokenRequestObject) (usersapi.DeleteTokenResponseObject, error) {
	p, err := who(ctx)
	if err != nil {
		return nil, err
	}
	if p.TokenID != req.ID {
		if _, err := canWrite(ctx, directory.KindToken); err != nil {
			return nil, err
		}
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetToken(ctx, req.ID)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteToken(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "token.delete", directory.KindToken, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteToken204Response{}, nil
}
