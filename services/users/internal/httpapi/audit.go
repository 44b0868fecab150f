package httpapi

import (
	"context"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/store"
)

func (h *Handlers) ListAuditEntries(ctx context.Context, req usersapi.ListAuditEntriesRequestObject) (usersapi.ListAuditEntriesResponseObject, error) {
	if _, err := canRead(ctx, kindAudit); err != nil {
		return nil, err
	}
	q := req.Params
	f := store.AuditFilter{
		Page:       page(q.Cursor, q.Limit),
		Actor:      deref(q.Actor),
		Action:     deref(q.Action),
		TargetKind: deref(q.TargetKind),
		TargetID:   deref(q.TargetID),
		Since:      deref(q.Since),
		Until:      deref(q.Until),
	}
	items, next, total, err := h.store.ListAudit(ctx, f)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListAuditEntries200JSONResponse{Items: mapSlice(items, auditOut), NextCursor: next, Total: int64(total)}, nil
}
