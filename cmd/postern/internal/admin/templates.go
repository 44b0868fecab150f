package admin

import (
	"flag"
	"net/http"

	"github.com/postern/postern/api/usersclient"
)

func templatesList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the user templates, by name.")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.Template], error) {
		return pageFrom[usersclient.Template](c.ListTemplates(s.ctx, &usersclient.ListTemplatesParams{Cursor: cursor, Limit: limit}))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.TemplateList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, t := range p.items {
		rows = append(rows, []string{t.Name, t.Site, list(t.Groups), yesNo(t.Enabled),
			yesNo(t.Permissions.InternetReceive), yesNo(t.Permissions.InternetSend), quota(t.QuotaBytes)})
	}
	return s.printList([]string{"NAME", "SITE", "GROUPS", "ENABLED", "RECEIVE", "SEND", "QUOTA"}, rows, p.next, p.total)
}

func (s *session) printTemplate(t *usersclient.Template) error {
	if s.json {
		return s.printJSON(t)
	}
	return s.printFields([]field{
		{"id", t.ID},
		{"name", t.Name},
		{"site", t.Site},
		{"groups", list(t.Groups)},
		{"enabled", yesNo(t.Enabled)},
		{"internet receive", yesNo(t.Permissions.InternetReceive)},
		{"internet send", yesNo(t.Permissions.InternetSend)},
		{"quota", quota(t.QuotaBytes)},
		{"version", itoa(t.Version)},
		{"created", timestamp(t.CreatedAt)},
		{"updated", timestamp(t.UpdatedAt)},
	})
}

func templatesShow(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Show a user template.")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.templateID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetTemplateWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	t, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printTemplate(t)
}

type templateFields struct {
	site                   *string
	groups                 *listValue
	enabled, receive, send *bool
	quota                  *sizeValue
	set                    map[string]bool
}

func addTemplateFlags(fs *flag.FlagSet) *templateFields {
	return &templateFields{
		site:    fs.String("site", "", "the default home `site`"),
		groups:  listFlag(fs, "group", "a `group` new users join"),
		enabled: fs.Bool("enabled", false, "new users are enabled (=false: disabled)"),
		receive: fs.Bool("internet-receive", false, "new users may receive mail from the Internet"),
		send:    fs.Bool("internet-send", false, "new users may send mail to the Internet"),
		quota:   sizeFlag(fs, "quota", "mailbox `size`, such as 2G; 0 for none"),
	}
}

func (f *templateFields) permissions() *usersclient.PermissionsPatch {
	if !f.set["internet-receive"] && !f.set["internet-send"] {
		return nil
	}
	p := &usersclient.PermissionsPatch{}
	if f.set["internet-receive"] {
		p.InternetReceive = f.receive
	}
	if f.set["internet-send"] {
		p.InternetSend = f.send
	}
	return p
}

func templatesAdd(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Create a user template: the defaults of users add --template and import --template.")
	f := addTemplateFlags(fs)
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	body := usersclient.TemplateCreate{Name: pos[0], Permissions: f.permissions()}
	if f.set["site"] {
		body.Site = f.site
	}
	if f.set["group"] {
		body.Groups = ptr(f.groups.list())
	}
	if f.set["enabled"] {
		body.Enabled = f.enabled
	}
	if f.set["quota"] {
		body.QuotaBytes = &f.quota.n
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	r, err := c.CreateTemplateWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	t, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printTemplate(t)
}

func templatesEdit(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Change a user template: only the flags given are changed. Users created from it earlier do not change.")
	f := addTemplateFlags(fs)
	ifMatch := fs.String("if-match", "", "change only if the template still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	patch := usersclient.TemplatePatch{Permissions: f.permissions()}
	if f.set["site"] {
		patch.Site = f.site
	}
	if f.set["group"] {
		patch.Groups = ptr(f.groups.list())
	}
	if f.set["enabled"] {
		patch.Enabled = f.enabled
	}
	if f.set["quota"] {
		patch.QuotaBytes = &f.quota.n
	}
	if patch == (usersclient.TemplatePatch{}) {
		return usageErrorf("nothing to change")
	}
	id, err := s.templateID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.UpdateTemplateWithResponse(s.ctx, id, &usersclient.UpdateTemplateParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	t, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printTemplate(t)
}

func templatesDelete(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Delete a user template.")
	ifMatch := fs.String("if-match", "", "delete only if the template still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.templateID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeleteTemplateWithResponse(s.ctx, id, &usersclient.DeleteTemplateParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted template %s\n", pos[0])
	return nil
}
