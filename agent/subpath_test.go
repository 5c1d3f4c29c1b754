package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenBeneath(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	for _, d := range []string{"a/b", "file-parent"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "file"), nil, 0o644)
	// What a container could plant in a shared emptyDir.
	os.Symlink(outside, filepath.Join(root, "evil"))
	os.Symlink("a", filepath.Join(root, "a-link"))

	f, err := openBeneath(root, "a/b", false)
	if err != nil {
		t.Fatalf("a/b: %v", err)
	}
	f.Close()
	for _, rel := range []string{"evil", "evil/x", "a-link/b", "file", "a/../evil"} {
		if f, err := openBeneath(root, rel, true); err == nil {
			f.Close()
			t.Errorf("%s opened", rel)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); err == nil {
		t.Error("a directory was made through the planted symlink")
	}
	if _, err := openBeneath(root, "new/dir", false); err == nil {
		t.Error("a missing directory opened without create")
	}
	f, err = openBeneath(root, "new/dir", true)
	if err != nil {
		t.Fatalf("create new/dir: %v", err)
	}
	f.Close()
	if info, err := os.Stat(filepath.Join(root, "new/dir")); err != nil || !info.IsDir() {
		t.Errorf("new/dir was not made: %v", err)
	}
	if _, err := openBeneath(root, "evil", true); err == nil || !strings.Contains(err.Error(), "symlink or not a directory") {
		t.Errorf("the error for a symlink does not say so: %v", err)
	}
}
