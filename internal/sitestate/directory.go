package sitestate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

const maxKindLen = 64

func checkKind(kind string) error {
	if kind == "" || len(kind) > maxKindLen {
		return fmt.Errorf("%w: kind %q: must be 1 to %d characters", ErrInvalid, kind, maxKindLen)
	}
	for i := 0; i < len(kind); i++ {
		c := kind[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: kind %q: only a-z, 0-9, _ and - are allowed", ErrInvalid, kind)
		}
	}
	return nil
}

// checkString checks an opaque identifier: non-empty UTF-8.
func checkString(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalid, what, s)
	}
	return nil
}

func checkCursor(c string) error {
	if !utf8.ValidString(c) {
		return fmt.Errorf("%w: cursor is not valid UTF-8", ErrInvalid)
	}
	return nil
}

func checkRef(r Ref) error {
	if err := checkKind(r.Kind); err != nil {
		return err
	}
	return checkString("id", r.ID)
}

// cleanEntry validates e and returns a copy that shares no memory with it,
// with duplicate keys dropped and empty Data as nil.
func cleanEntry(e Entry) (Entry, error) {
	if err := checkRef(Ref{e.Kind, e.ID}); err != nil {
		return Entry{}, err
	}
	if e.Version < 0 {
		return Entry{}, fmt.Errorf("%w: entry %s/%s: negative version %d", ErrInvalid, e.Kind, e.ID, e.Version)
	}
	out := Entry{Kind: e.Kind, ID: e.ID, Version: e.Version}
	if len(e.Data) > 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, e.Data); err != nil {
			return Entry{}, fmt.Errorf("%w: entry %s/%s: data is not valid JSON: %v", ErrInvalid, e.Kind, e.ID, err)
		}
		out.Data = b.Bytes()
	}
	seen := make(map[string]bool, len(e.Keys))
	for _, k := range e.Keys {
		if err := checkString("key of entry "+e.Kind+"/"+e.ID, k); err != nil {
			return Entry{}, err
		}
		if !seen[k] {
			seen[k] = true
			out.Keys = append(out.Keys, k)
		}
	}
	return out, nil
}

// cleanChangeSet validates cs as a whole before anything is written.
func cleanChangeSet(cs ChangeSet) (ChangeSet, error) {
	out := ChangeSet{Snapshot: cs.Snapshot, Cursor: cs.Cursor}
	if err := checkCursor(cs.Cursor); err != nil {
		return ChangeSet{}, err
	}
	for _, r := range cs.Delete {
		if err := checkRef(r); err != nil {
			return ChangeSet{}, fmt.Errorf("delete: %w", err)
		}
		out.Delete = append(out.Delete, r)
	}
	for _, e := range cs.Put {
		c, err := cleanEntry(e)
		if err != nil {
			return ChangeSet{}, fmt.Errorf("put: %w", err)
		}
		out.Put = append(out.Put, c)
	}
	return out, nil
}

// applyTarget is the replica as one transaction sees it. Both backends
// implement it, so a change set means the same thing in each.
type applyTarget interface {
	clear() error // remove every entry and key (snapshot)
	get(kind, id string) (Entry, bool, error)
	put(e Entry) error
	del(kind, id string) error
	owner(kind, key string) (id string, ok bool, err error)
	setOwner(kind, key, id string) error
	delOwner(kind, key string) error
	setCursor(cursor string) error
}

// applyChangeSet applies a cleaned change set to t.
func applyChangeSet(t applyTarget, cs ChangeSet) error {
	if cs.Snapshot {
		if err := t.clear(); err != nil {
			return err
		}
	}
	for _, r := range cs.Delete {
		old, ok, err := t.get(r.Kind, r.ID)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := dropKeys(t, old); err != nil {
			return err
		}
		if err := t.del(r.Kind, r.ID); err != nil {
			return err
		}
	}
	for _, e := range cs.Put {
		old, ok, err := t.get(e.Kind, e.ID)
		if err != nil {
			return err
		}
		if ok {
			if e.Version < old.Version {
				continue // stale
			}
			if err := dropKeys(t, old); err != nil {
				return err
			}
		}
		if err := t.put(e); err != nil {
			return err
		}
		for _, k := range e.Keys {
			if err := t.setOwner(e.Kind, k, e.ID); err != nil {
				return err
			}
		}
	}
	if cs.Cursor != "" {
		return t.setCursor(cs.Cursor)
	}
	return nil
}

// dropKeys removes the index entries of e's keys that still point at e.
func dropKeys(t applyTarget, e Entry) error {
	for _, k := range e.Keys {
		id, ok, err := t.owner(e.Kind, k)
		if err != nil {
			return err
		}
		if ok && id == e.ID {
			if err := t.delOwner(e.Kind, k); err != nil {
				return err
			}
		}
	}
	return nil
}

// storedEntry is how both backends serialise an entry's version, keys and
// data (Kind and ID are where it is stored).
type storedEntry struct {
	Version int64           `json:"v"`
	Keys    []string        `json:"k,omitempty"`
	Data    json.RawMessage `json:"d,omitempty"`
}

// encodeEntry serialises e without escaping HTML characters, so that Data
// comes back byte for byte as cleanEntry left it.
func encodeEntry(e Entry) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(storedEntry{Version: e.Version, Keys: e.Keys, Data: e.Data}); err != nil {
		return nil, fmt.Errorf("encode entry %s/%s: %w", e.Kind, e.ID, err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func decodeEntry(kind, id string, b []byte) (Entry, error) {
	var s storedEntry
	if err := json.Unmarshal(b, &s); err != nil {
		return Entry{}, fmt.Errorf("decode entry %s/%s: %w", kind, id, err)
	}
	e := Entry{Kind: kind, ID: id, Version: s.Version, Keys: s.Keys}
	if len(s.Data) > 0 {
		e.Data = s.Data
	}
	return e, nil
}
