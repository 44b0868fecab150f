package directory

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SecretKey is one AES-256 key of a SecretBox, named so that sealed values
// say which key sealed them.
type SecretKey struct {
	ID  string // 1..64 of A-Z a-z 0-9 _ - .
	Key [32]byte
}

// SecretBox encrypts POP3 passwords at rest with AES-256-GCM. The first
// key seals; every key opens, so keys rotate by putting a new key first,
// resealing what NeedsRotation reports (the users service lists those
// accounts when it starts; setting a password again reseals it), then
// dropping the old key.
//
// A sealed value is
//
//	v1:<key id>:<base64(12-byte nonce | ciphertext | 16-byte tag)>
//
// (standard base64 with padding) and the additional data authenticated
// with it is the prefix "v1:<key id>", so neither the version nor the key
// id can be altered. Errors never contain the plaintext or key material.
// A SecretBox is safe for concurrent use.
type SecretBox struct {
	current string
	aeads   map[string]cipher.AEAD
}

const sealVersion = "v1"

// NewSecretBox returns a SecretBox that seals with keys[0] and opens with
// any of keys. Key IDs must be valid and distinct, and no key may be all
// zeros (an unset key).
func NewSecretBox(keys []SecretKey) (*SecretBox, error) {
	if len(keys) == 0 {
		return nil, errors.New("secret box: no keys")
	}
	b := &SecretBox{current: keys[0].ID, aeads: make(map[string]cipher.AEAD, len(keys))}
	for _, k := range keys {
		if err := checkKeyID(k.ID); err != nil {
			return nil, fmt.Errorf("secret box: %w", err)
		}
		if _, dup := b.aeads[k.ID]; dup {
			return nil, fmt.Errorf("secret box: key id %q given twice", k.ID)
		}
		if k.Key == ([32]byte{}) {
			return nil, fmt.Errorf("secret box: key %q is all zeros", k.ID)
		}
		block, err := aes.NewCipher(k.Key[:])
		if err != nil {
			return nil, fmt.Errorf("secret box: key %q: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("secret box: key %q: %w", k.ID, err)
		}
		b.aeads[k.ID] = aead
	}
	return b, nil
}

func checkKeyID(id string) error {
	if id == "" {
		return errors.New("empty key id")
	}
	if len(id) > 64 {
		return errors.New("key id longer than 64 characters")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("key id %q: only letters, digits, '_', '-' and '.' are allowed", id)
		}
	}
	return nil
}

// ParseSecretKeys parses the configuration form of the keys,
// "id1:base64key,id2:base64key", the sealing key first. Each key is 32
// bytes in standard base64 (padding optional; `openssl rand -base64 32`
// makes one). Spaces around entries are ignored. Errors name the entry by
// position and id, never the key.
func ParseSecretKeys(spec string) ([]SecretKey, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("no keys: want id:base64key[,id:base64key...]")
	}
	var keys []SecretKey
	seen := map[string]bool{}
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		id, enc, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("key %d: want id:base64key", i+1)
		}
		id, enc = strings.TrimSpace(id), strings.TrimSpace(enc)
		if err := checkKeyID(id); err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("key %d: id %q given twice", i+1, id)
		}
		seen[id] = true
		raw, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			raw, err = base64.RawStdEncoding.DecodeString(enc)
		}
		if err != nil {
			return nil, fmt.Errorf("key %d (%q): not valid base64", i+1, id)
		}
		if len(raw) != 32 {
			return nil, fmt.Errorf("key %d (%q): %d bytes, want 32 (AES-256)", i+1, id, len(raw))
		}
		k := SecretKey{ID: id}
		copy(k.Key[:], raw)
		clear(raw)
		keys = append(keys, k)
	}
	return keys, nil
}

// CurrentKeyID is the id of the key that seals.
func (b *SecretBox) CurrentKeyID() string { return b.current }

// Seal encrypts plain with the current key.
func (b *SecretBox) Seal(plain string) (string, error) {
	aead := b.aeads[b.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: nonce: %w", err)
	}
	prefix := sealVersion + ":" + b.current
	out := aead.Seal(nonce, nonce, []byte(plain), []byte(prefix))
	return prefix + ":" + base64.StdEncoding.EncodeToString(out), nil
}

// Open decrypts a value made by Seal with any of the box's keys. A
// malformed value, an unknown key id (named in the error) and a value that
// fails authentication (altered, or sealed with another key of the same
// id) are errors.
func (b *SecretBox) Open(sealed string) (string, error) {
	id, data, err := splitSealed(sealed)
	if err != nil {
		return "", err
	}
	aead, ok := b.aeads[id]
	if !ok {
		return "", fmt.Errorf("open sealed secret: unknown key id %q", id)
	}
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return "", errors.New("open sealed secret: malformed ciphertext")
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(sealVersion+":"+id))
	if err != nil {
		return "", fmt.Errorf("open sealed secret: authentication failed (wrong key %q or altered data)", id)
	}
	return string(plain), nil
}

// NeedsRotation reports whether sealed was not sealed with the current
// key: sealed with an older key, or not a sealed value at all (which Open
// will refuse).
func (b *SecretBox) NeedsRotation(sealed string) bool {
	id, _, err := splitSealed(sealed)
	return err != nil || id != b.current
}

// SealedKeyID returns the id of the key that sealed a value, without
// opening it.
func SealedKeyID(sealed string) (string, error) {
	id, _, err := splitSealed(sealed)
	return id, err
}

func splitSealed(s string) (id, data string, err error) {
	version, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", errors.New("open sealed secret: not a sealed value")
	}
	if version != sealVersion {
		return "", "", errors.New("open sealed secret: unknown format version")
	}
	id, data, ok = strings.Cut(rest, ":")
	if !ok || checkKeyID(id) != nil {
		return "", "", errors.New("open sealed secret: malformed key id")
	}
	return id, data, nil
}

// looksSealed reports whether s has the shape of a sealed value.
func looksSealed(s string) bool {
	_, data, err := splitSealed(s)
	if err != nil {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(data)
	return err == nil && len(raw) >= 12+16
}
