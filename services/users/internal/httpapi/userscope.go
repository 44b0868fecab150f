package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// The reach of a write to a user, beyond the user's site (access.go):
//
//   - Every address a write gives a user (primary address or alias) must
//     be in a mail domain of some site of the organisation, whatever the
//     token: mail for any other domain never reaches a site, and an
//     address of someone else's domain would make the directory claim
//     mail it cannot receive (422).
//   - A site_admin may only give addresses in its own site's domains:
//     another site's domain would let it capture that site's mail (403).
//   - Groups are organisation-wide and managed by admins, so a site_admin
//     may not change anyone's group memberships (403): a user it creates
//     gets the groups of the template it names, if any, and a user it
//     edits or re-imports keeps its groups.
//
// Only what a write adds is checked: an address or group the user already
// has stays, so that a user moved to another site, or kept from before
// these rules, can still be edited.

// userReach lists what a write to a user may not do.
type userReach struct {
	invalid   directory.ValidationError // 422: an address in no site's domain
	forbidden directory.ValidationError // 403: a site_admin beyond its site
}

// err is the problem of the API: 403 when a site_admin reached beyond its
// site, else 422, else nil.
func (r *userReach) err(p auth.Principal) error {
	if len(r.forbidden.Errors) > 0 {
		fields := make([]usersapi.FieldError, len(r.forbidden.Errors))
		for i, fe := range r.forbidden.Errors {
			fields[i] = usersapi.FieldError{Field: fe.Field, Reason: fe.Reason}
		}
		return &problemError{Status: http.StatusForbidden, Type: typeForbidden, Title: "Not allowed",
			Detail: fmt.Sprintf("A site_admin token of site %s may not do this: %s.", p.Site, fields[0].Reason), Errors: fields}
	}
	return r.invalid.Err()
}

// all lists every problem, forbidden ones first (for the lines of an import).
func (r *userReach) all() error {
	var v directory.ValidationError
	v.Errors = append(slices.Clone(r.forbidden.Errors), r.invalid.Errors...)
	return v.Err()
}

// domainIndex maps each mail domain of the organisation to the sites that
// receive it.
type domainIndex map[string][]string

// readDomains reads the domains of every site.
func readDomains(ctx context.Context, r store.Reader) (domainIndex, error) {
	idx := domainIndex{}
	for cursor := ""; ; {
		sites, next, _, err := r.ListSites(ctx, store.Page{Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		for _, s := range sites {
			for _, d := range s.Domains {
				idx[d] = append(idx[d], s.Name)
			}
		}
		if cursor = next; cursor == "" {
			return idx, nil
		}
	}
}

// ofSite lists the domains site receives, sorted.
func (idx domainIndex) ofSite(site string) []string {
	var out []string
	for d, sites := range idx {
		if slices.Contains(sites, site) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// checkReach checks what p's write makes of a user: before is what the
// user was (for a creation, a user with only the groups the template
// gives), u what it becomes (normalized).
func checkReach(idx domainIndex, p auth.Principal, before, u *directory.User) *userReach {
	r := &userReach{}
	had := map[string]bool{before.PrimaryAddress: true}
	for _, a := range before.Aliases {
		had[a] = true
	}
	siteAdmin := p.Role == directory.RoleSiteAdmin
	check := func(field, addr string) {
		if addr == "" || had[addr] {
			return
		}
		domain := addr[strings.LastIndexByte(addr, '@')+1:] // normalized: the domain has no '@'
		switch {
		case siteAdmin && !slices.Contains(idx[domain], p.Site):
			own := idx.ofSite(p.Site)
			in := "it has no mail domain"
			if len(own) > 0 {
				in = "its mail domains are " + strings.Join(own, ", ")
			}
			r.forbidden.Addf(field, "%s is not in a mail domain of site %s (%s); a site_admin token may only give addresses in its own site's domains", addr, p.Site, in)
		case !siteAdmin && len(idx[domain]) == 0:
			r.invalid.Addf(field, "%s is not in a mail domain of any site: add %s to a site's domains first", addr, domain)
		}
	}
	check("primary_address", u.PrimaryAddress)
	for i, a := range u.Aliases {
		check(fmt.Sprintf("aliases[%d]", i), a)
	}
	if siteAdmin && !sameSet(before.Groups, u.Groups) {
		r.forbidden.Add("groups", "groups are managed by admins: a site_admin token may not change group memberships")
	}
	return r
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
