package vmimage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testOptions(t *testing.T) Options {
	return Options{
		Kernel: testKernel(t, "6.12.0-test"),
		Agent:  staticBinary,
		Runc:   copyFile(t, staticBinary, "runc"),
		OutDir: filepath.Join(t.TempDir(), "image"),
		// The tests of the initramfs format; rootdisk_test.go tests the default.
		Format: FormatInitrd,
	}
}

// readFiles reads the named files of an image directory.
func readFiles(t *testing.T, dir string, names ...string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	return files
}

func TestBuildReproducible(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t)
	a, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.OutDir = filepath.Join(t.TempDir(), "image")
	b, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{KernelFile, InitrdFile, ManifestFile}
	filesA, filesB := readFiles(t, a.Image.Dir, names...), readFiles(t, b.Image.Dir, names...)
	for _, name := range names {
		if !bytes.Equal(filesA[name], filesB[name]) {
			t.Errorf("%s differs between two builds from the same inputs", name)
		}
	}

	// A changed agent changes the initrd and nothing else.
	opts.Agent = copyFile(t, staticBinary, "changed")
	opts.OutDir = filepath.Join(t.TempDir(), "image")
	c, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	initrdA, _ := a.Image.Manifest.File(InitrdFile)
	initrdC, _ := c.Image.Manifest.File(InitrdFile)
	if initrdA.SHA256 == initrdC.SHA256 {
		t.Errorf("initrd sha256 %s did not change with the agent", initrdA.SHA256)
	}
	kernelA, _ := a.Image.Manifest.File(KernelFile)
	kernelC, _ := c.Image.Manifest.File(KernelFile)
	if kernelA != kernelC {
		t.Errorf("kernel changed with the agent: %+v, %+v", kernelA, kernelC)
	}
	if a.Image.Manifest.Components[0].SHA256 == c.Image.Manifest.Components[0].SHA256 {
		t.Errorf("agent component sha256 did not change")
	}
}

func TestBuildManifest(t *testing.T) {
	opts := testOptions(t)
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	m := res.Image.Manifest
	if m.KernelRelease != "6.12.0-test" {
		t.Errorf("kernel release %q, want 6.12.0-test", m.KernelRelease)
	}
	if m.KernelCmdline != DefaultKernelCmdline {
		t.Errorf("cmdline %q, want the default", m.KernelCmdline)
	}
	if len(m.Components) != 2 || m.Components[0].Name != "agent" || m.Components[1].Name != "runc" {
		t.Fatalf("components %+v, want agent and runc", m.Components)
	}
	agent := m.Components[0]
	if agent.Path != "/init" || agent.Module != "github.com/contrast-vm/contrast" || !strings.HasPrefix(agent.GoVersion, "go1.") {
		t.Errorf("agent component %+v: want /init, our module and a Go version", agent)
	}
	st, err := os.Stat(staticBinary)
	if err != nil {
		t.Fatal(err)
	}
	if agent.Size != st.Size() || len(agent.SHA256) != 64 {
		t.Errorf("agent component size %d sha256 %q, want %d bytes and a digest", agent.Size, agent.SHA256, st.Size())
	}
	// The manifest on disk is the one returned, and Load accepts it.
	im, err := Load(res.Image.Dir)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := im.Manifest.marshal()
	b, _ := m.marshal()
	if !bytes.Equal(a, b) {
		t.Errorf("loaded manifest differs from the built one:\n%s\n%s", a, b)
	}
	if im.Kernel() != filepath.Join(res.Image.Dir, "kernel") || im.Initrd() != filepath.Join(res.Image.Dir, "initrd") {
		t.Errorf("paths %s %s", im.Kernel(), im.Initrd())
	}
}

func TestBuildUpToDateAndReplace(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t)
	if _, err := Build(ctx, opts); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(opts.OutDir, InitrdFile)
	before, err := os.Stat(initrd)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Unchanged || !os.SameFile(before, after) {
		t.Errorf("second build of the same inputs: unchanged=%v, same initrd file=%v; want the old image kept", res.Unchanged, os.SameFile(before, after))
	}

	opts.Runc = copyFile(t, staticBinary, "other runc")
	res, err = Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Unchanged {
		t.Errorf("build with another runc reported the image unchanged")
	}
	if _, err := Load(opts.OutDir); err != nil {
		t.Errorf("replaced image does not load: %v", err)
	}
	assertOnly(t, filepath.Dir(opts.OutDir), "image")
}

// assertOnly fails unless dir holds exactly the named entries: no temporary
// build directories or old images left behind.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

func TestBuildBadInputs(t *testing.T) {
	notELF := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no kernel", func(o *Options) { o.Kernel = "" }, "no kernel given"},
		{"missing kernel", func(o *Options) { o.Kernel = "/nonexistent/bzImage" }, "/nonexistent/bzImage"},
		{"not a bzImage", func(o *Options) { o.Kernel = staticBinary }, "not a bzImage"},
		{"missing agent", func(o *Options) { o.Agent = "/nonexistent/agent" }, "agent /nonexistent/agent"},
		{"script agent", func(o *Options) { o.Agent = notELF }, "not an ELF executable"},
		// Debian's sh is dynamically linked against libc.
		{"dynamic runc", func(o *Options) { o.Runc = "/bin/sh" }, "runc /bin/sh: dynamically linked"},
		{"no output", func(o *Options) { o.OutDir = "" }, "no output directory given"},
		{"cmdline with newline", func(o *Options) { o.KernelCmdline = "console=ttyS0\nquiet" }, "control character 0xa at byte 13"},
		{"cmdline too long", func(o *Options) { o.KernelCmdline = strings.Repeat("x", 2048) }, "at most 2047"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t)
			tc.change(&opts)
			_, err := Build(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if opts.OutDir != "" {
				assertOnly(t, filepath.Dir(opts.OutDir))
			}
		})
	}
}

func TestBuildRefusesForeignDirectory(t *testing.T) {
	opts := testOptions(t)
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		t.Fatal(err)
	}
	precious := filepath.Join(opts.OutDir, "notes.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Build(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "notes.txt") {
		t.Fatalf("error %v, want a refusal naming notes.txt", err)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Errorf("notes.txt after refused build: %q, %v", b, err)
	}
	assertOnly(t, filepath.Dir(opts.OutDir), "image")
}

func TestBuildCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	opts := testOptions(t)
	if _, err := Build(ctx, opts); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("error %v, want context canceled", err)
	}
	assertOnly(t, filepath.Dir(opts.OutDir))
}

func TestKernelRelease(t *testing.T) {
	rel, err := KernelRelease(testKernel(t, "6.12.117-contrast"))
	if err != nil || rel != "6.12.117-contrast" {
		t.Errorf("KernelRelease = %q, %v", rel, err)
	}
	if _, err := KernelRelease(staticBinary); err == nil || !strings.Contains(err.Error(), "not a bzImage") {
		t.Errorf("KernelRelease of an ELF file: %v, want not a bzImage", err)
	}
}
