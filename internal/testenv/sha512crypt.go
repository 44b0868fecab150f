package testenv

import (
	"crypto/rand"
	"crypto/sha512"
	"strings"
)

// cryptAlphabet is the base64 alphabet of crypt(3) ("./0-9A-Za-z").
const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// sha512CryptRounds is the default number of rounds of SHA-512 crypt, which
// is written without a "rounds=" field.
const sha512CryptRounds = 5000

// SHA512Crypt returns the SHA-512 crypt(3) hash ("$6$salt$hash", as made by
// `doveadm pw -s SHA512-CRYPT` or `openssl passwd -6`) of password with a
// random 16-character salt. Dovecot accepts it as {SHA512-CRYPT}.
func SHA512Crypt(password string) string {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err) // crypto/rand.Read never fails on supported platforms
	}
	salt := make([]byte, len(raw))
	for i, b := range raw {
		salt[i] = cryptAlphabet[int(b)%len(cryptAlphabet)]
	}
	return sha512CryptWithSalt(password, string(salt))
}

// sha512CryptWithSalt implements SHA-512 crypt as specified in
// https://www.akkadia.org/drepper/SHA-crypt.txt with the default number of
// rounds. salt is truncated to 16 bytes.
func sha512CryptWithSalt(password, salt string) string {
	if len(salt) > 16 {
		salt = salt[:16]
	}
	p, s := []byte(password), []byte(salt)

	// Digest B: password, salt, password.
	hb := sha512.New()
	hb.Write(p)
	hb.Write(s)
	hb.Write(p)
	b := hb.Sum(nil)

	// Digest A.
	ha := sha512.New()
	ha.Write(p)
	ha.Write(s)
	n := len(p)
	for ; n > sha512.Size; n -= sha512.Size {
		ha.Write(b)
	}
	ha.Write(b[:n])
	for i := len(p); i > 0; i >>= 1 {
		if i&1 != 0 {
			ha.Write(b)
		} else {
			ha.Write(p)
		}
	}
	a := ha.Sum(nil)

	// Byte sequence P: digest DP (password repeated len(password) times)
	// repeated to the password's length.
	hdp := sha512.New()
	for range len(p) {
		hdp.Write(p)
	}
	dp := hdp.Sum(nil)
	pSeq := repeatTo(dp, len(p))

	// Byte sequence S: digest DS (salt repeated 16+A[0] times) repeated to
	// the salt's length.
	hds := sha512.New()
	for range 16 + int(a[0]) {
		hds.Write(s)
	}
	ds := hds.Sum(nil)
	sSeq := repeatTo(ds, len(s))

	c := a
	for r := range sha512CryptRounds {
		h := sha512.New()
		if r&1 != 0 {
			h.Write(pSeq)
		} else {
			h.Write(c)
		}
		if r%3 != 0 {
			h.Write(sSeq)
		}
		if r%7 != 0 {
			h.Write(pSeq)
		}
		if r&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pSeq)
		}
		c = h.Sum(nil)
	}

	var out strings.Builder
	out.WriteString("$6$")
	out.WriteString(salt)
	out.WriteByte('$')
	b64 := func(b2, b1, b0 byte, n int) {
		w := uint(b2)<<16 | uint(b1)<<8 | uint(b0)
		for range n {
			out.WriteByte(cryptAlphabet[w&0x3f])
			w >>= 6
		}
	}
	// The digest's bytes are written in groups of three in a permuted order
	// (0,21,42), (22,43,1), (44,2,23), (3,24,45), ...
	for i := range 21 {
		x, y, z := c[i], c[i+21], c[i+42]
		switch i % 3 {
		case 0:
			b64(x, y, z, 4)
		case 1:
			b64(y, z, x, 4)
		case 2:
			b64(z, x, y, 4)
		}
	}
	b64(0, 0, c[63], 2)
	return out.String()
}

func repeatTo(digest []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out)+len(digest) <= n {
		out = append(out, digest...)
	}
	return append(out, digest[:n-len(out)]...)
}
