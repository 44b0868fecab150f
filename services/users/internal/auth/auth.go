// Package auth is the users service's API tokens: their secrets, how a
// request's bearer token becomes a Principal, and what each role may do.
//
// A token secret is "pst_<token id>_<43 characters of base64url randomness>".
// Only the SHA-256 of the whole secret is stored: a leaked database does not
// give working tokens, and the id in the secret finds the row without a scan.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/postern/postern/services/users/internal/directory"
)

const secretPrefix = "pst_"

// NewSecret returns a fresh secret for the token id and the hash to store.
func NewSecret(id string) (secret, hash string, err error) {
	if id == "" || strings.Contains(id, "_") {
		return "", "", fmt.Errorf("token id %q cannot carry a secret (empty or contains '_')", id)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("token secret: %w", err)
	}
	secret = secretPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, HashSecret(secret), nil
}

// HashSecret is the stored form of a secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// TokenID extracts the token id from a presented secret. ok is false when
// the string does not have the shape of a Postern token.
func TokenID(secret string) (id string, ok bool) {
	rest, found := strings.CutPrefix(secret, secretPrefix)
	if !found {
		return "", false
	}
	id, random, found := strings.Cut(rest, "_")
	if !found || id == "" || len(random) != 43 {
		return "", false
	}
	return id, true
}

// Matches reports whether secret hashes to hash, in constant time.
func Matches(secret, hash string) bool {
	got := HashSecret(secret)
	return subtle.ConstantTimeCompare([]byte(got), []byte(hash)) == 1
}

// Principal is who is calling: the token and its role.
type Principal struct {
	TokenID string
	Name    string
	Role    string
	Site    string // for site_admin and site_agent
}

// FromToken is the principal a stored token stands for.
func FromToken(t directory.Token) Principal {
	return Principal{TokenID: t.ID, Name: t.Name, Role: t.Role, Site: t.Site}
}

// Actor names the principal in the audit log.
func (p Principal) Actor() string {
	if p.Name == "" {
		return "token:" + p.TokenID
	}
	return "token:" + p.TokenID + " (" + p.Name + ")"
}

// IsAdmin may do everything.
func (p Principal) IsAdmin() bool { return p.Role == directory.RoleAdmin }

// CanRead reports whether the principal may read objects of kind (for
// users, also check CanReadUser with the user's site).
func (p Principal) CanRead(kind string) bool {
	switch p.Role {
	case directory.RoleAdmin, directory.RoleReader:
		return kind != directory.KindToken || p.Role == directory.RoleAdmin
	case directory.RoleSiteAdmin:
		return kind == directory.KindUser
	}
	return false
}

// CanReadUser reports whether the principal may read a user of site.
func (p Principal) CanReadUser(site string) bool {
	switch p.Role {
	case directory.RoleAdmin, directory.RoleReader:
		return true
	case directory.RoleSiteAdmin:
		return site == p.Site
	}
	return false
}

// CanWriteUser reports whether the principal may create, edit, delete or
// reset the password of a user of site. A move needs it for both sites.
func (p Principal) CanWriteUser(site string) bool {
	switch p.Role {
	case directory.RoleAdmin:
		return true
	case directory.RoleSiteAdmin:
		return site == p.Site
	}
	return false
}

// CanWrite reports whether the principal may write objects of kind other
// than users: only administrators.
func (p Principal) CanWrite(kind string) bool {
	return p.Role == directory.RoleAdmin
}

// CanSync reports whether the principal may read the sync feed of site.
func (p Principal) CanSync() (site string, ok bool) {
	if p.Role == directory.RoleSiteAgent && p.Site != "" {
		return p.Site, true
	}
	return "", false
}
