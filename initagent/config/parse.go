package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// FieldError is one problem at one field of the document.
type FieldError struct {
	Path string // e.g. network.interfaces[1].routes[0].via
	Line int    // 0 when unknown
	Msg  string // what is wrong and what to do
}

func (e *FieldError) Error() string {
	// A message that already cites its line ("duplicate key (line 3 and
	// line 7)") is not followed by the line again.
	if e.Line > 0 && !strings.Contains(e.Msg, fmt.Sprintf("line %d)", e.Line)) {
		return fmt.Sprintf("%s: %s (line %d)", e.Path, e.Msg, e.Line)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

// Errors is every problem found in a document, in document order.
type Errors []*FieldError

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Warning is a value the parser normalised, e.g. an IPv4-mapped IPv6
// address rewritten to IPv4. Warnings are logged, never silent.
type Warning struct {
	Path, Msg string
}

func (w Warning) String() string { return w.Path + ": " + w.Msg }

// MaxSize bounds a config document.
const MaxSize = 4 << 20

// Parse reads a MachineConfig (YAML or JSON), or a bare Ignition v3 config
// (which becomes the ignition section of an otherwise empty MachineConfig),
// and validates it. err is an Errors (or a syntax error); warnings list what
// was normalised.
func Parse(data []byte) (*MachineConfig, []Warning, error) {
	if len(data) > MaxSize {
		return nil, nil, fmt.Errorf("config is %d bytes, more than the %d allowed", len(data), MaxSize)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, fmt.Errorf("config is neither valid YAML nor JSON: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, nil, errors.New("config is empty: give a MachineConfig (apiVersion: " + APIVersion + ", kind: MachineConfig) or an Ignition v3 config")
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, nil, Errors{{Path: "(document)", Line: doc.Line, Msg: "must be a mapping with apiVersion and kind"}}
	}
	if isBareIgnition(doc) {
		doc = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "apiVersion"}, {Kind: yaml.ScalarNode, Tag: "!!str", Value: APIVersion},
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "kind"}, {Kind: yaml.ScalarNode, Tag: "!!str", Value: "MachineConfig"},
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "ignition"}, doc,
		}}
	}
	var errs Errors
	checkNode(doc, reflect.TypeFor[MachineConfig](), "", &errs)
	if len(errs) > 0 {
		return nil, nil, errs
	}
	var cfg MachineConfig
	if err := doc.Decode(&cfg); err != nil {
		return nil, nil, fmt.Errorf("BUG: config passed the structure check but does not decode: %w", err)
	}
	if cfg.Ignition != nil {
		ign, err := json.Marshal(jsonCompatible(cfg.Ignition))
		if err != nil {
			return nil, nil, Errors{{Path: "ignition", Line: lineOf(doc, "ignition"), Msg: err.Error()}}
		}
		cfg.ignitionJSON = ign
	}
	v := &validator{cfg: &cfg}
	v.validate()
	for _, e := range v.errs {
		e.Line = lineOf(doc, e.Path)
	}
	if len(v.errs) > 0 {
		return nil, v.warnings, v.errs
	}
	return &cfg, v.warnings, nil
}

// isBareIgnition reports whether the document is an Ignition config rather
// than a MachineConfig: it has ignition.version and no apiVersion.
func isBareIgnition(doc *yaml.Node) bool {
	if mappingValue(doc, "apiVersion") != nil {
		return false
	}
	ign := mappingValue(doc, "ignition")
	return ign != nil && mappingValue(ign, "version") != nil
}

var (
	anyMapType = reflect.TypeFor[map[string]any]()
)

