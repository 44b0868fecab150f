package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/usersapi"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

func (s *testServer) create(path, body string) map[string]any {
	s.t.Helper()
	r := s.json("POST", path, s.admin, body)
	if r.status != http.StatusCreated {
		s.t.Fatalf("POST %s: %d %s", path, r.status, r.body)
	}
	var m map[string]any
	_ = json.Unmarshal(r.body, &m)
	return m
}

func (s *testServer) sync(secret string, cursor int64, wait int) usersapi.SyncResponse {
	s.t.Helper()
	r := s.do("GET", fmt.Sprintf("/v1/sync?cursor=%d&wait=%d", cursor, wait), secret, "", "")
	if r.status != http.StatusOK {
		s.t.Fatalf("sync from %d: %d %s", cursor, r.status, r.body)
	}
	var resp usersapi.SyncResponse
	if err := json.Unmarshal(r.body, &resp); err != nil {
		s.t.Fatalf("sync from %d: %v: %s", cursor, err, r.body)
	}
	if resp.Changes == nil {
		s.t.Errorf("sync from %d: changes is null", cursor)
	}
	return resp
}

func cursorOf(t *testing.T, r usersapi.SyncResponse) int64 {
	t.Helper()
	n, err := strconv.ParseInt(r.Cursor, 10, 64)
	if err != nil {
		t.Fatalf("cursor %q", r.Cursor)
	}
	return n
}

// find returns the data of the change about id, and its op.
func find(r usersapi.SyncResponse, id string) (map[string]any, string) {
	var data map[string]any
	op := ""
	for _, c := range r.Changes {
		if c.ID == id {
			data, op = nil, string(c.Op)
			_ = json.Unmarshal(c.Data, &data)
		}
	}
	return data, op
}

