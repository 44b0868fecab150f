// Package httpapi is the REST API of the users service: the handlers of
// the strict server generated from api/openapi/users.yaml, behind an echo
// instance that authenticates the bearer token, validates every request
// against the document and answers every error as an RFC 9457 problem.
//
// Decisions a client can observe, beyond what the document says:
//
//   - A site_admin token reaching a user that is not one of its site's
//     users gets 403 "outside your site", whether or not the user exists
//     elsewhere (so the answer does not reveal it). Lists and exports
//     without a site filter are limited to its site; naming another site
//     is 403.
//   - Every address a write gives a user is in a mail domain of some site
//     (422 otherwise); a site_admin may only give addresses in its own
//     site's domains and may not change group memberships, which are
//     organisation-wide (403, or a bad line in an import). What a user
//     already has stays. See userscope.go.
//   - A token may always revoke itself (DELETE /v1/tokens/{its id}),
//     whatever its role.
//   - A /v1/sync cursor beyond the last change (a database restored from
//     an older backup, say) gets a full snapshot, as a cursor older than
//     the retained log does: the replica is rebuilt rather than stuck.
//   - Without a template, new users and templates default to
//     internet_receive and internet_send true and enabled true.
//   - A CSV import updates an existing user with the values its line
//     gives; what the line leaves out (an absent column or an empty cell)
//     keeps the user's current value. Templates give defaults to new
//     users only. A site_admin's lines default to its own site.
//   - A PATCH that changes nothing writes nothing: same version, no audit
//     entry, no change-log entry.
//   - A PATCH of a POP3 account's mode clears the fields of the other
//     mode unless the same patch sets them.
//   - Unknown routes answer 404 and known routes with another method 405,
//     both as problems; a request without a valid token gets 401 first.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/getkin/kin-openapi/routers"
	"github.com/labstack/echo/v4"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// Defaults of Options.
const (
	DefaultSyncMaxWait  = 60 * time.Second
	MaxSyncWait         = 120 * time.Second // the document's maximum of ?wait=
	DefaultMaxBodyBytes = 32 << 20
	// touchTimeout bounds the bookkeeping write of a token's last use, so
	// that a long import holding the database's writer delays requests
	// by at most this much.
	touchTimeout = time.Second
)

// Options configure the API.
type Options struct {
	Store  store.Store
	Box    *directory.SecretBox // seals POP3 passwords; opens them for the sync feed
	Logger *slog.Logger         // nil: slog.Default()
	Now    func() time.Time     // nil: time.Now
	// SyncMaxWait caps ?wait= of /v1/sync (default 60 s, at most 120 s).
	SyncMaxWait time.Duration
	// MaxBodyBytes limits request bodies (default 32 MiB, for CSV imports).
	MaxBodyBytes int64
	// ImportWorkers hash the plain passwords of an import in parallel
	// (default GOMAXPROCS; each argon2id hash takes 64 MiB).
	ImportWorkers int
}

// Handlers implements the strict server of the users API.
type Handlers struct {
	store       store.Store
	box         *directory.SecretBox
	log         *slog.Logger
	now         func() time.Time
	syncMaxWait time.Duration
	maxBody     int64
	workers     int

	routes map[routeKey]*routers.Route // the document's operations by echo method and path

	touchMu sync.Mutex
	touched map[string]time.Time // token id -> last TouchToken call
}

var _ usersapi.StrictServerInterface = (*Handlers)(nil)

// New returns the API as an http.Handler: an echo instance with request
// ids, tracing, request logging, panic recovery, a body limit, bearer
// authentication, validation of every request against the OpenAPI
// document, and the handlers.
func New(o Options) (http.Handler, error) {
	h, err := newHandlers(o)
	if err != nil {
		return nil, err
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = h.errorHandler
	e.Use(
		requestID,
		h.tracing,
		h.logRequests,
		h.recoverPanics,
		limitBody(h.maxBody),
		h.authenticate,
		h.validate,
	)
	usersapi.RegisterHandlers(e, usersapi.NewStrictHandler(h, nil))
	return e, nil
}

func newHandlers(o Options) (*Handlers, error) {
	if o.Store == nil {
		return nil, errors.New("users api: no store")
	}
	if o.Box == nil {
		return nil, errors.New("users api: no secret box for POP3 passwords")
	}
	var err error
	h := &Handlers{
		store:       o.Store,
		box:         o.Box,
		log:         o.Logger,
		now:         o.Now,
		syncMaxWait: o.SyncMaxWait,
		maxBody:     o.MaxBodyBytes,
		workers:     o.ImportWorkers,
		touched:     map[string]time.Time{},
	}
	if h.routes, err = loadRoutes(); err != nil {
		return nil, err
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	switch {
	case h.syncMaxWait <= 0:
		h.syncMaxWait = DefaultSyncMaxWait
	case h.syncMaxWait > MaxSyncWait:
		return nil, fmt.Errorf("users api: sync max wait %v is more than %v", h.syncMaxWait, MaxSyncWait)
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	if h.workers <= 0 {
		h.workers = runtime.GOMAXPROCS(0)
	}
	return h, nil
}

// touch records a token's use, at most once per store.TouchGranularity
// per token from this process; a failure is logged and ignored (it is
// bookkeeping).
func (h *Handlers) touch(ctx context.Context, id string, at time.Time) {
	h.touchMu.Lock()
	last, ok := h.touched[id]
	due := !ok || at.Sub(last) >= store.TouchGranularity || at.Before(last)
	if due {
		h.touched[id] = at
	}
	h.touchMu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), touchTimeout)
	defer cancel()
	if err := h.store.TouchToken(ctx, id, at); err != nil {
		h.log.WarnContext(ctx, "recording a token's last use failed", "token_id", id, "error", err)
		h.touchMu.Lock()
		delete(h.touched, id) // try again next time
		h.touchMu.Unlock()
	}
}
