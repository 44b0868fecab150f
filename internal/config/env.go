package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// envSettable reports whether a leaf of type t can be set from one
// environment variable.
func envSettable(t reflect.Type) bool {
	switch t {
	case secretType, durationType:
		return true
	}
	if reflect.PointerTo(t).Implements(textUnmarshalType) {
		return true
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	case reflect.Pointer:
		return envSettable(t.Elem())
	case reflect.Slice:
		e := t.Elem()
		return e.Kind() != reflect.Slice && e.Kind() != reflect.Pointer && envSettable(e)
	}
	return false
}

// parseText parses s, the text of an environment variable, as a value of
// type t. Its errors are short phrases for an operator: "not an integer".
func parseText(t reflect.Type, s string) (reflect.Value, error) {
	v := reflect.New(t).Elem()
	switch t {
	case secretType:
		v.SetString(s)
		return v, nil
	case durationType:
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return v, errors.New("not a duration (write it like 30s, 5m or 1h30m)")
		}
		v.SetInt(int64(d))
		return v, nil
	}
	if p := v.Addr(); p.Type().Implements(textUnmarshalType) {
		if err := p.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
			return v, err
		}
		return v, nil
	}
	switch t.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return v, errors.New("not a boolean (use true or false)")
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, t.Bits())
		if errors.Is(err, strconv.ErrRange) {
			return v, fmt.Errorf("out of range (a %d-bit integer)", t.Bits())
		} else if err != nil {
			return v, errors.New("not an integer")
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, t.Bits())
		if errors.Is(err, strconv.ErrRange) {
			return v, fmt.Errorf("out of range (a %d-bit non-negative integer)", t.Bits())
		} else if err != nil {
			return v, errors.New("not a non-negative integer")
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), t.Bits())
		if errors.Is(err, strconv.ErrRange) {
			return v, errors.New("number out of range")
		} else if err != nil {
			return v, errors.New("not a number")
		}
		v.SetFloat(f)
	case reflect.Pointer:
		e, err := parseText(t.Elem(), s)
		if err != nil {
			return v, err
		}
		p := reflect.New(t.Elem())
		p.Elem().Set(e)
		v.Set(p)
	case reflect.Slice:
		// A comma-separated list; spaces around items and empty items are
		// dropped, so "" and " " are the empty list.
		v.Set(reflect.MakeSlice(t, 0, strings.Count(s, ",")+1))
		n := 0
		for item := range strings.SplitSeq(s, ",") {
			n++
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			e, err := parseText(t.Elem(), item)
			if err != nil {
				if t.Elem() == secretType {
					return v, fmt.Errorf("item %d: %v", n, err)
				}
				return v, fmt.Errorf("item %d (%q): %v", n, item, err)
			}
			v.Set(reflect.Append(v, e))
		}
	default:
		return v, errors.New("cannot be set from the environment; set it in the configuration file")
	}
	return v, nil
}

// containsSecret reports whether values of t hold a Secret, so that their
// text must not be echoed in error messages.
func containsSecret(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	return t == secretType
}

// applyEnv sets the leaves named by POSTERN_* variables in environ on the
// struct root (addressable). It returns the keys it set, by key, with the
// variable that set them, and one error per bad or unknown variable.
func applyEnv(root reflect.Value, leaves []leaf, environ []string) (map[string]string, []error) {
	byEnv := map[string]*leaf{}
	var names []string
	for i := range leaves {
		l := &leaves[i]
		if l.env == "" {
			continue
		}
		byEnv[l.env] = l
		names = append(names, l.env)
	}
	fileOnly := map[string]*leaf{}
	for i := range leaves {
		if l := &leaves[i]; l.env == "" {
			if name := envName(l.key); name != "" {
				fileOnly[name] = l
			}
		}
	}

	// The last assignment of a variable wins, as with exec.Cmd.Env.
	values := map[string]string{}
	var order []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) || envIgnored(name) {
			continue
		}
		if _, seen := values[name]; !seen {
			order = append(order, name)
		}
		values[name] = value
	}

	set := map[string]string{}
	var errs []error
	for _, name := range order {
		value := values[name]
		l, ok := byEnv[name]
		if !ok {
			msg := "unknown variable (no configuration key matches it)"
			if fl, ok := fileOnly[name]; ok {
				msg = fmt.Sprintf("%s cannot be set from the environment; set it in the configuration file", fl.key)
			} else if s := suggest(name, names); s != "" {
				msg = fmt.Sprintf("unknown variable (did you mean %s?)", s)
			}
			errs = append(errs, &loadError{text: "environment " + name + ": " + msg, fe: &FieldError{Msg: msg}})
			continue
		}
		v, err := parseText(l.typ, value)
		if err != nil {
			shown := fmt.Sprintf("%s=%q", name, value)
			if containsSecret(l.typ) {
				shown = name
			}
			errs = append(errs, &loadError{
				text: fmt.Sprintf("environment %s (%s): %v", shown, l.key, err),
				fe:   &FieldError{Key: l.key, Msg: err.Error()},
			})
			continue
		}
		dst := root
		for i, idx := range l.path {
			dst = fieldAt(dst, idx, true)
			if i < len(l.path)-1 && dst.Kind() == reflect.Pointer {
				if dst.IsNil() {
					dst.Set(reflect.New(dst.Type().Elem()))
				}
				dst = dst.Elem()
			}
		}
		dst.Set(v)
		set[l.key] = name
	}
	return set, errs
}
