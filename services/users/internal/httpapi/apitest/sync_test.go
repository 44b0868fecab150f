package apitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	uc "github.com/postern/postern/api/usersclient"
)

// syncAll reads the feed from cursor until a response says more: false,
// and returns every change, the last cursor and whether the first
// response was a snapshot.
func syncAll(t *testing.T, c *client, cursor string) (changes []uc.SyncChange, next string, snapshot bool) {
	t.Helper()
	next = cursor
	for i := 0; ; i++ {
		p := &uc.GetSyncParams{}
		if next != "" {
			p.Cursor = ptr(next)
		}
		r, err := c.GetSyncWithResponse(t.Context(), p)
		wantStatus(t, c.who+": sync from "+next, r, err, http.StatusOK)
		s := r.JSON200
		if _, err := strconv.ParseUint(s.Cursor, 10, 64); err != nil {
			t.Fatalf("%s: sync cursor %q is not numeric", c.who, s.Cursor)
		}
		if i == 0 {
			snapshot = s.Snapshot
		} else if s.Snapshot {
			t.Errorf("%s: a snapshot in the middle of a catch-up", c.who)
		}
		changes = append(changes, s.Changes...)
		next = s.Cursor
		if !s.More {
			return changes, next, snapshot
		}
		if i > 100 {
			t.Fatalf("%s: sync never says more: false", c.who)
		}
	}
}

// byID indexes changes by object id (the last change of each wins).
func byID(changes []uc.SyncChange) map[string]uc.SyncChange {
	m := map[string]uc.SyncChange{}
	for _, c := range changes {
		m[c.ID] = c
	}
	return m
}

func dataOf(t *testing.T, c uc.SyncChange) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(c.Data, &m); err != nil {
		t.Errorf("change %d (%s %s): data is not a JSON object: %v: %s", c.Seq, c.Kind, c.ID, err, c.Data)
	}
	return m
}

// checkSeqs checks that changes come in order of seq after the cursor;
// the changes of a snapshot may share the snapshot's seq.
func checkSeqs(t *testing.T, what string, changes []uc.SyncChange, after string, snapshot bool) {
	t.Helper()
	prev, _ := strconv.ParseInt(after, 10, 64)
	for i, c := range changes {
		if c.Seq < prev || (c.Seq == prev && !(snapshot && i > 0)) {
			t.Errorf("%s: change seq %d after %d: not in order", what, c.Seq, prev)
		}
		prev = c.Seq
	}
}

// syncWorld is the directory the sync tests start from.
type syncWorld struct {
	alice, bob, mgr, staff uc.User
	group                  uc.Group
	shared                 uc.SharedMailbox
	tpl                    uc.Template
	ispHQ, ispBranch       uc.POP3Account
	ispMover               uc.POP3Account
	pwHQ, pwBranch, pwMove string
	agentHQ, agentBranch   *client
	agentHQTok             uc.CreatedToken
}

