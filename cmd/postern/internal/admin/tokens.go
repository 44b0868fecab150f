package admin

import (
	"fmt"
	"net/http"
	"time"

	"github.com/postern/postern/api/usersclient"
)

var roles = []usersclient.TokenRole{usersclient.TokenRoleAdmin, usersclient.TokenRoleSiteAdmin, usersclient.TokenRoleSiteAgent, usersclient.TokenRoleReader}

func tokensList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the API tokens, by name. Secrets are never shown.")
	site := fs.String("site", "", "only the tokens of `site`")
	role := fs.String("role", "", "only the tokens with this `role`: admin, site_admin, site_agent or reader")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	set := given(fs)
	params := usersclient.ListTokensParams{}
	if set["site"] {
		params.Site = site
	}
	if set["role"] {
		r, err := oneOf("role", *role, usersclient.TokenRole.Valid, roles...)
		if err != nil {
			return err
		}
		params.Role = &r
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.Token], error) {
		params.Cursor, params.Limit = cursor, limit
		return pageFrom[usersclient.Token](c.ListTokens(s.ctx, &params))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.TokenList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, t := range p.items {
		rows = append(rows, []string{t.Name, string(t.Role), t.Site, optTimestamp(t.LastUsedAt), optTimestamp(t.ExpiresAt), t.ID})
	}
	return s.printList([]string{"NAME", "ROLE", "SITE", "LAST USED", "EXPIRES", "ID"}, rows, p.next, p.total)
}

func (s *session) printToken(t *usersclient.Token) error {
	if s.json {
		return s.printJSON(t)
	}
	return s.printFields(tokenFields(t.ID, t.Name, t.Role, t.Site, t.LastUsedAt, t.ExpiresAt, t.Version, t.CreatedAt))
}

func tokenFields(id, name string, role usersclient.TokenRole, site string, lastUsed, expires *time.Time, version int64, created time.Time) []field {
	never := func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return timestamp(*t)
	}
	return []field{
		{"id", id},
		{"name", name},
		{"role", string(role)},
		{"site", site},
		{"last used", never(lastUsed)},
		{"expires", never(expires)},
		{"version", itoa(version)},
		{"created", timestamp(created)},
	}
}

func tokensShow(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Show an API token (never its secret).")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.tokenID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetTokenWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	t, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printToken(t)
}

func tokensAdd(s *session, args []string) error {
	fs := s.flags("NAME --role ROLE [--site SITE] [flags]", `Create an API token and print its secret, which is shown this once: only
its hash is stored. site_admin and site_agent tokens need --site.`)
	role := fs.String("role", "", "admin, site_admin (the users of one site), site_agent (one site's sync) or reader")
	site := fs.String("site", "", "the `site` of a site_admin or site_agent token")
	expires := fs.String("expires", "", "when the token stops working: an RFC 3339 `time`, a date, or a duration such as 90d")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	if *role == "" {
		return usageErrorf("--role is required: admin, site_admin, site_agent or reader")
	}
	r, err := oneOf("role", *role, usersclient.TokenRole.Valid, roles...)
	if err != nil {
		return err
	}
	body := usersclient.TokenCreate{Name: pos[0], Role: r}
	set := given(fs)
	if set["site"] {
		body.Site = site
	}
	if set["expires"] {
		t, err := parseTime("expires", *expires, time.Now(), false)
		if err != nil {
			return err
		}
		body.ExpiresAt = &t
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	resp, err := c.CreateTokenWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	t, err := answer(resp.HTTPResponse, resp.Body, http.StatusCreated, resp.JSON201)
	if err != nil {
		return err
	}
	const warning = "postern: keep this secret now: it is stored hashed and will not be shown again\n"
	if s.json {
		fmt.Fprint(s.env.Stderr, warning)
		return s.printJSON(t)
	}
	if err := s.printFields(tokenFields(t.ID, t.Name, t.Role, t.Site, t.LastUsedAt, t.ExpiresAt, t.Version, t.CreatedAt)); err != nil {
		return err
	}
	fmt.Fprintf(s.env.Stdout, "\nsecret: %s\n", sanitize(t.Secret, false))
	fmt.Fprint(s.env.Stderr, warning)
	return nil
}

func tokensDelete(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Revoke an API token: it stops working at once.")
	ifMatch := fs.String("if-match", "", "revoke only if the token still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.tokenID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeleteTokenWithResponse(s.ctx, id, &usersclient.DeleteTokenParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("revoked token %s\n", pos[0])
	return nil
}
