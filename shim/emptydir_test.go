package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// hostEmptyDir makes the kubelet's directory of an emptyDir volume; with
// memSize > 0 a tmpfs of that size on it, as the kubelet mounts one for
// medium Memory.
func hostEmptyDir(t *testing.T, podDir, name string, memSize int) string {
	dir := filepath.Join(podDir, "volumes", "kubernetes.io~empty-dir", name)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if memSize > 0 {
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", memSize)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	}
	return dir
}

func TestEmptyDirsSorted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	pod := filepath.Join(t.TempDir(), "pods", "uid")
	disk := hostEmptyDir(t, pod, "cache", 0)
	fast := hostEmptyDir(t, pod, "fast", 1<<20)
	huge := hostEmptyDir(t, pod, "huge", 1<<30)
	// a kubelet root on a tmpfs: its disk volumes are directories there
	tmpfsRoot := filepath.Join(t.TempDir(), "tmpfs-root")
	if err := os.Mkdir(tmpfsRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", tmpfsRoot, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tmpfsRoot, unix.MNT_DETACH) })
	onTmpfs := hostEmptyDir(t, filepath.Join(tmpfsRoot, "pods", "uid"), "on-tmpfs", 0)
	spec := &specs.Spec{Mounts: []specs.Mount{
		bindMount("/cache", disk, "rw"), bindMount("/fast", fast, "rw"), bindMount("/fast-again", fast, "rw"), bindMount("/huge", huge, "rw"),
		bindMount("/on-tmpfs", onTmpfs, "rw"),
		{Destination: "/proc", Type: "proc", Source: "proc"},
	}}
	memory, onDisk, err := emptyDirs(spec, 256)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(onDisk, []string{"cache", "on-tmpfs"}) {
		t.Errorf("volumes on the scratch disk: %q, want [cache on-tmpfs]", onDisk)
	}
	want := map[string]uint64{"fast": 1 << 20, "huge": 256 << 20} // huge: capped at the VM's memory
	if len(memory) != len(want) {
		t.Fatalf("memory volumes %v, want %v", memory, want)
	}
	for _, v := range memory {
		if want[v.Name] != v.SizeBytes {
			t.Errorf("memory volume %s of %d bytes, want %d", v.Name, v.SizeBytes, want[v.Name])
		}
	}

	_, onDisk, err = emptyDirs(&specs.Spec{Mounts: []specs.Mount{bindMount("/fast", fast, "rw")}}, 256)
	if err != nil || len(onDisk) > 0 {
		t.Errorf("only a Memory emptyDir: scratch disk needed %v, %v", onDisk, err)
	}
	_, _, err = emptyDirs(&specs.Spec{Mounts: []specs.Mount{bindMount("/x", filepath.Join(pod, "volumes", "kubernetes.io~empty-dir", "gone"), "rw")}}, 256)
	if err == nil || !strings.Contains(err.Error(), `"gone"`) {
		t.Errorf("missing host directory: %v, want an error naming the volume", err)
	}
}

// TestEmptyDirVolumes: two containers of a pod share a disk emptyDir (one
// scratch disk, attached once) and a Memory one (a tmpfs of the host's
// size, which refuses writes past it); nothing reaches the host's dirs.
func TestEmptyDirVolumes(t *testing.T) {
	e := newTaskEnv(t)
	for _, applet := range []string{"dd", "test"} {
		if err := os.Symlink("busybox", filepath.Join(e.rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	pod := filepath.Join(t.TempDir(), "pods", "uid")
	shared := hostEmptyDir(t, pod, "shared", 0)
	fast := hostEmptyDir(t, pod, "fast", 1<<20)
	e.startSandbox("pod")
	withVolumes := func(args ...string) *specs.Spec {
		spec := e.containerSpec("pod", "", args...)
		spec.Mounts = append(spec.Mounts, bindMount("/shared", shared, "rw"), bindMount("/fast", fast, "rw"))
		return spec
	}
	e.mustRun("writer", withVolumes("sh", "-c", "echo marker-7f3a > /shared/m && echo marker-7f3a > /fast/m"))
	if status := e.wait("writer", ""); status != 0 {
		t.Fatalf("writer exited %d", status)
	}
	e.mustRun("reader", withVolumes("sh", "-c", `test "$(cat /shared/m)" = marker-7f3a && test "$(cat /fast/m)" = marker-7f3a`))
	if status := e.wait("reader", ""); status != 0 {
		t.Errorf("reader exited %d: it does not see what the writer wrote", status)
	}
	e.mustRun("filler", withVolumes("dd", "if=/dev/zero", "of=/fast/big", "bs=65536", "count=32"))
	if status := e.wait("filler", ""); status == 0 {
		t.Error("2 MiB fit into the Memory emptyDir of 1 MiB")
	}
	for _, dir := range []string{shared, fast} {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("the host's %s holds %d entries: the guest wrote through to the host", dir, len(entries))
		}
	}

	e.s.mu.Lock()
	vm := e.s.pod.vm.(*agentVM)
	stateDir := e.s.pod.stateDir
	e.s.mu.Unlock()
	vm.mu.Lock()
	_, attached := vm.loops[agentapi.ScratchDiskSerial]
	vm.mu.Unlock()
	if !attached {
		t.Errorf("no scratch disk attached")
	}
	// a second attach would have failed: the image is created exclusively
	scratch, err := os.Stat(filepath.Join(stateDir, "disks", scratchImage))
	if err != nil || scratch.Size() != e.cfg.Volumes.ScratchMiB<<20 {
		t.Errorf("scratch image: %v, %v; want %d MiB", scratch, err, e.cfg.Volumes.ScratchMiB)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(vm.dir, "run", "emptydir", "memory", "fast"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.TMPFS_MAGIC || st.Blocks*uint64(st.Bsize) != 1<<20 {
		t.Errorf("guest Memory volume: fs type %#x, %d bytes; want a tmpfs of 1 MiB", st.Type, st.Blocks*uint64(st.Bsize))
	}

	for _, id := range []string{"writer", "reader", "filler"} {
		if err := e.delete(id, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.kill("pod")
	e.wait("pod", "")
	if err := e.delete("pod", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pod's state dir (and its scratch image) stayed: %v", err)
	}
}

// TestScratchAttachedOnce: the scratch disk is a sparse file of the
// configured size, attached at the first need only; a failed attach
// leaves no file and the next container tries again.
func TestScratchAttachedOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Volumes.ScratchMiB = 64
	vm := &portsVM{ports: 0}
	p := &pod{id: "p", stateDir: t.TempDir(), cfg: cfg, vm: vm}
	image := filepath.Join(p.stateDir, "disks", scratchImage)
	if err := p.scratch.attach(context.Background(), p); !errors.Is(err, errNoPort) {
		t.Fatalf("attach without a free port: %v, want %v", err, errNoPort)
	}
	if _, err := os.Stat(image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed attach left the image: %v", err)
	}
	vm.ports = 1
	for range 2 {
		if err := p.scratch.attach(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	if len(vm.attached) != 1 || vm.attached[0] != agentapi.ScratchDiskSerial {
		t.Errorf("attached %q, want the scratch disk once", vm.attached)
	}
	var st unix.Stat_t
	if err := unix.Stat(image, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 || st.Blocks != 0 {
		t.Errorf("image of %d bytes in %d blocks, want 64 MiB and sparse", st.Size, st.Blocks)
	}
}
