package installer

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
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
	RootDiskPath      = "image/rootfs.img"
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
	// image/{kernel,rootfs.img or initrd,...} and runtime.toml, a text/template of the
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
	Handler, Dir, Shim, Kernel string
	// RootDisk is the installed image/rootfs.img and Initrd the installed
	// image/initrd; each is empty when the payload has none (it has one).
	RootDisk, Initrd string
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

// sharedDropIn is the drop-in that holds every handler when the dialect
// has one drop-in for all (config version 2).
func (o *Options) sharedDropIn() string { return filepath.Join(o.DropInDir, "contrast.toml") }

// runtime is the containerd runtime of name (a handler or an alias)
// served by the handler directory of handler.
func (o *Options) runtime(name, handler string) Runtime {
	dir := filepath.Join(o.Prefix, handler)
	return Runtime{
		Handler:     name,
		RuntimePath: filepath.Join(dir, ShimPath),
		ConfigPath:  filepath.Join(dir, RuntimeConfigPath),
		Snapshotter: o.Snapshotter,
	}
}
