package admin

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/postern/postern/api/usersclient"
)

func auditList(s *session, args []string) error {
	fs := s.flags("[flags]", `List the audit log, newest first: every write with its actor, target and a
diff in which secrets are masked. Filters combine. --since and --until take
an RFC 3339 time, a date, or a duration back from now (24h, 7d).`)
	actor := fs.String("actor", "", "only the writes of this `actor`, as shown (token:<id> (<name>))")
	action := fs.String("action", "", "only this `action`, such as user.move")
	kind := fs.String("target-kind", "", "only writes to objects of this `kind`: site, user, group, pop3_account, shared_mailbox, template, token")
	target := fs.String("target-id", "", "only writes to the object with this `id`")
	since := fs.String("since", "", "only entries at or after this `time`")
	until := fs.String("until", "", "only entries before this `time`")
	lo := listFlags(fs)
	if _, err := s.parse(fs, args, 0); err != nil {
		return err
	}
	set := given(fs)
	params := usersclient.ListAuditEntriesParams{}
	if set["actor"] {
		params.Actor = actor
	}
	if set["action"] {
		params.Action = action
	}
	if set["target-kind"] {
		params.TargetKind = kind
	}
	if set["target-id"] {
		params.TargetID = target
	}
	now := time.Now()
	if set["since"] {
		t, err := parseTime("since", *since, now, true)
		if err != nil {
			return err
		}
		params.Since = &t
	}
	if set["until"] {
		t, err := parseTime("until", *until, now, true)
		if err != nil {
			return err
		}
		params.Until = &t
	}
	c, err := s.connect()
	if err != nil {
		return err
	}
	p, err := collect(lo, func(cursor *string, limit *int) (page[usersclient.AuditEntry], error) {
		params.Cursor, params.Limit = cursor, limit
		return pageFrom[usersclient.AuditEntry](c.ListAuditEntries(s.ctx, &params))
	})
	if err != nil {
		return err
	}
	if s.json {
		return s.printJSON(usersclient.AuditEntryList{Items: p.items, NextCursor: p.next, Total: p.total})
	}
	rows := make([][]string, 0, len(p.items))
	for _, e := range p.items {
		rows = append(rows, []string{itoa(e.ID), timestamp(e.At), e.Actor, e.Action, e.TargetKind + ":" + e.TargetID, compact(e.Diff)})
	}
	return s.printList([]string{"ID", "AT", "ACTOR", "ACTION", "TARGET", "DIFF"}, rows, p.next, p.total)
}

// compact writes JSON on one line.
func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}
