package directory

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

var argon2Form = regexp.MustCompile(`^\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestHashPasswordRoundTrip(t *testing.T) {
	for _, pw := range []string{"correct horse", "pässwörd-ünïcode", "12345678", strings.Repeat("x", MaxPasswordLen)} {
		h, err := HashPassword(pw)
		if err != nil {
			t.Fatalf("HashPassword: %v", err)
		}
		if !argon2Form.MatchString(h) {
			t.Errorf("hash %q is not in libsodium's argon2id form", h)
		}
		if err := CheckImportedHash(h); err != nil {
			t.Errorf("CheckImportedHash(our hash): %v", err)
		}
		if ok, err := VerifyPassword(h, pw); !ok || err != nil {
			t.Errorf("VerifyPassword(right password) = %v, %v", ok, err)
		}
		if ok, err := VerifyPassword(h, pw+"x"); ok || err != nil {
			t.Errorf("VerifyPassword(wrong password) = %v, %v", ok, err)
		}
	}
	a, _ := HashPassword("same password")
	b, _ := HashPassword("same password")
	if a == b {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
}

func TestPasswordPolicy(t *testing.T) {
	for _, pw := range []string{"", "tiny", "1234567", "ééééééé", strings.Repeat("x", MaxPasswordLen+1), "abc\ndefgh", "abcdefg\x00", "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"} {
		h, err := HashPassword(pw)
		var ve *ValidationError
		if !errors.As(err, &ve) || len(ve.Errors) != 1 || ve.Errors[0].Field != "password" {
			t.Errorf("HashPassword(%q) = %q, %v; want a validation error on password", pw, h, err)
			continue
		}
		if pw != "" && strings.Contains(err.Error(), pw) {
			t.Errorf("error %q contains the password", err)
		}
	}
	if err := CheckPassword("éééééééé"); err != nil { // 8 characters, 16 bytes
		t.Errorf("8 non-ASCII characters: %v", err)
	}
}

func BenchmarkHashPassword(b *testing.B) {
	for b.Loop() {
		if _, err := HashPassword("benchmark password"); err != nil {
			b.Fatal(err)
		}
	}
}
