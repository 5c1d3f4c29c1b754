package installer

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const testRuntimeTemplate = `log_level = "info"
[hypervisor]
kernel = "{{.Kernel}}"
initrd = "{{.Initrd}}"
firmware = "{{.Firmware}}"
[policy]
default = "allow-all"
`

const testMainV3 = `# The node's own config.
version = 3
root = "/var/lib/containerd"

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = 'runc' # keep me
`

const testMainV2 = `version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
`

// writePayload makes a payload directory; shim varies its content.
func writePayload(t *testing.T, shim string) string {
	t.Helper()
	src := t.TempDir()
	for rel, data := range map[string]string{
		ShimPath:              shim,
		KernelPath:            "kernel",
		InitrdPath:            "initrd",
		"image/manifest.json": "{}",
		RuntimeConfigPath:     testRuntimeTemplate,
	} {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := fs.FileMode(0o644)
		if rel == ShimPath {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

// testHost is a host root with a containerd config and counters of the
// restarts and waits the installer asked for.
type testHost struct {
	root     string
	restarts int
	waited   [][]string
	failWait error
	failRst  error
}

func newTestHost(t *testing.T, main string) *testHost {
	t.Helper()
	h := &testHost{root: t.TempDir()}
	p := filepath.Join(h.root, DefaultContainerdConfig)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *testHost) opts(src string) Options {
	return Options{
		HostRoot: h.root,
		Source:   src,
		Restart: func(context.Context) error {
			h.restarts++
			return h.failRst
		},
		WaitHandlers: func(_ context.Context, names []string) error {
			h.waited = append(h.waited, names)
			if len(names) > 0 {
				return h.failWait
			}
			return nil
		},
		WaitTimeout: 5 * time.Second,
	}
}

// snapshot is every file under root with its mode and content.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			out[rel+"/"] = st.Mode().String()
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = st.Mode().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInstallLifecycle(t *testing.T) {
	for _, tc := range []struct{ name, main string }{{"v3", testMainV3}, {"v2", testMainV2}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			h := newTestHost(t, tc.main)
			src := writePayload(t, "shim v1")
			opts := h.opts(src)
			opts.Alias = "contrast"
			before := snapshot(t, h.root)

			res, err := Install(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`^contrast-cc-[0-9a-f]{8}$`).MatchString(res.Handler) {
				t.Errorf("handler %q, want contrast-cc-<8 hex>", res.Handler)
			}
			if !res.Changed || h.restarts != 1 || len(h.waited) != 1 || !slices.Equal(h.waited[0], []string{res.Handler, "contrast"}) {
				t.Errorf("first install: changed %v, %d restarts, waited for %v", res.Changed, h.restarts, h.waited)
			}
			dir := filepath.Join("/opt/contrast", res.Handler)
			if res.Dir != dir {
				t.Errorf("dir %s, want %s", res.Dir, dir)
			}
			shim, err := os.Stat(filepath.Join(h.root, dir, ShimPath))
			if err != nil || shim.Mode().Perm() != 0o755 {
				t.Errorf("installed shim: %v, %v", shim, err)
			}
			var rc struct {
				Hypervisor struct{ Kernel, Initrd, Firmware string }
			}
			if _, err := toml.DecodeFile(filepath.Join(h.root, dir, RuntimeConfigPath), &rc); err != nil {
				t.Fatal(err)
			}
			if rc.Hypervisor.Kernel != dir+"/image/kernel" || rc.Hypervisor.Initrd != dir+"/image/initrd" || rc.Hypervisor.Firmware != "" {
				t.Errorf("runtime.toml names %+v, want host paths under %s", rc.Hypervisor, dir)
			}
			main, err := os.ReadFile(filepath.Join(h.root, DefaultContainerdConfig))
			if err != nil {
				t.Fatal(err)
			}
			dropIns := map[string]string{
				res.Handler: "/etc/containerd/conf.d/contrast-" + res.Handler + ".toml",
				"contrast":  "/etc/containerd/conf.d/contrast-contrast.toml",
			}
			if tc.name == "v2" {
				// containerd 1.7 takes the last import's CRI table whole:
				// one drop-in holds every handler.
				dropIns = map[string]string{res.Handler: "/etc/containerd/conf.d/contrast.toml", "contrast": "/etc/containerd/conf.d/contrast.toml"}
			}
			for n, d := range dropIns {
				if !slices.Contains(res.DropIns, d) || !bytes.Contains(main, []byte(d)) {
					t.Errorf("drop-in %s: not in %v or not imported by:\n%s", d, res.DropIns, main)
				}
				b, err := os.ReadFile(filepath.Join(h.root, d))
				if err != nil || !bytes.Contains(b, []byte(dir+"/"+ShimPath)) || !bytes.Contains(b, []byte(n)) {
					t.Errorf("drop-in %s (%v) does not name %s and the installed shim:\n%s", d, err, n, b)
				}
			}
			if len(res.DropIns) != len(slices.Compact(slices.Sorted(maps.Values(dropIns)))) {
				t.Errorf("drop-ins %v, want %v", res.DropIns, dropIns)
			}
			if !strings.Contains(string(main), "# keep me") && tc.name == "v3" {
				t.Errorf("comment lost from main config:\n%s", main)
			}
			backup, err := os.ReadFile(filepath.Join(h.root, res.Backup))
			if res.Backup == "" || err != nil || string(backup) != tc.main {
				t.Errorf("backup %q (%v) does not hold the old config", res.Backup, err)
			}

			after := snapshot(t, h.root)
			again, err := Install(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if again.Changed || h.restarts != 1 || again.Handler != res.Handler {
				t.Errorf("second install: changed %v, %d restarts, handler %s", again.Changed, h.restarts, again.Handler)
			}
			if d := diffSnapshots(after, snapshot(t, h.root)); d != "" {
				t.Errorf("second install changed files: %s", d)
			}

			st, err := Status(opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(st) != 1 || st[0].Handler != res.Handler || !st[0].Imported || !slices.Equal(st[0].Aliases, []string{"contrast"}) {
				t.Errorf("status %+v", st)
			}

			un, err := Uninstall(ctx, opts, res.Handler)
			if err != nil {
				t.Fatal(err)
			}
			if !un.Changed || h.restarts != 2 {
				t.Errorf("uninstall: changed %v, %d restarts", un.Changed, h.restarts)
			}
			if d := diffSnapshots(before, snapshotAfterUninstall(t, h.root)); d != "" {
				t.Errorf("uninstall did not restore the host: %s", d)
			}
			st, err = Status(opts)
			if err != nil || len(st) != 0 {
				t.Errorf("status after uninstall: %+v, %v", st, err)
			}
		})
	}
}

// snapshotAfterUninstall is the snapshot of root without what an install
// and uninstall leave on purpose: the backups of the main config, and
// the drop-in directory and the prefix, empty.
func snapshotAfterUninstall(t *testing.T, root string) map[string]string {
	t.Helper()
	got := snapshot(t, root)
	for p := range got {
		if strings.Contains(p, ".contrast-backup-") {
			delete(got, p)
		}
	}
	for _, d := range []string{"etc/containerd/conf.d/", "opt/", "opt/contrast/"} {
		delete(got, d)
	}
	return got
}

func diffSnapshots(want, got map[string]string) string {
	var d []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			d = append(d, "missing "+p)
		} else if g != w {
			d = append(d, "changed "+p)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			d = append(d, "new "+p)
		}
	}
	slices.Sort(d)
	return strings.Join(d, ", ")
}

func TestInstallSideBySide(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, testMainV3)
	a, err := Install(ctx, h.opts(writePayload(t, "shim v1")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Install(ctx, h.opts(writePayload(t, "shim v2")))
	if err != nil {
		t.Fatal(err)
	}
	if a.Handler == b.Handler {
		t.Fatalf("different payloads install as the same handler %s", a.Handler)
	}
	st, err := Status(h.opts(""))
	if err != nil || len(st) != 2 {
		t.Fatalf("status %+v, %v; want both handlers", st, err)
	}
	if _, err := Uninstall(ctx, h.opts(""), a.Handler); err != nil {
		t.Fatal(err)
	}
	st, err = Status(h.opts(""))
	if err != nil || len(st) != 1 || st[0].Handler != b.Handler || !st[0].Imported {
		t.Fatalf("status after removing %s: %+v, %v", a.Handler, st, err)
	}
}

// TestInstallFailures: every failure leaves the host as it was.
func TestInstallFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		main  string
		setup func(t *testing.T, h *testHost, o *Options)
		want  string
	}{
		{name: "unparsable config", main: "version = 3\n[plugins\n", want: "containerd config"},
		{name: "unknown version", main: "version = 9\n", want: "version"},
		{name: "restart fails", main: testMainV3, setup: func(_ *testing.T, h *testHost, _ *Options) {
			h.failRst = errors.New("systemctl: unit not found")
		}, want: "unit not found"},
		{name: "handler never appears", main: testMainV3, setup: func(_ *testing.T, h *testHost, _ *Options) {
			h.failWait = context.DeadlineExceeded
		}, want: "after restart"},
		{name: "v2 beside an installed handler, new one never appears", main: testMainV2, setup: func(t *testing.T, h *testHost, _ *Options) {
			o := h.opts(writePayload(t, "older shim"))
			o.Alias = "contrast"
			if _, err := Install(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			h.restarts = 0
			h.failWait = context.DeadlineExceeded
		}, want: "after restart"},
		{name: "prefix not writable", main: testMainV3, setup: func(t *testing.T, h *testHost, _ *Options) {
			// A file where the prefix's parent should be: root ignores
			// permission bits, not this.
			if err := os.WriteFile(filepath.Join(h.root, "opt"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: "not a directory"},
		{name: "template without installed paths", main: testMainV3, setup: func(t *testing.T, _ *testHost, o *Options) {
			if err := os.WriteFile(filepath.Join(o.Source, RuntimeConfigPath), []byte("[hypervisor]\nkernel = \"/boot/vmlinuz\"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: "hypervisor.kernel"},
		{name: "payload without kernel", main: testMainV3, setup: func(t *testing.T, _ *testHost, o *Options) {
			if err := os.Remove(filepath.Join(o.Source, KernelPath)); err != nil {
				t.Fatal(err)
			}
		}, want: "kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHost(t, tc.main)
			opts := h.opts(writePayload(t, "shim"))
			if tc.setup != nil {
				tc.setup(t, h, &opts)
			}
			before := snapshot(t, h.root)
			_, err := Install(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install: %v, want an error naming %q", err, tc.want)
			}
			if d := diffSnapshots(before, snapshot(t, h.root)); d != "" {
				t.Errorf("failed install left the host changed: %s", d)
			}
			if h.restarts > 0 && h.restarts != 2 {
				t.Errorf("%d restarts, want one to install and one to restore", h.restarts)
			}
		})
	}
}

func TestUninstallRestartFailureRestores(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, testMainV3)
	opts := h.opts(writePayload(t, "shim"))
	res, err := Install(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, h.root)
	h.failRst = errors.New("boom")
	if _, err := Uninstall(ctx, opts, res.Handler); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Uninstall: %v, want the restart failure", err)
	}
	if d := diffSnapshots(before, snapshot(t, h.root)); d != "" {
		t.Errorf("failed uninstall left the host changed: %s", d)
	}
}
