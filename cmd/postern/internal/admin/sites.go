package admin

import (
	"net/http"

	"github.com/postern/postern/api/usersclient"
)

func sitesList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the sites, by name.")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.Site], error) {
		return pageFrom[usersclient.Site](c.ListSites(s.ctx, &usersclient.ListSitesParams{Cursor: cursor, Limit: limit}))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.SiteList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, site := range p.items {
		rows = append(rows, []string{site.Name, list(site.Domains), site.SMTPEndpoint, site.Description})
	}
	return s.printList([]string{"NAME", "DOMAINS", "SMTP ENDPOINT", "DESCRIPTION"}, rows, p.next, p.total)
}

func (s *session) printSite(site *usersclient.Site) error {
	if s.json {
		return s.printJSON(site)
	}
	return s.printFields([]field{
		{"name", site.Name},
		{"description", site.Description},
		{"domains", list(site.Domains)},
		{"smtp endpoint", site.SMTPEndpoint},
		{"version", itoa(site.Version)},
		{"created", timestamp(site.CreatedAt)},
		{"updated", timestamp(site.UpdatedAt)},
	})
}

func sitesShow(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Show a site.")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.GetSiteWithResponse(s.ctx, pos[0], nil)
	if err != nil {
		return err
	}
	site, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printSite(site)
}

func sitesAdd(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Create a site. NAME is a DNS label (lower-case letters, digits, -) and never changes.")
	description := fs.String("description", "", "what the site is, for people")
	domains := listFlag(fs, "domain", "a mail `domain` received at the site")
	smtp := fs.String("smtp-endpoint", "", "the `host:port` other sites deliver to")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	set := given(fs)
	body := usersclient.SiteCreate{Name: pos[0]}
	if set["description"] {
		body.Description = description
	}
	if set["domain"] {
		body.Domains = ptr(domains.list())
	}
	if set["smtp-endpoint"] {
		body.SMTPEndpoint = smtp
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.CreateSiteWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	site, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printSite(site)
}

func sitesEdit(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Change a site: only the flags given are changed; --domain replaces the whole list.")
	description := fs.String("description", "", "what the site is, for people")
	domains := listFlag(fs, "domain", "a mail `domain` received at the site")
	smtp := fs.String("smtp-endpoint", "", "the `host:port` other sites deliver to (\"\" when not reachable)")
	ifMatch := fs.String("if-match", "", "change only if the site still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	set := given(fs)
	var patch usersclient.SitePatch
	if set["description"] {
		patch.Description = description
	}
	if set["domain"] {
		patch.Domains = ptr(domains.list())
	}
	if set["smtp-endpoint"] {
		patch.SMTPEndpoint = smtp
	}
	if patch == (usersclient.SitePatch{}) {
		return usageErrorf("nothing to change: give --description, --domain or --smtp-endpoint")
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.UpdateSiteWithResponse(s.ctx, pos[0], &usersclient.UpdateSiteParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	site, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printSite(site)
}

func sitesDelete(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Delete a site; refused while users, POP3 accounts, templates or tokens belong to it.")
	ifMatch := fs.String("if-match", "", "delete only if the site still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.DeleteSiteWithResponse(s.ctx, pos[0], &usersclient.DeleteSiteParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted site %s\n", pos[0])
	return nil
}
