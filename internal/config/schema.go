package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// This file turns configuration struct types into what the loader, the
// reference writer and the dumper walk: the YAML key of every field, the
// inline structs flattened into their parent, and which fields are sections
// (nested structs) and which are leaves (values).

var (
	durationType      = reflect.TypeFor[time.Duration]()
	secretType        = reflect.TypeFor[Secret]()
	textUnmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
	textMarshalType   = reflect.TypeFor[encoding.TextMarshaler]()
	yamlUnmarshalType = reflect.TypeFor[yaml.Unmarshaler]()
	validatorType     = reflect.TypeFor[Validator]()
)

// envPrefix starts every environment override.
const envPrefix = "POSTERN_"

// maxDepth bounds the nesting of sections, so that a recursive type is a
// clear error rather than a stack overflow.
const maxDepth = 32

// fieldInfo is one exported, non-skipped field of a struct.
type fieldInfo struct {
	name   string // YAML key; empty when inline
	index  int    // reflect field index
	inline bool   // yaml:",inline": its keys belong to the parent
	typ    reflect.Type
	doc    string
}

// keyInfo is a key reachable at one mapping level of a struct, with the
// inline structs flattened: index is the path of field indexes from the
// struct to the field, through any inline structs.
type keyInfo struct {
	name  string
	index []int
	typ   reflect.Type
}

type structInfo struct {
	fields []fieldInfo         // direct fields in declaration order
	keys   []keyInfo           // keys at this level, inline flattened, in order
	byKey  map[string]*keyInfo // keys by name
}

var structCache sync.Map // reflect.Type → *structInfo or error

// isSection reports whether a field of type t is a section (a nested mapping
// the loader descends into) rather than a leaf value: a struct, or a pointer
// to one, that does not decode itself from YAML or text.
func isSection(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return false
	}
	return !decodesItself(t)
}

// decodesItself reports whether values of t (or *t) unmarshal themselves
// from YAML or text: such a struct (time.Time, netip.Addr) is a leaf.
func decodesItself(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return t.Implements(textUnmarshalType) || p.Implements(textUnmarshalType) ||
		t.Implements(yamlUnmarshalType) || p.Implements(yamlUnmarshalType)
}

// parseTag splits a yaml struct tag into the key and whether it is inline;
// skip is true for `yaml:"-"`.
func parseTag(f reflect.StructField) (name string, inline, skip bool) {
	tag := f.Tag.Get("yaml")
	if tag == "-" {
		return "", false, true
	}
	name, opts, _ := strings.Cut(tag, ",")
	for opt := range strings.SplitSeq(opts, ",") {
		if opt == "inline" {
			inline = true
		}
	}
	if name == "" && !inline {
		// yaml.v3's default key: the field name in lower case.
		name = strings.ToLower(f.Name)
	}
	return name, inline, false
}

// structOf returns the fields and keys of struct type t.
func structOf(t reflect.Type) (*structInfo, error) {
	if v, ok := structCache.Load(t); ok {
		if err, ok := v.(error); ok {
			return nil, err
		}
		return v.(*structInfo), nil
	}
	si, err := buildStruct(t, 0)
	if err != nil {
		structCache.Store(t, err)
		return nil, err
	}
	structCache.Store(t, si)
	return si, nil
}

func buildStruct(t reflect.Type, depth int) (*structInfo, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("config type %s: inline structs nested too deep", t)
	}
	si := &structInfo{byKey: map[string]*keyInfo{}}
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline, skip := parseTag(f)
		if skip {
			continue
		}
		// Unexported fields are skipped, except an embedded unexported
		// struct marked inline, whose exported fields are reachable (as
		// yaml.v3 allows too).
		if !f.IsExported() && !(f.Anonymous && inline && f.Type.Kind() == reflect.Struct) {
			continue
		}
		fi := fieldInfo{name: name, index: i, inline: inline, typ: f.Type, doc: f.Tag.Get("doc")}
		if inline {
			fi.name = ""
			if !isSection(f.Type) {
				return nil, fmt.Errorf("config type %s: field %s: yaml inline is supported only for structs", t, f.Name)
			}
			st := f.Type
			if st.Kind() == reflect.Pointer {
				st = st.Elem()
			}
			inner, err := buildStruct(st, depth+1)
			if err != nil {
				return nil, err
			}
			for _, k := range inner.keys {
				k.index = append([]int{i}, k.index...)
				si.keys = append(si.keys, k)
			}
		} else {
			si.keys = append(si.keys, keyInfo{name: name, index: []int{i}, typ: f.Type})
		}
		si.fields = append(si.fields, fi)
	}
	for i := range si.keys {
		k := &si.keys[i]
		if _, dup := si.byKey[k.name]; dup {
			return nil, fmt.Errorf("config type %s: key %q is declared twice (check inline structs)", t, k.name)
		}
		si.byKey[k.name] = k
	}
	return si, nil
}

// fieldAt returns the field of struct value v at index path, allocating nil
// pointers to inline structs on the way when alloc is set. It returns an
// invalid Value when it meets a nil pointer and alloc is not set.
func fieldAt(v reflect.Value, index []int, alloc bool) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				if !alloc {
					return reflect.Value{}
				}
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

