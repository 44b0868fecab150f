package admin

import (
	"net/http"

	"github.com/postern/postern/api/usersclient"
)

func groupsList(s *session, args []string) error {
	fs := s.flags("[flags]", "List the groups, by name.")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.Group], error) {
		return pageFrom[usersclient.Group](c.ListGroups(s.ctx, &usersclient.ListGroupsParams{Cursor: cursor, Limit: limit}))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.GroupList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, g := range p.items {
		rows = append(rows, []string{g.Name, g.Address, itoa(len(g.Members)), g.Description})
	}
	return s.printList([]string{"NAME", "ADDRESS", "MEMBERS", "DESCRIPTION"}, rows, p.next, p.total)
}

func (s *session) printGroup(g *usersclient.Group) error {
	if s.json {
		return s.printJSON(g)
	}
	return s.printFields([]field{
		{"id", g.ID},
		{"name", g.Name},
		{"address", g.Address},
		{"description", g.Description},
		{"members", list(s.memberNames(g.Members))},
		{"version", itoa(g.Version)},
		{"created", timestamp(g.CreatedAt)},
		{"updated", timestamp(g.UpdatedAt)},
	})
}

func groupsShow(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Show a group and its members.")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.groupID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.GetGroupWithResponse(s.ctx, id, nil)
	if err != nil {
		return err
	}
	g, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printGroup(g)
}

func groupsAdd(s *session, args []string) error {
	fs := s.flags("NAME [flags]", "Create a group. Members are users or other groups, without cycles.")
	address := fs.String("address", "", "the list's `address` (optional)")
	description := fs.String("description", "", "what the group is, for people")
	members := listFlag(fs, "member", "a member, `user:USERNAME or group:NAME`")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	set := given(fs)
	body := usersclient.GroupCreate{Name: pos[0]}
	if set["address"] {
		body.Address = address
	}
	if set["description"] {
		body.Description = description
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	if set["member"] {
		m, err := s.parseMembers(members.list())
		if err != nil {
			return err
		}
		body.Members = &m
	}
	r, err := c.CreateGroupWithResponse(s.ctx, body)
	if err != nil {
		return err
	}
	g, err := answer(r.HTTPResponse, r.Body, http.StatusCreated, r.JSON201)
	if err != nil {
		return err
	}
	return s.printGroup(g)
}

func groupsEdit(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", `Change a group: only the flags given are changed; --member replaces the
whole list of members (--member "" empties it).`)
	address := fs.String("address", "", "the list's `address` (\"\" for none)")
	description := fs.String("description", "", "what the group is, for people")
	members := listFlag(fs, "member", "a member, `user:USERNAME or group:NAME`")
	ifMatch := fs.String("if-match", "", "change only if the group still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	set := given(fs)
	var patch usersclient.GroupPatch
	if set["address"] {
		patch.Address = address
	}
	if set["description"] {
		patch.Description = description
	}
	if !set["address"] && !set["description"] && !set["member"] {
		return usageErrorf("nothing to change: give --address, --description or --member")
	}
	if _, err := s.connect(); err != nil {
		return err
	}
	if set["member"] {
		m, err := s.parseMembers(members.list())
		if err != nil {
			return err
		}
		patch.Members = &m
	}
	id, err := s.groupID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.UpdateGroupWithResponse(s.ctx, id, &usersclient.UpdateGroupParams{IfMatch: etag(*ifMatch)}, patch)
	if err != nil {
		return err
	}
	g, err := answer(r.HTTPResponse, r.Body, http.StatusOK, r.JSON200)
	if err != nil {
		return err
	}
	return s.printGroup(g)
}

func groupsDelete(s *session, args []string) error {
	fs := s.flags("NAME|ID [flags]", "Delete a group; it leaves the groups, users and templates that name it.")
	ifMatch := fs.String("if-match", "", "delete only if the group still has this `version` (or ETag)")
	pos, err := s.parse(fs, args, 1)
	if err != nil {
		return err
	}
	id, err := s.groupID(pos[0])
	if err != nil {
		return err
	}
	r, err := s.client.DeleteGroupWithResponse(s.ctx, id, &usersclient.DeleteGroupParams{IfMatch: etag(*ifMatch)})
	if err != nil {
		return err
	}
	if err := expect(r.HTTPResponse, r.Body, http.StatusNoContent); err != nil {
		return err
	}
	s.say("deleted group %s\n", pos[0])
	return nil
}
