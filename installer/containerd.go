// Package installer installs the contrast runtime on a node: the payload
// (shim, guest image, runtime configuration) in a directory per handler
// under a prefix, and a containerd runtime handler for it.
//
// The files, by responsibility: containerd.go computes the configuration
// changes, pure functions over configuration bytes; dialect.go is what a
// config version means for them (containerd 1.7 or 2.x), chosen once from
// the main config; install.go, uninstall.go and status.go are the three
// commands; undo.go and files.go are the host file operations, each
// recording its undo so that a failed install or uninstall leaves the host
// as it was; dropins.go reads back the drop-ins, the record of which name
// points at which handler; payload.go and options.go are the payload and
// the paths.
//
// The main config file is edited as text, minimally: only its top-level
// `imports` array changes, so comments, ordering and every other setting of
// the user's file survive byte for byte. The runtime itself lives in a
// separate drop-in file that containerd merges through `imports`.
package installer

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Runtime is the handler the installer adds.
type Runtime struct {
	Handler        string   // CRI runtime handler name, e.g. contrast-cc-1a2b3c4d
	RuntimePath    string   // absolute path of containerd-shim-contrast-v2
	ConfigPath     string   // the shim's runtime.toml (options.ConfigPath)
	PodAnnotations []string // default []string{"io.contrast.*", "io.katacontainers.*"}
	Snapshotter    string   // "" leaves containerd's default
}

// DefaultPodAnnotations are the annotations passed to the shim when
// Runtime.PodAnnotations is nil: the policy and VM annotations the shim reads.
var DefaultPodAnnotations = []string{"io.contrast.*", "io.katacontainers.*"}

// RuntimeType is the containerd runtime type of the contrast shim.
const RuntimeType = "io.containerd.contrast.v2"

// importMarker tags an imports line this package created, so that Unconfigure
// can tell it from one the user wrote and remove the whole line.
const importMarker = "# added by contrast-node-installer"

// ConfigVersion reads the version of a containerd config: 2 (containerd 1.7)
// or 3 (2.x); containerd 2.2 and later write 4, which has the same CRI layout
// as 3. A missing version key means 1 (refused). Errors name the problem
// (parse error with line, unknown version).
func ConfigVersion(main []byte) (int, error) {
	doc, err := parse(main)
	if err != nil {
		return 0, err
	}
	return versionOf(doc)
}

func parse(data []byte) (map[string]any, error) {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			return nil, fmt.Errorf("containerd config does not parse at line %d column %d: %w", row, col, err)
		}
		return nil, fmt.Errorf("containerd config does not parse: %w", err)
	}
	if doc == nil {
		doc = map[string]any{}
	}
	return doc, nil
}

func versionOf(doc map[string]any) (int, error) {
	raw, ok := doc["version"]
	if !ok {
		return 0, errors.New("containerd config has no version key, so containerd reads it as version 1, which is not supported: set version = 2 (containerd 1.7) or 3 (2.x)")
	}
	v, ok := raw.(int64)
	if !ok {
		return 0, fmt.Errorf("containerd config version is %v (%T), not an integer", raw, raw)
	}
	switch v {
	case 2, 3, 4:
		return int(v), nil
	case 1:
		return 0, errors.New("containerd config version 1 is not supported: migrate it with `containerd config migrate`")
	default:
		return 0, fmt.Errorf("unknown containerd config version %d: supported are 2 (containerd 1.7), 3 and 4 (containerd 2.x)", v)
	}
}

// importsOf returns the entries of the top-level imports array.
func importsOf(doc map[string]any) ([]string, error) {
	raw, ok := doc["imports"]
	if !ok {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("containerd config imports is %T, not an array", raw)
	}
	out := make([]string, 0, len(list))
	for i, entry := range list {
		s, ok := entry.(string)
		if !ok {
			return nil, fmt.Errorf("containerd config imports[%d] is %T, not a string", i, entry)
		}
		out = append(out, s)
	}
	return out, nil
}

