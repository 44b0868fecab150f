// Package config loads a service's configuration into its typed Config
// struct: defaults (the values the struct already holds), then a YAML file,
// then POSTERN_* environment overrides, then validation. It also documents
// the configuration (Reference, WriteReference) and prints the effective one
// with secrets masked (Dump).
//
// A Config is composed of sections declared by the packages that use them;
// the YAML key of a field comes from its yaml tag, and `yaml:",inline"`
// structs contribute their keys to the parent. Every key has an
// environment variable: POSTERN_ and the upper-cased dotted key with dots
// (and dashes) as underscores, so bus.topic_prefix is
// POSTERN_BUS_TOPIC_PREFIX.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// loadError is one problem found by Load. Its text says where the problem
// is (file and line, or environment variable) for an operator; it unwraps
// to a *FieldError so Keys and errors.As see the key.
type loadError struct {
	text string
	fe   *FieldError
}

func (e *loadError) Error() string { return e.text }
func (e *loadError) Unwrap() error { return e.fe }

// Load fills dst, a pointer to a struct already holding its defaults:
//
//  1. from the YAML file at path, unless path is "": keys absent from the
//     file keep their defaults, a key with an empty (null) value is set to
//     its zero value, and unknown keys are errors;
//  2. from the POSTERN_* variables in environ (os.Environ() in a binary):
//     lists are comma-separated ("" is the empty list), durations are
//     written as in Go ("30s"), booleans as strconv.ParseBool reads them.
//     POSTERN_CONFIG, POSTERN_TOKEN, POSTERN_SERVER and POSTERN_TEST_* are
//     not overrides and are ignored;
//     any other unknown POSTERN_* variable is an error;
//  3. by Validate.
//
// Load reports every problem it finds, joined (see ErrorList), each naming
// the key and where the value came from. Problems in the file or the
// environment stop it before validation. On error dst may have been partly
// filled.
func Load(path string, environ []string, dst any) error {
	root, err := rootValue(dst)
	if err != nil {
		return err
	}
	leaves, err := leavesOf(root.Type())
	if err != nil {
		return err
	}
	if err := checkEnvNames(leaves); err != nil {
		return err
	}
	source := "config"
	if path != "" {
		source = "config " + path
	}

	var errs []error
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		errs = append(errs, decodeFile(source, data, root)...)
	}
	envSet, envErrs := applyEnv(root, leaves, environ)
	errs = append(errs, envErrs...)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	verr := Validate(dst)
	if verr == nil {
		return nil
	}
	for _, e := range flatten(verr) {
		fe := &FieldError{Msg: e.Error()}
		errors.As(e, &fe)
		text := source + ": " + fe.Error()
		if name, ok := envSet[fe.Key]; ok {
			text += " (set by " + name + ")"
		}
		errs = append(errs, &loadError{text: text, fe: fe})
	}
	return errors.Join(errs...)
}

// rootValue checks that dst is a non-nil pointer to a struct and returns
// the struct.
func rootValue(dst any) (reflect.Value, error) {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, fmt.Errorf("config: Load needs a non-nil pointer to a struct, not %T", dst)
	}
	return v.Elem(), nil
}

// checkEnvNames reports two keys sharing an environment variable (a.b_c and
// a_b.c), a mistake in the Config types rather than in the configuration.
func checkEnvNames(leaves []leaf) error {
	seen := map[string]string{}
	for _, l := range leaves {
		if l.env == "" {
			continue
		}
		if other, dup := seen[l.env]; dup {
			return fmt.Errorf("config: keys %s and %s both map to %s", other, l.key, l.env)
		}
		seen[l.env] = l.key
	}
	return nil
}

// yamlLine matches yaml.v3's syntax errors: "line 3: did not find expected key".
var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeFile decodes YAML data over the struct root.
func decodeFile(source string, data []byte, root reflect.Value) []error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file changes nothing
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		text := source + ": " + msg
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			text = source + " line " + m[1] + ": " + m[2]
		}
		return []error{&loadError{text: text, fe: &FieldError{Msg: msg}}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return []error{&loadError{text: source + ": more than one YAML document (---)", fe: &FieldError{Msg: "more than one YAML document"}}}
	}
	node := &doc
	if node.Kind == yaml.DocumentNode {
		if len(node.Content) == 0 {
			return nil
		}
		node = node.Content[0]
	}
	d := &fileDecoder{source: source, budget: maxEntries}
	d.mapping(node, root, "", 0)
	// A mapping merged or aliased twice repeats its problems: report each once.
	seen := map[string]bool{}
	errs := d.errs[:0]
	for _, e := range d.errs {
		if !seen[e.Error()] {
			seen[e.Error()] = true
			errs = append(errs, e)
		}
	}
	return errs
}

// maxEntries bounds the mapping entries decoded from one file, counting
// those brought in again by aliases and merge keys, so that a file of
// nested aliases ("billion laughs") fails instead of running for ever.
const maxEntries = 10_000

type fileDecoder struct {
	source string
	errs   []error
	budget int // mapping entries left to decode
}

func (d *fileDecoder) fail(n *yaml.Node, key, msg string) {
	var text string
	switch {
	case key == "":
		text = fmt.Sprintf("%s line %d: %s", d.source, n.Line, msg)
	default:
		text = fmt.Sprintf("%s line %d: %s: %s", d.source, n.Line, key, msg)
	}
	d.errs = append(d.errs, &loadError{text: text, fe: &FieldError{Key: key, Msg: msg}})
}

// resolve follows aliases (*anchor).
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < maxDepth; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func isMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && n.ShortTag() == "!!merge"
}

