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

// SetSiteEndpoint sets the SMTP endpoint (host:port) the other sites'
// relays deliver the site's mail to, e.g. the "intersite" listener of a
// site started with SiteOptions.CA.
func (u *Users) SetSiteEndpoint(t testing.TB, site, endpoint string) {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	resp, err := u.Client.UpdateSiteWithResponse(ctx, site, nil, usersclient.SitePatch{SMTPEndpoint: &endpoint})
	if err != nil {
		t.Fatalf("harness: set the smtp_endpoint of %s: %v", site, err)
	}
	if resp.JSON200 == nil {
		t.Fatalf("harness: set the smtp_endpoint of %s: %d %s", site, resp.StatusCode(), resp.Body)
	}
}
