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

// Installed is one handler directory under the prefix.
type Installed struct {
	Handler string
	Dir     string
	// DropIn is the drop-in that configures the handler ("" when none
	// does; on config version 2 the shared one); Imported says whether the
	// main config imports it.
	DropIn   string
	Imported bool
	// Aliases are drop-ins of other names that point at this handler.
	Aliases []string
}

// Status lists the handlers installed under the prefix.
func Status(opts Options) ([]Installed, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	main, err := readMain(&opts)
	if err != nil {
		return nil, err
	}
	handlers, err := installedHandlers(&opts)
	if err != nil {
		return nil, err
	}
	if main.dialect.oneDropIn {
		return sharedStatus(&opts, main, handlers)
	}
	var out []Installed
	for _, h := range handlers {
		in := Installed{Handler: h, Dir: filepath.Join(opts.Prefix, h)}
		d := opts.dropIn(in.Handler)
		if _, err := os.Stat(opts.host(d)); err == nil {
			in.DropIn = d
			in.Imported = imported(main.imports, d)
		}
		if in.Aliases, err = aliasesOf(&opts, main.dialect, h); err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// sharedStatus is Status in the dialect with one drop-in, which holds
// every handler and alias.
func sharedStatus(opts *Options, main mainConfig, handlers []string) ([]Installed, error) {
	existing, err := readDropIn(opts, main.dialect, opts.sharedDropIn())
	if err != nil {
		return nil, err
	}
	var out []Installed
	for _, h := range handlers {
		in := Installed{Handler: h, Dir: filepath.Join(opts.Prefix, h)}
		if _, ok := existing[h]; ok {
			in.DropIn = opts.sharedDropIn()
			in.Imported = imported(main.imports, in.DropIn)
		}
		for _, name := range slices.Sorted(maps.Keys(existing)) {
			if name != h && !slices.Contains(handlers, name) && existing[name].handler(opts) == h {
				in.Aliases = append(in.Aliases, name)
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// installedHandlers lists the handler directories under the prefix, sorted:
// they are the record of what is installed.
func installedHandlers(opts *Options) ([]string, error) {
	entries, err := os.ReadDir(opts.host(opts.Prefix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read prefix: %w", err)
	}
	var out []string
	for _, e := range entries {
		// Skip what installTree and setAside leave beside a handler.
		if !e.IsDir() || strings.Contains(e.Name(), ".tmp-") || strings.Contains(e.Name(), ".old-") {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}
