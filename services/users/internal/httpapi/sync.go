package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
	"github.com/postern/postern/services/users/internal/syncfeed"
)

// syncBatch is the number of change-log entries an incremental response
// covers at most; more says there are others.
const syncBatch = store.DefaultChangesLimit

// syncResponse is a /v1/sync answer, written as it is encoded (a snapshot
// of a large directory is big).
type syncResponse struct {
	cursor   int64
	snapshot bool
	more     bool
	changes  []syncfeed.Change
}

var _ usersapi.GetSyncResponseObject = (*syncResponse)(nil)

// VisitGetSyncResponse writes the SyncResponse document.
func (r *syncResponse) VisitGetSyncResponse(w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, `{"cursor":"%d","snapshot":%t,"more":%t,"changes":[`, r.cursor, r.snapshot, r.more)
	for i, c := range r.changes {
		if i > 0 {
			bw.WriteByte(',')
		}
		b, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("sync: encode change %d: %w", c.Seq, err)
		}
		bw.Write(b)
	}
	bw.WriteString("]}\n")
	return bw.Flush()
}

func (h *Handlers) GetSync(ctx context.Context, req usersapi.GetSyncRequestObject) (usersapi.GetSyncResponseObject, error) {
	p, err := who(ctx)
	if err != nil {
		return nil, err
	}
	site, ok := p.CanSync()
	if !ok {
		return nil, forbidden(fmt.Sprintf("/v1/sync needs a site_agent token (its site is the one synchronised); %s.", roleNote(p)))
	}
	after := int64(0)
	if c := req.Params.Cursor; c != nil && *c != "" {
		if after, err = strconv.ParseInt(*c, 10, 64); err != nil || after < 0 {
			return nil, badRequest("The cursor is not one /v1/sync gave.", usersapi.FieldError{Field: "cursor", Reason: "not a change-log position"})
		}
	}
	wait := min(time.Duration(deref(req.Params.Wait))*time.Second, h.syncMaxWait)
	// A password that cannot be opened (its key is no longer configured)
	// leaves that account without its password; the rest of the site's
	// view still goes out. The value itself is never logged.
	view := syncfeed.View{Site: site, Open: h.box, Unopened: func(accountID, keyID string, err error) {
		h.log.WarnContext(ctx, "sync: a POP3 password cannot be decrypted; the account is sent without it (re-enter the password, or configure its key in users.secret_keys)",
			"site", site, "pop3_account_id", accountID, "key_id", keyID, "error", err)
	}}

	resp, err := h.syncFrom(ctx, view, after)
	if err != nil {
		return nil, err
	}
	if wait <= 0 || resp.snapshot || resp.cursor != after {
		return resp, nil
	}
	// Nothing new: wait for a commit, then answer with what it brought
	// (or with nothing and the same cursor).
	wctx, cancel := context.WithTimeout(ctx, wait)
	_, err = h.store.WaitForChange(wctx, after)
	cancel()
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err() // the agent went away
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("sync: wait for a change: %w", err)
	}
	return h.syncFrom(ctx, view, after)
}

// syncFrom answers a cursor at once: a snapshot when the cursor is 0,
// older than the retained log, or beyond its end (a foreign history),
// else the changes after it.
func (h *Handlers) syncFrom(ctx context.Context, view syncfeed.View, after int64) (*syncResponse, error) {
	if after == 0 {
		return h.snapshot(ctx, view)
	}
	oldest, err := h.store.OldestSeq(ctx)
	if err != nil {
		return nil, err
	}
	last, err := h.store.LastSeq(ctx)
	if err != nil {
		return nil, err
	}
	if after < oldest-1 || after > last {
		return h.snapshot(ctx, view)
	}
	raw, err := h.store.ChangesSince(ctx, after, syncBatch)
	if err != nil {
		return nil, err
	}
	if len(raw) > 0 && raw[0].Seq != after+1 {
		return h.snapshot(ctx, view) // compacted since OldestSeq was read
	}
	resp := &syncResponse{cursor: after, more: len(raw) >= syncBatch, changes: make([]syncfeed.Change, 0, len(raw))}
	for _, c := range raw {
		pc, ok, err := view.Project(c)
		if err != nil {
			return nil, fmt.Errorf("sync: %w", err)
		}
		if ok {
			resp.changes = append(resp.changes, pc)
		}
		resp.cursor = c.Seq
	}
	return resp, nil
}

// snapshot is the site's whole view: one upsert per object it may see, at
// the snapshot's position of the change log.
func (h *Handlers) snapshot(ctx context.Context, view syncfeed.View) (*syncResponse, error) {
	s, err := h.store.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	n := len(s.Sites) + len(s.Users) + len(s.Groups) + len(s.SharedMailboxes) + len(s.POP3Accounts)
	resp := &syncResponse{cursor: s.Seq, snapshot: true, changes: make([]syncfeed.Change, 0, n)}
	add := func(kind, id string, obj any) error {
		data, err := json.Marshal(obj)
		if err != nil {
			return fmt.Errorf("sync snapshot: %s %s: %w", kind, id, err)
		}
		pc, ok, err := view.Project(directory.Change{Seq: s.Seq, Kind: kind, ID: id, Op: events.OpUpsert, Data: data})
		if err != nil {
			return fmt.Errorf("sync snapshot: %w", err)
		}
		if ok && pc.Op == events.OpUpsert { // not another site's POP3 account
			resp.changes = append(resp.changes, pc)
		}
		return nil
	}
	for i := range s.Sites {
		if err := add(directory.KindSite, s.Sites[i].ID, &s.Sites[i]); err != nil {
			return nil, err
		}
	}
	for i := range s.Users {
		if err := add(directory.KindUser, s.Users[i].ID, &s.Users[i]); err != nil {
			return nil, err
		}
	}
	for i := range s.Groups {
		if err := add(directory.KindGroup, s.Groups[i].ID, &s.Groups[i]); err != nil {
			return nil, err
		}
	}
	for i := range s.SharedMailboxes {
		if err := add(directory.KindSharedMailbox, s.SharedMailboxes[i].ID, &s.SharedMailboxes[i]); err != nil {
			return nil, err
		}
	}
	for i := range s.POP3Accounts {
		if err := add(directory.KindPOP3Account, s.POP3Accounts[i].ID, &s.POP3Accounts[i]); err != nil {
			return nil, err
		}
	}
	return resp, nil
}
