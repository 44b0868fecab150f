package directory

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/postern/postern/internal/passwd"
)

// Password policy.
const (
	MinPasswordLen = 8    // characters
	MaxPasswordLen = 1024 // bytes: bounds the hashing work one request can ask for
)

// Password schemes the directory stores (see package passwd).
const (
	SchemeArgon2ID = passwd.SchemeArgon2ID
	SchemeBlfCrypt = passwd.SchemeBlfCrypt
)

// CheckPassword reports why pw does not meet the password policy, or nil:
// valid UTF-8, at least MinPasswordLen characters, at most MaxPasswordLen
// bytes, no control characters (no mail client can send them at login).
// The reason never contains the password.
func CheckPassword(pw string) error {
	if !utf8.ValidString(pw) {
		return errors.New("not valid UTF-8")
	}
	if utf8.RuneCountInString(pw) < MinPasswordLen {
		return fmt.Errorf("shorter than %d characters", MinPasswordLen)
	}
	if len(pw) > MaxPasswordLen {
		return fmt.Errorf("longer than %d bytes", MaxPasswordLen)
	}
	for _, r := range pw {
		if isControl(r) {
			return errors.New("control characters are not allowed")
		}
	}
	return nil
}

// HashPassword checks pw against the password policy and returns its
// {ARGON2ID} hash (passwd.Hash). A policy violation is a *ValidationError on
// the field "password".
func HashPassword(pw string) (string, error) {
	if err := CheckPassword(pw); err != nil {
		return "", &ValidationError{Errors: []FieldError{{Field: "password", Reason: err.Error()}}}
	}
	return passwd.Hash(pw)
}

// VerifyPassword reports whether pw matches hash (passwd.Verify).
func VerifyPassword(hash, pw string) (bool, error) { return passwd.Verify(hash, pw) }

// CheckImportedHash reports why hash cannot be stored as a user's password
// hash, or nil (passwd.CheckHash).
func CheckImportedHash(hash string) error { return passwd.CheckHash(hash) }
