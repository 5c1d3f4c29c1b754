package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func TestInstallStatusUninstall(t *testing.T) {
	host, src := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(host, "etc/containerd/config.toml"), "version = 3\n", 0o644)
	writeFile(t, filepath.Join(src, "bin/containerd-shim-contrast-v2"), "shim", 0o755)
	writeFile(t, filepath.Join(src, "image/kernel"), "k", 0o644)
	writeFile(t, filepath.Join(src, "image/initrd"), "i", 0o644)
	writeFile(t, filepath.Join(src, "runtime.toml"), "[hypervisor]\nkernel = \"{{.Kernel}}\"\ninitrd = \"{{.Initrd}}\"\n", 0o644)
	common := []string{"--host-root", host, "--source", src, "--restart-cmd", "true", "--wait=false"}

	for _, step := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"status"}, 0, "no handlers installed"},
		{[]string{"install"}, 0, `installed: handler contrast-cc-[0-9a-f]{8} in /opt/contrast/contrast-cc-`},
		{[]string{"install"}, 0, `unchanged: handler contrast-cc-`},
		{[]string{"status"}, 0, `contrast-cc-[0-9a-f]{8}\t/opt/contrast/contrast-cc-[0-9a-f]{8}\tconfigured`},
		{[]string{"uninstall"}, 0, `uninstalled: handler contrast-cc-`},
		{[]string{"status"}, 0, "no handlers installed"},
		{[]string{"frobnicate"}, 2, ""},
		{[]string{"install", "--restart-cmd", "false"}, 1, ""},
	} {
		var out, errb bytes.Buffer
		args := append([]string{step.args[0]}, common...)
		args = append(args, step.args[1:]...)
		code := run(context.Background(), args, &out, &errb)
		if code != step.code || !regexp.MustCompile(step.out).MatchString(out.String()) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d and stdout matching %q", strings.Join(step.args, " "), code, out.String(), errb.String(), step.code, step.out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(host, "etc/containerd/config.toml")); string(b) != "version = 3\n" {
		t.Errorf("containerd config after a failed install: %q", b)
	}
}