func TestSyncFeed(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	s.create("/v1/sites", `{"name":"branch","domains":["branch.example.org"]}`)
	alice := s.create("/v1/users", `{"username":"alice","site":"hq","password":"alice-password-1"}`)["id"].(string)
	bob := s.create("/v1/users", `{"username":"bob","site":"branch","password":"bob-password-1"}`)["id"].(string)
	hqISP := s.create("/v1/pop3-accounts", `{"name":"isp-hq","host":"pop.isp.example.net","username":"hq","password":"pop3-secret-hq","site":"hq","mode":"single","target_user":"`+alice+`"}`)["id"].(string)
	brISP := s.create("/v1/pop3-accounts", `{"name":"isp-branch","host":"pop.isp.example.net","username":"br","password":"pop3-secret-branch","site":"branch","mode":"single","target_user":"`+bob+`"}`)["id"].(string)
	s.create("/v1/templates", `{"name":"staff"}`)
	hqAgent := s.mkToken(directory.RoleSiteAgent, "hq", nil)

	if r := s.do("GET", "/v1/sync", s.admin, "", ""); r.status != http.StatusForbidden {
		t.Errorf("admin on /v1/sync: %d", r.status)
	}

	snap := s.sync(hqAgent, 0, 0)
	if !snap.Snapshot || snap.More {
		t.Fatalf("cursor 0: %+v", snap)
	}
	a, _ := find(snap, alice)
	b, _ := find(snap, bob)
	if a == nil || b == nil || a["password_hash"] == nil || b["password_hash"] != nil {
		t.Errorf("snapshot users: alice %v, bob %v", a, b)
	}
	if p, _ := find(snap, hqISP); p == nil || p["password"] != "pop3-secret-hq" || p["password_enc"] != nil {
		t.Errorf("snapshot: own POP3 account %v", p)
	}
	if p, op := find(snap, brISP); op != "" {
		t.Errorf("snapshot: another site's POP3 account %v %s", p, op)
	}
	for _, c := range snap.Changes {
		if c.Kind != usersapi.ChangeKindSite && c.Kind != usersapi.ChangeKindUser && c.Kind != usersapi.ChangeKindPOP3Account {
			t.Errorf("snapshot: change of kind %s", c.Kind)
		}
		if strings.Contains(string(c.Data), "pop3-secret-branch") {
			t.Errorf("snapshot: another site's POP3 password")
		}
	}
	cur := cursorOf(t, snap)

	// Nothing new: the same cursor, no changes.
	if r := s.sync(hqAgent, cur, 0); r.Snapshot || len(r.Changes) != 0 || cursorOf(t, r) != cur {
		t.Errorf("nothing new: %+v", r)
	}

	// An edit, a move and a delete, in order.
	if r := s.json("PATCH", "/v1/users/"+alice, s.admin, `{"display_name":"Alice"}`); r.status != 200 {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	if r := s.json("POST", "/v1/users/"+bob+"/move", s.admin, `{"site":"hq"}`); r.status != 200 {
		t.Fatalf("move: %d %s", r.status, r.body)
	}
	gone := s.create("/v1/users", `{"username":"gone","site":"hq"}`)["id"].(string)
	if r := s.do("DELETE", "/v1/users/"+gone, s.admin, "", ""); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	inc := s.sync(hqAgent, cur, 0)
	if inc.Snapshot || inc.More || cursorOf(t, inc) <= cur {
		t.Fatalf("incremental: %+v", inc)
	}
	if a, op := find(inc, alice); op != "upsert" || a["display_name"] != "Alice" {
		t.Errorf("incremental: alice %s %v", op, a)
	}
	if b, op := find(inc, bob); op != "upsert" || b["site"] != "hq" || b["password_hash"] == nil {
		t.Errorf("incremental: bob moved here %s %v", op, b)
	}
	if _, op := find(inc, gone); op != "delete" {
		t.Errorf("incremental: deleted user %s", op)
	}
	for i := 1; i < len(inc.Changes); i++ {
		if inc.Changes[i].Seq <= inc.Changes[i-1].Seq {
			t.Errorf("changes out of order: %d after %d", inc.Changes[i].Seq, inc.Changes[i-1].Seq)
		}
	}
	cur = cursorOf(t, inc)

	// Long poll: a change during the wait is answered at once.
	done := make(chan usersapi.SyncResponse, 1)
	go func() { done <- s.sync(hqAgent, cur, 5) }()
	time.Sleep(200 * time.Millisecond)
	group := s.create("/v1/groups", `{"name":"team"}`)["id"].(string)
	select {
	case r := <-done:
		if _, op := find(r, group); op != "upsert" {
			t.Errorf("long poll: %+v", r)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("long poll did not answer the change")
	}

	// A long poll with nothing new ends with the same cursor.
	last := cursorOf(t, s.sync(hqAgent, cur, 0))
	start := time.Now()
	if r := s.sync(hqAgent, last, 1); len(r.Changes) != 0 || cursorOf(t, r) != last || time.Since(start) < 900*time.Millisecond {
		t.Errorf("empty long poll: %+v after %v", r, time.Since(start))
	}

	// A cursor from another history gets a snapshot.
	if r := s.sync(hqAgent, last+1000, 0); !r.Snapshot {
		t.Errorf("cursor beyond the log: %+v", r)
	}
	if r := s.do("GET", "/v1/sync?cursor=99999999999999999999", hqAgent, "", ""); r.status != 400 {
		t.Errorf("overlong cursor: %d %s", r.status, r.body)
	}
}

// A POP3 password sealed with a key the service no longer has does not
// stop the site's sync: that account goes out without its password, the
// others with theirs, and the log names the account and the key, never
// the value.
func TestSyncSkipsAPasswordItCannotOpen(t *testing.T) {
	s := newTestServer(t)
	s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
	alice := s.create("/v1/users", `{"username":"alice","site":"hq"}`)["id"].(string)
	good := s.create("/v1/pop3-accounts", `{"name":"isp-good","host":"pop.isp.example.net","username":"good","password":"pop3-secret-good","site":"hq","mode":"single","target_user":"`+alice+`"}`)["id"].(string)
	lost := s.create("/v1/pop3-accounts", `{"name":"isp-lost","host":"pop.isp.example.net","username":"lost","password":"pop3-secret-lost","site":"hq","mode":"single","target_user":"`+alice+`"}`)["id"].(string)
	agent := s.mkToken(directory.RoleSiteAgent, "hq", nil)
	before := cursorOf(t, s.sync(agent, 0, 0))

	// The account's password, sealed with a key this server does not have.
	var key [32]byte
	key[0] = 1
	other, err := directory.NewSecretBox([]directory.SecretKey{{ID: "k-gone", Key: key}})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := other.Seal("pop3-secret-lost")
	if err != nil {
		t.Fatal(err)
	}
	err = s.store.Update(t.Context(), func(tx store.Tx) error {
		a, err := tx.GetPOP3Account(t.Context(), lost)
		if err != nil {
			return err
		}
		a.PasswordEnc = sealed
		if err := tx.UpdatePOP3Account(t.Context(), &a, a.Version); err != nil {
			return err
		}
		return tx.Audit(t.Context(), &directory.AuditEntry{Actor: "test", Action: "pop3_account.update"})
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, r := range []usersapi.SyncResponse{s.sync(agent, 0, 0), s.sync(agent, before, 0)} {
		p, op := find(r, lost)
		if op != "upsert" || p == nil || p["password"] != nil || p["password_enc"] != nil || p["name"] != "isp-lost" {
			t.Errorf("snapshot %v: the account whose password cannot be opened: %s %v", r.Snapshot, op, p)
		}
		if r.Snapshot {
			if p, _ := find(r, good); p == nil || p["password"] != "pop3-secret-good" {
				t.Errorf("snapshot: the other account %v", p)
			}
		}
	}
	logs := s.logs.String()
	if !strings.Contains(logs, "cannot be decrypted") || !strings.Contains(logs, lost) || !strings.Contains(logs, `"key_id":"k-gone"`) {
		t.Errorf("no warning naming the account and the key:\n%s", logs)
	}
	if strings.Contains(logs, "pop3-secret") || strings.Contains(logs, sealed) {
		t.Errorf("the log holds the password or its sealed form:\n%s", logs)
	}
}
