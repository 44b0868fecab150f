package auth

import (
	"strings"
	"testing"

	"github.com/postern/postern/services/users/internal/directory"
)

func TestSecretRoundTrip(t *testing.T) {
	secret, hash, err := NewSecret("0193a1b2-c3d4")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(hash, secret) || len(hash) != 64 {
		t.Fatalf("hash %q is not a SHA-256 hex of the secret", hash)
	}
	id, ok := TokenID(secret)
	if !ok || id != "0193a1b2-c3d4" {
		t.Fatalf("TokenID(%q) = %q, %v", secret, id, ok)
	}
	if !Matches(secret, hash) {
		t.Error("the secret does not match its own hash")
	}
	if Matches(secret+"x", hash) || Matches(strings.Replace(secret, "pst_", "pst-", 1), hash) {
		t.Error("a different secret matches")
	}
	other, _, _ := NewSecret("0193a1b2-c3d4")
	if other == secret {
		t.Error("two secrets for one id are equal")
	}
}

func TestTokenIDRejectsOtherShapes(t *testing.T) {
	for _, s := range []string{"", "pst_", "pst_id", "pst__" + strings.Repeat("a", 43), "Bearer pst_x_" + strings.Repeat("a", 43), "pst_x_short", "xyz_x_" + strings.Repeat("a", 43)} {
		if _, ok := TokenID(s); ok {
			t.Errorf("TokenID(%q) accepted", s)
		}
	}
	if _, _, err := NewSecret("a_b"); err == nil {
		t.Error("an id with '_' was accepted")
	}
}

func TestRoles(t *testing.T) {
	admin := Principal{Role: directory.RoleAdmin}
	reader := Principal{Role: directory.RoleReader}
	hq := Principal{Role: directory.RoleSiteAdmin, Site: "hq"}
	agent := Principal{Role: directory.RoleSiteAgent, Site: "hq"}
	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"admin writes sites", admin.CanWrite(directory.KindSite), true},
		{"admin writes any user", admin.CanWriteUser("branch"), true},
		{"reader reads users", reader.CanReadUser("branch"), true},
		{"reader reads sites", reader.CanRead(directory.KindSite), true},
		{"reader does not read tokens", reader.CanRead(directory.KindToken), false},
		{"reader writes nothing", reader.CanWriteUser("hq") || reader.CanWrite(directory.KindGroup), false},
		{"site admin writes its users", hq.CanWriteUser("hq"), true},
		{"site admin not another site's", hq.CanWriteUser("branch"), false},
		{"site admin reads its users", hq.CanReadUser("hq"), true},
		{"site admin not another site's users", hq.CanReadUser("branch"), false},
		{"site admin writes no groups", hq.CanWrite(directory.KindGroup), false},
		{"site admin reads no pop3 accounts", hq.CanRead(directory.KindPOP3Account), false},
		{"agent reads nothing", agent.CanRead(directory.KindUser) || agent.CanReadUser("hq"), false},
		{"agent writes nothing", agent.CanWriteUser("hq"), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if site, ok := agent.CanSync(); !ok || site != "hq" {
		t.Errorf("agent sync = %q %v", site, ok)
	}
	for _, p := range []Principal{admin, reader, hq} {
		if _, ok := p.CanSync(); ok {
			t.Errorf("%s may sync", p.Role)
		}
	}
}
