package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
)

// kubeletTree is a volume as the kubelet's atomic writer lays it out:
// payload in ..<ts>, ..data -> ..<ts>, and key -> ..data/key per key.
func kubeletTree(ts string, keys map[string]string) []*api.VolumeFile {
	payload := ".." + ts
	files := []*api.VolumeFile{{Path: payload, Type: api.VolumeFileDir, Mode: 0o755}}
	var names []string
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names) // as the shim reads a tree: in a stable order
	for _, k := range names {
		files = append(files, &api.VolumeFile{Path: payload + "/" + k, Type: api.VolumeFileRegular, Mode: 0o644, Gid: 2000, Content: []byte(keys[k])})
	}
	files = append(files, &api.VolumeFile{Path: "..data", Type: api.VolumeFileSymlink, Target: payload})
	for _, k := range names {
		files = append(files, &api.VolumeFile{Path: k, Type: api.VolumeFileSymlink, Target: "..data/" + k})
	}
	return files
}

func readKey(t *testing.T, root, key string) (string, error) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, key))
	return string(b), err
}

func TestVolumeShareAndUpdate(t *testing.T) {
	v := newVolumeSet(t.TempDir(), DefaultVolumeBytes)
	v.retireAfter = 200 * time.Millisecond
	changed, err := v.share("configmap", "config", kubeletTree("2026_12_07_16_00_00.1", map[string]string{"a": "one", "b": "two"}))
	if err != nil || !changed {
		t.Fatalf("first share: %v, %v", changed, err)
	}
	root, ok := v.path("configmap", "config")
	if !ok {
		t.Fatal("the shared volume has no path")
	}
	for k, want := range map[string]string{"a": "one", "b": "two"} {
		if got, err := readKey(t, root, k); err != nil || got != want {
			t.Errorf("key %s: %q, %v; want %q", k, got, err, want)
		}
	}
	info, err := os.Stat(filepath.Join(root, "a"))
	if err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("key a: mode %v, %v", info.Mode(), err)
	}

	// The same tree again changes nothing.
	if changed, err := v.share("configmap", "config", kubeletTree("2026_12_07_16_00_00.1", map[string]string{"a": "one", "b": "two"})); err != nil || changed {
		t.Errorf("the same tree again: changed %v, %v", changed, err)
	}

	// An update: a changes, b goes, c comes. A reader of a during the
	// update sees the old content or the new, never an error or a mix.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			got, err := readKey(t, root, "a")
			if err != nil || (got != "one" && got != "ONE") {
				bad.Store(got + " " + errString(err))
				return
			}
		}
	}()
	for i := range 20 {
		content := "ONE"
		if i%2 == 1 {
			content = "one"
		}
		ts := "2026_12_07_16_00_01." + string(rune('a'+i))
		if _, err := v.share("configmap", "config", kubeletTree(ts, map[string]string{"a": content, "c": "three"})); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Errorf("a reader saw %q during an update", b)
	}
	if _, err := os.Lstat(filepath.Join(root, "b")); !os.IsNotExist(err) {
		t.Errorf("key b still there after the update removed it: %v", err)
	}
	if got, err := readKey(t, root, "c"); err != nil || got != "three" {
		t.Errorf("key c: %q, %v", got, err)
	}
	// The payload directories the updates replaced stay for a while (a
	// reader may be on its way into one), then go.
	names := func() []string {
		entries, _ := os.ReadDir(root)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	if n := names(); len(n) < 5 {
		t.Errorf("right after the updates the volume holds %v, want the replaced payload directories still there", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(names()) != 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := names(); len(n) != 4 { // ..<ts>, ..data, a, c
		t.Errorf("the volume holds %v, want one payload directory, ..data, a and c", n)
	}
}

// A payload directory a later update brings back under the same name is
// not removed when the earlier update's retirement comes due.
func TestVolumeRetiredPayloadReused(t *testing.T) {
	v := newVolumeSet(t.TempDir(), DefaultVolumeBytes)
	v.retireAfter = 100 * time.Millisecond
	for _, ts := range []string{"t1", "t2", "t1"} {
		if _, err := v.share("configmap", "config", kubeletTree(ts, map[string]string{"a": ts})); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(400 * time.Millisecond)
	root, _ := v.path("configmap", "config")
	if got, err := readKey(t, root, "a"); err != nil || got != "t1" {
		t.Errorf("key a after the retirements came due: %q, %v; want t1", got, err)
	}
	if _, err := os.Stat(filepath.Join(root, "..t2")); !os.IsNotExist(err) {
		t.Errorf("the replaced payload ..t2 is still there: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestVolumeCap(t *testing.T) {
	v := newVolumeSet(t.TempDir(), 100)
	if _, err := v.share("secret", "s1", kubeletTree("t1", map[string]string{"k": strings.Repeat("x", 60)})); err != nil {
		t.Fatal(err)
	}
	_, err := v.share("secret", "s2", kubeletTree("t1", map[string]string{"k": strings.Repeat("x", 60)}))
	if err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("a second volume beyond the cap: %v, want an error saying it does not fit", err)
	}
	if _, ok := v.path("secret", "s2"); ok {
		t.Error("the volume that did not fit is shared")
	}
	// Replacing the first with a smaller tree frees its bytes.
	if _, err := v.share("secret", "s1", kubeletTree("t2", map[string]string{"k": "small"})); err != nil {
		t.Fatal(err)
	}
	if _, err := v.share("secret", "s2", kubeletTree("t1", map[string]string{"k": strings.Repeat("x", 60)})); err != nil {
		t.Errorf("after the first shrank: %v", err)
	}
}

func TestVolumeMountSource(t *testing.T) {
	v := newVolumeSet(t.TempDir(), DefaultVolumeBytes)
	src := "/var/lib/kubelet/pods/0b6f1c4e/volumes/kubernetes.io~configmap/config"
	if _, isVolume, err := v.mountSource(src); !isVolume || err == nil || !strings.Contains(err.Error(), "was not shared") {
		t.Errorf("a volume not shared: %v, %v", isVolume, err)
	}
	if _, err := v.share("configmap", "config", kubeletTree("t", map[string]string{"k": "v"})); err != nil {
		t.Fatal(err)
	}
	if p, isVolume, err := v.mountSource(src); !isVolume || err != nil || !strings.HasSuffix(p, "/configmap/config") {
		t.Errorf("a shared volume: %q, %v, %v", p, isVolume, err)
	}
	for _, other := range []string{"/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache", "/etc/hosts", "/var/lib/kubelet/pods/u/etc-hosts"} {
		if _, isVolume, _ := v.mountSource(other); isVolume {
			t.Errorf("%s taken for a shared volume", other)
		}
	}
}