func (e *env) syncWorld(t *testing.T) *syncWorld {
	t.Helper()
	e.mkSites(t)
	w := &syncWorld{}
	w.alice = e.mkUser(t, uc.UserCreate{Username: "alice", Site: ptr("hq"), Aliases: &[]string{"Alice.M@hq.example.org"}, PasswordHash: ptr(e.hashed(t, 0).hash)})
	w.bob = e.mkUser(t, uc.UserCreate{Username: "bob", Site: ptr("branch"), PasswordHash: ptr(e.hashed(t, 1).hash)})
	w.mgr = e.mkUserAt(t, "manager", "hq")
	w.staff = e.mkUserAt(t, "staff", "branch")
	w.group = e.mkGroup(t, uc.GroupCreate{Name: "team", Address: ptr("team@hq.example.org"),
		Members: &[]uc.Member{{Type: uc.MemberTypeUser, ID: w.alice.ID}, {Type: uc.MemberTypeUser, ID: w.bob.ID}}})
	w.shared = e.mkShared(t, uc.SharedMailboxCreate{Address: "sales@hq.example.org", Manager: w.mgr.ID, Staff: &[]string{w.staff.ID}})
	w.tpl = e.mkTemplate(t, uc.TemplateCreate{Name: "staff", Site: ptr("hq")})
	w.pwHQ = e.pop3Password("agent-hq")
	w.pwBranch = e.pop3Password("agent-branch")
	w.pwMove = e.pop3Password("agent-hq", "agent-branch")
	w.ispHQ = e.mkPOP3(t, singlePOP3("isp-hq", "hq", w.alice.ID, w.pwHQ))
	w.ispBranch = e.mkPOP3(t, singlePOP3("isp-branch", "branch", w.bob.ID, w.pwBranch))
	w.ispMover = e.mkPOP3(t, singlePOP3("isp-mover", "hq", w.mgr.ID, w.pwMove))
	w.agentHQ, w.agentHQTok = e.mkToken(t, "agent-hq", uc.TokenRoleSiteAgent, "hq")
	w.agentBranch, _ = e.mkToken(t, "agent-branch", uc.TokenRoleSiteAgent, "branch")
	return w
}

