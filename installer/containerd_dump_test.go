package installer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"

	"github.com/BurntSushi/toml"
)

// containerdBinary finds a containerd build in $CONTRAST_CACHE/bin (default
// $HOME/.cache/contrast/bin, where hack/deps.sh puts them); the test skips
// when it is not there.
func containerdBinary(t *testing.T, name string) string {
	t.Helper()
	return testenv.CachedBinary(t, name)
}

// TestContainerdAcceptsConfig has the real containerd merge the patched main
// config with the drop-in (`containerd config dump`) and checks the handler
// is there and the main file's settings and runtimes survive the merge.
func TestContainerdAcceptsConfig(t *testing.T) {
	tests := []struct {
		binary string
		file   string
		// keep are settings of main that the merged config must still hold.
		keep map[string]any
	}{
		{binary: "containerd", file: "containerd24-default.toml"},
		{binary: "containerd", file: "k3s-v3.toml", keep: map[string]any{
			"plugins.io.containerd.cri.v1.images.pinned_images.sandbox":                           "rancher/mirrored-pause:3.6",
			"plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runc.options.SystemdCgroup": true,
			"plugins.io.containerd.cri.v1.runtime.enable_unprivileged_ports":                      true,
		}},
		{binary: "containerd", file: "runtimes-imports-v3.toml", keep: map[string]any{
			"plugins.io.containerd.cri.v1.runtime.containerd.runtimes.kata-qemu.runtime_path":                    "/opt/kata/bin/containerd-shim-kata-v2",
			"plugins.io.containerd.cri.v1.runtime.containerd.runtimes.nvidia.options.BinaryName":                 "/usr/bin/nvidia-container-runtime",
			"plugins.io.containerd.cri.v1.runtime.containerd.runtimes.kata-qemu.privileged_without_host_devices": true,
		}},
		{binary: "containerd17", file: "containerd17-default.toml"},
		{binary: "containerd17", file: "k3s-v2.toml", keep: map[string]any{
			"plugins.io.containerd.grpc.v1.cri.sandbox_image":                                 "rancher/mirrored-pause:3.6",
			"plugins.io.containerd.grpc.v1.cri.containerd.runtimes.nvidia.options.BinaryName": "/usr/bin/nvidia-container-runtime",
			"plugins.io.containerd.grpc.v1.cri.containerd.disable_snapshot_annotations":       true,
			"plugins.io.containerd.grpc.v1.cri.cni.conf_dir":                                  "/var/lib/rancher/k3s/agent/etc/cni/net.d",
		}},
		{binary: "containerd17", file: "runtimes-imports-v2.toml", keep: map[string]any{
			"plugins.io.containerd.grpc.v1.cri.sandbox_image":                         "registry.k8s.io/pause:3.9",
			"plugins.io.containerd.grpc.v1.cri.containerd.runtimes.kata.runtime_type": "io.containerd.kata.v2",
			"oom_score": int64(-999),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.binary+"/"+tc.file, func(t *testing.T) {
			containerd := containerdBinary(t, tc.binary)
			dir := t.TempDir()
			mainPath := filepath.Join(dir, "config.toml")
			dropInPath := filepath.Join(dir, "contrast", "containerd.toml")
			rt := testRuntime()
			rt.Snapshotter = "overlayfs"

			// Other tools' drop-ins the main file imports move into dir,
			// holding only their version.
			version, err := ConfigVersion(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			otherDropIns := filepath.Join(dir, "conf.d")
			main := []byte(strings.ReplaceAll(string(readTestdata(t, tc.file)), "/etc/containerd/conf.d", otherDropIns))
			for _, name := range []string{"nvidia.toml", "kata.toml"} {
				if err := os.MkdirAll(otherDropIns, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(otherDropIns, name), fmt.Appendf(nil, "version = %d\n", version), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			newMain, dropIn, err := Configure(main, dropInPath, rt)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Dir(dropInPath), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(mainPath, newMain, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dropInPath, dropIn, 0o644); err != nil {
				t.Fatal(err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, containerd, "--config", mainPath, "config", "dump").Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("%s config dump: %v\n%s", tc.binary, err, stderr)
			}
			merged := mustParse(t, "config dump", out)

			table, ok := lookup(merged, RuntimeTablePath(version, rt.Handler))
			if !ok {
				t.Fatalf("merged config has no runtime %s:\n%s", rt.Handler, out)
			}
			runtime := table.(map[string]any)
			want := map[string]any{
				"runtime_type": RuntimeType,
				"runtime_path": rt.RuntimePath,
				"snapshotter":  rt.Snapshotter,
			}
			for key, value := range want {
				if runtime[key] != value {
					t.Errorf("merged runtime %s = %v, want %v", key, runtime[key], value)
				}
			}
			if got := stringList(t, runtime["pod_annotations"]); !reflect.DeepEqual(got, DefaultPodAnnotations) {
				t.Errorf("merged pod_annotations = %q, want %q", got, DefaultPodAnnotations)
			}
			if options, _ := runtime["options"].(map[string]any); options["ConfigPath"] != rt.ConfigPath {
				t.Errorf("merged options = %v, want ConfigPath %s", runtime["options"], rt.ConfigPath)
			}
			// The stock runc runtime is still there.
			if _, ok := lookup(merged, RuntimeTablePath(version, "runc")); !ok {
				t.Errorf("merged config lost the runc runtime:\n%s", out)
			}
			for dotted, value := range tc.keep {
				got, ok := lookup(merged, splitPluginPath(dotted))
				if !ok || !reflect.DeepEqual(got, value) {
					t.Errorf("merged %s = %v (present %v), want %v", dotted, got, ok, value)
				}
			}
		})
	}
}

// splitPluginPath splits "plugins.<plugin id>.rest.of.path", where the
// plugin id contains dots itself (io.containerd.x.v1.name: five parts).
func splitPluginPath(dotted string) []string {
	parts := strings.Split(dotted, ".")
	if parts[0] != "plugins" {
		return parts
	}
	return append([]string{"plugins", strings.Join(parts[1:6], ".")}, parts[6:]...)
}

// TestContainerd17ReplacesPluginTables pins the containerd 1.7 behaviour that
// makes the version 2 drop-in carry main's whole CRI table: an imported file's
// plugin table replaces the main file's instead of merging with it.
func TestContainerd17ReplacesPluginTables(t *testing.T) {
	containerd := containerdBinary(t, "containerd17")
	dir := t.TempDir()
	dropInPath := filepath.Join(dir, "runtime-only.toml")
	mainPath := filepath.Join(dir, "config.toml")
	main := "version = 2\nimports = [" + tomlString(dropInPath) + "]\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"example.com/pause:1\"\n"
	dropIn := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.x]\n  runtime_type = \"io.containerd.runc.v2\"\n"
	if err := os.WriteFile(mainPath, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropInPath, []byte(dropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(containerd, "--config", mainPath, "config", "dump").Output()
	if err != nil {
		t.Fatalf("config dump: %v", err)
	}
	merged := mustParse(t, "config dump", out)
	got, _ := lookup(merged, []string{"plugins", "io.containerd.grpc.v1.cri", "sandbox_image"})
	if got == "example.com/pause:1" {
		t.Fatal("containerd 1.7 merged the imported CRI table into main's: a runtime-only drop-in would do for version 2")
	}
}

// TestInstallSideBySideV2 installs two payloads side by side on containerd
// 1.7's stock config and has the real containerd17 merge the result: both
// handlers and the alias must be there, since containerd 1.7 keeps only the
// last imported CRI table. Uninstalling either leaves the other served, and
// the last uninstall restores the config byte for byte.
func TestInstallSideBySideV2(t *testing.T) {
	containerd := containerdBinary(t, "containerd17")
	for _, removeFirst := range []string{"older", "newer"} {
		t.Run("remove "+removeFirst+" first", func(t *testing.T) {
			ctx := context.Background()
			// containerd reads the drop-in paths the installer writes into
			// the config, so the host root is "/" and all paths are in dir.
			dir := t.TempDir()
			original := readTestdata(t, "containerd17-default.toml")
			mainPath := filepath.Join(dir, "etc/containerd/config.toml")
			if err := os.MkdirAll(filepath.Dir(mainPath), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(mainPath, original, 0o644); err != nil {
				t.Fatal(err)
			}
			opts := func(shim string) Options {
				return Options{
					HostRoot:         "/",
					Prefix:           filepath.Join(dir, "opt/contrast"),
					DropInDir:        filepath.Join(dir, "etc/containerd/conf.d"),
					ContainerdConfig: mainPath,
					Source:           writePayload(t, shim),
					Alias:            "contrast",
				}
			}
			dump := func() map[string]any {
				t.Helper()
				out, err := exec.Command(containerd, "--config", mainPath, "config", "dump").Output()
				if err != nil {
					t.Fatalf("containerd17 config dump: %v", err)
				}
				return mustParse(t, "config dump", out)
			}
			// served says which runtimes the merged config has, and the
			// handler directory each one's shim is in.
			served := func(merged map[string]any) map[string]string {
				t.Helper()
				out := map[string]string{}
				runtimes, _ := lookup(merged, RuntimeTablePath(2, "")[:4])
				for name, table := range runtimes.(map[string]any) {
					path, _ := table.(map[string]any)["runtime_path"].(string)
					out[name] = filepath.Base(filepath.Dir(filepath.Dir(path)))
				}
				return out
			}

			older, err := Install(ctx, opts("shim v1"))
			if err != nil {
				t.Fatal(err)
			}
			newer, err := Install(ctx, opts("shim v2"))
			if err != nil {
				t.Fatal(err)
			}
			if older.Handler == newer.Handler {
				t.Fatalf("both payloads install as %s", older.Handler)
			}
			merged := dump()
			got := served(merged)
			want := map[string]string{"runc": ".", older.Handler: older.Handler, newer.Handler: newer.Handler, "contrast": newer.Handler}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("containerd 1.7 serves %v, want %v", got, want)
			}
			// main's CRI settings survive in the shared drop-in.
			if v, _ := lookup(merged, []string{"plugins", CRIPluginID(2), "sandbox_image"}); v != "registry.k8s.io/pause:3.8" {
				t.Errorf("merged sandbox_image = %v, want main's", v)
			}
			var cfg struct{ Imports []string }
			if _, err := toml.DecodeFile(mainPath, &cfg); err != nil {
				t.Fatal(err)
			}
			if shared := filepath.Join(dir, "etc/containerd/conf.d/contrast.toml"); !slices.Equal(cfg.Imports, []string{shared}) {
				t.Errorf("imports %v, want only %s", cfg.Imports, shared)
			}
			st, err := Status(opts(""))
			if err != nil || len(st) != 2 || !st[0].Imported || !st[1].Imported {
				t.Fatalf("status %+v, %v: want both handlers imported", st, err)
			}
			for _, in := range st {
				wantAliases := []string(nil)
				if in.Handler == newer.Handler {
					wantAliases = []string{"contrast"}
				}
				if !slices.Equal(in.Aliases, wantAliases) {
					t.Errorf("status of %s: aliases %v, want %v", in.Handler, in.Aliases, wantAliases)
				}
			}
			// A second install changes nothing.
			if res, err := Install(ctx, opts("shim v2")); err != nil || res.Changed {
				t.Errorf("second install of %s: %+v, %v", newer.Handler, res, err)
			}
			// Installing the older payload again points the alias at it,
			// once.
			for i, wantChanged := range []bool{true, false} {
				if res, err := Install(ctx, opts("shim v1")); err != nil || res.Changed != wantChanged {
					t.Fatalf("reinstall %d of %s: %+v, %v; want changed %v", i+1, older.Handler, res, err, wantChanged)
				}
			}
			if got := served(dump()); got["contrast"] != older.Handler || got[newer.Handler] != newer.Handler {
				t.Fatalf("after reinstalling %s containerd 1.7 serves %v", older.Handler, got)
			}
			// From here on the alias's handler is the newer one.
			older, newer = newer, older

			first, second := older, newer
			if removeFirst == "newer" {
				first, second = newer, older
			}
			un, err := Uninstall(ctx, opts(""), first.Handler)
			if err != nil {
				t.Fatal(err)
			}
			want = map[string]string{"runc": ".", second.Handler: second.Handler}
			if first == older {
				want["contrast"] = newer.Handler
			} else if un.Alias != "contrast" {
				t.Errorf("uninstall of the alias's handler: alias %q, want contrast", un.Alias)
			}
			if got := served(dump()); !reflect.DeepEqual(got, want) {
				t.Errorf("after uninstalling %s containerd 1.7 serves %v, want %v", first.Handler, got, want)
			}
			if st, err := Status(opts("")); err != nil || len(st) != 1 || st[0].Handler != second.Handler || !st[0].Imported {
				t.Errorf("status after uninstalling %s: %+v, %v", first.Handler, st, err)
			}

			if _, err := Uninstall(ctx, opts(""), second.Handler); err != nil {
				t.Fatal(err)
			}
			if now, err := os.ReadFile(mainPath); err != nil || !bytes.Equal(now, original) {
				t.Errorf("config after the last uninstall differs from the original (%v):\n%s", err, now)
			}
			if entries, err := os.ReadDir(filepath.Join(dir, "etc/containerd/conf.d")); err != nil || len(entries) != 0 {
				t.Errorf("drop-ins after the last uninstall: %v, %v", entries, err)
			}
			if got := served(dump()); !reflect.DeepEqual(got, map[string]string{"runc": "."}) {
				t.Errorf("after the last uninstall containerd 1.7 serves %v", got)
			}
		})
	}
}
