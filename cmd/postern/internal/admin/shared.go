package admin

import (
	"flag"
	"net/http"

	"github.com/postern/postern/api/usersclient"
)

func sharedList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the shared mailboxes, by address.")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.SharedMailbox], error) {
		return pageFrom[usersclient.SharedMailbox](c.ListSharedMailboxes(s.ctx, &usersclient.ListSharedMailboxesParams{Cursor: cursor, Limit: limit}))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.SharedMailboxList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, m := range p.items {
		rows = append(rows, []string{m.Address, m.DisplayName, s.username(m.Manager), list(s.usernames(m.Staff)),
			yesNo(m.ForwardToStaff), yesNo(m.RewriteSender), yesNo(m.CopyOutboundToManager)})
	}
	return s.printList([]string{"ADDRESS", "NAME", "MANAGER", "STAFF", "FORWARD", "REWRITE", "COPY"}, rows, p.next, p.total)
}

func (s *session) printShared(m *usersclient.SharedMailbox) error {
	if s.json {
		return s.printJSON(m)
	}
	return s.printFields([]field{
		{"id", m.ID},
		{"address", m.Address},
		{"name", m.DisplayName},
		{"manager", s.username(m.Manager)},
		{"staff", list(s.usernames(m.Staff))},
		{"forward to staff", yesNo(m.ForwardToStaff)},
		{"rewrite sender", yesNo(m.RewriteSender)},
		{"copy outbound to manager", yesNo(m.CopyOutboundToManager)},
		{"version", itoa(m.Version)},
		{"created", timestamp(m.CreatedAt)},
		{"updated", timestamp(m.UpdatedAt)},
	})
}

func sharedShow(s *session, args []string) error {
	fs := s.flags("ADDRESS|ID [flags]", "Show a shared mailbox.")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.sharedID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetSharedMailboxWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	m, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printShared(m)
}

type sharedFields struct {
	name, manager                  *string
	staff                          *listValue
	forward, rewrite, copyOutbound *bool
	set                            map[string]bool
}

func addSharedFlags(fs *flag.FlagSet) *sharedFields {
	return &sharedFields{
		name:         fs.String("name", "", "the display `name`"),
		manager:      fs.String("manager", "", "the `user` (username or id) whose mailbox holds the address"),
		staff:        listFlag(fs, "staff", "a `user` (username or id) who works the address"),
		forward:      fs.Bool("forward-to-staff", false, "forward mail to the address to every staff member"),
		rewrite:      fs.Bool("rewrite-sender", false, "staff mail to the outside leaves from the address (=false to keep the staff's own)"),
		copyOutbound: fs.Bool("copy-outbound-to-manager", false, "the manager keeps a copy of what staff send out"),
	}
}

func sharedAdd(s *session, args []string) error {
	fs := s.flags("ADDRESS --manager USER [flags]", "Create a shared mailbox: a unified external address (such as sales@) held by a manager and worked by staff.")
	f := addSharedFlags(fs)
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	if *f.manager == "" {
		return usageErrorf("--manager is required")
	}
	body := usersclient.SharedMailboxCreate{Address: pos[0]}
	if f.set["name"] {
		body.DisplayName = f.name
	}
	if f.set["forward-to-staff"] {
		body.ForwardToStaff = f.forward
	}
	if f.set["rewrite-sender"] {
		body.RewriteSender = f.rewrite
	}
	if f.set["copy-outbound-to-manager"] {
		body.CopyOutboundToManager = f.copyOutbound
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	if body.Manager, err = s.userID(*f.manager); err != nil {
		return err
	}
	if f.set["staff"] {
		ids, err := s.userIDs(f.staff.list())
		if err != nil {
			return err
		}
		body.Staff = &ids
	}
	r, err := c.CreateSharedMailboxWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	m, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printShared(m)
}

func sharedEdit(s *session, args []string) error {
	fs := s.flags("ADDRESS|ID [flags]", "Change a shared mailbox: only the flags given are changed; --staff replaces the whole list.")
	f := addSharedFlags(fs)
	address := fs.String("address", "", "the new `address`")
	ifMatch := fs.String("if-match", "", "change only if the mailbox still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	f.set = given(fs)
	var patch usersclient.SharedMailboxPatch
	if f.set["address"] {
		patch.Address = address
	}
	if f.set["name"] {
		patch.DisplayName = f.name
	}
	if f.set["forward-to-staff"] {
		patch.ForwardToStaff = f.forward
	}
	if f.set["rewrite-sender"] {
		patch.RewriteSender = f.rewrite
	}
	if f.set["copy-outbound-to-manager"] {
		patch.CopyOutboundToManager = f.copyOutbound
	}
	if patch == (usersclient.SharedMailboxPatch{}) && !f.set["manager"] && !f.set["staff"] {
		return usageErrorf("nothing to change")
	}
	if _, err := s.connect(); err != nil {
		return err
	}
	if f.set["manager"] {
		id, err := s.userID(*f.manager)
		if err != nil {
			return err
		}
		patch.Manager = &id
	}
	if f.set["staff"] {
		ids, err := s.userIDs(f.staff.list())
		if err != nil {
			return err
		}
		patch.Staff = &ids
	}
	id, err := s.sharedID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.UpdateSharedMailboxWithResponse(s.ctx, id, &usersclient.UpdateSharedMailboxParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	m, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printShared(m)
}

func sharedDelete(s *session, args []string) error {
	fs := s.flags("ADDRESS|ID [flags]", "Delete a shared mailbox.")
	ifMatch := fs.String("if-match", "", "delete only if the mailbox still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.sharedID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeleteSharedMailboxWithResponse(s.ctx, id, &usersclient.DeleteSharedMailboxParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted shared mailbox %s\n", pos[0])
	return nil
}