func testSync(t *testing.T, e *env) {
	ctx := t.Context()
	c := e.admin
	w := e.syncWorld(t)

	// cursor 0: a snapshot of hq's view
	snap, cur, isSnap := syncAll(t, w.agentHQ, "")
	if !isSnap {
		t.Errorf("agent-hq: sync without a cursor is not a snapshot")
	}
	checkSeqs(t, "agent-hq snapshot", snap, "0", true)
	got := byID(snap)
	if len(got) != len(snap) {
		t.Errorf("agent-hq snapshot: %d changes for %d objects: an object appears twice", len(snap), len(got))
	}
	want := map[string]uc.ChangeKind{
		"hq": uc.ChangeKindSite, "branch": uc.ChangeKindSite,
		w.alice.ID: uc.ChangeKindUser, w.bob.ID: uc.ChangeKindUser, w.mgr.ID: uc.ChangeKindUser, w.staff.ID: uc.ChangeKindUser,
		w.group.ID: uc.ChangeKindGroup, w.shared.ID: uc.ChangeKindSharedMailbox,
		w.ispHQ.ID: uc.ChangeKindPOP3Account, w.ispMover.ID: uc.ChangeKindPOP3Account,
	}
	for id, kind := range want {
		ch, ok := got[id]
		if !ok || ch.Kind != kind || ch.Op != uc.ChangeOpUpsert || len(ch.Data) == 0 {
			t.Errorf("agent-hq snapshot: %s %s: got %s", kind, id, js(ch))
		}
	}
	for id, ch := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("agent-hq snapshot: unexpected %s %s (templates, tokens and other sites' POP3 accounts are never there): %s", ch.Kind, id, clip(ch.Data))
		}
	}
	if a := dataOf(t, got[w.alice.ID]); a["password_hash"] != e.hashed(t, 0).hash || a["username"] != "alice" || a["site"] != "hq" {
		t.Errorf("agent-hq snapshot: alice (of hq) %s, want her password_hash", clip(got[w.alice.ID].Data))
	}
	if b := dataOf(t, got[w.bob.ID]); b["password_hash"] != nil && b["password_hash"] != "" {
		t.Errorf("agent-hq snapshot: bob (of branch) carries a password_hash: %s", clip(got[w.bob.ID].Data))
	}
	if k := got[w.alice.ID].Keys; !slices.Contains(k, "alice") || !slices.Contains(k, "alice@hq.example.org") || !slices.Contains(k, "alice.m@hq.example.org") {
		t.Errorf("agent-hq snapshot: alice's keys %v, want her username and addresses", k)
	}
	if p := dataOf(t, got[w.ispHQ.ID]); p["password"] != w.pwHQ || p["name"] != "isp-hq" || p["target_user"] != w.alice.ID {
		t.Errorf("agent-hq snapshot: isp-hq without its password: %s", clip(got[w.ispHQ.ID].Data))
	}
	if p := dataOf(t, got[w.ispMover.ID]); p["password"] != w.pwMove {
		t.Errorf("agent-hq snapshot: isp-mover without its password")
	}
	if s := dataOf(t, got["hq"]); s["smtp_endpoint"] != "mail.hq.example.org:25" || !slices.Contains(got["hq"].Keys, "hq.example.org") {
		t.Errorf("agent-hq snapshot: site hq %s keys %v", clip(got["hq"].Data), got["hq"].Keys)
	}
	if s := dataOf(t, got[w.shared.ID]); s["address"] != "sales@hq.example.org" || s["manager"] != w.mgr.ID {
		t.Errorf("agent-hq snapshot: shared mailbox %s", clip(got[w.shared.ID].Data))
	}

	// an explicit cursor 0 is the same snapshot
	r, err := w.agentHQ.GetSyncWithResponse(ctx, &uc.GetSyncParams{Cursor: ptr("0")})
	wantStatus(t, "agent-hq: sync cursor=0", r, err, http.StatusOK)
	if !r.JSON200.Snapshot || (!r.JSON200.More && (r.JSON200.Cursor != cur || len(r.JSON200.Changes) != len(snap))) {
		t.Errorf("agent-hq: sync cursor=0: snapshot %v, cursor %s (want %s), %d changes (want %d)",
			r.JSON200.Snapshot, r.JSON200.Cursor, cur, len(r.JSON200.Changes), len(snap))
	}

	// branch's view: its own accounts and users' hashes
	bsnap, bcur, _ := syncAll(t, w.agentBranch, "0")
	bgot := byID(bsnap)
	if _, ok := bgot[w.ispHQ.ID]; ok {
		t.Errorf("agent-branch snapshot holds hq's POP3 account")
	}
	if _, ok := bgot[w.ispMover.ID]; ok {
		t.Errorf("agent-branch snapshot holds isp-mover, downloaded by hq")
	}
	if p := dataOf(t, bgot[w.ispBranch.ID]); p["password"] != w.pwBranch {
		t.Errorf("agent-branch snapshot: isp-branch without its password: %s", clip(bgot[w.ispBranch.ID].Data))
	}
	if b := dataOf(t, bgot[w.bob.ID]); b["password_hash"] != e.hashed(t, 1).hash {
		t.Errorf("agent-branch snapshot: bob without his password_hash")
	}
	if a := dataOf(t, bgot[w.alice.ID]); a["password_hash"] != nil && a["password_hash"] != "" {
		t.Errorf("agent-branch snapshot: alice (of hq) carries a password_hash")
	}

	// nothing new: an empty answer with the same cursor
	r, err = w.agentHQ.GetSyncWithResponse(ctx, &uc.GetSyncParams{Cursor: ptr(cur), Wait: ptr(2)})
	wantStatus(t, "agent-hq: sync with nothing new, wait=2", r, err, http.StatusOK)
	if r.JSON200.Snapshot || r.JSON200.More || r.JSON200.Cursor != cur || len(r.JSON200.Changes) != 0 {
		t.Errorf("agent-hq: sync with nothing new: %s, want no changes and cursor %s", clip(r.Body), cur)
	}
	var raw struct{ Changes json.RawMessage }
	if err := json.Unmarshal(r.Body, &raw); err != nil || string(raw.Changes) != "[]" {
		t.Errorf("agent-hq: sync with nothing new: changes %s, want []", raw.Changes)
	}

	// edits, in this order
	step := func(what string, resp response, err error, status int) {
		t.Helper()
		wantStatus(t, what, resp, err, status)
	}
	up, err := c.UpdateUserWithResponse(ctx, w.alice.ID, nil, uc.UserPatch{DisplayName: ptr("Alice M.")})
	step("1. edit alice", up, err, http.StatusOK)
	carol := e.mkUser(t, uc.UserCreate{Username: "carol", Site: ptr("hq"), PasswordHash: ptr(e.hashed(t, 2).hash)}) // 2.
	pwHQ2 := e.pop3Password("agent-hq")
	ua, err := c.UpdatePOP3AccountWithResponse(ctx, w.ispHQ.ID, nil, uc.POP3AccountPatch{Password: ptr(pwHQ2)})
	step("3. change isp-hq's password", ua, err, http.StatusOK)
	mv, err := c.MoveUserWithResponse(ctx, w.alice.ID, nil, uc.UserMove{Site: "branch"})
	step("4. move alice to branch", mv, err, http.StatusOK)
	del, err := c.DeleteUserWithResponse(ctx, carol.ID, nil)
	step("5. delete carol", del, err, http.StatusNoContent)
	um, err := c.UpdatePOP3AccountWithResponse(ctx, w.ispMover.ID, nil, uc.POP3AccountPatch{Site: ptr("branch")})
	step("6. move isp-mover to branch", um, err, http.StatusOK)

	// hq's incremental view
	inc, cur2, isSnap := syncAll(t, w.agentHQ, cur)
	if isSnap {
		t.Errorf("agent-hq: sync from cursor %s is a snapshot", cur)
	}
	checkSeqs(t, "agent-hq incremental", inc, cur, false)
	if cur2 == cur {
		t.Errorf("agent-hq: the cursor did not move after six writes")
	}
	// first and last change of each object, by position
	first, last := map[string]int{}, map[string]int{}
	for i, ch := range inc {
		if _, ok := first[ch.ID]; !ok {
			first[ch.ID] = i
		}
		last[ch.ID] = i
	}
	for _, id := range []string{w.alice.ID, carol.ID, w.ispHQ.ID, w.ispMover.ID} {
		if _, ok := first[id]; !ok {
			t.Fatalf("agent-hq incremental: no change for %s: %s", id, js(inc))
		}
	}
	order := []int{first[w.alice.ID], first[carol.ID], first[w.ispHQ.ID], last[w.alice.ID], last[carol.ID], last[w.ispMover.ID]}
	if !slices.IsSorted(order) || first[w.alice.ID] == last[w.alice.ID] || first[carol.ID] == last[carol.ID] {
		t.Errorf("agent-hq incremental: changes not in the order of the writes (positions %v): %s", order, js(inc))
	}
	// 1. the edit, while alice was at hq: with her hash
	if a := dataOf(t, inc[first[w.alice.ID]]); a["display_name"] != "Alice M." || a["password_hash"] != e.hashed(t, 0).hash {
		t.Errorf("agent-hq: alice's edit: %s", clip(inc[first[w.alice.ID]].Data))
	}
	// 2. carol created
	if ch := inc[first[carol.ID]]; ch.Op != uc.ChangeOpUpsert || dataOf(t, ch)["username"] != "carol" {
		t.Errorf("agent-hq: carol's creation: %s", js(ch))
	}
	// 3. the new POP3 password
	if ch := inc[last[w.ispHQ.ID]]; ch.Op != uc.ChangeOpUpsert || dataOf(t, ch)["password"] != pwHQ2 {
		t.Errorf("agent-hq: isp-hq's new password did not arrive: %s", clip(ch.Data))
	}
	// 4. the move: alice is now branch's, her hash no longer hq's to see
	if ch := inc[last[w.alice.ID]]; ch.Op != uc.ChangeOpUpsert {
		t.Errorf("agent-hq: alice's move: %s", js(ch))
	} else if a := dataOf(t, ch); a["site"] != "branch" || (a["password_hash"] != nil && a["password_hash"] != "") {
		t.Errorf("agent-hq: alice's move: %s, want site branch without a password_hash", clip(ch.Data))
	}
	// 5. carol deleted
	if ch := inc[last[carol.ID]]; ch.Op != uc.ChangeOpDelete || ch.Kind != uc.ChangeKindUser || len(ch.Data) != 0 {
		t.Errorf("agent-hq: carol's deletion: %s", js(ch))
	}
	// 6. isp-mover left hq's view
	if ch := inc[last[w.ispMover.ID]]; ch.Op != uc.ChangeOpDelete || ch.Kind != uc.ChangeKindPOP3Account {
		t.Errorf("agent-hq: isp-mover moved to branch: %s, want a delete", js(ch))
	}

	// branch's incremental view: alice arrives with her hash, isp-mover with its password
	binc, _, _ := syncAll(t, w.agentBranch, bcur)
	checkSeqs(t, "agent-branch incremental", binc, bcur, false)
	bl := byID(binc)
	if a := dataOf(t, bl[w.alice.ID]); a["site"] != "branch" || a["password_hash"] != e.hashed(t, 0).hash {
		t.Errorf("agent-branch: alice moved in: %s, want her password_hash", clip(bl[w.alice.ID].Data))
	}
	if ch := bl[w.ispMover.ID]; ch.Op != uc.ChangeOpUpsert || dataOf(t, ch)["password"] != w.pwMove {
		t.Errorf("agent-branch: isp-mover moved in: %s, want it with its password", clip(ch.Data))
	}
	if ch, ok := bl[w.ispHQ.ID]; ok && ch.Op != uc.ChangeOpDelete {
		t.Errorf("agent-branch: hq's POP3 account arrives as %s", ch.Op)
	}

	// only site agents read the feed
	sa, _ := e.mkToken(t, "hq-admin", uc.TokenRoleSiteAdmin, "hq")
	rd, _ := e.mkToken(t, "reader", uc.TokenRoleReader, "")
	for _, cl := range []*client{e.admin, sa, rd} {
		r, err := cl.GetSyncWithResponse(ctx, nil)
		wantProblem(t, cl.who+": sync", r, err, http.StatusForbidden, typeForbidden)
	}
	// a malformed cursor
	r, err = w.agentHQ.GetSyncWithResponse(ctx, &uc.GetSyncParams{Cursor: ptr("abc")})
	wantProblem(t, "agent-hq: sync cursor=abc", r, err, http.StatusBadRequest, typeBadRequest)
	r, err = w.agentHQ.GetSyncWithResponse(ctx, &uc.GetSyncParams{Wait: ptr(121)})
	wantProblem(t, "agent-hq: sync wait=121", r, err, http.StatusBadRequest, typeBadRequest)

	// a revoked agent is refused
	d, err := c.DeleteTokenWithResponse(ctx, w.agentHQTok.ID, nil)
	wantStatus(t, "revoke agent-hq", d, err, http.StatusNoContent)
	r, err = w.agentHQ.GetSyncWithResponse(ctx, &uc.GetSyncParams{Cursor: ptr(cur2)})
	if checkStatus(t, "revoked agent-hq: sync", r, err, http.StatusUnauthorized) {
		checkWWWAuthenticate(t, "revoked agent-hq: sync", r.Headers401)
	}
}

