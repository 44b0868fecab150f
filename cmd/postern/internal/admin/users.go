package admin

import (
	"flag"
	"net/http"

	"github.com/postern/postern/api/usersclient"
)

func usersList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the users, by username.")
	site := fs.String("site", "", "only the users whose home site is `site`")
	group := fs.String("group", "", "only the direct members of `group`")
	enabled := fs.Bool("enabled", false, "only enabled users (--enabled=false: only disabled ones)")
	q := fs.String("q", "", "only users whose username, name or address contains `text`")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	set := given(fs)
	params := usersclient.ListUsersParams{}
	if set["site"] {
		params.Site = site
	}
	if set["group"] {
		params.Group = group
	}
	if set["enabled"] {
		params.Enabled = enabled
	}
	if set["q"] {
		params.Q = q
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.User], error) {
		params.Cursor, params.Limit = cursor, limit
		return pageFrom[usersclient.User](c.ListUsers(s.ctx, &params))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.UserList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, u := range p.items {
		rows = append(rows, []string{u.Username, u.DisplayName, u.PrimaryAddress, u.Site, list(u.Groups), yesNo(u.Enabled)})
	}
	return s.printList([]string{"USERNAME", "NAME", "EMAIL", "SITE", "GROUPS", "ENABLED"}, rows, p.next, p.total)
}

func (s *session) printUser(u *usersclient.User) error {
	if s.json {
		return s.printJSON(u)
	}
	return s.printFields([]field{
		{"id", u.ID},
		{"username", u.Username},
		{"name", u.DisplayName},
		{"email", u.PrimaryAddress},
		{"aliases", list(u.Aliases)},
		{"site", u.Site},
		{"groups", list(u.Groups)},
		{"enabled", yesNo(u.Enabled)},
		{"internet receive", yesNo(u.Permissions.InternetReceive)},
		{"internet send", yesNo(u.Permissions.InternetSend)},
		{"quota", quota(u.QuotaBytes)},
		{"version", itoa(u.Version)},
		{"created", timestamp(u.CreatedAt)},
		{"updated", timestamp(u.UpdatedAt)},
	})
}

func usersShow(s *session, args []string) error {
	fs := s.flags("USERNAME|ID [flags]", "Show a user.")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.userID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetUserWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	u, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printUser(u)
}

// userFields are the flags shared by users add and users edit.
type userFields struct {
	name, email            *string
	aliases, groups        *listValue
	enabled, receive, send *bool
	quota                  *sizeValue
	set                    map[string]bool // the flags given
}

func addUserFlags(fs *flag.FlagSet) *userFields {
	return &userFields{
		name:    fs.String("name", "", "the display `name`"),
		email:   fs.String("email", "", "the primary `address`"),
		aliases: listFlag(fs, "alias", "a further `address`"),
		groups:  listFlag(fs, "group", "a `group` the user is a member of"),
		enabled: fs.Bool("enabled", false, "the user may log in and receives mail (--enabled=false to disable)"),
		receive: fs.Bool("internet-receive", false, "may receive mail from the Internet (=false to forbid)"),
		send:    fs.Bool("internet-send", false, "may send mail to the Internet (=false to forbid)"),
		quota:   sizeFlag(fs, "quota", "mailbox `size`, such as 2G or 500M; 0 for none"),
	}
}

func (f *userFields) permissions() *usersclient.PermissionsPatch {
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

func usersAdd(s *session, args []string) error {
	fs := s.flags("USERNAME [flags]", `Create a user. What is not given comes from --template, else from the
server's defaults (the address defaults to USERNAME@<the site's first domain>).
Addresses must be in a mail domain of a site; with a site_admin token, of
its own site, and --group is refused (groups are the admins').
The password is read from standard input with --password-stdin, else asked
for on the terminal; --no-password creates a user who cannot log in yet.`)
	f := addUserFlags(fs)
	site := fs.String("site", "", "the home `site` (default: the template's, else a site_admin token's own site, else the only site of a one-site directory)")
	template := fs.String("template", "", "the `template` giving the defaults")
	pwStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	noPw := fs.Bool("no-password", false, "set no password")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	if *pwStdin && *noPw {
		return usageErrorf("--password-stdin and --no-password exclude each other")
	}
	body := usersclient.UserCreate{Username: pos[0], Permissions: f.permissions()}
	if f.set["name"] {
		body.DisplayName = f.name
	}
	if f.set["email"] {
		body.PrimaryAddress = f.email
	}
	if f.set["alias"] {
		body.Aliases = ptr(f.aliases.list())
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
	if f.set["site"] {
		body.Site = site
	}
	if f.set["template"] {
		body.Template = template
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	if !*noPw {
		pw, err := s.password(*pwStdin, pos[0], true)
		if err != nil {
			return err
		}
		if pw != "" {
			body.Password = &pw
		}
	}
	r, err := c.CreateUserWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	u, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printUser(u)
}

func usersEdit(s *session, args []string) error {
	fs := s.flags("USERNAME|ID [flags]", `Change a user: only the flags given are changed; --alias and --group
replace the whole list (--alias "" clears it). The site changes with
"users move", the password with "users passwd".`)
	f := addUserFlags(fs)
	ifMatch := fs.String("if-match", "", "change only if the user still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	patch := usersclient.UserPatch{Permissions: f.permissions()}
	if f.set["name"] {
		patch.DisplayName = f.name
	}
	if f.set["email"] {
		patch.PrimaryAddress = f.email
	}
	if f.set["alias"] {
		patch.Aliases = ptr(f.aliases.list())
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
	if patch == (usersclient.UserPatch{}) {
		return usageErrorf("nothing to change: give at least one of --name, --email, --alias, --group, --enabled, --internet-receive, --internet-send, --quota")
	}
	id, err := s.userID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.UpdateUserWithResponse(s.ctx, id, &usersclient.UpdateUserParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	u, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printUser(u)
}

func usersDelete(s *session, args []string) error {
	fs := s.flags("USERNAME|ID [flags]", "Delete a user (not their mail). Refused while the user manages a shared mailbox or is its only staff member.")
	ifMatch := fs.String("if-match", "", "delete only if the user still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.userID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeleteUserWithResponse(s.ctx, id, &usersclient.DeleteUserParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted user %s\n", pos[0])
	return nil
}

func usersMove(s *session, args []string) error {
	fs := s.flags("USERNAME|ID --site SITE [flags]", "Move a user to another home site; every site sees the move at its next sync.")
	site := fs.String("site", "", "the new home `site` (required)")
	ifMatch := fs.String("if-match", "", "move only if the user still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	if *site == "" {
		return usageErrorf("--site is required")
	}
	id, err := s.userID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.MoveUserWithResponse(s.ctx, id, &usersclient.MoveUserParams{IfMatch: etag(*ifMatch)}, usersclient.UserMove{Site: *site})
	if err != nil {
		return err
	}
	u, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printUser(u)
}

func usersPasswd(s *session, args []string) error {
	fs := s.flags("USERNAME|ID [flags]", "Set a user's password: from the first line of standard input with --password-stdin, else asked for on the terminal.")
	pwStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	if _, err := s.connect(); err != nil {
		return err
	}
	pw, err := s.password(*pwStdin, pos[0], false)
	if err != nil {
		return err
	}
	id, err := s.userID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.SetUserPasswordWithResponse(s.ctx, id, usersclient.PasswordSet{Password: &pw})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("password set for %s\n", pos[0])
	return nil
}