// imported reports whether containerd loads dropInPath through one of the
// imports, by its exact path or an absolute glob that matches it.
func imported(imports []string, dropInPath string) bool {
	want := filepath.Clean(dropInPath)
	for _, entry := range imports {
		entry = filepath.Clean(entry)
		if entry == want {
			return true
		}
		if filepath.IsAbs(entry) && strings.Contains(entry, "*") {
			if ok, err := filepath.Match(entry, want); err == nil && ok {
				return true
			}
		}
	}
	return false
}

func lookup(doc map[string]any, path []string) (any, bool) {
	var cur any = doc
	for _, key := range path {
		table, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = table[key]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

func (rt Runtime) validate() error {
	switch {
	case rt.Handler == "":
		return errors.New("runtime handler name is empty")
	case !filepath.IsAbs(rt.RuntimePath):
		return fmt.Errorf("runtime path %q of handler %s is not absolute", rt.RuntimePath, rt.Handler)
	case !filepath.IsAbs(rt.ConfigPath):
		return fmt.Errorf("shim config path %q of handler %s is not absolute", rt.ConfigPath, rt.Handler)
	}
	return nil
}

// Configure returns what installing rt changes: the drop-in file's content (a
// complete TOML of the same version holding only the runtime table) and the
// new main config, which only gains dropInPath in `imports` (nil when it is
// already there). Comments, order and every other setting of main survive
// byte for byte except the imports line. Idempotent: Configure on its own
// output changes nothing.
//
// Version 2 (containerd 1.7) differs in one point: containerd 1.7 replaces a
// whole plugin table with an imported one instead of merging it, so there the
// drop-in holds main's complete CRI plugin table plus the runtime. Settings
// the user later changes in main's CRI table are shadowed by the drop-in
// until Configure runs again.
func Configure(main []byte, dropInPath string, rt Runtime) (newMain, dropIn []byte, err error) {
	return ConfigureAll(main, dropInPath, []Runtime{rt})
}

// ConfigureAll is Configure for several runtimes sharing one drop-in, in
// the order given. On version 2 this is the only way to serve more than one
// handler from drop-ins: containerd 1.7 keeps only the CRI table of the last
// imported file, so every handler has to be in that one table.
func ConfigureAll(main []byte, dropInPath string, rts []Runtime) (newMain, dropIn []byte, err error) {
	if err := validateRuntimes(dropInPath, rts); err != nil {
		return nil, nil, err
	}
	version, err := ConfigVersion(main)
	if err != nil {
		return nil, nil, err
	}
	return configure(dialectFor(version), main, dropInPath, rts)
}

func validateRuntimes(dropInPath string, rts []Runtime) error {
	if len(rts) == 0 {
		return errors.New("no runtime to configure")
	}
	seen := map[string]bool{}
	for _, rt := range rts {
		if err := rt.validate(); err != nil {
			return err
		}
		if seen[rt.Handler] {
			return fmt.Errorf("runtime handler %s given twice", rt.Handler)
		}
		seen[rt.Handler] = true
	}
	if !filepath.IsAbs(dropInPath) {
		return fmt.Errorf("drop-in path %q is not absolute", dropInPath)
	}
	return nil
}

// configure is ConfigureAll in a dialect already known.
func configure(d dialect, main []byte, dropInPath string, rts []Runtime) (newMain, dropIn []byte, err error) {
	if err := validateRuntimes(dropInPath, rts); err != nil {
		return nil, nil, err
	}
	doc, err := parse(main)
	if err != nil {
		return nil, nil, err
	}
	imports, err := importsOf(doc)
	if err != nil {
		return nil, nil, err
	}
	for _, rt := range rts {
		runtimePath := d.runtimeTablePath(rt.Handler)
		if _, exists := lookup(doc, runtimePath); exists {
			return nil, nil, fmt.Errorf("containerd config already defines runtime %q (%s): the installed handler would shadow it", rt.Handler, strings.Join(runtimePath, "."))
		}
	}

	dropIn, err = dropInFor(doc, d, rts)
	if err != nil {
		return nil, nil, err
	}
	if imported(imports, dropInPath) {
		return nil, dropIn, nil
	}
	newMain, err = addImport(main, dropInPath)
	if err != nil {
		return nil, nil, err
	}
	return newMain, dropIn, nil
}

func runtimeTable(d dialect, rt Runtime) map[string]any {
	annotations := rt.PodAnnotations
	if annotations == nil {
		annotations = DefaultPodAnnotations
	}
	table := map[string]any{
		"runtime_type":    RuntimeType,
		"runtime_path":    rt.RuntimePath,
		"pod_annotations": annotations,
		"options":         map[string]any{"ConfigPath": rt.ConfigPath},
	}
	if d.sandboxer != "" {
		table["sandboxer"] = d.sandboxer
	}
	if rt.Snapshotter != "" {
		table["snapshotter"] = rt.Snapshotter
	}
	return table
}

func dropInFor(main map[string]any, d dialect, rts []Runtime) ([]byte, error) {
	plugin := map[string]any{}
	if d.carryMainCRI {
		if existing, ok := lookup(main, []string{"plugins", d.criPlugin}); ok {
			existingTable, ok := existing.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("containerd config plugins.%q is %T, not a table", d.criPlugin, existing)
			}
			plugin = existingTable
		}
	}
	names := make([]string, 0, len(rts))
	for _, rt := range rts {
		if err := setPath(plugin, []string{"containerd", "runtimes", rt.Handler}, runtimeTable(d, rt)); err != nil {
			return nil, fmt.Errorf("containerd config plugins.%q: %w", d.criPlugin, err)
		}
		names = append(names, rt.Handler)
	}
	doc := map[string]any{
		"version": d.version,
		"plugins": map[string]any{d.criPlugin: plugin},
	}
	var out bytes.Buffer
	what := "handler " + names[0]
	if len(names) > 1 {
		what = "handlers " + strings.Join(names, ", ")
	}
	fmt.Fprintf(&out, "# containerd runtime %s, written by contrast-node-installer.\n# Uninstall removes this file; edits are overwritten on install.\n", what)
	enc := toml.NewEncoder(&out)
	enc.SetIndentTables(true)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encoding drop-in for runtime %s: %w", strings.Join(names, ", "), err)
	}
	return out.Bytes(), nil
}

