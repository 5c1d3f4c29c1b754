package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{nil, 2, "usage: contrast <command>"},
		{[]string{"bogus"}, 2, `contrast: unknown command "bogus"`},
		{[]string{"image"}, 2, "usage: contrast image <command>"},
		{[]string{"image", "bogus"}, 2, `contrast image: unknown command "bogus"`},
		{[]string{"image", "build"}, 2, "missing --kernel, --agent, --runc, -o"},
		{[]string{"image", "build", "--kernel", "k", "--agent", "a", "--runc", "r"}, 2, "missing -o"},
		{[]string{"image", "build", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"image", "build", "-o", "x", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"image", "build", "-h"}, 0, "usage: contrast image build --kernel PATH"},
		{[]string{"-h"}, 0, "usage: contrast <command>"},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.inStderr) {
			t.Errorf("contrast %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.inStderr)
		}
	}
	if code, stdout, _ := runCLI(t, "image", "help"); code != 0 || !strings.Contains(stdout, "build ") {
		t.Errorf("contrast image help: exit %d, stdout %q", code, stdout)
	}
}

func TestImageBuild(t *testing.T) {
	dir := t.TempDir()
	kernel, static := imageInputs(t, dir, "6.12.0-cli")
	out := filepath.Join(dir, "out", "image")
	args := []string{"image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "-o", out}

	code, stdout, stderr := runCLI(t, args...)
	if code != 0 || !strings.Contains(stdout, "built: kernel 6.12.0-cli, rootfs.img sha256 ") || !strings.Contains(stdout, ", dm-verity root hash ") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	// Not a terminal: one line per finished step.
	for _, step := range []string{"==> kernel", "==> rootfs.img", "==> manifest.json"} {
		if !strings.Contains(stderr, step) {
			t.Errorf("progress lacks %q:\n%s", step, stderr)
		}
	}
	// The initramfs format, kept for comparisons.
	initrdOut := filepath.Join(dir, "out", "image-initrd")
	code, stdout, stderr = runCLI(t, "image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "--format", "initrd", "-o", initrdOut)
	if code != 0 || !strings.Contains(stdout, "built: kernel 6.12.0-cli, initrd sha256 ") {
		t.Fatalf("--format initrd: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(initrdOut, "initrd")); err != nil {
		t.Errorf("--format initrd: %v", err)
	}
	if code, _, stderr := runCLI(t, "image", "build", "--kernel", kernel, "--agent", static, "--runc", static, "--format", "squashfs", "-o", initrdOut); code != 2 || !strings.Contains(stderr, `--format "squashfs"`) {
		t.Errorf("--format squashfs: exit %d, stderr %s", code, stderr)
	}
	code, stdout, _ = runCLI(t, args...)
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Errorf("second build: exit %d, stdout %q; want up to date", code, stdout)
	}

	// A failing build exits 1, says why and creates nothing.
	args[3] = filepath.Join(dir, "nonexistent-bzImage")
	args[len(args)-1] = filepath.Join(dir, "other")
	code, _, stderr = runCLI(t, args...)
	if code != 1 || !strings.Contains(stderr, "nonexistent-bzImage") {
		t.Errorf("build from a missing kernel: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "other")); !os.IsNotExist(err) {
		t.Errorf("failed build left %s behind (%v)", filepath.Join(dir, "other"), err)
	}
}

// imageInputs writes what `contrast image build` needs into dir: a bzImage
// setup header with the version string release (all the build reads of a
// kernel) and a static binary to stand for the agent and runc.
func imageInputs(t *testing.T, dir, release string) (kernel, static string) {
	t.Helper()
	kernel = filepath.Join(dir, "bzImage")
	k := make([]byte, 0x1000)
	binary.LittleEndian.PutUint16(k[0x1fe:], 0xaa55)
	copy(k[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(k[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(k[0x20e:], 0x200)
	copy(k[0x400:], release+" (test@test) #1\x00")
	if err := os.WriteFile(kernel, k, 0o644); err != nil {
		t.Fatal(err)
	}
	static = filepath.Join(dir, "static")
	build := exec.Command("go", "build", "-o", static, "../../vmimage/testdata/bootinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build static test binary: %v\n%s", err, out)
	}
	return kernel, static
}