// mapping decodes a YAML mapping node over the struct v (addressable),
// whose keys are prefix.<name>.
func (d *fileDecoder) mapping(n *yaml.Node, v reflect.Value, prefix string, depth int) {
	n = resolve(n)
	if isNull(n) {
		return // "section:" with nothing under it keeps the defaults
	}
	if n.Kind != yaml.MappingNode {
		what := "the file"
		if prefix != "" {
			what = "this section"
		}
		d.fail(n, prefix, fmt.Sprintf("%s must be a mapping of keys to values, not %s", what, describe(n)))
		return
	}
	if depth > maxDepth {
		d.fail(n, prefix, "nested too deep")
		return
	}
	si, err := structOf(v.Type())
	if err != nil {
		d.errs = append(d.errs, err)
		return
	}
	d.budget -= len(n.Content) / 2
	if d.budget < 0 {
		if d.budget+len(n.Content)/2 >= 0 { // report once
			d.fail(n, prefix, "too many entries once aliases are expanded")
		}
		return
	}
	// Merge keys (<<: *defaults) first, so that the mapping's own keys
	// override what they bring in, as YAML specifies.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !isMerge(n.Content[i]) {
			continue
		}
		m := resolve(n.Content[i+1])
		if m.Kind == yaml.SequenceNode {
			for _, item := range m.Content {
				d.mapping(item, v, prefix, depth+1)
			}
		} else {
			d.mapping(m, v, prefix, depth+1)
		}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if isMerge(kn) {
			continue
		}
		if kn.Kind != yaml.ScalarNode {
			d.fail(kn, prefix, "a key must be a plain name, not "+describe(kn))
			continue
		}
		key := joinKey(prefix, kn.Value)
		if line, dup := seen[kn.Value]; dup {
			d.errs = append(d.errs, &loadError{
				text: fmt.Sprintf("%s line %d: key %q appears twice (first on line %d)", d.source, kn.Line, key, line),
				fe:   &FieldError{Key: key, Msg: "appears twice"},
			})
			continue
		}
		seen[kn.Value] = kn.Line
		k, ok := si.byKey[kn.Value]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", key)
			var names []string
			for _, k := range si.keys {
				names = append(names, k.name)
			}
			if s := suggest(kn.Value, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", joinKey(prefix, s))
			}
			d.errs = append(d.errs, &loadError{
				text: fmt.Sprintf("%s line %d: %s", d.source, kn.Line, msg),
				fe:   &FieldError{Key: key, Msg: "unknown key"},
			})
			continue
		}
		f := fieldAt(v, k.index, true)
		vn = resolve(vn)
		if isSection(k.typ) {
			if f.Kind() == reflect.Pointer {
				if isNull(vn) {
					f.SetZero()
					continue
				}
				if f.IsNil() {
					f.Set(reflect.New(f.Type().Elem()))
				}
				f = f.Elem()
			}
			d.mapping(vn, f, key, depth+1)
			continue
		}
		d.leaf(vn, f, key)
	}
}

// leaf decodes a YAML value node into the leaf field f. The value replaces
// the default entirely (a list or map is not merged with it).
func (d *fileDecoder) leaf(n *yaml.Node, f reflect.Value, key string) {
	t := f.Type()
	nv := reflect.New(t)
	if isNull(n) {
		f.SetZero()
		return
	}
	if msg := checkScalar(n, t); msg != "" {
		d.fail(n, key, msg)
		return
	}
	var err error
	if hasStruct(t, 0) {
		// yaml.v3 only rejects unknown fields when asked, which Node.Decode
		// cannot be: re-encode the value and decode it strictly.
		var buf bytes.Buffer
		if err = yaml.NewEncoder(&buf).Encode(n); err == nil {
			dec := yaml.NewDecoder(&buf)
			dec.KnownFields(true)
			err = dec.Decode(nv.Interface())
		}
	} else {
		err = n.Decode(nv.Interface())
	}
	if err != nil {
		d.fail(n, key, leafMessage(n, t, err))
		return
	}
	f.Set(nv.Elem())
}

// checkScalar catches what yaml.v3 would accept too kindly: a fraction
// truncated into an integer.
func checkScalar(n *yaml.Node, t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind != yaml.ScalarNode || t == durationType {
		return ""
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.ShortTag() == "!!float" {
			return fmt.Sprintf("want %s, got %s", typeName(t), describe(n))
		}
	}
	return ""
}

// leafMessage turns a yaml.v3 decoding error about a leaf of type t into a
// phrase for an operator.
func leafMessage(n *yaml.Node, t reflect.Type, err error) string {
	if n.Kind == yaml.ScalarNode && envSettable(t) && t.Kind() != reflect.Slice {
		if _, perr := parseText(t, n.Value); perr != nil {
			if containsSecret(t) {
				return perr.Error()
			}
			return fmt.Sprintf("%v (got %s)", perr, describe(n))
		}
	}
	if n.Kind != yaml.ScalarNode || !envSettable(t) {
		var te *yaml.TypeError
		if errors.As(err, &te) && hasStruct(t, 0) {
			return strings.Join(te.Errors, "; ")
		}
	}
	return fmt.Sprintf("want %s, got %s", typeName(t), describe(n))
}

// describe names a YAML node for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "…"
		}
		if n.ShortTag() == "!!str" && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			return fmt.Sprintf("string %q", v)
		}
		return fmt.Sprintf("%q", v)
	}
	return "an unexpected value"
}

// hasStruct reports whether t contains a struct decoded field by field.
func hasStruct(t reflect.Type, depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return hasStruct(t.Elem(), depth+1)
	case reflect.Map:
		return hasStruct(t.Key(), depth+1) || hasStruct(t.Elem(), depth+1)
	case reflect.Struct:
		return !decodesItself(t)
	}
	return false
}
