package vmimage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadRefusesDamagedImage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"initrd changed", func(t *testing.T, dir string) {
			p := filepath.Join(dir, InitrdFile)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 1 // same size, other content
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "initrd has sha256"},
		{"kernel truncated", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, KernelFile), 100); err != nil {
				t.Fatal(err)
			}
		}, "kernel has 100 bytes, the manifest says 4096"},
		{"kernel missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, KernelFile)); err != nil {
				t.Fatal(err)
			}
		}, "kernel is missing"},
		{"manifest missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, ManifestFile)); err != nil {
				t.Fatal(err)
			}
		}, "manifest.json is missing"},
		{"manifest garbled", func(t *testing.T, dir string) {
			editManifest(t, dir, `"schema": 1`, `"schema": 1,`)
		}, "manifest.json is malformed"},
		{"unknown field", func(t *testing.T, dir string) {
			editManifest(t, dir, `"schema": 1`, `"schema": 1, "extra": true`)
		}, `unknown field "extra"`},
		{"newer schema", func(t *testing.T, dir string) {
			editManifest(t, dir, `"schema": 1`, `"schema": 2`)
		}, "schema 2"},
		{"file outside the image", func(t *testing.T, dir string) {
			editManifest(t, dir, `"name": "kernel"`, `"name": "../kernel"`)
		}, `unknown file "../kernel"`},
		{"bad digest", func(t *testing.T, dir string) {
			editManifest(t, dir, `"sha256": "`, `"sha256": "zz`)
		}, "is not 64 lower-case hex digits"},
		{"no cmdline", func(t *testing.T, dir string) {
			editManifest(t, dir, DefaultKernelCmdline, "")
		}, "kernelCmdline is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Build(context.Background(), testOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			dir := res.Image.Dir
			tc.damage(t, dir)
			_, err = Load(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Load: %v; want an error naming %s and containing %q", err, dir, tc.want)
			}
		})
	}
}

// editManifest replaces the first occurrence of old in dir's manifest.
func editManifest(t *testing.T, dir, old, new string) {
	t.Helper()
	p := filepath.Join(dir, ManifestFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("manifest lacks %q:\n%s", old, b)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}
