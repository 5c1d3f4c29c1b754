package installer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Install copies the payload into <Prefix>/<handler>, configures
// containerd for the handler (and the alias), restarts containerd and
// waits for the handlers. On error the host is left as it was.
func Install(ctx context.Context, opts Options) (res *Result, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	name, err := HandlerName(opts)
	if err != nil {
		return nil, err
	}
	hostDir := filepath.Join(opts.Prefix, name)
	main, err := readMain(&opts)
	if err != nil {
		return nil, err
	}
	files, err := renderTree(&opts, name, hostDir)
	if err != nil {
		return nil, err
	}

	c := &change{opts: &opts}
	defer c.end(ctx, &err)
	res = &Result{Handler: name, Alias: opts.Alias, Dir: hostDir}
	if res.Changed, err = installTree(&c.undo, opts.host(hostDir), files); err != nil {
		return nil, err
	}
	var cfg dropInsChange
	if main.dialect.oneDropIn {
		cfg, err = installShared(&c.undo, &opts, main, name)
	} else {
		cfg, err = installPerName(&c.undo, &opts, main, name)
	}
	if err != nil {
		return nil, err
	}
	res.DropIns = cfg.dropIns
	res.Changed = res.Changed || cfg.changed
	if !bytes.Equal(cfg.main, main.data) {
		if res.Backup, err = c.undo.replaceMain(&opts, main.data, cfg.main); err != nil {
			return nil, err
		}
		res.Changed = true
	}
	if err := c.apply(ctx, res.Changed, cfg.waitFor); err != nil {
		return nil, err
	}
	return res, nil
}

// dropInsChange is what configuring the drop-ins did: the main config it
// needs, the drop-ins of the handler, whether any file changed, and the
// handlers containerd must serve afterwards.
type dropInsChange struct {
	main    []byte
	dropIns []string
	changed bool
	waitFor []string
}

// installPerName writes one drop-in for the handler and one for the alias.
func installPerName(u *undoStack, opts *Options, main mainConfig, handler string) (dropInsChange, error) {
	out := dropInsChange{main: main.data, waitFor: []string{handler}}
	if opts.Alias != "" {
		out.waitFor = append(out.waitFor, opts.Alias)
	}
	for _, n := range out.waitFor {
		path := opts.dropIn(n)
		m, dropIn, err := configure(main.dialect, out.main, path, []Runtime{opts.runtime(n, handler)})
		if err != nil {
			return out, fmt.Errorf("configure containerd %s for %s: %w", opts.ContainerdConfig, n, err)
		}
		if m != nil {
			out.main = m
		}
		out.dropIns = append(out.dropIns, path)
		c, err := u.writeFile(opts.host(path), dropIn)
		if err != nil {
			return out, err
		}
		out.changed = out.changed || c
	}
	return out, nil
}

// installShared rewrites the one drop-in of every handler and alias with
// the handler (and the alias pointing at it) added.
func installShared(u *undoStack, opts *Options, main mainConfig, handler string) (dropInsChange, error) {
	out := dropInsChange{waitFor: []string{handler}}
	if opts.Alias != "" {
		out.waitFor = append(out.waitFor, opts.Alias)
	}
	rts, _, err := sharedRuntimes(opts, main.dialect, "", opts.Alias, handler)
	if err != nil {
		return out, err
	}
	if out.main, out.changed, err = applyShared(u, opts, main, rts); err != nil {
		return out, err
	}
	out.dropIns = []string{opts.sharedDropIn()}
	// Wait for the older handlers too: they must survive the restart.
	for _, rt := range rts {
		if !slices.Contains(out.waitFor, rt.Handler) {
			out.waitFor = append(out.waitFor, rt.Handler)
		}
	}
	return out, nil
}

// installTree makes dir hold exactly files: unchanged when it does,
// otherwise built beside it and renamed into place.
func installTree(u *undoStack, dir string, files map[string]fileContent) (bool, error) {
	if same, err := treeEqual(dir, files); err != nil {
		return false, err
	} else if same {
		return false, nil
	}
	parent := filepath.Dir(dir)
	if err := u.mkdirAll(parent); err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp(parent, filepath.Base(dir)+".tmp-")
	if err != nil {
		return false, fmt.Errorf("install into %s: %w", parent, err)
	}
	// Once renamed into place, tmp is gone and this removes nothing.
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return false, fmt.Errorf("install into %s: %w", parent, err)
	}
	for rel, f := range files {
		data, err := f.bytes()
		if err != nil {
			return false, fmt.Errorf("read payload file %s: %w", rel, err)
		}
		p := filepath.Join(tmp, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return false, fmt.Errorf("install %s into %s: %w", rel, dir, err)
		}
		if err := writeSynced(p, data, f.mode); err != nil {
			return false, fmt.Errorf("install %s into %s: %w", rel, dir, err)
		}
	}
	if err := u.replaceDir(tmp, dir); err != nil {
		return false, err
	}
	return true, nil
}