// setPath stores value at path below table, creating the intermediate
// tables.
func setPath(table map[string]any, path []string, value any) error {
	for i, key := range path[:len(path)-1] {
		next, ok := table[key]
		if !ok {
			child := map[string]any{}
			table[key] = child
			table = child
			continue
		}
		child, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("%s is %T, not a table", strings.Join(path[:i+1], "."), next)
		}
		table = child
	}
	table[path[len(path)-1]] = value
	return nil
}

// Unconfigure removes dropInPath from main's imports (nil when absent).
func Unconfigure(main []byte, dropInPath string) (newMain []byte, err error) {
	doc, err := parse(main)
	if err != nil {
		return nil, err
	}
	imports, err := importsOf(doc)
	if err != nil {
		return nil, err
	}
	present := false
	for _, entry := range imports {
		if filepath.Clean(entry) == filepath.Clean(dropInPath) {
			present = true
		}
	}
	if !present {
		return nil, nil
	}
	loc, err := findImports(main)
	if err != nil {
		return nil, err
	}
	out := main
	// Remove from the last element on, so earlier offsets stay valid.
	for i := len(loc.elements) - 1; i >= 0; i-- {
		el := loc.elements[i]
		if filepath.Clean(el.value) != filepath.Clean(dropInPath) {
			continue
		}
		if len(loc.elements) == 1 && bytes.HasSuffix(lineAfter(main, loc.end), []byte(importMarker)) {
			// The whole line is ours: remove it with its newline.
			start, end := lineStart(main, loc.start), lineEnd(main, loc.end)
			if end == len(main) && !bytes.HasSuffix(main, []byte("\n")) && start > 0 {
				// addImport put the line after a last line without a
				// newline, adding the newline before it.
				start--
			}
			return splice(out, start, end, nil), nil
		}
		var from, to int
		switch {
		case i > 0:
			// Undo ", <path>" after the previous element.
			from, to = loc.elements[i-1].end, el.end
		case len(loc.elements) > 1:
			from, to = el.start, loc.elements[1].start
		default:
			from, to = el.start, el.end
		}
		out = splice(out, from, to, nil)
		loc.elements = append(loc.elements[:i], loc.elements[i+1:]...)
	}
	return out, nil
}

