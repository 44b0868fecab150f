package httpapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func lowerTrim(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// mergeValidation joins the problems of several validation errors into
// one (nil when there are none); any other error is returned as it is.
func mergeValidation(errs ...error) error {
	var all directory.ValidationError
	for _, err := range errs {
		if err == nil {
			continue
		}
		ve, ok := errors.AsType[*directory.ValidationError](err)
		if !ok {
			return err
		}
		all.Errors = append(all.Errors, ve.Errors...)
	}
	return all.Err()
}

// userFor reads the user id for p: 404 when it does not exist, 403 when p
// may not reach it (for a site_admin, also when it does not exist, so
// that the answer does not say whether another site has it).
func userFor(ctx context.Context, r store.Reader, p auth.Principal, id string, write bool) (directory.User, error) {
	u, err := r.GetUser(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if p.Role == directory.RoleSiteAdmin {
			return u, outsideSite(p, "user "+id)
		}
		return u, notFound(fmt.Sprintf("No user has id %s.", id))
	case err != nil:
		return u, err
	}
	if write {
		return u, writeUser(p, u.Site, "user "+id)
	}
	return u, readUser(p, u.Site, id)
}

func userResponse(u directory.User) usersapi.UserJSONResponse {
	return usersapi.UserJSONResponse{Body: userOut(u), Headers: usersapi.UserResponseHeaders{ETag: etag(u.Version)}}
}

func (h *Handlers) ListUsers(ctx context.Context, req usersapi.ListUsersRequestObject) (usersapi.ListUsersResponseObject, error) {
	p, err := canUseUsers(ctx, false)
	if err != nil {
		return nil, err
	}
	site, err := scopeSite(p, req.Params.Site)
	if err != nil {
		return nil, err
	}
	f := store.UserFilter{
		Page:    page(req.Params.Cursor, req.Params.Limit),
		Site:    lowerTrim(site),
		Group:   lowerTrim(deref(req.Params.Group)),
		Enabled: req.Params.Enabled,
		Q:       strings.TrimSpace(deref(req.Params.Q)),
	}
	items, next, total, err := h.store.ListUsers(ctx, f)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.ListUsers200JSONResponse{Items: mapSlice(items, userOut), NextCursor: next, Total: int64(total)}, nil
}

// templateNamed reads the template a request names; 422 on the member
// field when there is none.
func (h *Handlers) templateNamed(ctx context.Context, name, field string) (directory.Template, error) {
	name = lowerTrim(name)
	t, err := h.store.GetTemplateByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return t, invalidField(field, "no template is named "+name)
	}
	return t, err
}

// defaultTemplate gives the values of new users when no template is named.
func defaultTemplate() directory.Template {
	return directory.Template{Enabled: true, Permissions: defaultPermissions, Groups: []string{}}
}

func (h *Handlers) CreateUser(ctx context.Context, req usersapi.CreateUserRequestObject) (usersapi.CreateUserResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	b := req.Body
	tmpl := defaultTemplate()
	if b.Template != nil {
		if tmpl, err = h.templateNamed(ctx, *b.Template, "template"); err != nil {
			return nil, err
		}
	}
	u := directory.User{
		Username:       b.Username,
		DisplayName:    deref(b.DisplayName),
		PrimaryAddress: deref(b.PrimaryAddress),
		Aliases:        derefOr(b.Aliases, []string{}),
		Site:           derefOr(b.Site, tmpl.Site),
		Groups:         derefOr(b.Groups, slices.Clone(tmpl.Groups)),
		Enabled:        derefOr(b.Enabled, tmpl.Enabled),
		Permissions:    tmpl.Permissions,
		QuotaBytes:     derefOr(b.QuotaBytes, tmpl.QuotaBytes),
		PasswordHash:   strings.TrimSpace(deref(b.PasswordHash)),
	}
	setPermissions(&u.Permissions, b.Permissions)
	u.Site = lowerTrim(u.Site)
	if u.Site == "" && p.Role == directory.RoleSiteAdmin {
		u.Site = p.Site
	}
	if u.Site == "" {
		if u.Site, err = h.onlySite(ctx); err != nil {
			return nil, err
		}
	}
	if u.Site != "" {
		if err := writeUser(p, u.Site, "site "+u.Site); err != nil {
			return nil, err
		}
	}

	var extra directory.ValidationError
	if b.Password != nil && b.PasswordHash != nil {
		extra.Add("password_hash", "give password or password_hash, not both")
	}
	if b.Password != nil {
		if err := directory.CheckPassword(*b.Password); err != nil {
			extra.Add("password", err.Error())
		}
	}
	if strings.TrimSpace(u.PrimaryAddress) == "" && u.Site != "" {
		site, err := h.store.GetSite(ctx, u.Site)
		switch {
		case errors.Is(err, store.ErrNotFound):
			extra.Add("site", "no site is named "+u.Site)
		case err != nil:
			return nil, err
		case len(site.Domains) == 0:
			extra.Add("primary_address", fmt.Sprintf("required: site %s has no mail domain to make a default address from", u.Site))
		case directory.ValidUsername(lowerTrim(u.Username)) == nil:
			u.PrimaryAddress = lowerTrim(u.Username) + "@" + site.Domains[0]
		}
	}
	if err := mergeValidation(u.Normalize(), extra.Err()); err != nil {
		return nil, err
	}
	if b.Password != nil {
		if u.PasswordHash, err = directory.HashPassword(*b.Password); err != nil {
			return nil, err
		}
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		domains, err := readDomains(ctx, tx)
		if err != nil {
			return err
		}
		if err := checkReach(domains, p, &directory.User{Groups: tmpl.Groups}, &u).err(p); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, &u); err != nil {
			return err
		}
		return audit(ctx, tx, p, "user.create", directory.KindUser, u.ID, nil, &u)
	})
	if err != nil {
		return nil, problemForAs(p, err, &u)
	}
	return usersapi.CreateUser201JSONResponse{Body: userOut(u), Headers: usersapi.CreateUser201ResponseHeaders{
		ETag: etag(u.Version), Location: location("users", u.ID),
	}}, nil
}

