package directory

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func decodeDiff(t *testing.T, raw json.RawMessage) map[string]map[string]any {
	t.Helper()
	var m map[string]map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("diff %s is not a JSON object of changes: %v", raw, err)
	}
	return m
}

func TestDiffUpdate(t *testing.T) {
	before := &User{Meta: Meta{ID: "u1", Version: 1, UpdatedAt: time.Unix(1, 0)}, Username: "john", DisplayName: "John",
		PrimaryAddress: "john@example.org", Aliases: []string{}, Site: "hq", Groups: []string{"sales"}, Enabled: true}
	after := *before
	after.Version, after.UpdatedAt = 2, time.Unix(2, 0)
	after.Site = "branch"
	after.Groups = []string{"sales", "support"}
	after.Permissions.InternetSend = true
	d := decodeDiff(t, Diff(before, &after))
	want := map[string]map[string]any{
		"site":                      {"from": "hq", "to": "branch"},
		"groups":                    {"from": []any{"sales"}, "to": []any{"sales", "support"}},
		"permissions.internet_send": {"from": false, "to": true},
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("diff = %v\nwant %v", d, want)
	}
	if got := string(Diff(before, before)); got != "{}" {
		t.Errorf("diff of equal objects = %s, want {}", got)
	}
}

func TestDiffCreateDelete(t *testing.T) {
	g := &Group{Meta: Meta{ID: "g1", Version: 1}, Name: "sales", Members: []Member{{Type: MemberUser, ID: "u1"}}}
	created := decodeDiff(t, Diff(nil, g))
	if created["name"]["to"] != "sales" || created["id"]["to"] != "g1" {
		t.Errorf("creation diff = %v", created)
	}
	for k, ch := range created {
		if _, ok := ch["from"]; ok || len(ch) != 1 {
			t.Errorf("creation diff field %s = %v, want only \"to\"", k, ch)
		}
	}
	if _, ok := created["version"]; ok {
		t.Error("version is in the diff")
	}
	var nilGroup *Group
	deleted := decodeDiff(t, Diff(g, nilGroup)) // a typed nil is a deletion too
	if deleted["name"]["from"] != "sales" {
		t.Errorf("deletion diff = %v", deleted)
	}
	for k, ch := range deleted {
		if _, ok := ch["to"]; ok || len(ch) != 1 {
			t.Errorf("deletion diff field %s = %v, want only \"from\"", k, ch)
		}
	}
	if got := string(Diff(nil, nil)); got != "{}" {
		t.Errorf("Diff(nil, nil) = %s", got)
	}
	if got := string(Diff(func() {}, nil)); !strings.Contains(got, "unavailable") {
		t.Errorf("Diff of an unmarshallable value = %s", got)
	}
}

func TestDiffMasksSecrets(t *testing.T) {
	const (
		hash1 = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2VjcmV0LWhhc2gtb25l$aGFzaC1vbmU"
		hash2 = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2VjcmV0LWhhc2gtdHdv$aGFzaC10d28"
		enc1  = "v1:k1:ZW5jcnlwdGVkLXBhc3N3b3JkLW9uZQ=="
		enc2  = "v1:k1:ZW5jcnlwdGVkLXBhc3N3b3JkLXR3bw=="
	)
	secrets := []string{hash1, hash2, enc1, enc2, "plain-pw-1", "plain-pw-2", "tok-secret", "nested-secret"}
	check := func(name string, raw json.RawMessage) map[string]map[string]any {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(string(raw), s) {
				t.Errorf("%s: diff %s contains the secret %q", name, raw, s)
			}
		}
		return decodeDiff(t, raw)
	}

	u1 := &User{Username: "john", PasswordHash: hash1}
	u2 := &User{Username: "john", PasswordHash: hash2}
	d := check("user password change", Diff(u1, u2))
	if want := (map[string]any{"from": Mask, "to": Mask}); !reflect.DeepEqual(d["password_hash"], want) {
		t.Errorf("password change = %v, want %v", d["password_hash"], want)
	}
	d = check("user creation", Diff(nil, u1))
	if d["password_hash"]["to"] != Mask {
		t.Errorf("creation shows password_hash as %v", d["password_hash"])
	}
	d = check("user deletion", Diff(u2, nil))
	if d["password_hash"]["from"] != Mask {
		t.Errorf("deletion shows password_hash as %v", d["password_hash"])
	}
	d = check("password set", Diff(&User{Username: "john"}, u1))
	if want := (map[string]any{"from": nil, "to": Mask}); !reflect.DeepEqual(d["password_hash"], want) {
		t.Errorf("password set = %v, want %v", d["password_hash"], want)
	}
	if d := check("unchanged", Diff(u1, u1)); len(d) != 0 {
		t.Errorf("unchanged secret shows in the diff: %v", d)
	}

	p1 := &POP3Account{Name: "isp", PasswordEnc: enc1, Keep: KeepPolicy{Policy: KeepDelete}}
	p2 := &POP3Account{Name: "isp", PasswordEnc: enc2, Keep: KeepPolicy{Policy: KeepDays, Days: 3}}
	d = check("pop3 password change", Diff(p1, p2))
	if d["password_enc"]["from"] != Mask || d["keep.policy"]["to"] != KeepDays {
		t.Errorf("pop3 diff = %v", d)
	}

	// Arbitrary maps: request bodies with a plain password, a token secret,
	// secrets nested in objects and lists.
	req1 := map[string]any{"password": "plain-pw-1", "secret": "tok-secret", "name": "a",
		"extra": map[string]any{"secret_hash": "nested-secret", "x": 1},
		"list":  []any{map[string]any{"password": "plain-pw-2"}}}
	req2 := map[string]any{"password": "plain-pw-2", "name": "b"}
	check("maps", Diff(req1, req2))
	check("map creation", Diff(nil, req1))
	check("map deletion", Diff(req1, nil))
	check("raw JSON", Diff(json.RawMessage(`{"password":"plain-pw-1"}`), json.RawMessage(`{"password":"plain-pw-2"}`)))
}
