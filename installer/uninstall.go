package installer

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// Uninstall removes a handler: its drop-in and those of the aliases that
// point at it, the imports entries, and its directory; then it restarts
// containerd. An empty handler is the one the payload installs. The
// aliases are found in the drop-ins, so Options.Alias need not name them;
// an alias pointing at another handler stays. On error the host is left
// as it was.
func Uninstall(ctx context.Context, opts Options, handler string) (res *Result, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if handler == "" {
		if handler, err = HandlerName(opts); err != nil {
			return nil, fmt.Errorf("which handler to uninstall: %w", err)
		}
	}
	if !validName(handler) {
		return nil, fmt.Errorf("handler name %q is not valid", handler)
	}
	hostDir := filepath.Join(opts.Prefix, handler)
	main, err := readMain(&opts)
	if err != nil {
		return nil, err
	}

	c := &change{opts: &opts}
	defer c.end(ctx, &err)
	res = &Result{Handler: handler, Dir: hostDir}
	var cfg dropInsChange
	var aliases []string
	if main.dialect.oneDropIn {
		cfg, aliases, err = uninstallShared(&c.undo, &opts, main, handler)
	} else {
		cfg, aliases, err = uninstallPerName(&c.undo, &opts, main, handler)
	}
	if err != nil {
		return nil, err
	}
	res.Alias = strings.Join(aliases, ", ")
	res.DropIns = cfg.dropIns
	res.Changed = cfg.changed
	if !bytes.Equal(cfg.main, main.data) {
		if res.Backup, err = c.undo.replaceMain(&opts, main.data, cfg.main); err != nil {
			return nil, err
		}
		res.Changed = true
	}
	removed, err := c.undo.removeDir(opts.host(hostDir))
	if err != nil {
		return nil, err
	}
	res.Changed = res.Changed || removed
	if err := c.apply(ctx, res.Changed, nil); err != nil {
		return nil, err
	}
	return res, nil
}

// uninstallPerName removes the handler's drop-in and those of its aliases
// and their imports; it returns the aliases removed.
func uninstallPerName(u *undoStack, opts *Options, main mainConfig, handler string) (dropInsChange, []string, error) {
	out := dropInsChange{main: main.data}
	aliases, err := aliasesOf(opts, main.dialect, handler)
	if err != nil {
		return out, nil, err
	}
	for _, name := range append([]string{handler}, aliases...) {
		path := opts.dropIn(name)
		m, err := Unconfigure(out.main, path)
		if err != nil {
			return out, nil, fmt.Errorf("unconfigure containerd %s: %w", opts.ContainerdConfig, err)
		}
		if m != nil {
			out.main = m
		}
		removed, err := u.removeFile(opts.host(path))
		if err != nil {
			return out, nil, err
		}
		if removed {
			out.dropIns = append(out.dropIns, path)
			out.changed = true
		}
	}
	return out, aliases, nil
}

// uninstallShared rewrites the one drop-in of every handler and alias
// without the handler and its aliases; it returns the aliases removed.
func uninstallShared(u *undoStack, opts *Options, main mainConfig, handler string) (dropInsChange, []string, error) {
	out := dropInsChange{}
	rts, dropped, err := sharedRuntimes(opts, main.dialect, handler, "", "")
	if err != nil {
		return out, nil, err
	}
	if out.main, out.changed, err = applyShared(u, opts, main, rts); err != nil {
		return out, nil, err
	}
	if out.changed {
		out.dropIns = []string{opts.sharedDropIn()}
	}
	return out, dropped, nil
}
