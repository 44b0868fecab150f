package directory

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
)

func newKey(t testing.TB, id string) SecretKey {
	t.Helper()
	k := SecretKey{ID: id}
	if _, err := rand.Read(k.Key[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func newBox(t testing.TB, keys ...SecretKey) *SecretBox {
	t.Helper()
	b, err := NewSecretBox(keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSecretBoxRoundTrip(t *testing.T) {
	b := newBox(t, newKey(t, "k1"))
	for _, plain := range []string{"", "hunter2", "pässwörd with spaces", strings.Repeat("x", 5000), "\x00binary\xff"} {
		sealed, err := b.Seal(plain)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(sealed, "v1:k1:") {
			t.Errorf("sealed = %q, want prefix v1:k1:", sealed)
		}
		if plain != "" && strings.Contains(sealed, plain) {
			t.Errorf("sealed value contains the plaintext")
		}
		if !looksSealed(sealed) {
			t.Errorf("looksSealed(%q) = false", sealed)
		}
		got, err := b.Open(sealed)
		if err != nil || got != plain {
			t.Errorf("Open = %q, %v; want %q", got, err, plain)
		}
		if b.NeedsRotation(sealed) {
			t.Error("NeedsRotation of a value sealed with the current key")
		}
	}
	s1, _ := b.Seal("same")
	s2, _ := b.Seal("same")
	if s1 == s2 {
		t.Error("two seals of one value are equal: nonces repeat")
	}
}

func TestSecretBoxTamper(t *testing.T) {
	const plain = "pop3-password"
	b := newBox(t, newKey(t, "k1"), newKey(t, "k2"))
	sealed, err := b.Seal(plain)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sealed, "v1:k1:"))
	if err != nil {
		t.Fatal(err)
	}
	// Every flipped bit of nonce, ciphertext and tag is detected.
	for i := range raw {
		for bit := 0; bit < 8; bit++ {
			bad := append([]byte(nil), raw...)
			bad[i] ^= 1 << bit
			if got, err := b.Open("v1:k1:" + base64.StdEncoding.EncodeToString(bad)); err == nil {
				t.Fatalf("flipped bit %d of byte %d: Open = %q, want an error", bit, i, got)
			}
		}
	}
	// Truncated and extended ciphertexts are refused.
	for _, bad := range [][]byte{raw[:len(raw)-1], raw[:12], append(append([]byte(nil), raw...), 0)} {
		if _, err := b.Open("v1:k1:" + base64.StdEncoding.EncodeToString(bad)); err == nil {
			t.Errorf("Open of a %d-byte ciphertext succeeded", len(bad))
		}
	}
	// Relabelling with another known key id fails: the id is authenticated.
	if _, err := b.Open(strings.Replace(sealed, "v1:k1:", "v1:k2:", 1)); err == nil {
		t.Error("Open of a value relabelled to another key id succeeded")
	}
	for _, bad := range []string{"", "hunter2", "v1:", "v1:k1", "v2:k1:" + sealed[6:], "v1::" + sealed[6:], "v1:k1:!!!", "v1:k 1:" + sealed[6:]} {
		_, err := b.Open(bad)
		if err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		} else if strings.Contains(err.Error(), plain) {
			t.Errorf("error %q shows the plaintext", err)
		}
	}
}

func TestSecretBoxWrongKey(t *testing.T) {
	sealed, err := newBox(t, newKey(t, "k1")).Seal("secret")
	if err != nil {
		t.Fatal(err)
	}
	// Same id, different key material: authentication fails.
	if _, err := newBox(t, newKey(t, "k1")).Open(sealed); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("Open with another key of the same id: %v", err)
	}
	// Unknown id: the error names it.
	if _, err := newBox(t, newKey(t, "other")).Open(sealed); err == nil || !strings.Contains(err.Error(), `unknown key id "k1"`) {
		t.Errorf("Open with unknown key id: %v", err)
	}
}

func TestSecretBoxRotation(t *testing.T) {
	oldKey, newK := newKey(t, "2024"), newKey(t, "2025")
	old := newBox(t, oldKey)
	sealedOld, _ := old.Seal("rotate me")

	rotated := newBox(t, newK, oldKey) // new key first: it seals; the old one still opens
	if rotated.CurrentKeyID() != "2025" {
		t.Fatalf("CurrentKeyID = %q", rotated.CurrentKeyID())
	}
	if !rotated.NeedsRotation(sealedOld) {
		t.Error("a value sealed with the old key does not need rotation")
	}
	plain, err := rotated.Open(sealedOld)
	if err != nil || plain != "rotate me" {
		t.Fatalf("Open(old) = %q, %v", plain, err)
	}
	resealed, _ := rotated.Seal(plain)
	if rotated.NeedsRotation(resealed) {
		t.Error("a resealed value needs rotation")
	}
	if id, err := SealedKeyID(resealed); err != nil || id != "2025" {
		t.Errorf("SealedKeyID = %q, %v", id, err)
	}
	if !rotated.NeedsRotation("garbage") {
		t.Error("garbage does not need rotation")
	}
	// Once the old key is dropped, only resealed values open.
	final := newBox(t, newK)
	if _, err := final.Open(sealedOld); err == nil {
		t.Error("the dropped key still opens")
	}
	if got, err := final.Open(resealed); err != nil || got != "rotate me" {
		t.Errorf("Open(resealed) = %q, %v", got, err)
	}
}

func TestNewSecretBoxErrors(t *testing.T) {
	k := newKey(t, "a")
	for name, keys := range map[string][]SecretKey{
		"none":      nil,
		"empty id":  {{ID: "", Key: k.Key}},
		"bad id":    {{ID: "a:b", Key: k.Key}},
		"duplicate": {k, k},
		"zero key":  {{ID: "z"}},
	} {
		if _, err := NewSecretBox(keys); err == nil {
			t.Errorf("%s: NewSecretBox succeeded", name)
		}
	}
}

func TestParseSecretKeys(t *testing.T) {
	k1 := make([]byte, 32)
	k2 := make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	e1, e2 := base64.StdEncoding.EncodeToString(k1), base64.RawStdEncoding.EncodeToString(k2)
	keys, err := ParseSecretKeys(" 2025:" + e1 + " , 2024-old:" + e2)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != "2025" || string(keys[0].Key[:]) != string(k1) || keys[1].ID != "2024-old" || string(keys[1].Key[:]) != string(k2) {
		t.Fatalf("keys = %+v", keys)
	}
	if _, err := NewSecretBox(keys); err != nil {
		t.Fatal(err)
	}
	short := base64.StdEncoding.EncodeToString(k1[:16])
	for spec, want := range map[string]string{
		"":                            "no keys",
		"   ":                         "no keys",
		e1:                            "want id:base64key",
		"k1:" + e1 + ",":              "key 2",
		":" + e1:                      "empty key id",
		"k 1:" + e1:                   "only letters",
		"k1:" + short:                 "16 bytes, want 32",
		"k1:" + e1 + ",k1:" + e2:      `id "k1" given twice`,
		"k1:not base64!":              "not valid base64",
		"k1:" + e1 + ",k2:" + e1[:10]: `key 2 ("k2")`,
	} {
		_, err := ParseSecretKeys(spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSecretKeys(%q) = %v, want an error containing %q", spec, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), e1) || strings.Contains(err.Error(), e1[:10])) {
			t.Errorf("error %q shows key material", err)
		}
	}
}

func FuzzSecretBoxOpen(f *testing.F) {
	var k SecretKey
	k.ID = "k1"
	copy(k.Key[:], "0123456789abcdef0123456789abcdef")
	b, err := NewSecretBox([]SecretKey{k})
	if err != nil {
		f.Fatal(err)
	}
	sealed, _ := b.Seal("fuzz")
	for _, s := range []string{sealed, "", "v1:k1:", "v1:k1:AAAA", "v1:k2:" + sealed[6:], "v1:k1:" + sealed[6:len(sealed)-4]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		plain, err := b.Open(s)
		if err == nil {
			// Only real seals of this box open; re-sealing round-trips.
			if !strings.HasPrefix(s, "v1:k1:") {
				t.Fatalf("Open(%q) = %q without the v1:k1: prefix", s, plain)
			}
			again, err := b.Seal(plain)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := b.Open(again); err != nil || got != plain {
				t.Fatalf("re-seal round trip: %q, %v", got, err)
			}
		}
		_ = b.NeedsRotation(s)
		_, _ = SealedKeyID(s)
	})
}
