package httpapi

import (
	"context"
	"fmt"

	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
)

// kindAudit is the audit log, for role checks (readers and admins read it).
const kindAudit = "audit"

func plural(kind string) string {
	switch kind {
	case directory.KindPOP3Account:
		return "POP3 accounts"
	case directory.KindSharedMailbox:
		return "shared mailboxes"
	case kindAudit:
		return "the audit log"
	}
	return kind + "s"
}

// who is the authenticated principal (the middleware guarantees one).
func who(ctx context.Context) (auth.Principal, error) {
	p, ok := principalFrom(ctx)
	if !ok {
		return auth.Principal{}, unauthorized("This API needs a bearer token.")
	}
	return p, nil
}

// roleNote says what the token is, for 403 details.
func roleNote(p auth.Principal) string {
	if p.Site != "" {
		return fmt.Sprintf("this is a %s token of site %s", p.Role, p.Site)
	}
	return fmt.Sprintf("this is a %s token", p.Role)
}

// canRead refuses (403) a principal that may not read objects of kind.
func canRead(ctx context.Context, kind string) (auth.Principal, error) {
	p, err := who(ctx)
	if err != nil {
		return p, err
	}
	if p.CanRead(kind) {
		return p, nil
	}
	switch {
	case p.Role == directory.RoleSiteAgent:
		return p, forbidden(fmt.Sprintf("A site_agent token may only read /v1/sync; %s.", roleNote(p)))
	case kind == directory.KindToken:
		return p, forbidden(fmt.Sprintf("Reading tokens needs an admin token; %s.", roleNote(p)))
	case p.Role == directory.RoleSiteAdmin:
		return p, forbidden(fmt.Sprintf("A site_admin token may only manage the users of its site; reading %s needs an admin or reader token.", plural(kind)))
	}
	return p, forbidden(fmt.Sprintf("Reading %s needs an admin or reader token; %s.", plural(kind), roleNote(p)))
}

// canWrite refuses (403) a principal that may not change objects of kind
// (other than users).
func canWrite(ctx context.Context, kind string) (auth.Principal, error) {
	p, err := who(ctx)
	if err != nil {
		return p, err
	}
	if p.CanWrite(kind) {
		return p, nil
	}
	return p, forbidden(fmt.Sprintf("Changing %s needs an admin token; %s.", plural(kind), roleNote(p)))
}

// canUseUsers refuses (403) a principal that may not touch users at all
// (write true: change them).
func canUseUsers(ctx context.Context, write bool) (auth.Principal, error) {
	p, err := who(ctx)
	if err != nil {
		return p, err
	}
	switch p.Role {
	case directory.RoleAdmin, directory.RoleSiteAdmin:
		return p, nil
	case directory.RoleReader:
		if !write {
			return p, nil
		}
		return p, forbidden(fmt.Sprintf("Changing users needs an admin or site_admin token; %s.", roleNote(p)))
	case directory.RoleSiteAgent:
		return p, forbidden(fmt.Sprintf("A site_agent token may only read /v1/sync; %s.", roleNote(p)))
	}
	return p, forbidden(fmt.Sprintf("The token's role %q allows nothing.", p.Role))
}

// outsideSite is the 403 of a site_admin reaching a user it may not: the
// same answer whether the user is at another site or does not exist.
func outsideSite(p auth.Principal, what string) error {
	return forbidden(fmt.Sprintf("A site_admin token of site %s may only reach the users of %s; %s is outside it.", p.Site, p.Site, what))
}

// readUser refuses a principal that may not read a user of site.
func readUser(p auth.Principal, site, id string) error {
	if p.CanReadUser(site) {
		return nil
	}
	return outsideSite(p, "user "+id)
}

// writeUser refuses a principal that may not change a user of site.
func writeUser(p auth.Principal, site, what string) error {
	if p.CanWriteUser(site) {
		return nil
	}
	if p.Role == directory.RoleSiteAdmin {
		return outsideSite(p, what)
	}
	return forbidden(fmt.Sprintf("Changing users needs an admin or site_admin token; %s.", roleNote(p)))
}

// scopeSite is the site filter of a list or export: a site_admin sees its
// own site only (403 when it names another).
func scopeSite(p auth.Principal, site *string) (string, error) {
	want := deref(site)
	if p.Role != directory.RoleSiteAdmin {
		return want, nil
	}
	if want != "" && want != p.Site {
		return "", outsideSite(p, "site "+want)
	}
	return p.Site, nil
}
