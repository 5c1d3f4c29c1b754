package installer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
)

// Defaults of Options.
const (
	DefaultHostRoot         = "/"
	DefaultPrefix           = "/opt/contrast"
	DefaultHandlerBase      = "contrast-cc"
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	DefaultDropInDir        = "/etc/containerd/conf.d"
	DefaultWaitTimeout      = 2 * time.Minute
)

// Payload paths, relative to Options.Source (the installer image's payload).
const (
	ShimPath          = "bin/containerd-shim-contrast-v2"
	KernelPath        = "image/kernel"
	InitrdPath        = "image/initrd"
	FirmwarePath      = "image/firmware"
	RuntimeConfigPath = "runtime.toml"
)

// Options say what to install where. Paths other than HostRoot and Source
// are as the host sees them; the installer reaches them under HostRoot.
type Options struct {
	// HostRoot is where the host's root filesystem is mounted (default "/").
	HostRoot string
	// Prefix holds one directory per installed handler (default /opt/contrast).
	Prefix string
	// Source is the payload: bin/containerd-shim-contrast-v2,
	// image/{kernel,initrd,...} and runtime.toml, a text/template of the
	// shim configuration (see TemplateData).
	Source string
	// HandlerBase is the handler name before the content hash (default contrast-cc).
	HandlerBase string
	// Alias is an optional second, stable handler name for the same install.
	Alias string
	// ContainerdConfig is containerd's main configuration file
	// (default /etc/containerd/config.toml).
	ContainerdConfig string
	// DropInDir holds the installer's drop-in files (default
	// /etc/containerd/conf.d): contrast-<name>.toml per handler and alias
	// on config version 3 and 4; on version 2 one contrast.toml holding
	// every installed handler and alias, since containerd 1.7 keeps only
	// the last imported CRI table.
	DropInDir string
	// Snapshotter of the handler ("" leaves containerd's default).
	Snapshotter string
	// Restart restarts or reloads containerd; it is called after the
	// configuration changed, and again to restore the old one on failure.
	Restart func(ctx context.Context) error
	// WaitHandlers returns nil once containerd runs and serves every named
	// handler (nil: restart is trusted); for uninstall, names is empty and
	// it only has to answer.
	WaitHandlers func(ctx context.Context, names []string) error
	// WaitTimeout bounds Restart plus WaitHandlers (default 2 minutes).
	WaitTimeout time.Duration
	// Now stamps backups (default time.Now).
	Now func() time.Time
}

// TemplateData is what runtime.toml's template sees: host paths of the
// installed handler.
type TemplateData struct {
	Handler, Dir, Shim, Kernel, Initrd string
	// Firmware is the installed image/firmware, empty when the payload has none.
	Firmware string
}

// Result says what Install or Uninstall did.
type Result struct {
	// Handler is the handler name (contrast-cc-<hash>); Alias the stable one.
	Handler, Alias string
	// Dir is the handler's directory and DropIns the drop-in files, as the host sees them.
	Dir     string
	DropIns []string
	// Changed is false when the host already was as asked: nothing was
	// written and containerd was not restarted.
	Changed bool
	// Backup is the copy of the main config taken before changing it ("" if untouched).
	Backup string
}

