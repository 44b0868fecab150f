package config

import (
	"fmt"
	"io"
)

// Secret is a configuration value that must never be printed: a password, a
// token, a key. It behaves as a string when read from YAML or the
// environment, but every way of printing it (fmt, slog, YAML, JSON) shows a
// mask instead of the value. Read the real value with Reveal.
//
// One hole is fmt's own: a verb that does not fit a pointer (%s, %d, %q)
// applied to a struct holding a pointer to a section that holds a Secret
// makes fmt print that section without calling any method, so the value
// shows. Print configurations with %v or %+v (or Dump), never %s.
type Secret string

const secretMask = "********"

// Reveal returns the secret's value. Call it only where the value is handed
// to the peer that needs it (a dialer, a hash check), never to a logger.
func (s Secret) Reveal() string { return string(s) }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s != "" }

// String masks the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return secretMask
}

// GoString masks the value for %#v.
func (s Secret) GoString() string { return `config.Secret("` + s.String() + `")` }

// Format masks the value for every verb, so that a wrong one (%d) does not
// make fmt print the string underneath.
func (s Secret) Format(f fmt.State, verb rune) {
	switch verb {
	case 'v':
		if f.Flag('#') {
			_, _ = io.WriteString(f, s.GoString())
			return
		}
		fallthrough
	case 's', 'q', 'x', 'X':
		_, _ = fmt.Fprintf(f, fmt.FormatString(f, verb), s.String())
	default:
		_, _ = fmt.Fprintf(f, "%%!%c(config.Secret=%s)", verb, s.String())
	}
}

// MarshalYAML masks the value, so an effective configuration can be dumped safely.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON masks the value.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// MarshalText masks the value (slog's text and JSON handlers use it).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