// leaf is one settable value of a configuration, found by walking the type.
type leaf struct {
	key  string  // full dotted YAML key
	env  string  // environment variable, "" when it cannot be set that way
	path [][]int // index path per section level (see fieldAt)
	typ  reflect.Type
	doc  string
}

// leavesOf lists every leaf of struct type t in declaration order, inline
// fields in place.
func leavesOf(t reflect.Type) ([]leaf, error) {
	var out []leaf
	err := walkLeaves(t, "", nil, 0, &out)
	return out, err
}

func walkLeaves(t reflect.Type, prefix string, path [][]int, depth int, out *[]leaf) error {
	if depth > maxDepth {
		return fmt.Errorf("config key %s: sections nested too deep (recursive type %s?)", prefix, t)
	}
	si, err := structOf(t)
	if err != nil {
		return err
	}
	for _, k := range si.keys {
		key := joinKey(prefix, k.name)
		p := append(append([][]int(nil), path...), k.index)
		if isSection(k.typ) {
			st := k.typ
			if st.Kind() == reflect.Pointer {
				st = st.Elem()
			}
			if err := walkLeaves(st, key, p, depth+1, out); err != nil {
				return err
			}
			continue
		}
		l := leaf{key: key, path: p, typ: k.typ, doc: docOf(t, k.index)}
		if envSettable(k.typ) {
			l.env = envName(key)
		}
		*out = append(*out, l)
	}
	return nil
}

// docOf returns the doc tag of the field at index path below struct type t.
func docOf(t reflect.Type, index []int) string {
	for i, x := range index {
		if i > 0 && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		f := t.Field(x)
		if i == len(index)-1 {
			return f.Tag.Get("doc")
		}
		t = f.Type
	}
	return ""
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	if name == "" {
		return prefix
	}
	return prefix + "." + name
}

// envName maps a dotted key to its environment variable:
// bus.topic_prefix → POSTERN_BUS_TOPIC_PREFIX.
func envName(key string) string {
	r := strings.NewReplacer(".", "_", "-", "_")
	name := envPrefix + strings.ToUpper(r.Replace(key))
	if envIgnored(name) {
		return ""
	}
	return name
}

// envIgnored reports whether a POSTERN_ variable is not a configuration
// override: POSTERN_CONFIG (the file path), POSTERN_TOKEN and
// POSTERN_SERVER (the admin CLI's, often exported in the same shell that
// runs `postern serve`) and POSTERN_TEST_* (tests).
func envIgnored(name string) bool {
	switch name {
	case envPrefix + "CONFIG", envPrefix + "TOKEN", envPrefix + "SERVER":
		return true
	}
	return strings.HasPrefix(name, envPrefix+"TEST_")
}

// typeName is a leaf's type as an operator reads it.
func typeName(t reflect.Type) string {
	switch t {
	case secretType:
		return "secret"
	case durationType:
		return "duration"
	}
	if t.Kind() == reflect.Pointer {
		return typeName(t.Elem())
	}
	if t.Kind() != reflect.Slice && decodesItself(t) {
		return "string (" + t.String() + ")"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		elem := typeName(t.Elem())
		if strings.ContainsAny(elem, "( ") && !strings.HasPrefix(elem, "non-negative") {
			return "list of " + elem + " values"
		}
		return "list of " + elem + "s"
	case reflect.Map:
		return "map of " + typeName(t.Key()) + " to " + typeName(t.Elem())
	case reflect.Struct:
		return "section"
	}
	return t.String()
}

// formatValue renders a leaf's value as it would be written in the
// environment: secrets masked, durations as "30s", lists comma-separated.
func formatValue(v reflect.Value) string {
	if !v.IsValid() {
		return ""
	}
	t := v.Type()
	switch {
	case t == secretType:
		return v.Interface().(Secret).String()
	case t == durationType:
		return formatDuration(time.Duration(v.Int()))
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return ""
		}
		return formatValue(v.Elem())
	}
	if t.Implements(textMarshalType) {
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return ""
		}
		return string(b)
	}
	switch t.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float32:
		return strconv.FormatFloat(v.Float(), 'g', -1, 32)
	case reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	case reflect.Slice, reflect.Array:
		items := make([]string, v.Len())
		for i := range v.Len() {
			items[i] = formatValue(v.Index(i))
		}
		return strings.Join(items, ", ")
	}
	if v.CanInterface() {
		return fmt.Sprint(v.Interface())
	}
	return ""
}

// formatDuration is time.Duration.String without trailing zero units:
// "1m" rather than "1m0s", "2h" rather than "2h0m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// suggest returns the candidate closest to name when it is close enough to
// be a plausible typo, or "".
func suggest(name string, candidates []string) string {
	best, bestD := "", 1+len(name)/4
	if bestD > 3 {
		bestD = 3
	}
	bestD++
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal-string-alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and swaps of neighbours
// ("tsl" for "tls") each count one.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
