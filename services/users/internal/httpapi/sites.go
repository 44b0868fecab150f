package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// audit records the audit entry of a write in its transaction; the diff
// masks secrets (directory.Diff) and names members as the API does.
// before nil is a creation, after nil a deletion.
func audit(ctx context.Context, tx store.Tx, p auth.Principal, action, kind, id string, before, after any) error {
	return tx.Audit(ctx, &directory.AuditEntry{
		Actor: p.Actor(), Action: action, TargetKind: kind, TargetID: id, Diff: directory.Diff(auditView(before), auditView(after)),
	})
}

// storedSecrets are the stored forms of write-only members, by the name
// the API gives them: a diff says that the password changed, under the
// member the client wrote, and never names the storage.
var storedSecrets = map[string]string{"password_hash": "password", "password_enc": "password"}

// auditView is obj (a directory object, or nil) as the API names its
// members, for directory.Diff.
func auditView(obj any) any {
	if obj == nil {
		return nil
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return obj // Diff reports it
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return obj
	}
	for stored, api := range storedSecrets {
		if v, ok := m[stored]; ok {
			delete(m, stored)
			m[api] = v
		}
	}
	return m
}

func (h *Handlers) ListSites(ctx context.Context, req usersapi.ListSitesRequestObject) (usersapi.ListSitesResponseObject, error) {
	if _, err := canRead(ctx, directory.KindSite); err != nil {
		return nil, err
	}
	items, next, total, err := h.store.ListSites(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListSites200JSONResponse{Items: mapSlice(items, siteOut), NextCursor: next, Total: int64(total)}, nil
}

func (h *Handlers) CreateSite(ctx context.Context, req usersapi.CreateSiteRequestObject) (usersapi.CreateSiteResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSite)
	if err != nil {
		return nil, err
	}
	b := req.Body
	s := directory.Site{Name: b.Name, Description: deref(b.Description), Domains: derefOr(b.Domains, []string{}), SMTPEndpoint: deref(b.SMTPEndpoint)}
	if err := s.Normalize(); err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateSite(ctx, &s); err != nil {
			return err
		}
		return audit(ctx, tx, p, "site.create", directory.KindSite, s.ID, nil, &s)
	})
	if err != nil {
		return nil, problemFor(err, &s)
	}
	return usersapi.CreateSite201JSONResponse{Body: siteOut(s), Headers: usersapi.CreateSite201ResponseHeaders{
		ETag: etag(s.Version), Location: location("sites", s.Name),
	}}, nil
}

func (h *Handlers) GetSite(ctx context.Context, req usersapi.GetSiteRequestObject) (usersapi.GetSiteResponseObject, error) {
	if _, err := canRead(ctx, directory.KindSite); err != nil {
		return nil, err
	}
	s, err := h.store.GetSite(ctx, req.Name)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, s.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetSite304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(s.Version)}}, nil
	}
	return usersapi.GetSite200JSONResponse{SiteJSONResponse: usersapi.SiteJSONResponse{Body: siteOut(s), Headers: usersapi.SiteResponseHeaders{ETag: etag(s.Version)}}}, nil
}

func (h *Handlers) UpdateSite(ctx context.Context, req usersapi.UpdateSiteRequestObject) (usersapi.UpdateSiteResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSite)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	var s directory.Site
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetSite(ctx, req.Name)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		s = cur
		s.Domains = slices.Clone(cur.Domains)
		set(&s.Description, b.Description)
		setList(&s.Domains, b.Domains)
		set(&s.SMTPEndpoint, b.SMTPEndpoint)
		if err := s.Normalize(); err != nil {
			return err
		}
		if unchanged(cur, s) {
			s = cur
			return errNoChange
		}
		if err := domainsStillUsed(ctx, tx, cur.Name, removed(cur.Domains, s.Domains)); err != nil {
			return err
		}
		if err := tx.UpdateSite(ctx, &s, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "site.update", directory.KindSite, s.ID, &cur, &s)
	})
	if err != nil && err != errNoChange {
		return nil, problemFor(err, &s)
	}
	return usersapi.UpdateSite200JSONResponse{SiteJSONResponse: usersapi.SiteJSONResponse{Body: siteOut(s), Headers: usersapi.SiteResponseHeaders{ETag: etag(s.Version)}}}, nil
}