// importsLocation is where the top-level imports key value sits in a file.
type importsLocation struct {
	found      bool
	start, end int // the key-value expression
	open       int // offset just after the array's '['
	elements   []element
	versionEnd int // end of the version key-value, -1 if none
}

type element struct {
	value      string
	start, end int
}

// findImports locates the top-level imports and version keys, which TOML
// requires before the first table header.
func findImports(data []byte) (importsLocation, error) {
	loc := importsLocation{versionEnd: -1}
	p := unstable.Parser{}
	p.Reset(data)
	for p.NextExpression() {
		expr := p.Expression()
		if expr.Kind == unstable.Table || expr.Kind == unstable.ArrayTable {
			break
		}
		if expr.Kind != unstable.KeyValue {
			continue
		}
		keys := expr.Key()
		if !keys.Next() {
			continue
		}
		name := string(keys.Node().Data)
		if keys.Next() {
			continue // dotted key such as imports.x
		}
		start, end := int(expr.Raw.Offset), int(expr.Raw.Offset+expr.Raw.Length)
		switch name {
		case "version":
			loc.versionEnd = end
		case "imports":
			value := expr.Value()
			if value.Kind != unstable.Array {
				return loc, fmt.Errorf("containerd config imports is a %s, not an array", value.Kind)
			}
			open := bytes.IndexByte(data[start:end], '[')
			if open < 0 {
				return loc, errors.New("containerd config imports array has no '['")
			}
			loc.found, loc.start, loc.end, loc.open = true, start, end, start+open+1
			children := value.Children()
			for children.Next() {
				child := children.Node()
				if child.Kind != unstable.String {
					return loc, fmt.Errorf("containerd config imports holds a %s, not a string", child.Kind)
				}
				loc.elements = append(loc.elements, element{
					value: string(child.Data),
					start: int(child.Raw.Offset),
					end:   int(child.Raw.Offset + child.Raw.Length),
				})
			}
		}
	}
	if err := p.Error(); err != nil {
		return loc, fmt.Errorf("containerd config does not parse: %w", err)
	}
	return loc, nil
}

// addImport adds path to the top-level imports array, creating the key
// after the version line when there is none.
func addImport(data []byte, path string) ([]byte, error) {
	loc, err := findImports(data)
	if err != nil {
		return nil, err
	}
	quoted := tomlString(path)
	switch {
	case loc.found && len(loc.elements) > 0:
		last := loc.elements[len(loc.elements)-1]
		return splice(data, last.end, last.end, []byte(", "+quoted)), nil
	case loc.found:
		return splice(data, loc.open, loc.open, []byte(quoted)), nil
	}
	line := []byte("imports = [" + quoted + "] " + importMarker + "\n")
	if loc.versionEnd < 0 {
		return splice(data, 0, 0, line), nil
	}
	at := lineEnd(data, loc.versionEnd)
	if at == len(data) && !bytes.HasSuffix(data, []byte("\n")) {
		// The version line is the last and has no newline: keep it so.
		line = append([]byte("\n"), bytes.TrimSuffix(line, []byte("\n"))...)
	}
	return splice(data, at, at, line), nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func splice(data []byte, from, to int, insert []byte) []byte {
	out := make([]byte, 0, len(data)-(to-from)+len(insert))
	out = append(out, data[:from]...)
	out = append(out, insert...)
	return append(out, data[to:]...)
}

// lineEnd returns the offset just after the newline ending the line that
// holds offset, or len(data).
func lineEnd(data []byte, offset int) int {
	if i := bytes.IndexByte(data[offset:], '\n'); i >= 0 {
		return offset + i + 1
	}
	return len(data)
}

func lineStart(data []byte, offset int) int {
	return bytes.LastIndexByte(data[:offset], '\n') + 1
}

// lineAfter returns the rest of the line after offset, without line break.
func lineAfter(data []byte, offset int) []byte {
	return bytes.TrimRight(data[offset:lineEnd(data, offset)], "\r\n")
}
