package harness

import (
	"testing"

	"github.com/postern/postern/api/usersclient"
)

// CreateSharedMailbox creates a shared mailbox (DOMAIN.md section 5) and
// returns it as the service stored it.
func (u *Users) CreateSharedMailbox(t testing.TB, m usersclient.SharedMailboxCreate) usersclient.SharedMailbox {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.CreateSharedMailboxWithResponse(ctx, m)
	if err != nil {
		t.Fatalf("harness: create shared mailbox %s: %v", m.Address, err)
	}
	if resp.JSON201 == nil {
		t.Fatalf("harness: create shared mailbox %s: %d %s", m.Address, resp.StatusCode(), resp.Body)
	}
	return *resp.JSON201
}

// MoveUser moves the user id to another home site (POST
// /v1/users/{id}/move, without If-Match) and returns the user as the
// service stored it.
func (u *Users) MoveUser(t testing.TB, id, site string) usersclient.User {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.MoveUserWithResponse(ctx, id, nil, usersclient.UserMove{Site: site})
	if err != nil {
		t.Fatalf("harness: move user %s to %s: %v", id, site, err)
	}
	if resp.JSON200 == nil {
		t.Fatalf("harness: move user %s to %s: %d %s", id, site, resp.StatusCode(), resp.Body)
	}
	return *resp.JSON200
}

// UpdateSite changes site with patch (a merge patch, without If-Match).
func (u *Users) UpdateSite(t testing.TB, site string, patch usersclient.SitePatch) usersclient.Site {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.UpdateSiteWithResponse(ctx, site, nil, patch)
	if err != nil {
		t.Fatalf("harness: update site %s: %v", site, err)
	}
	if resp.JSON200 == nil {
		t.Fatalf("harness: update site %s: %d %s", site, resp.StatusCode(), resp.Body)
	}
	return *resp.JSON200
}

// SetSiteEndpoint sets the SMTP endpoint (host:port) the other sites'
// relays deliver the site's mail to, e.g. the "intersite" listener of a
// site started with SiteOptions.CA.
func (u *Users) SetSiteEndpoint(t testing.TB, site, endpoint string) {
	t.Helper()
	u.UpdateSite(t, site, usersclient.SitePatch{SMTPEndpoint: &endpoint})
}

// SetSiteDomains sets the mail domains of site (a single box creates its
// site without any).
func (u *Users) SetSiteDomains(t testing.TB, site string, domains ...string) {
	t.Helper()
	u.UpdateSite(t, site, usersclient.SitePatch{Domains: &domains})
}
