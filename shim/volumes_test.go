package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// kubeletVolume writes a volume directory the way the kubelet's atomic
// writer does: the payload in a new ..<timestamp> directory, ..data
// swapped to it with a rename, a symlink per key, stale keys and the old
// payload removed.
type kubeletVolume struct {
	t   *testing.T
	dir string
	n   int
}

func newKubeletVolume(t *testing.T, kind, name string) *kubeletVolume {
	dir := filepath.Join(t.TempDir(), "pods", "0b6f1c4e-9a27-4f3c-8a51-2d7e6c9b1f30", "volumes", "kubernetes.io~"+kind, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &kubeletVolume{t: t, dir: dir}
}

func (k *kubeletVolume) write(keys map[string]string, extra func(payload string)) {
	k.t.Helper()
	k.n++
	old, _ := os.Readlink(filepath.Join(k.dir, "..data"))
	ts := fmt.Sprintf("..2026_12_07_16_00_%02d.%09d", k.n, k.n)
	payload := filepath.Join(k.dir, ts)
	must := func(err error) {
		if err != nil {
			k.t.Fatal(err)
		}
	}
	must(os.Mkdir(payload, 0o755))
	for key, v := range keys {
		must(os.WriteFile(filepath.Join(payload, key), []byte(v), 0o644))
	}
	if extra != nil {
		extra(payload)
	}
	must(os.Symlink(ts, filepath.Join(k.dir, "..data_tmp")))
	must(os.Rename(filepath.Join(k.dir, "..data_tmp"), filepath.Join(k.dir, "..data")))
	for key := range keys {
		link := filepath.Join(k.dir, key)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			must(os.Symlink(filepath.Join("..data", key), link))
		}
	}
	entries, err := os.ReadDir(k.dir)
	must(err)
	for _, e := range entries {
		name := e.Name()
		if name == "..data" || name == ts {
			continue
		}
		if _, keep := keys[name]; keep {
			continue
		}
		if name == old || e.Type()&os.ModeSymlink != 0 {
			must(os.RemoveAll(filepath.Join(k.dir, name)))
		}
	}
}

// holds runs test(1) in the container until it succeeds or timeout passes,
// and returns how long that took.
func (e *taskEnv) holds(id, check string, timeout time.Duration) (time.Duration, bool) {
	start := time.Now()
	for i := 0; ; i++ {
		execID := fmt.Sprintf("check-%d", time.Now().UnixNano())
		if err := e.exec(e.ctx, id, execID, "sh", "-c", check); err != nil {
			e.t.Fatalf("exec %q: %v", check, err)
		}
		status := e.wait(id, execID)
		if err := e.delete(id, execID); err != nil {
			e.t.Fatal(err)
		}
		if status == 0 {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSharedVolume: a ConfigMap-like volume reaches the container through
// the real agent, each kubelet update reaches it within 2 s (a removed key
// disappears), and an update the agent refuses (a FIFO) leaves the
// container with the content shared before.
func TestSharedVolume(t *testing.T) {
	e := newTaskEnv(t)
	vol := newKubeletVolume(t, "configmap", "config")
	vol.write(map[string]string{"a": "one", "b": "two"}, nil)
	e.startSandbox("pod")
	updates := make(chan struct{}, 16)
	e.s.pod.volumes.updates = updates

	spec := e.containerSpec("pod", "", "sleep", "600")
	spec.Mounts = append(spec.Mounts, bindMount("/etc/config", vol.dir, "ro"))
	e.mustRun("c1", spec)
	if _, ok := e.holds("c1", `test "$(cat /etc/config/a)$(cat /etc/config/b)" = onetwo`, 0); !ok {
		t.Fatal("the container does not see the volume's keys")
	}
	if _, ok := e.holds("c1", `echo x >/etc/config/a`, 0); ok {
		t.Error("the container wrote into the read-only volume")
	}

	vol.write(map[string]string{"a": "ONE", "c": "three"}, nil)
	took, ok := e.holds("c1", `test "$(cat /etc/config/a)$(cat /etc/config/c)" = ONEthree && ! test -e /etc/config/b`, 2*time.Second)
	if !ok {
		t.Fatalf("the update did not reach the container within 2 s")
	}
	t.Logf("update visible in the container after %s", took.Round(time.Millisecond))
	// Drain the watcher's signals of that update.
	for len(updates) > 0 {
		<-updates
	}

	// An update with a FIFO is refused; the container keeps what it had.
	vol.write(map[string]string{"a": "evil"}, func(payload string) {
		if err := unix.Mkfifo(filepath.Join(payload, "pipe"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	select {
	case <-updates:
	case <-time.After(10 * time.Second):
		t.Fatal("the watcher did not act on the update")
	}
	if _, ok := e.holds("c1", `test "$(cat /etc/config/a)" = ONE && ! test -e /etc/config/pipe`, 0); !ok {
		t.Error("after a refused update the container does not have the content shared before")
	}

	// A second container mounting the same volume shares the same copy.
	spec2 := e.containerSpec("pod", "", "sleep", "600")
	spec2.Mounts = append(spec2.Mounts, bindMount("/cfg", vol.dir, "ro"))
	e.mustRun("c2", spec2)
	if _, ok := e.holds("c2", `test "$(cat /cfg/a)" = ONE`, 0); !ok {
		t.Error("the second container does not see the volume")
	}
	for _, id := range []string{"c1", "c2"} {
		e.kill(id)
		e.wait(id, "")
		if err := e.delete(id, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSubPathMount: a directory subPath of a volume reaches the container
// as that directory of the guest's copy: the shim finds it in the volume
// the kubelet bound it from, the agent binds it without following links.
func TestSubPathMount(t *testing.T) {
	e := newTaskEnv(t)
	vol := newKubeletVolume(t, "configmap", "config")
	var payload string
	vol.write(map[string]string{"top": "x"}, func(p string) {
		payload = p
		if err := os.MkdirAll(filepath.Join(p, "conf"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "conf", "app.conf"), []byte("nested"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	// The kubelet's bind of the subPath directory.
	podDir := filepath.Dir(filepath.Dir(filepath.Dir(vol.dir)))
	source := filepath.Join(podDir, "volume-subpaths", "config", "c1", "0")
	if err := os.MkdirAll(source, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(payload, "conf"), source, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(source, unix.MNT_DETACH) })

	e.startSandbox("pod")
	spec := e.containerSpec("pod", "", "sleep", "600")
	// Only the subPath: the volume is shared for it all the same.
	spec.Mounts = append(spec.Mounts, bindMount("/etc/app", source, "ro"))
	e.mustRun("c1", spec)
	if _, ok := e.holds("c1", `test "$(cat /etc/app/app.conf)" = nested && ! test -e /etc/app/top`, 0); !ok {
		t.Error("the container does not see the subPath directory")
	}
	e.kill("c1")
	e.wait("c1", "")
	if err := e.delete("c1", ""); err != nil {
		t.Fatal(err)
	}
}
