// Package passwd hashes and verifies user passwords in the {SCHEME} notation
// Dovecot reads: the directory (users service) writes them, the relay checks
// SMTP AUTH against them and Dovecot checks IMAP/POP3 logins against the same
// strings.
package passwd

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password schemes the directory stores, in Dovecot's {SCHEME} notation.
const (
	SchemeArgon2ID = "ARGON2ID"  // what Hash produces
	SchemeBlfCrypt = "BLF-CRYPT" // bcrypt, accepted from imports
)

// Parameters of the hashes Hash produces: those of
// `doveadm pw -s ARGON2ID` in Dovecot 2.3 (libsodium's
// crypto_pwhash_argon2id_str with OPSLIMIT_MODERATE-ish t=3 and 64 MiB),
// about 60 ms on a current CPU.
const (
	argon2Time    = 3
	argon2MemKiB  = 64 * 1024
	argon2Threads = 1
	argon2SaltLen = 16
	argon2KeyLen  = 32
)

// Bounds on the parameters of hashes we accept (imports): what libsodium's
// crypto_pwhash_str_verify accepts, capped so that a verification cannot
// take unbounded memory or time.
const (
	argon2MaxMemKiB = 1 << 20 // 1 GiB
	argon2MaxTime   = 100
	argon2MaxLanes  = 255
	argon2MinSalt   = 8  // ARGON2_MIN_SALT_LENGTH
	argon2MaxSalt   = 64 // arbitrary
	argon2MinKey    = 16 // crypto_pwhash_BYTES_MIN
	argon2MaxKey    = 64 // arbitrary
)

var b64 = base64.RawStdEncoding // libsodium: sodium_base64_VARIANT_ORIGINAL_NO_PADDING

// Hash returns the argon2id hash of pw in the form Dovecot's ARGON2ID scheme
// verifies:
//
//	{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>
//
// with a random 16-byte salt, a 32-byte hash, both in standard base64
// without padding (libsodium's crypto_pwhash_str format). It applies no
// password policy: that is the directory's business.
func Hash(pw string) (string, error) {
	salt := make([]byte, argon2SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, argon2Time, argon2MemKiB, argon2Threads, argon2KeyLen)
	return fmt.Sprintf("{%s}$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", SchemeArgon2ID, argon2.Version,
		argon2MemKiB, argon2Time, argon2Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// Verify reports whether pw matches hash, a {ARGON2ID} or {BLF-CRYPT} hash
// as CheckHash accepts. A malformed hash or
// another scheme is an error; a wrong password is (false, nil).
func Verify(hash, pw string) (bool, error) {
	scheme, rest, err := splitScheme(hash)
	if err != nil {
		return false, err
	}
	switch scheme {
	case SchemeArgon2ID:
		h, err := parseArgon2ID(rest)
		if err != nil {
			return false, err
		}
		got := argon2.IDKey([]byte(pw), h.salt, h.time, h.memKiB, h.lanes, uint32(len(h.key)))
		return subtle.ConstantTimeCompare(got, h.key) == 1, nil
	case SchemeBlfCrypt:
		if err := checkBcrypt(rest); err != nil {
			return false, err
		}
		err := bcrypt.CompareHashAndPassword([]byte(rest), []byte(pw))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		default:
			return false, fmt.Errorf("%s hash: %w", SchemeBlfCrypt, err)
		}
	}
	return false, fmt.Errorf("unsupported password scheme {%s}", scheme)
}

// CheckHash reports why hash cannot be stored as a user's password hash, or nil. Accepted, exactly as Dovecot writes them:
//
//	{ARGON2ID}$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
//	{BLF-CRYPT}$2y$<cost>$<22 salt chars><31 hash chars>  ($2a$ and $2b$ too)
//
// The argon2id parameters must be within what libsodium verifies (salt of
// at least 8 bytes, hash of at least 16) and bounded (at most 1 GiB, 100
// passes, 255 lanes); bcrypt hashes must use the canonical encoding
// (crypt_blowfish compares the re-encoded string, so a non-canonical one
// could never match). Other schemes (SHA512-CRYPT, PLAIN, ...) are
// refused: hashes are migrated, weak ones are not.
func CheckHash(hash string) error {
	scheme, rest, err := splitScheme(hash)
	if err != nil {
		return err
	}
	switch scheme {
	case SchemeArgon2ID:
		_, err = parseArgon2ID(rest)
		return err
	case SchemeBlfCrypt:
		return checkBcrypt(rest)
	}
	return fmt.Errorf("unsupported password scheme {%s}: use {%s} or {%s}", scheme, SchemeArgon2ID, SchemeBlfCrypt)
}

func splitScheme(hash string) (scheme, rest string, err error) {
	if !strings.HasPrefix(hash, "{") {
		return "", "", fmt.Errorf("not a password hash: want one starting with {%s} or {%s}", SchemeArgon2ID, SchemeBlfCrypt)
	}
	end := strings.IndexByte(hash, '}')
	if end < 0 || end > 32 {
		return "", "", errors.New("not a password hash: unterminated {SCHEME}")
	}
	scheme = hash[1:end]
	for i := 0; i < len(scheme); i++ {
		if c := scheme[i]; !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", "", errors.New("not a password hash: bad {SCHEME}")
		}
	}
	return scheme, hash[end+1:], nil
}

