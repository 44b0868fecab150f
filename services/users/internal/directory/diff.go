package directory

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
)

// Mask replaces the value of a secret in an audit diff.
const Mask = "********"

// diffSkip are bookkeeping fields every write changes; the audit entry has
// its own time, and the diff is about what the actor changed.
var diffSkip = map[string]bool{"version": true, "created_at": true, "updated_at": true}

// IsSecretField reports whether a JSON field holds a secret that an audit
// diff masks: password, password_hash, password_enc, secret, secret_hash,
// and for safety any name containing "password" or "secret".
func IsSecretField(name string) bool {
	n := strings.ToLower(name)
	return strings.Contains(n, "password") || strings.Contains(n, "secret")
}

// Diff compares the JSON forms of before and after (directory objects,
// usually) and returns the changes as
//
//	{"field": {"from": x, "to": y}, ...}
//
// Nested objects are walked and their fields named with dots
// ("permissions.internet_send", "keep.days"); lists are compared whole.
// A nil before (or typed nil pointer) is a creation, and every field has
// only "to"; a nil after is a deletion, and every field has only "from".
// In an update, a field present on one side only has null on the other.
// version, created_at and updated_at are left out.
//
// Secret fields (IsSecretField), at any depth and inside lists, never
// show their value: a set secret appears as Mask, an unset one as null,
// and a changed secret as {"from": "********", "to": "********"}. The
// result is always a JSON object; if a value cannot be marshalled, the
// object is {"error": "diff unavailable"}.
func Diff(before, after any) json.RawMessage {
	b, okB := toJSONObject(before)
	a, okA := toJSONObject(after)
	if !okB || !okA {
		return json.RawMessage(`{"error":"diff unavailable"}`)
	}
	out := map[string]map[string]any{}
	switch {
	case b == nil && a == nil:
	case b == nil:
		flatten("", a, func(k string, v any) { out[k] = map[string]any{"to": maskValue(k, v)} })
	case a == nil:
		flatten("", b, func(k string, v any) { out[k] = map[string]any{"from": maskValue(k, v)} })
	default:
		fb, fa := map[string]any{}, map[string]any{}
		flatten("", b, func(k string, v any) { fb[k] = v })
		flatten("", a, func(k string, v any) { fa[k] = v })
		for k, vb := range fb {
			va, ok := fa[k]
			if !ok || !jsonEqual(vb, va) {
				out[k] = map[string]any{"from": maskValue(k, vb), "to": maskValue(k, va)}
			}
		}
		for k, va := range fa {
			if _, ok := fb[k]; !ok && va != nil {
				out[k] = map[string]any{"from": nil, "to": maskValue(k, va)}
			}
		}
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return json.RawMessage(`{"error":"diff unavailable"}`)
	}
	return raw
}

// toJSONObject marshals v and decodes it as a JSON object; nil, a typed
// nil pointer and JSON null give (nil, true).
func toJSONObject(v any) (map[string]any, bool) {
	if v == nil {
		return nil, true
	}
	if rv := reflect.ValueOf(v); (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Map || rv.Kind() == reflect.Slice) && rv.IsNil() {
		return nil, true
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, true
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, false // not an object
	}
	return m, true
}

// flatten calls f for every leaf of m, naming nested fields with dots.
// An empty nested object is a leaf. Bookkeeping fields at the top level
// are skipped.
func flatten(prefix string, m map[string]any, f func(string, any)) {
	for k, v := range m {
		if prefix == "" && diffSkip[k] {
			continue
		}
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 && !IsSecretField(k) {
			flatten(name, sub, f)
			continue
		}
		f(name, v)
	}
}

// maskValue masks v when the last element of the dotted name is a secret,
// and masks secrets inside v otherwise.
func maskValue(name string, v any) any {
	last := name[strings.LastIndexByte(name, '.')+1:]
	if IsSecretField(last) {
		if v == nil || v == "" {
			return nil
		}
		return Mask
	}
	return redact(v)
}

// redact returns v with the value of every secret field inside it masked.
func redact(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			if IsSecretField(k) {
				if x == nil || x == "" {
					out[k] = nil
				} else {
					out[k] = Mask
				}
				continue
			}
			out[k] = redact(x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = redact(x)
		}
		return out
	}
	return v
}

func jsonEqual(a, b any) bool { return reflect.DeepEqual(a, b) }
