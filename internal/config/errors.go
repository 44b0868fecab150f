package config

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError is a configuration error that names the key it is about, as
// written in the YAML file ("bus.partitions") — the loader prefixes the keys
// of nested sections, so a section's Validate names keys relative to itself.
type FieldError struct {
	Key string // dotted YAML key, e.g. "bus.retry.max"
	Msg string // what is wrong, e.g. "must be at least 1"
}

func (e *FieldError) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}

// Errorf returns a *FieldError for key.
func Errorf(key, format string, args ...any) error {
	return &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validator is implemented by configuration structs (and their nested
// sections) that check their own values. Errors should be *FieldError
// (possibly several joined with errors.Join) naming keys relative to the
// struct; the loader adds the section's own key in front.
type Validator interface {
	Validate() error
}

// Prefix returns err with every *FieldError in it re-keyed under prefix;
// errors that are not a *FieldError are wrapped as one about prefix itself.
func Prefix(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			key := fe.Key
			switch {
			case prefix == "":
			case key == "":
				key = prefix
			default:
				key = prefix + "." + key
			}
			out = append(out, &FieldError{Key: key, Msg: fe.Msg})
			continue
		}
		out = append(out, &FieldError{Key: prefix, Msg: e.Error()})
	}
	return errors.Join(out...)
}

// flatten splits errors joined with errors.Join.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// Keys returns the keys named by the *FieldError values in err, for tests
// and messages.
func Keys(err error) []string {
	var keys []string
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			keys = append(keys, fe.Key)
		}
	}
	return keys
}

// Join is errors.Join; it exists so Validate methods read naturally.
func Join(errs ...error) error { return errors.Join(errs...) }

// ErrorList formats a joined error one problem per line, for start-up messages.
func ErrorList(err error) string {
	var lines []string
	for _, e := range flatten(err) {
		lines = append(lines, "  - "+e.Error())
	}
	return strings.Join(lines, "\n")
}
