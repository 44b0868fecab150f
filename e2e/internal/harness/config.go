package harness

import (
	"fmt"
	"maps"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is a `postern serve` configuration file as nested maps, set by the
// dotted keys of docs/configuration.md:
//
//	c := harness.Config{}
//	c.Set("relay.smtp.submission.listen", "127.0.0.1:0")
//	c.Set("services", []string{"router", "relay"})
type Config map[string]any

// Set sets the value of a dotted key, creating the sections on the way.
func (c Config) Set(key string, v any) {
	parts := strings.Split(key, ".")
	m := map[string]any(c)
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			if cfg, isCfg := m[p].(Config); isCfg {
				next = cfg
			} else {
				next = map[string]any{}
				m[p] = next
			}
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
}

// Get returns the value of a dotted key and whether it is set.
func (c Config) Get(key string) (any, bool) {
	var cur any = map[string]any(c)
	for _, p := range strings.Split(key, ".") {
		var m map[string]any
		switch v := cur.(type) {
		case map[string]any:
			m = v
		case Config:
			m = v
		default:
			return nil, false
		}
		next, ok := m[p]
		if !ok {
			return nil, false
		}
		cur = next
	}
	return cur, true
}

// String returns the value of a dotted key formatted with %v, or def when
// it is not set.
func (c Config) String(key, def string) string {
	if v, ok := c.Get(key); ok {
		return fmt.Sprint(v)
	}
	return def
}

// Merge sets every key of other (dotted keys, as Set takes them) in c. A
// section (a Config or map value) is merged key by key, not replaced: what
// c already holds in it and other does not name stays.
func (c Config) Merge(other map[string]any) {
	for k, v := range other {
		switch sub := v.(type) {
		case Config:
			c.mergeSection(k, sub)
		case map[string]any:
			c.mergeSection(k, sub)
		default:
			c.Set(k, v)
		}
	}
}

func (c Config) mergeSection(prefix string, sub map[string]any) {
	if len(sub) == 0 {
		c.Set(prefix, Config{})
		return
	}
	flat := map[string]any{}
	for k, v := range sub {
		flat[prefix+"."+k] = v
	}
	c.Merge(flat)
}

// Clone returns a deep copy of the sections (values are shared).
func (c Config) Clone() Config {
	return Config(cloneMap(c))
}

func cloneMap(m map[string]any) map[string]any {
	out := maps.Clone(m)
	for k, v := range out {
		switch v := v.(type) {
		case map[string]any:
			out[k] = cloneMap(v)
		case Config:
			out[k] = cloneMap(v)
		}
	}
	return out
}

// Services returns the services the configuration runs (all four when
// the key is not set, as postern serve does).
func (c Config) Services() []string {
	v, ok := c.Get("services")
	if !ok {
		return []string{"users", "fetcher", "router", "relay"}
	}
	switch s := v.(type) {
	case []string:
		return s
	case []any:
		out := make([]string, len(s))
		for i, x := range s {
			out[i] = fmt.Sprint(x)
		}
		return out
	}
	return nil
}

// YAML renders the configuration file.
func (c Config) YAML() ([]byte, error) {
	return yaml.Marshal(map[string]any(c))
}

// endpointKeys maps the names postern serve prints its listeners under to
// the configuration keys of their addresses.
var endpointKeys = map[string]string{
	"broker":      "broker.listen",
	"api":         "users.api.listen",
	"users":       "users.http.listen",
	"fetcher":     "fetcher.http.listen",
	"router":      "router.http.listen",
	"relay":       "relay.http.listen",
	"submission":  "relay.smtp.submission.listen",
	"submissions": "relay.smtp.submissions.listen",
	"inbound":     "relay.smtp.inbound.listen",
	"intersite":   "relay.smtp.intersite.listen",
}

// endpoints returns the names of the listeners a process started on c
// prints: the embedded broker (unless bus.brokers is set), each service's
// side server, the users API, and the relay's SMTP listeners that are on.
func (c Config) endpoints() []string {
	var names []string
	if b, ok := c.Get("bus.brokers"); !ok || fmt.Sprint(b) == "[]" || fmt.Sprint(b) == "" {
		names = append(names, "broker")
	}
	for _, s := range c.Services() {
		names = append(names, s)
		switch s {
		case "users":
			names = append(names, "api")
		case "relay":
			for _, l := range []struct {
				name string
				on   bool // on by default
			}{{"submission", true}, {"submissions", false}, {"inbound", true}, {"intersite", false}} {
				v, set := c.Get(endpointKeys[l.name])
				if (set && fmt.Sprint(v) != "") || (!set && l.on) {
					names = append(names, l.name)
				}
			}
		}
	}
	return names
}
