package installer

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The drop-ins the installer wrote are its record of which name (handler
// or alias) points at which handler directory: install, uninstall and
// status read them back here.

// dropInRuntime is what a drop-in says of one of our runtimes.
type dropInRuntime struct {
	runtimePath, snapshotter string
}

// handler is the handler directory the runtime's shim is in ("" if none
// under the prefix).
func (r dropInRuntime) handler(opts *Options) string {
	rel, err := filepath.Rel(opts.Prefix, r.runtimePath)
	if err != nil {
		return ""
	}
	h, rest, ok := strings.Cut(filepath.ToSlash(rel), "/")
	if !ok || rest != ShimPath || !validName(h) {
		return ""
	}
	return h
}

// readDropIn reads the contrast runtimes of a drop-in (host path as the
// host sees it), by name; none when the file is missing. Runtimes of
// other types (main's own, which a version 2 drop-in carries) are left out.
func readDropIn(opts *Options, d dialect, path string) (map[string]dropInRuntime, error) {
	data, err := os.ReadFile(opts.host(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read drop-in: %w", err)
	}
	doc, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("drop-in %s: %w", path, err)
	}
	raw, ok := lookup(doc, d.runtimesPath())
	if !ok {
		return nil, nil
	}
	tables, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("drop-in %s: runtimes is %T, not a table", path, raw)
	}
	out := map[string]dropInRuntime{}
	for name, t := range tables {
		table, ok := t.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("drop-in %s: runtime %s is %T, not a table", path, name, t)
		}
		if table["runtime_type"] != RuntimeType {
			continue
		}
		rp, _ := table["runtime_path"].(string)
		sn, _ := table["snapshotter"].(string)
		out[name] = dropInRuntime{runtimePath: rp, snapshotter: sn}
	}
	return out, nil
}

// aliasesOf lists, in a dialect of one drop-in per name, the names other
// than handler whose drop-in (contrast-<name>.toml) points at handler's
// directory. A drop-in that does not parse names no alias: it is left
// alone.
func aliasesOf(opts *Options, d dialect, handler string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(opts.host(opts.DropInDir), "contrast-*.toml"))
	if err != nil {
		return nil, fmt.Errorf("list drop-ins: %w", err)
	}
	var out []string
	for _, p := range paths {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "contrast-"), ".toml")
		if name == handler || !validName(name) {
			continue
		}
		rts, err := readDropIn(opts, d, opts.dropIn(name))
		if err != nil {
			continue
		}
		if rt, ok := rts[name]; ok && rt.handler(opts) == handler {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// sharedRuntimes is what the shared drop-in (dialect with one drop-in)
// must hold: every handler directory under the prefix except removed,
// then the aliases of the current drop-in whose handler stays, with alias
// (unless "") pointing at target. It also returns the aliases that go
// with removed.
func sharedRuntimes(opts *Options, d dialect, removed, alias, target string) (rts []Runtime, dropped []string, err error) {
	handlers, err := installedHandlers(opts)
	if err != nil {
		return nil, nil, err
	}
	handlers = slices.DeleteFunc(handlers, func(h string) bool { return h == removed })
	existing, err := readDropIn(opts, d, opts.sharedDropIn())
	if err != nil {
		return nil, nil, err
	}
	runtimeOf := func(name, h string) Runtime {
		rt := opts.runtime(name, h)
		// Keep the snapshotter each older handler was installed with.
		if old, ok := existing[name]; ok && h != target {
			rt.Snapshotter = old.snapshotter
		}
		return rt
	}
	for _, h := range handlers {
		rts = append(rts, runtimeOf(h, h))
	}
	aliases := map[string]string{}
	for name, r := range existing {
		if slices.Contains(handlers, name) || name == removed {
			continue
		}
		if h := r.handler(opts); h != "" && slices.Contains(handlers, h) {
			aliases[name] = h
		} else {
			dropped = append(dropped, name)
		}
	}
	if alias != "" {
		aliases[alias] = target
		dropped = slices.DeleteFunc(dropped, func(n string) bool { return n == alias })
	}
	for _, name := range slices.Sorted(maps.Keys(aliases)) {
		rts = append(rts, runtimeOf(name, aliases[name]))
	}
	slices.Sort(dropped)
	return rts, dropped, nil
}

// applyShared writes the shared drop-in for rts and imports it, or removes
// both when rts is empty; it returns the new main config and whether the
// drop-in changed.
func applyShared(u *undoStack, opts *Options, main mainConfig, rts []Runtime) ([]byte, bool, error) {
	path := opts.sharedDropIn()
	if len(rts) == 0 {
		m, err := Unconfigure(main.data, path)
		if err != nil {
			return nil, false, fmt.Errorf("unconfigure containerd %s: %w", opts.ContainerdConfig, err)
		}
		if m == nil {
			m = main.data
		}
		c, err := u.removeFile(opts.host(path))
		return m, c, err
	}
	m, dropIn, err := configure(main.dialect, main.data, path, rts)
	if err != nil {
		return nil, false, fmt.Errorf("configure containerd %s: %w", opts.ContainerdConfig, err)
	}
	if m == nil {
		m = main.data
	}
	c, err := u.writeFile(opts.host(path), dropIn)
	return m, c, err
}
