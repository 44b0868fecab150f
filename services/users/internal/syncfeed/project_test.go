package syncfeed

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/users/internal/directory"
)

type fakeBox struct{}

func (fakeBox) Open(sealed string) (string, error) {
	if p, ok := strings.CutPrefix(sealed, "sealed:"); ok {
		return p, nil
	}
	return "", errors.New("not sealed by this box")
}

func change(t *testing.T, kind string, v any) directory.Change {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return directory.Change{Seq: 7, Kind: kind, ID: "x", Op: events.OpUpsert, Data: b}
}

func TestUserPasswordHashOnlyForItsOwnSite(t *testing.T) {
	u := directory.User{Username: "John", PrimaryAddress: "John@Example.com", Aliases: []string{"j@example.com"}, Site: "hq", PasswordHash: "{ARGON2ID}$argon2id$secret"}
	c := change(t, directory.KindUser, u)
	for _, tt := range []struct {
		view     View
		wantHash bool
	}{
		{View{Site: "hq", Open: fakeBox{}}, true},
		{View{Site: "branch", Open: fakeBox{}}, false},
		{View{}, false},
	} {
		out, ok, err := tt.view.Project(c)
		if err != nil || !ok {
			t.Fatalf("site %q: %v %v", tt.view.Site, ok, err)
		}
		has := strings.Contains(string(out.Data), "$argon2id$secret")
		if has != tt.wantHash {
			t.Errorf("site %q: password hash present = %v, want %v: %s", tt.view.Site, has, tt.wantHash, out.Data)
		}
		if want := []string{"j@example.com", "john", "john@example.com"}; !reflect.DeepEqual(out.Keys, want) {
			t.Errorf("keys = %q, want %q", out.Keys, want)
		}
		if !strings.Contains(string(out.Data), `"site":"hq"`) {
			t.Errorf("home site missing from every view: %s", out.Data)
		}
	}
}

func TestPOP3PasswordOnlyForTheDownloadingSite(t *testing.T) {
	a := directory.POP3Account{Name: "isp-sales", Host: "pop.isp.example", Site: "hq", PasswordEnc: "sealed:hunter2"}
	c := change(t, directory.KindPOP3Account, a)

	own, ok, err := View{Site: "hq", Open: fakeBox{}}.Project(c)
	if err != nil || !ok || own.Op != events.OpUpsert {
		t.Fatalf("own site: %+v %v %v", own, ok, err)
	}
	var got POP3AccountView
	if err := json.Unmarshal(own.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Password != "hunter2" || strings.Contains(string(own.Data), "sealed:") {
		t.Errorf("own site view: %s", own.Data)
	}

	other, ok, err := View{Site: "branch", Open: fakeBox{}}.Project(c)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if other.Op != events.OpDelete || other.Data != nil {
		t.Errorf("another site's account must reach a site as a delete, got %+v", other)
	}

	public, ok, err := View{}.Project(c)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if strings.Contains(string(public.Data), "hunter2") || strings.Contains(string(public.Data), "sealed") {
		t.Errorf("public view carries the secret: %s", public.Data)
	}

	if _, _, err := (View{Site: "hq", Open: fakeBox{}}).Project(change(t, directory.KindPOP3Account, directory.POP3Account{Site: "hq", PasswordEnc: "garbage"})); err == nil || strings.Contains(err.Error(), "garbage") {
		t.Errorf("undecryptable password: err = %v (must fail without echoing the value)", err)
	}
}

func TestDeletesAndHiddenKinds(t *testing.T) {
	del := directory.Change{Seq: 9, Kind: directory.KindUser, ID: "u1", Op: events.OpDelete}
	out, ok, err := View{Site: "hq", Open: fakeBox{}}.Project(del)
	if err != nil || !ok || out.Op != events.OpDelete || out.ID != "u1" || out.Seq != 9 {
		t.Errorf("delete: %+v %v %v", out, ok, err)
	}
	if _, ok, _ := (View{Site: "hq"}).Project(change(t, directory.KindTemplate, directory.Template{Name: "staff"})); ok {
		t.Error("templates reach the sites")
	}
	if _, _, err := (View{}).Project(directory.Change{Kind: directory.KindUser, Op: events.OpUpsert, Data: []byte("{")}); err == nil {
		t.Error("corrupt data accepted")
	}
}

// With Unopened set, a password Open refuses leaves the account without
// it, and Unopened hears of the account and of the key that sealed it.
func TestUnopenedPasswordIsLeftOut(t *testing.T) {
	a := directory.POP3Account{Meta: directory.Meta{ID: "acct-1"}, Name: "isp-old", Host: "pop.isp.example", Site: "hq",
		PasswordEnc: "v1:k-old:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
	var gotID, gotKey string
	v := View{Site: "hq", Open: fakeBox{}, Unopened: func(id, keyID string, err error) {
		if err == nil {
			t.Error("Unopened without the error")
		}
		gotID, gotKey = id, keyID
	}}
	out, ok, err := v.Project(change(t, directory.KindPOP3Account, a))
	if err != nil || !ok || out.Op != events.OpUpsert {
		t.Fatalf("projection: %+v %v %v", out, ok, err)
	}
	if strings.Contains(string(out.Data), "password") || !strings.Contains(string(out.Data), `"name":"isp-old"`) {
		t.Errorf("the account without its password: %s", out.Data)
	}
	if gotID != "acct-1" || gotKey != "k-old" {
		t.Errorf("Unopened heard of account %q, key %q; want acct-1, k-old", gotID, gotKey)
	}
}