// checkNode compares a YAML node with the Go type it will decode into and
// reports unknown fields and wrong kinds with their field paths, so that
// Decode afterwards cannot fail.
func checkNode(n *yaml.Node, t reflect.Type, path string, errs *Errors) {
	fail := func(format string, args ...any) {
		p := path
		if p == "" {
			p = "(document)"
		}
		*errs = append(*errs, &FieldError{Path: p, Line: n.Line, Msg: fmt.Sprintf(format, args...)})
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		// Aliases can expand exponentially (and recursively); a machine config has no need for them.
		fail("YAML anchors and aliases are not supported: write the value out")
		return
	}
	if n.Tag == "!!null" {
		return // an empty value is the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeFor[Address]() && n.Kind == yaml.ScalarNode {
		return // "10.0.0.5/24" is shorthand for {address: 10.0.0.5/24}
	}
	if t == anyMapType {
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping")
			return
		}
		checkAny(n, path, errs) // its fields are checked by their own parser (Ignition)
		return
	}
	if n.Kind == yaml.MappingNode {
		duplicateKeys(n, path, errs)
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping, got %s", describe(n))
			return
		}
		fields := map[string]reflect.StructField{}
		for i := range t.NumField() {
			f := t.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" {
				fields[name] = f
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			f, ok := fields[key]
			if !ok {
				*errs = append(*errs, &FieldError{Path: join(path, key), Line: n.Content[i].Line,
					Msg: fmt.Sprintf("unknown field: remove it or use one of %s", strings.Join(sortedKeys(fields), ", "))})
				continue
			}
			checkNode(val, f.Type, join(path, key), errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			fail("must be a list, got %s", describe(n))
			return
		}
		for i, c := range n.Content {
			checkNode(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping, got %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Kind != yaml.ScalarNode {
				*errs = append(*errs, &FieldError{Path: join(path, k.Value), Line: k.Line,
					Msg: fmt.Sprintf("the key is %s: write a plain string key", describe(k))})
				continue
			}
			checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), errs)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			fail("must be a string, got %s", describe(n))
			return
		}
		var s string
		if err := n.Decode(&s); err != nil {
			fail("must be a string, got %s", describe(n))
		}
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			fail("must be true or false, got %s", describe(n))
		}
	case reflect.Int, reflect.Uint32:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			fail("must be a whole number, got %s", describe(n))
			return
		}
		var err error
		if t.Kind() == reflect.Uint32 {
			var u uint32
			err = n.Decode(&u)
		} else {
			var i int
			err = n.Decode(&i)
		}
		if err != nil {
			if _, perr := strconv.ParseInt(n.Value, 0, 64); perr != nil && !errors.Is(perr, strconv.ErrRange) {
				fail("must be a whole number, got %s", describe(n))
			} else {
				fail("%s is out of range for this field", n.Value)
			}
		}
	default:
		fail("BUG: no check for %s", t)
	}
}

// duplicateKeys reports a key given twice in one mapping: YAML forbids it,
// and which value would win is anyone's guess.
func duplicateKeys(n *yaml.Node, path string, errs *Errors) {
	first := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if f, dup := first[k.Value]; dup {
			where := fmt.Sprintf("line %d and line %d", f.Line, k.Line)
			if f.Line == k.Line {
				where = fmt.Sprintf("line %d, columns %d and %d", k.Line, f.Column, k.Column)
			}
			*errs = append(*errs, &FieldError{Path: join(path, k.Value), Line: k.Line,
				Msg: fmt.Sprintf("duplicate key (%s): keep one", where)})
			continue
		}
		first[k.Value] = k
	}
}

// checkAny checks a subtree decoded into map[string]any (the ignition
// section) for what would make the decoding itself fail: anchors and
// aliases, duplicate keys, and scalars whose explicit tag does not fit
// their value (!!int abc).
func checkAny(n *yaml.Node, path string, errs *Errors) {
	p := path
	if p == "" {
		p = "(document)"
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		*errs = append(*errs, &FieldError{Path: p, Line: n.Line, Msg: "YAML anchors and aliases are not supported: write the value out"})
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		duplicateKeys(n, path, errs)
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkAny(n.Content[i], join(path, n.Content[i].Value), errs)
			checkAny(n.Content[i+1], join(path, n.Content[i].Value), errs)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			checkAny(c, fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case yaml.ScalarNode:
		var v any
		if err := n.Decode(&v); err != nil {
			*errs = append(*errs, &FieldError{Path: p, Line: n.Line,
				Msg: fmt.Sprintf("%s does not fit its tag %s: remove the tag or fix the value", describe(n), n.Tag)})
		}
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, key string) string {
	if key == "" || strings.ContainsAny(key, ".[] \t\n") {
		return fmt.Sprintf("%s[%q]", path, key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys(m map[string]reflect.StructField) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// UnmarshalYAML accepts "10.0.0.5/24" as well as the mapping form.
func (a *Address) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		a.Address = n.Value
		return nil
	}
	type plain Address
	return n.Decode((*plain)(a))
}

// jsonCompatible turns YAML-decoded values into what encoding/json accepts
// (yaml.v3 decodes mappings with non-string keys to map[any]any).
func jsonCompatible(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonCompatible(e)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[fmt.Sprint(k)] = jsonCompatible(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonCompatible(e)
		}
		return out
	}
	return v
}

// lineOf finds the line of a field path such as
// "network.interfaces[1].routes[0].via" in a mapping node.
func lineOf(doc *yaml.Node, path string) int {
	n, line := doc, doc.Line
	for _, part := range strings.Split(path, ".") {
		key, rest, _ := strings.Cut(part, "[")
		if key != "" {
			next := mappingValue(n, key)
			if next == nil {
				return line
			}
			n, line = next, next.Line
		}
		for rest != "" {
			idxStr, after, _ := strings.Cut(rest, "]")
			idx, err := strconv.Atoi(idxStr)
			if err != nil || n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n, line = n.Content[idx], n.Content[idx].Line
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return line
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