func (h *Handlers) DeleteSite(ctx context.Context, req usersapi.DeleteSiteRequestObject) (usersapi.DeleteSiteResponseObject, error) {
	p, err := canWrite(ctx, directory.KindSite)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.GetSite(ctx, req.Name)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteSite(ctx, cur.Name, cur.Version); err != nil {
			return err
		}
		// As when UpdateSite drops a domain: mail for an address in a
		// domain no other site receives could no longer be routed.
		if err := domainsStillUsed(ctx, tx, cur.Name, cur.Domains); err != nil {
			return err
		}
		return audit(ctx, tx, p, "site.delete", directory.KindSite, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteSite204Response{}, nil
}

// errNoChange rolls back the transaction of a patch that changes nothing;
// the handler answers with the object as it is.
var errNoChange = fmt.Errorf("nothing to change")

// removed lists the values of before that are not in after.
func removed(before, after []string) []string {
	var out []string
	for _, v := range before {
		if !slices.Contains(after, v) {
			out = append(out, v)
		}
	}
	return out
}

// domainsStillUsed refuses (409) to remove from a site a domain that no
// other site receives while an address of a user, group or shared
// mailbox is in it: mail for that address could no longer be routed.
func domainsStillUsed(ctx context.Context, tx store.Tx, site string, gone []string) error {
	if len(gone) == 0 {
		return nil
	}
	elsewhere := map[string]bool{}
	for cursor := ""; ; {
		sites, next, _, err := tx.ListSites(ctx, store.Page{Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return err
		}
		for _, s := range sites {
			if s.Name == site {
				continue
			}
			for _, d := range s.Domains {
				elsewhere[d] = true
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	var reasons []usersapi.FieldError
	for _, d := range gone {
		if elsewhere[d] {
			continue
		}
		who, addr, err := addressInDomain(ctx, tx, d)
		if err != nil {
			return err
		}
		if who != "" {
			reasons = append(reasons, usersapi.FieldError{Field: "domains",
				Reason: fmt.Sprintf("%s is still used by %s (%s); change those addresses first", d, who, addr)})
		}
	}
	if len(reasons) == 0 {
		return nil
	}
	return &problemError{Status: http.StatusConflict, Type: typeInUse, Title: "Still in use",
		Detail: "A domain cannot be removed while addresses use it: " + reasons[0].Reason + ".", Errors: reasons}
}

// addressInDomain finds an object with an address in domain: its
// description and the address, or "" when none.
func addressInDomain(ctx context.Context, tx store.Tx, domain string) (who, addr string, err error) {
	suffix := "@" + domain
	for cursor := ""; ; {
		users, next, _, err := tx.ListUsers(ctx, store.UserFilter{Q: suffix, Page: store.Page{Limit: store.MaxLimit, Cursor: cursor}})
		if err != nil {
			return "", "", err
		}
		for _, u := range users {
			for _, a := range append([]string{u.PrimaryAddress}, u.Aliases...) {
				if strings.HasSuffix(a, suffix) {
					return "user " + u.Username, a, nil
				}
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	for cursor := ""; ; {
		groups, next, _, err := tx.ListGroups(ctx, store.Page{Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return "", "", err
		}
		for _, g := range groups {
			if strings.HasSuffix(g.Address, suffix) {
				return "group " + g.Name, g.Address, nil
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	for cursor := ""; ; {
		boxes, next, _, err := tx.ListSharedMailboxes(ctx, store.Page{Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return "", "", err
		}
		for _, m := range boxes {
			if strings.HasSuffix(m.Address, suffix) {
				return "shared mailbox " + m.Address, m.Address, nil
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	return "", "", nil
}