func testSyncLongPoll(t *testing.T, e *env) {
	e.mkSites(t)
	alice := e.mkUserAt(t, "alice", "hq")
	agent, _ := e.mkToken(t, "agent-hq", uc.TokenRoleSiteAgent, "hq")
	_, cur, _ := syncAll(t, agent, "0")

	type result struct {
		r   *uc.GetSyncResponse
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
	defer cancel()
	go func() {
		r, err := agent.GetSyncWithResponse(ctx, &uc.GetSyncParams{Cursor: ptr(cur), Wait: ptr(30)})
		done <- result{r, err}
	}()
	time.Sleep(300 * time.Millisecond) // let the poll start waiting; not a timing assertion
	up, err := e.admin.UpdateUserWithResponse(t.Context(), alice.ID, nil, uc.UserPatch{DisplayName: ptr("Woken")})
	wantStatus(t, "edit alice during the long poll", up, err, http.StatusOK)

	var res result
	select {
	case res = <-done:
	case <-time.After(28 * time.Second):
		t.Fatal("the long poll did not return")
	}
	if res.err != nil {
		t.Fatalf("the long poll failed (a write did not wake it before the client's deadline?): %v", res.err)
	}
	wantStatus(t, "long poll", res.r, nil, http.StatusOK)
	s := res.r.JSON200
	found := false
	for _, ch := range s.Changes {
		if ch.ID == alice.ID && ch.Op == uc.ChangeOpUpsert && dataOf(t, ch)["display_name"] == "Woken" {
			found = true
		}
	}
	if !found || s.Cursor == cur || s.Snapshot {
		t.Errorf("the long poll returned %s, want alice's edit and a new cursor", clip(res.r.Body))
	}
}

func testSyncAfterCompaction(t *testing.T, e *env) {
	ctx := t.Context()
	e.mkSites(t)
	agent, _ := e.mkToken(t, "agent-hq", uc.TokenRoleSiteAgent, "hq")
	alice := e.mkUserAt(t, "alice", "hq")
	_, cur, _ := syncAll(t, agent, "0")
	bob := e.mkUserAt(t, "bob", "hq")
	d, err := e.admin.DeleteUserWithResponse(ctx, alice.ID, nil)
	wantStatus(t, "delete alice", d, err, http.StatusNoContent)

	// the server forgets the changes the agent has not read
	last, err := e.store.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Compact(ctx, last, time.Time{}); err != nil {
		t.Fatal(err)
	}
	changes, _, isSnap := syncAll(t, agent, cur)
	if !isSnap {
		t.Fatalf("sync from a cursor older than the log: not a snapshot: %s", js(changes))
	}
	got := byID(changes)
	if _, ok := got[alice.ID]; ok {
		t.Errorf("the snapshot holds deleted alice")
	}
	if ch, ok := got[bob.ID]; !ok || ch.Op != uc.ChangeOpUpsert {
		t.Errorf("the snapshot lacks bob")
	}
}

func testSyncMore(t *testing.T, e *env) {
	e.mkSites(t)
	agent, _ := e.mkToken(t, "agent-hq", uc.TokenRoleSiteAgent, "hq")
	_, cur, _ := syncAll(t, agent, "0")

	// one import writes more changes than one incremental response holds
	const n = 1100
	h := e.hashed(t, 0).hash
	var b strings.Builder
	b.WriteString("username,description,password_hash,site\n")
	for i := range n {
		b.WriteString(csvLine(fmt.Sprintf("bulk%04d", i), "Bulk", h, []string{"hq", "branch"}[i%2]))
	}
	r := e.importCSV(t, e.admin, b.String(), nil)
	wantStatus(t, "import 1100 users", r, nil, http.StatusOK)

	first, err := agent.GetSyncWithResponse(t.Context(), &uc.GetSyncParams{Cursor: ptr(cur)})
	wantStatus(t, "agent-hq: sync after the import", first, err, http.StatusOK)
	if !first.JSON200.More || first.JSON200.Snapshot || len(first.JSON200.Changes) == 0 || len(first.JSON200.Changes) >= n {
		t.Errorf("agent-hq: the first response after %d changes: more %v, snapshot %v, %d changes; want a bounded batch and more: true",
			n, first.JSON200.More, first.JSON200.Snapshot, len(first.JSON200.Changes))
	}
	changes, _, _ := syncAll(t, agent, cur)
	checkSeqs(t, "agent-hq catching up", changes, cur, false)
	users := 0
	for _, ch := range changes {
		if ch.Kind == uc.ChangeKindUser && ch.Op == uc.ChangeOpUpsert {
			users++
			d := dataOf(t, ch)
			hasHash := d["password_hash"] != nil && d["password_hash"] != ""
			if hasHash != (d["site"] == "hq") {
				t.Errorf("agent-hq: %s of %s with password_hash %v", d["username"], d["site"], hasHash)
			}
		}
	}
	if users != n {
		t.Errorf("agent-hq caught up with %d user upserts, want %d", users, n)
	}
}