type argon2Hash struct {
	memKiB, time uint32
	lanes        uint8
	salt, key    []byte
}

// parseArgon2ID parses libsodium's crypto_pwhash_str output for argon2id.
func parseArgon2ID(s string) (*argon2Hash, error) {
	bad := func(why string) (*argon2Hash, error) {
		return nil, fmt.Errorf("malformed {%s} hash: %s", SchemeArgon2ID, why)
	}
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" {
		return bad("want $argon2id$v=19$m=...,t=...,p=...$salt$hash")
	}
	if parts[1] != "argon2id" {
		return bad("variant must be argon2id")
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return bad("version must be v=19")
	}
	ps := strings.Split(parts[3], ",")
	if len(ps) != 3 {
		return bad("want m=...,t=...,p=... parameters")
	}
	var vals [3]uint32
	for i, name := range []string{"m", "t", "p"} {
		num, ok := strings.CutPrefix(ps[i], name+"=")
		n, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || strconv.FormatUint(n, 10) != num {
			return bad("want m=...,t=...,p=... with decimal numbers")
		}
		vals[i] = uint32(n)
	}
	h := &argon2Hash{memKiB: vals[0], time: vals[1]}
	switch {
	case vals[2] < 1 || vals[2] > argon2MaxLanes:
		return bad(fmt.Sprintf("p must be 1..%d", argon2MaxLanes))
	case h.time < 1 || h.time > argon2MaxTime:
		return bad(fmt.Sprintf("t must be 1..%d", argon2MaxTime))
	case h.memKiB < 8*vals[2] || h.memKiB > argon2MaxMemKiB:
		return bad(fmt.Sprintf("m must be 8*p..%d KiB", argon2MaxMemKiB))
	}
	h.lanes = uint8(vals[2])
	var err error
	if h.salt, err = b64.DecodeString(parts[4]); err != nil || len(h.salt) < argon2MinSalt || len(h.salt) > argon2MaxSalt {
		return bad(fmt.Sprintf("salt must be %d..%d bytes in base64 without padding", argon2MinSalt, argon2MaxSalt))
	}
	if h.key, err = b64.DecodeString(parts[5]); err != nil || len(h.key) < argon2MinKey || len(h.key) > argon2MaxKey {
		return bad(fmt.Sprintf("hash must be %d..%d bytes in base64 without padding", argon2MinKey, argon2MaxKey))
	}
	return h, nil
}

const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// checkBcrypt checks a modular-crypt bcrypt hash: $2a$, $2b$ or $2y$ (not
// the buggy $2x$), a two-digit cost 04..31, a 22-character salt and a
// 31-character hash in bcrypt's base64, canonically encoded.
func checkBcrypt(s string) error {
	bad := func(why string) error {
		return fmt.Errorf("malformed {%s} hash: %s", SchemeBlfCrypt, why)
	}
	if len(s) != 60 || s[0] != '$' || s[1] != '2' || s[3] != '$' || s[6] != '$' {
		return bad("want $2y$<cost>$<53 characters>")
	}
	if s[2] != 'a' && s[2] != 'b' && s[2] != 'y' {
		return bad("variant must be $2a$, $2b$ or $2y$")
	}
	cost, err := strconv.Atoi(s[4:6])
	if err != nil || s[4] < '0' || s[4] > '9' || cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return bad(fmt.Sprintf("cost must be two digits from %02d to %d", bcrypt.MinCost, bcrypt.MaxCost))
	}
	for i := 7; i < 60; i++ {
		if strings.IndexByte(bcryptAlphabet, s[i]) < 0 {
			return bad("invalid character in salt or hash")
		}
	}
	// 22 characters carry 132 bits of a 128-bit salt and 31 carry 186 bits
	// of a 184-bit hash: the unused low bits of the last character are 0.
	if strings.IndexByte(bcryptAlphabet, s[28])%16 != 0 || strings.IndexByte(bcryptAlphabet, s[59])%4 != 0 {
		return bad("non-canonical encoding")
	}
	return nil
}
