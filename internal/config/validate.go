package config

import (
	"errors"
	"fmt"
	"reflect"
)

// Validate walks dst (a struct or a pointer to one) depth first and calls
// Validate on every value implementing Validator — nested sections before
// the section holding them, the root last — re-keying each section's
// errors under the section's key with Prefix. Elements of a list of
// sections are keyed "key[i]". It returns every problem, joined; each is a
// *FieldError.
//
// A Validate method promoted from an inline struct runs once for the inline
// struct and once for its parent; identical problems are reported once.
func Validate(dst any) error {
	v := reflect.ValueOf(dst)
	if !v.IsValid() {
		return nil
	}
	if v.Kind() != reflect.Pointer {
		// Copy into an addressable value, so pointer-receiver methods run.
		p := reflect.New(v.Type())
		p.Elem().Set(v)
		v = p
	}
	var errs []error
	validateValue(v, "", 0, &errs)
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		for _, item := range flatten(e) {
			if item == nil || seen[item.Error()] {
				continue
			}
			seen[item.Error()] = true
			out = append(out, item)
		}
	}
	return errors.Join(out...)
}

func validateValue(v reflect.Value, key string, depth int, errs *[]error) {
	if depth > maxDepth {
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		if isSection(v.Type()) {
			validateValue(v.Elem(), key, depth+1, errs)
			return
		}
	}
	switch {
	case v.Kind() == reflect.Struct && isSection(v.Type()):
		si, err := structOf(v.Type())
		if err != nil {
			*errs = append(*errs, &FieldError{Key: key, Msg: err.Error()})
			return
		}
		for _, f := range si.fields {
			validateValue(v.Field(f.index), joinKey(key, f.name), depth+1, errs)
		}
	case v.Kind() == reflect.Slice || v.Kind() == reflect.Array:
		if isSection(v.Type().Elem()) {
			for i := range v.Len() {
				validateValue(v.Index(i), fmt.Sprintf("%s[%d]", key, i), depth+1, errs)
			}
		}
	}
	callValidate(v, key, errs)
}

// callValidate calls v's Validate method, if it has one.
func callValidate(v reflect.Value, key string, errs *[]error) {
	var val Validator
	switch {
	case v.Kind() == reflect.Pointer && v.IsNil():
		return
	case v.CanAddr() && v.Addr().Type().Implements(validatorType) && v.Addr().CanInterface():
		val = v.Addr().Interface().(Validator)
	case v.Type().Implements(validatorType) && v.CanInterface():
		val = v.Interface().(Validator)
	default:
		return
	}
	if err := Prefix(key, val.Validate()); err != nil {
		*errs = append(*errs, err)
	}
}