func (h *Handlers) GetUser(ctx context.Context, req usersapi.GetUserRequestObject) (usersapi.GetUserResponseObject, error) {
	p, err := canUseUsers(ctx, false)
	if err != nil {
		return nil, err
	}
	u, err := userFor(ctx, h.store, p, req.ID, false)
	if err != nil {
		return nil, problemFor(err, nil)
	}
	if nm, err := notModified(req.Params.IfNoneMatch, u.Version); err != nil || nm {
		if err != nil {
			return nil, err
		}
		return usersapi.GetUser304Response{Headers: usersapi.NotModifiedResponseHeaders{ETag: etag(u.Version)}}, nil
	}
	return usersapi.GetUser200JSONResponse{UserJSONResponse: userResponse(u)}, nil
}

func (h *Handlers) UpdateUser(ctx context.Context, req usersapi.UpdateUserRequestObject) (usersapi.UpdateUserResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	b := req.Body
	var u directory.User
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := userFor(ctx, tx, p, req.ID, true)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		u = cur
		u.Aliases, u.Groups = slices.Clone(cur.Aliases), slices.Clone(cur.Groups)
		set(&u.DisplayName, b.DisplayName)
		set(&u.PrimaryAddress, b.PrimaryAddress)
		setList(&u.Aliases, b.Aliases)
		setList(&u.Groups, b.Groups)
		set(&u.Enabled, b.Enabled)
		setPermissions(&u.Permissions, b.Permissions)
		set(&u.QuotaBytes, b.QuotaBytes)
		if err := u.Normalize(); err != nil {
			return err
		}
		slices.Sort(u.Groups) // as the store keeps them
		if unchanged(cur, u) {
			u = cur
			return errNoChange
		}
		domains, err := readDomains(ctx, tx)
		if err != nil {
			return err
		}
		if err := checkReach(domains, p, &cur, &u).err(p); err != nil {
			return err
		}
		if err := tx.UpdateUser(ctx, &u, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "user.update", directory.KindUser, u.ID, &cur, &u)
	})
	if err != nil && err != errNoChange {
		return nil, problemForAs(p, err, &u)
	}
	return usersapi.UpdateUser200JSONResponse{UserJSONResponse: userResponse(u)}, nil
}

func (h *Handlers) DeleteUser(ctx context.Context, req usersapi.DeleteUserRequestObject) (usersapi.DeleteUserResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := userFor(ctx, tx, p, req.ID, true)
		if err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		if err := tx.DeleteUser(ctx, cur.ID, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "user.delete", directory.KindUser, cur.ID, &cur, nil)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.DeleteUser204Response{}, nil
}

func (h *Handlers) MoveUser(ctx context.Context, req usersapi.MoveUserRequestObject) (usersapi.MoveUserResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	ifMatch, err := parseIfMatch(req.Params.IfMatch)
	if err != nil {
		return nil, err
	}
	target := lowerTrim(req.Body.Site)
	if err := directory.ValidSlug(target); err != nil {
		return nil, invalidField("site", err.Error())
	}
	var u directory.User
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := userFor(ctx, tx, p, req.ID, true)
		if err != nil {
			return err
		}
		if err := writeUser(p, target, "site "+target); err != nil {
			return err
		}
		if err := checkIfMatch(ifMatch, req.Params.IfMatch, cur.Version); err != nil {
			return err
		}
		u = cur
		if cur.Site == target {
			return errNoChange
		}
		u.Site = target
		if err := tx.UpdateUser(ctx, &u, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "user.move", directory.KindUser, u.ID, &cur, &u)
	})
	if err != nil && err != errNoChange {
		return nil, problemForAs(p, err, &u)
	}
	return usersapi.MoveUser200JSONResponse{UserJSONResponse: userResponse(u)}, nil
}

func (h *Handlers) SetUserPassword(ctx context.Context, req usersapi.SetUserPasswordRequestObject) (usersapi.SetUserPasswordResponseObject, error) {
	p, err := canUseUsers(ctx, true)
	if err != nil {
		return nil, err
	}
	if _, err := userFor(ctx, h.store, p, req.ID, true); err != nil {
		return nil, problemFor(err, nil)
	}
	pw := deref(req.Body.Password)
	hash, err := directory.HashPassword(pw) // checks the policy: 422 on "password"
	if err != nil {
		return nil, err
	}
	err = h.store.Update(ctx, func(tx store.Tx) error {
		cur, err := userFor(ctx, tx, p, req.ID, true)
		if err != nil {
			return err
		}
		u := cur
		u.PasswordHash = hash
		if err := tx.UpdateUser(ctx, &u, cur.Version); err != nil {
			return err
		}
		return audit(ctx, tx, p, "user.password", directory.KindUser, u.ID, &cur, &u)
	})
	if err != nil {
		return nil, problemFor(err, nil)
	}
	return usersapi.SetUserPassword204Response{}, nil
}

// onlySite is the name of the directory's only site, or "" when it has
// none or several: a user created without a site goes to a single office's
// one site rather than being refused.
func (h *Handlers) onlySite(ctx context.Context) (string, error) {
	sites, _, total, err := h.store.ListSites(ctx, store.Page{Limit: 2})
	if err != nil {
		return "", err
	}
	if total == 1 && len(sites) == 1 {
		return sites[0].Name, nil
	}
	return "", nil
}