func (o *Options) defaults() error {
	if o.HostRoot == "" {
		o.HostRoot = DefaultHostRoot
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.HandlerBase == "" {
		o.HandlerBase = DefaultHandlerBase
	}
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = DefaultContainerdConfig
	}
	if o.DropInDir == "" {
		o.DropInDir = DefaultDropInDir
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	for _, p := range []struct{ name, v string }{{"prefix", o.Prefix}, {"containerd config", o.ContainerdConfig}, {"drop-in dir", o.DropInDir}} {
		if !filepath.IsAbs(p.v) {
			return fmt.Errorf("%s %q is not an absolute path", p.name, p.v)
		}
	}
	for _, n := range []string{o.HandlerBase, o.Alias} {
		if n != "" && !validName(n) {
			return fmt.Errorf("handler name %q: want letters, digits, '-', '_' or '.'", n)
		}
	}
	return nil
}

func validName(n string) bool {
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return n != "" && n != "." && n != ".."
}

// host maps a host path to where the installer reaches it.
func (o *Options) host(p string) string { return filepath.Join(o.HostRoot, p) }

// dropIn is the drop-in file of a handler name, as the host sees it.
func (o *Options) dropIn(name string) string {
	return filepath.Join(o.DropInDir, "contrast-"+name+".toml")
}

// HandlerName is the handler the payload installs as:
// <base>-<first 8 hex digits of the SHA-256 over the payload and prefix>.
func HandlerName(opts Options) (string, error) {
	if err := opts.defaults(); err != nil {
		return "", err
	}
	sum, err := payloadDigest(opts.Source, opts.Prefix)
	if err != nil {
		return "", err
	}
	return opts.HandlerBase + "-" + sum[:8], nil
}

// payloadDigest hashes every file of the payload (path, mode, content)
// and the prefix, which the rendered configuration names.
func payloadDigest(src, prefix string) (string, error) {
	for _, req := range []string{ShimPath, KernelPath, InitrdPath, RuntimeConfigPath} {
		if st, err := os.Stat(filepath.Join(src, req)); err != nil {
			return "", fmt.Errorf("payload %s: %w", src, err)
		} else if !st.Mode().IsRegular() {
			return "", fmt.Errorf("payload %s: %s is not a regular file", src, req)
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "prefix %s\x00", prefix)
	err := walkFiles(src, func(rel string, st fs.FileInfo, path string) error {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", rel, st.Mode().Perm(), st.Size())
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash payload %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// walkFiles calls f for every regular file under root (following
// symlinks to files), in lexical order.
func walkFiles(root string, f func(rel string, st fs.FileInfo, path string) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		return f(filepath.ToSlash(rel), st, path)
	})
}

// Install copies the payload into <Prefix>/<handler>, configures
// containerd for the handler (and the alias), restarts containerd and
// waits for the handlers. On error the host is left as it was.
func Install(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	name, err := HandlerName(opts)
	if err != nil {
		return nil, err
	}
	hostDir := filepath.Join(opts.Prefix, name)
	res := &Result{Handler: name, Alias: opts.Alias, Dir: hostDir}
	main, version, err := readMain(&opts)
	if err != nil {
		return nil, err
	}
	files, err := renderTree(&opts, name, hostDir)
	if err != nil {
		return nil, err
	}
	j := &journal{}
	changed, err := installTree(j, opts.host(hostDir), files)
	if err != nil {
		return nil, errors.Join(err, j.rollback())
	}
	res.Changed = changed
	names := []string{name}
	if opts.Alias != "" {
		names = append(names, opts.Alias)
	}
	newMain := main
	waitFor := slices.Clone(names)
	if version == 2 {
		// containerd 1.7 serves only the CRI table of the last imported
		// file: every handler installed side by side shares one drop-in.
		rts, _, err := sharedRuntimes(&opts, "", opts.Alias, name)
		if err != nil {
			return nil, errors.Join(err, j.rollback())
		}
		m, c, err := applyShared(j, &opts, main, rts)
		if err != nil {
			return nil, errors.Join(err, j.rollback())
		}
		newMain = m
		res.DropIns = append(res.DropIns, opts.sharedDropIn())
		res.Changed = res.Changed || c
		// Wait for the older handlers too: they must survive the restart.
		for _, rt := range rts {
			if !slices.Contains(waitFor, rt.Handler) {
				waitFor = append(waitFor, rt.Handler)
			}
		}
	} else {
		for _, n := range names {
			rt := Runtime{
				Handler:     n,
				RuntimePath: filepath.Join(hostDir, ShimPath),
				ConfigPath:  filepath.Join(hostDir, RuntimeConfigPath),
				Snapshotter: opts.Snapshotter,
			}
			dropInPath := opts.dropIn(n)
			m, dropIn, err := Configure(newMain, dropInPath, rt)
			if err != nil {
				return nil, errors.Join(fmt.Errorf("configure containerd %s for %s: %w", opts.ContainerdConfig, n, err), j.rollback())
			}
			if m != nil {
				newMain = m
			}
			res.DropIns = append(res.DropIns, dropInPath)
			c, err := j.writeFile(opts.host(dropInPath), dropIn)
			if err != nil {
				return nil, errors.Join(err, j.rollback())
			}
			res.Changed = res.Changed || c
		}
	}
	if !bytes.Equal(newMain, main) {
		res.Backup, err = j.replaceMain(&opts, main, newMain)
		if err != nil {
			return nil, errors.Join(err, j.rollback())
		}
		res.Changed = true
	}
	return finish(ctx, &opts, j, res, waitFor)
}

// Uninstall removes a handler: its drop-in (and the alias's, when the
// alias points at it), the imports entries, and its directory; then it
// restarts containerd. An empty handler is the one the payload installs.
func Uninstall(ctx context.Context, opts Options, handler string) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if handler == "" {
		var err error
		if handler, err = HandlerName(opts); err != nil {
			return nil, fmt.Errorf("which handler to uninstall: %w", err)
		}
	}
	if !validName(handler) {
		return nil, fmt.Errorf("handler name %q is not valid", handler)
	}
	hostDir := filepath.Join(opts.Prefix, handler)
	res := &Result{Handler: handler, Dir: hostDir}
	main, version, err := readMain(&opts)
	if err != nil {
		return nil, err
	}
	j := &journal{}
	newMain := main
	if version == 2 {
		rts, dropped, err := sharedRuntimes(&opts, handler, "", "")
		if err != nil {
			return nil, err
		}
		m, c, err := applyShared(j, &opts, main, rts)
		if err != nil {
			return nil, errors.Join(err, j.rollback())
		}
		newMain = m
		res.Alias = strings.Join(dropped, ", ")
		if c {
			res.DropIns = append(res.DropIns, opts.sharedDropIn())
			res.Changed = true
		}
	} else {
		dropIns := []string{opts.dropIn(handler)}
		if opts.Alias != "" {
			// The alias goes with the handler it points at, not with another.
			b, err := os.ReadFile(opts.host(opts.dropIn(opts.Alias)))
			if err == nil && bytes.Contains(b, []byte(hostDir+"/")) {
				dropIns = append(dropIns, opts.dropIn(opts.Alias))
				res.Alias = opts.Alias
			}
		}
		for _, d := range dropIns {
			m, err := Unconfigure(newMain, d)
			if err != nil {
				return nil, errors.Join(fmt.Errorf("unconfigure containerd %s: %w", opts.ContainerdConfig, err), j.rollback())
			}
			if m != nil {
				newMain = m
			}
			c, err := j.removeFile(opts.host(d))
			if err != nil {
				return nil, errors.Join(err, j.rollback())
			}
			if c {
				res.DropIns = append(res.DropIns, d)
				res.Changed = true
			}
		}
	}
	if !bytes.Equal(newMain, main) {
		if res.Backup, err = j.replaceMain(&opts, main, newMain); err != nil {
			return nil, errors.Join(err, j.rollback())
		}
		res.Changed = true
	}
	c, err := j.removeDir(opts.host(hostDir))
	if err != nil {
		return nil, errors.Join(err, j.rollback())
	}
	res.Changed = res.Changed || c
	return finish(ctx, &opts, j, res, nil)
}

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
	main, _, err := readMain(&opts)
	if err != nil {
		return nil, err
	}
	doc, err := parse(main)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", opts.ContainerdConfig, err)
	}
	version, err := versionOf(doc)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", opts.ContainerdConfig, err)
	}
	imports, err := importsOf(doc)
	if err != nil {
		return nil, fmt.Errorf("containerd config %s: %w", opts.ContainerdConfig, err)
	}
	handlers, err := installedHandlers(&opts)
	if err != nil {
		return nil, err
	}
	if version == 2 {
		return sharedStatus(&opts, handlers, imported(imports, opts.sharedDropIn()))
	}
	dropIns, err := filepath.Glob(filepath.Join(opts.host(opts.DropInDir), "contrast-*.toml"))
	if err != nil {
		return nil, fmt.Errorf("list drop-ins: %w", err)
	}
	var out []Installed
	for _, h := range handlers {
		in := Installed{Handler: h, Dir: filepath.Join(opts.Prefix, h)}
		d := opts.dropIn(in.Handler)
		if _, err := os.Stat(opts.host(d)); err == nil {
			in.DropIn = d
			in.Imported = imported(imports, d)
		}
		for _, p := range dropIns {
			alias := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "contrast-"), ".toml")
			if alias == in.Handler {
				continue
			}
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(in.Dir+"/")) {
				in.Aliases = append(in.Aliases, alias)
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// sharedStatus is Status on config version 2, where the shared drop-in
// holds every handler and alias.
func sharedStatus(opts *Options, handlers []string, isImported bool) ([]Installed, error) {
	existing, err := readSharedRuntimes(opts)
	if err != nil {
		return nil, err
	}
	var out []Installed
	for _, h := range handlers {
		in := Installed{Handler: h, Dir: filepath.Join(opts.Prefix, h)}
		if _, ok := existing[h]; ok {
			in.DropIn = opts.sharedDropIn()
			in.Imported = isImported
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

// sharedDropIn is the drop-in that holds every handler on config version 2.
func (o *Options) sharedDropIn() string { return filepath.Join(o.DropInDir, "contrast.toml") }

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
		// Skip what installTree and the journal leave beside a handler.
		if !e.IsDir() || strings.Contains(e.Name(), ".tmp-") || strings.Contains(e.Name(), ".old-") {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}

// sharedRuntime is what the shared drop-in says of one runtime.
type sharedRuntime struct {
	runtimePath, snapshotter string
}

// handler is the handler directory the runtime's shim is in ("" if none
// under the prefix).
func (r sharedRuntime) handler(opts *Options) string {
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

// readSharedRuntimes reads the runtimes of the shared drop-in (none when
// it is missing).
func readSharedRuntimes(opts *Options) (map[string]sharedRuntime, error) {
	path := opts.sharedDropIn()
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
	raw, ok := lookup(doc, RuntimeTablePath(2, "")[:4])
	if !ok {
		return nil, nil
	}
	tables, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("drop-in %s: runtimes is %T, not a table", path, raw)
	}
	out := map[string]sharedRuntime{}
	for name, t := range tables {
		table, ok := t.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("drop-in %s: runtime %s is %T, not a table", path, name, t)
		}
		if table["runtime_type"] != RuntimeType {
			continue // main's own runtimes, carried over
		}
		rp, _ := table["runtime_path"].(string)
		sn, _ := table["snapshotter"].(string)
		out[name] = sharedRuntime{runtimePath: rp, snapshotter: sn}
	}
	return out, nil
}

// sharedRuntimes is what the shared drop-in must hold: every handler
// directory under the prefix except removed, then the aliases of the
// current drop-in whose handler stays, with alias (unless "") pointing at
// target. It also returns the aliases that go with removed.
func sharedRuntimes(opts *Options, removed, alias, target string) (rts []Runtime, dropped []string, err error) {
	handlers, err := installedHandlers(opts)
	if err != nil {
		return nil, nil, err
	}
	handlers = slices.DeleteFunc(handlers, func(h string) bool { return h == removed })
	existing, err := readSharedRuntimes(opts)
	if err != nil {
		return nil, nil, err
	}
	runtimeOf := func(name, h string) Runtime {
		dir := filepath.Join(opts.Prefix, h)
		rt := Runtime{Handler: name, RuntimePath: filepath.Join(dir, ShimPath), ConfigPath: filepath.Join(dir, RuntimeConfigPath), Snapshotter: opts.Snapshotter}
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
// both when rts is empty; it returns the new main config.
func applyShared(j *journal, opts *Options, main []byte, rts []Runtime) ([]byte, bool, error) {
	path := opts.sharedDropIn()
	if len(rts) == 0 {
		m, err := Unconfigure(main, path)
		if err != nil {
			return nil, false, fmt.Errorf("unconfigure containerd %s: %w", opts.ContainerdConfig, err)
		}
		if m == nil {
			m = main
		}
		c, err := j.removeFile(opts.host(path))
		return m, c, err
	}
	m, dropIn, err := ConfigureAll(main, path, rts)
	if err != nil {
		return nil, false, fmt.Errorf("configure containerd %s: %w", opts.ContainerdConfig, err)
	}
	if m == nil {
		m = main
	}
	c, err := j.writeFile(opts.host(path), dropIn)
	return m, c, err
}

// readMain reads the main containerd config and its config version.
func readMain(opts *Options) (main []byte, version int, err error) {
	main, err = os.ReadFile(opts.host(opts.ContainerdConfig))
	if err != nil {
		return nil, 0, fmt.Errorf("read containerd config: %w", err)
	}
	if version, err = ConfigVersion(main); err != nil {
		return nil, 0, fmt.Errorf("containerd config %s: %w", opts.ContainerdConfig, err)
	}
	return main, version, nil
}

// renderTree is the handler directory's content: the payload with
// runtime.toml rendered for the installed paths.
func renderTree(opts *Options, name, hostDir string) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	err := walkFiles(opts.Source, func(rel string, st fs.FileInfo, path string) error {
		if rel == RuntimeConfigPath {
			return nil
		}
		files[rel] = fileContent{src: path, mode: st.Mode().Perm()}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read payload %s: %w", opts.Source, err)
	}
	tmplText, err := os.ReadFile(filepath.Join(opts.Source, RuntimeConfigPath))
	if err != nil {
		return nil, fmt.Errorf("read runtime configuration template: %w", err)
	}
	tmpl, err := template.New(RuntimeConfigPath).Option("missingkey=error").Parse(string(tmplText))
	if err != nil {
		return nil, fmt.Errorf("runtime configuration template: %w", err)
	}
	data := TemplateData{
		Handler: name, Dir: hostDir,
		Shim:   filepath.Join(hostDir, ShimPath),
		Kernel: filepath.Join(hostDir, KernelPath),
		Initrd: filepath.Join(hostDir, InitrdPath),
	}
	if _, ok := files[FirmwarePath]; ok {
		data.Firmware = filepath.Join(hostDir, FirmwarePath)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("render runtime configuration: %w", err)
	}
	// The shim reads this file at every pod start: check here that the
	// rendered file is TOML and names the installed image.
	var rendered struct {
		Hypervisor struct{ Kernel, Initrd string } `toml:"hypervisor"`
	}
	if _, err := toml.Decode(b.String(), &rendered); err != nil {
		return nil, fmt.Errorf("rendered runtime configuration: %w", err)
	}
	if rendered.Hypervisor.Kernel != data.Kernel || rendered.Hypervisor.Initrd != data.Initrd {
		return nil, fmt.Errorf("rendered runtime configuration: hypervisor.kernel %q and initrd %q must be the installed %s and %s (template fields {{.Kernel}}, {{.Initrd}})",
			rendered.Hypervisor.Kernel, rendered.Hypervisor.Initrd, data.Kernel, data.Initrd)
	}
	files[RuntimeConfigPath] = fileContent{data: b.Bytes(), mode: 0o644}
	return files, nil
}

// fileContent is a file to install: src copied, or data.
type fileContent struct {
	src  string
	data []byte
	mode fs.FileMode
}

func (f fileContent) bytes() ([]byte, error) {
	if f.src == "" {
		return f.data, nil
	}
	return os.ReadFile(f.src)
}

// installTree makes dir hold exactly files: unchanged when it does,
// otherwise built beside it and renamed into place.
func installTree(j *journal, dir string, files map[string]fileContent) (bool, error) {
	if same, err := treeEqual(dir, files); err != nil {
		return false, err
	} else if same {
		return false, nil
	}
	parent := filepath.Dir(dir)
	if err := j.mkdirAll(parent); err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp(parent, filepath.Base(dir)+".tmp-")
	if err != nil {
		return false, fmt.Errorf("install into %s: %w", parent, err)
	}
	cleanup := func() { os.RemoveAll(tmp) }
	if err := os.Chmod(tmp, 0o755); err != nil {
		cleanup()
		return false, fmt.Errorf("install into %s: %w", parent, err)
	}
	for rel, f := range files {
		data, err := f.bytes()
		if err != nil {
			cleanup()
			return false, fmt.Errorf("read payload file %s: %w", rel, err)
		}
		p := filepath.Join(tmp, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			cleanup()
			return false, fmt.Errorf("install %s: %w", rel, err)
		}
		if err := writeSynced(p, data, f.mode); err != nil {
			cleanup()
			return false, fmt.Errorf("install %s: %w", rel, err)
		}
	}
	if err := j.replaceDir(tmp, dir); err != nil {
		cleanup()
		return false, err
	}
	return true, nil
}

// treeEqual says whether dir holds exactly files.
func treeEqual(dir string, files map[string]fileContent) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	seen := 0
	equal := true
	err := walkFiles(dir, func(rel string, st fs.FileInfo, path string) error {
		f, ok := files[rel]
		if !ok || st.Mode().Perm() != f.mode {
			equal = false
			return fs.SkipAll
		}
		want, err := f.bytes()
		if err != nil {
			return err
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			equal = false
			return fs.SkipAll
		}
		seen++
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("compare installed %s: %w", dir, err)
	}
	return equal && seen == len(files), nil
}

// finish ends an install or uninstall: when it changed the host, containerd
// restarts and must report the handlers waitFor, or every change is undone;
// then the journal is committed.
func finish(ctx context.Context, opts *Options, j *journal, res *Result, waitFor []string) (*Result, error) {
	if !res.Changed {
		return res, nil
	}
	if err := restartAndWait(ctx, opts, waitFor); err != nil {
		return nil, errors.Join(err, restore(ctx, opts, j))
	}
	if err := j.commit(); err != nil {
		return res, err
	}
	return res, nil
}

// restartAndWait restarts containerd and waits for the handlers, within
// WaitTimeout.
func restartAndWait(ctx context.Context, opts *Options, names []string) error {
	ctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
	defer cancel()
	if opts.Restart != nil {
		if err := opts.Restart(ctx); err != nil {
			return fmt.Errorf("restart containerd: %w", err)
		}
	}
	if opts.WaitHandlers != nil {
		if err := opts.WaitHandlers(ctx, names); err != nil {
			return fmt.Errorf("containerd after restart (waited up to %s): %w", opts.WaitTimeout, err)
		}
	}
	return nil
}

// restore rolls the journal back and restarts containerd on the old
// configuration.
func restore(ctx context.Context, opts *Options, j *journal) error {
	if err := j.rollback(); err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	if opts.Restart == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.WaitTimeout)
	defer cancel()
	if err := opts.Restart(ctx); err != nil {
		return fmt.Errorf("files restored, but restarting containerd on them failed: %w", err)
	}
	return nil
}
