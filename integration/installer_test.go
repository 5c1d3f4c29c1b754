package integration

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/installer"
	"github.com/contrast-vm/contrast/integration/harness"
)

// TestInstaller runs the node installer against a private containerd
// (2.4 and 1.7):
// install (containerd restarted by the installer, which waits for the new
// handler over CRI), a pod VM under the installed handler, a second
// install that changes nothing, a newer version installed side by side
// (a pod VM under the older handler, then the newer one uninstalled), and
// an uninstall after which the handler, its files and the config entries
// are gone.
//
// containerd here runs on this machine's root, so the installer's host
// root is "/" and everything it writes goes to a temporary prefix and
// drop-in directory: the paths it writes into the config are the paths
// containerd reads. (The host-root translation is covered by the unit
// tests of package installer.)
func TestInstaller(t *testing.T) {
	versions(t, testInstaller)
}

func testInstaller(t *testing.T, v harness.Version) {
	env := testEnv(t)
	s := newSuiteVersion(t, v)
	ctx := s.ctx
	original, err := os.ReadFile(s.c.ConfigToml)
	if err != nil {
		t.Fatal(err)
	}

	// The payload as the installer image carries it; release makes
	// payloads of different versions.
	tmpl := harness.DefaultShimConfig(env, s.c.ShimState)
	tmpl.Kernel, tmpl.Initrd = "{{.Kernel}}", "{{.Initrd}}"
	rootPath, rootFile := installer.InitrdPath, env.ImageInitrd()
	if env.ImageRootDisk() != "" {
		tmpl.RootDisk = "{{.RootDisk}}"
		rootPath, rootFile = installer.RootDiskPath, env.ImageRootDisk()
	}
	payload := func(release string) string {
		src := t.TempDir()
		for rel, from := range map[string]string{
			installer.ShimPath:    env.Shim,
			installer.KernelPath:  env.ImageKernel(),
			rootPath:              rootFile,
			"image/manifest.json": filepath.Join(env.ImageDir, "manifest.json"),
		} {
			p := filepath.Join(src, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(from, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(src, installer.RuntimeConfigPath), []byte(tmpl.TOML()), 0o644); err != nil {
			t.Fatal(err)
		}
		if release != "" {
			if err := os.WriteFile(filepath.Join(src, "image/release"), []byte(release+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return src
	}
	src := payload("")

	host := t.TempDir()
	restarts := 0
	opts := installer.Options{
		HostRoot:         "/",
		Prefix:           filepath.Join(host, "opt/contrast"),
		DropInDir:        filepath.Join(host, "etc/containerd/conf.d"),
		ContainerdConfig: s.c.ConfigToml,
		Source:           src,
		Alias:            "contrast-stable",
		Restart: func(ctx context.Context) error {
			restarts++
			return s.c.Restart(ctx)
		},
		WaitHandlers: installer.WaitCRI(s.c.Socket, 200*time.Millisecond),
		WaitTimeout:  time.Minute,
	}

	res, err := installer.Install(ctx, opts)
	if err != nil {
		t.Fatalf("install: %v\ncontainerd log:\n%s", err, s.c.LogTail(40))
	}
	if !res.Changed || restarts != 1 {
		t.Fatalf("install: changed %v after %d restarts, want a change and one restart", res.Changed, restarts)
	}
	t.Logf("installed handler %s in %s", res.Handler, res.Dir)
	handlers, err := installer.CRIHandlers(ctx, s.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(handlers, " "), res.Handler) {
		t.Fatalf("containerd reports handlers %v, not %s", handlers, res.Handler)
	}

	// runHello runs a pod VM under handler h with one container that
	// echoes, and removes the pod again.
	runHello := func(h string) {
		t.Helper()
		pod := s.runPod(t, h, "installed")
		c := s.startContainer(t, pod, "hello", "echo", "hello from "+h)
		if st := s.waitExited(t, c, time.Minute); st.ExitCode != 0 {
			t.Errorf("container exited with %d", st.ExitCode)
		}
		if out, _, err := s.cri.Logs(ctx, c.ID); err != nil || !strings.Contains(out, "hello from "+h) {
			t.Errorf("container logs %q, %v", out, err)
		}
		if err := s.cri.StopPod(ctx, pod.ID); err != nil {
			t.Fatalf("stopp: %v", err)
		}
		if err := s.cri.RemovePod(ctx, pod.ID); err != nil {
			t.Fatalf("rmp: %v", err)
		}
	}
	for _, h := range []string{res.Handler, res.Alias} {
		runHello(h)
	}

	pid := s.c.PID()
	again, err := installer.Install(ctx, opts)
	if err != nil {
		t.Fatalf("second install: %v", err)
	}
	if again.Changed || restarts != 1 || s.c.PID() != pid || again.Handler != res.Handler {
		t.Errorf("second install: changed %v, %d restarts, handler %s: want a no-op", again.Changed, restarts, again.Handler)
	}

	// A newer version installs side by side (the alias stays where it
	// is): the older handler keeps working, on containerd 1.7 too, which
	// keeps only the last imported CRI table.
	newer := opts
	newer.Alias = ""
	newer.Source = payload("newer")
	res2, err := installer.Install(ctx, newer)
	if err != nil {
		t.Fatalf("install of a newer version: %v\ncontainerd log:\n%s", err, s.c.LogTail(40))
	}
	if !res2.Changed || restarts != 2 || res2.Handler == res.Handler {
		t.Fatalf("install of a newer version: handler %s (older %s), changed %v, %d restarts", res2.Handler, res.Handler, res2.Changed, restarts)
	}
	handlers, err = installer.CRIHandlers(ctx, s.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{res.Handler, res.Alias, res2.Handler} {
		if !slices.Contains(handlers, h) {
			t.Errorf("with two versions installed containerd lacks %s: %v", h, handlers)
		}
	}
	runHello(res.Handler)
	un2, err := installer.Uninstall(ctx, newer, res2.Handler)
	if err != nil {
		t.Fatalf("uninstall of the newer version: %v\ncontainerd log:\n%s", err, s.c.LogTail(40))
	}
	if !un2.Changed || restarts != 3 || un2.Alias != "" {
		t.Errorf("uninstall of the newer version: changed %v after %d restarts, alias %q", un2.Changed, restarts, un2.Alias)
	}
	handlers, err = installer.CRIHandlers(ctx, s.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(handlers, res.Handler) || !slices.Contains(handlers, res.Alias) || slices.Contains(handlers, res2.Handler) {
		t.Errorf("after uninstalling the newer %s containerd reports %v, want %s and %s only of ours", res2.Handler, handlers, res.Handler, res.Alias)
	}

	un, err := installer.Uninstall(ctx, opts, res.Handler)
	if err != nil {
		t.Fatalf("uninstall: %v\ncontainerd log:\n%s", err, s.c.LogTail(40))
	}
	if !un.Changed || restarts != 4 || un.Alias != res.Alias || len(un.DropIns) != len(res.DropIns) {
		t.Errorf("uninstall: changed %v after %d restarts, alias %q, drop-ins %v", un.Changed, restarts, un.Alias, un.DropIns)
	}
	if _, err := os.Stat(res.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("handler directory %s after uninstall: %v", res.Dir, err)
	}
	for _, d := range res.DropIns {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("drop-in %s after uninstall: %v", d, err)
		}
	}
	if now, err := os.ReadFile(s.c.ConfigToml); err != nil || !bytes.Equal(now, original) {
		t.Errorf("containerd config after uninstall differs from the original (%v):\n%s", err, now)
	}
	handlers, err = installer.CRIHandlers(ctx, s.c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{res.Handler, res.Alias} {
		if slices.Contains(handlers, h) {
			t.Errorf("containerd still reports handler %s after uninstall: %v", h, handlers)
		}
		if pod, err := s.cri.RunPod(ctx, harness.PodConfig{Name: "uninstalled", Handler: h}); err == nil {
			s.cleanupPod(pod)
			t.Errorf("runp with the uninstalled handler %s succeeded", h)
		} else if !strings.Contains(err.Error(), h) {
			t.Errorf("runp with the uninstalled handler: %v, want an error naming it", err)
		}
	}

	// containerd that never serves the handler: the install fails within
	// its timeout, and containerd runs on the old configuration again.
	// Long enough for containerd to restart on a busy machine.
	opts.WaitTimeout = 15 * time.Second
	wait := opts.WaitHandlers
	opts.WaitHandlers = func(ctx context.Context, names []string) error {
		return wait(ctx, append(names, "never-configured"))
	}
	restarts = 0
	if _, err := installer.Install(ctx, opts); err == nil || !strings.Contains(err.Error(), "never-configured") {
		t.Fatalf("install with a handler that never appears: %v, want an error naming it", err)
	}
	if restarts != 2 {
		t.Errorf("failed install restarted containerd %d times, want 2 (install, restore)", restarts)
	}
	if now, err := os.ReadFile(s.c.ConfigToml); err != nil || !bytes.Equal(now, original) {
		t.Errorf("containerd config after a failed install differs from the original (%v):\n%s", err, now)
	}
	if _, err := os.Stat(res.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("handler directory %s after a failed install: %v", res.Dir, err)
	}
	if ready, err := s.cri.Ready(ctx); err != nil || !ready {
		t.Errorf("containerd after a failed install: ready %v, %v", ready, err)
	}
}
