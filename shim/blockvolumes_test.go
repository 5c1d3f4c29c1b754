package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
)

// withBlockVolume adds a raw block volume to spec as CRI writes it: the
// host device's entry at the container path and an allow rule for it.
func withBlockVolume(spec *specs.Spec, path string, major, minor int64) {
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}
	}
	mode := os.FileMode(0o660)
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: path, Type: "b", Major: major, Minor: minor, FileMode: &mode})
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "mrw"})
}

func TestBlockVolumeSerial(t *testing.T) {
	a, b, c := blockVolumeSerial("c1", "/dev/xvda"), blockVolumeSerial("c1", "/dev/xvdb"), blockVolumeSerial("c2", "/dev/xvda")
	if len(a) != 20 || a == b || a == c || a != blockVolumeSerial("c1", "/dev/xvda") {
		t.Errorf("serials %q %q %q: want 20 bytes, stable, distinct per container and path", a, b, c)
	}
	if a == rootfsSerial("c1") {
		t.Errorf("block volume serial %q is the rootfs's", a)
	}
}

func TestRawBlockDevices(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{}}
	withBlockVolume(spec, "/dev/xvda", 7, 3)
	// A privileged container's host devices come with a rule allowing all.
	spec.Linux.Devices = append(spec.Linux.Devices,
		specs.LinuxDevice{Path: "/dev/sda", Type: "b", Major: 8, Minor: 0},
		specs.LinuxDevice{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229})
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"})
	got := rawBlockDevices(spec)
	if len(got) != 1 || got[0].Path != "/dev/xvda" {
		t.Errorf("raw block devices %+v, want the one at /dev/xvda", got)
	}
	if got := rawBlockDevices(&specs.Spec{}); got != nil {
		t.Errorf("a spec without linux has raw block devices %+v", got)
	}
}

// fakeHostDevices is a sysfs and /dev with block device nodes (root only).
func fakeHostDevices(t *testing.T, nodes map[string][2]uint32) hostDevices {
	h := hostDevices{sysDir: t.TempDir(), devDir: t.TempDir()}
	for name, num := range nodes {
		dir := filepath.Join(h.sysDir, fmt.Sprintf("%d:%d", num[0], num[1]))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte("MAJOR=7\nDEVNAME="+name+"\nDEVTYPE=disk\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(h.devDir, name), unix.S_IFBLK|0o600, int(unix.Mkdev(num[0], num[1]))); err != nil {
			t.Skipf("mknod (needs root): %v", err)
		}
	}
	return h
}

func TestHostDeviceNode(t *testing.T) {
	h := fakeHostDevices(t, map[string][2]uint32{"loop3": {7, 3}})
	// sysfs names for 7:5 a node that is another device
	if err := os.MkdirAll(filepath.Join(h.sysDir, "7:5"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.sysDir, "7:5", "uevent"), []byte("DEVNAME=loop3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if node, err := h.node(7, 3); err != nil || node != filepath.Join(h.devDir, "loop3") {
		t.Errorf("node of 7:3: %q, %v; want %s", node, err, filepath.Join(h.devDir, "loop3"))
	}
	for _, tc := range []struct {
		major, minor int64
		wantErr      string
	}{
		{7, 9, "block device 7:9 is not on this host"},
		{7, 5, "is not that block device"},
		{-1, 0, "no such device number"},
	} {
		if _, err := h.node(tc.major, tc.minor); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("node of %d:%d: %v, want an error containing %q", tc.major, tc.minor, err, tc.wantErr)
		}
	}
	// a node that escapes /dev
	bad := filepath.Join(h.sysDir, "7:6")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "uevent"), []byte("DEVNAME=../etc/passwd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.node(7, 6); err == nil || !strings.Contains(err.Error(), "no usable device node") {
		t.Errorf("node of 7:6 named ../etc/passwd: %v", err)
	}
}

// hostLoop is a loop device on a sparse file, as a raw block volume's host
// device; it is detached at the end.
func hostLoop(t *testing.T) (dev, backing string, major, minor int64) {
	backing = filepath.Join(t.TempDir(), "volume.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 4<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v: %s", dev, err, out)
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	return dev, backing, int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
}

// agentVMLoops are the serials and loop devices of the disks the pod's
// agent VM has attached.
func (e *taskEnv) agentVMLoops() map[string]string {
	e.hv.mu.Lock()
	defer e.hv.mu.Unlock()
	loops := map[string]string{}
	for _, vm := range e.hv.vms {
		vm.mu.Lock()
		for s, d := range vm.loops {
			loops[s] = d
		}
		vm.mu.Unlock()
	}
	return loops
}

func (e *taskEnv) addApplets(names ...string) {
	for _, a := range names {
		if err := os.Symlink("busybox", filepath.Join(e.rootfs, "bin", a)); err != nil && !os.IsExist(err) {
			e.t.Fatal(err)
		}
	}
}

// TestRawBlockVolume: a container gets a host block device at its path; it
// writes there what the device's node is in the guest, which lands in the
// host device's backing file; removing the container detaches the disk.
func TestRawBlockVolume(t *testing.T) {
	e := newTaskEnv(t)
	e.startSandbox("pod")
	_, backing, major, minor := hostLoop(t)
	e.addApplets("dd", "stat")
	spec := e.containerSpec("pod", "", "sh", "-c",
		`echo "contrast-marker $(stat -c %t:%T /dev/xvda)" | dd of=/dev/xvda bs=512 seek=1 conv=notrunc,fsync`)
	withBlockVolume(spec, "/dev/xvda", major, minor)
	e.mustRun("c1", spec)
	if status := e.wait("c1", ""); status != 0 {
		t.Fatalf("c1 exited %d, want 0 (console: %s)", status, e.console())
	}
	serial := blockVolumeSerial("c1", "/dev/xvda")
	guestDev, ok := e.agentVMLoops()[serial]
	if !ok {
		t.Fatalf("no disk %s attached; attached: %v", serial, e.agentVMLoops())
	}
	var st unix.Stat_t
	if err := unix.Stat(guestDev, &st); err != nil {
		t.Fatal(err)
	}
	// The container's node is the guest device, not the host's numbers.
	want := fmt.Sprintf("contrast-marker %x:%x\n", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if int64(unix.Minor(st.Rdev)) == minor {
		t.Fatalf("guest device %s has the host device's numbers", guestDev)
	}
	data, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if got := data[512 : 512+len(want)]; !bytes.Equal(got, []byte(want)) {
		t.Errorf("backing file at 512: %q, want %q", got, want)
	}
	if err := e.delete("c1", ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.agentVMLoops()[serial]; ok {
		t.Errorf("raw block volume %s still attached after the container's removal", serial)
	}
}

// console is the agent VM's log, for a failure's message.
func (e *taskEnv) console() string {
	e.s.mu.Lock()
	path := e.s.pod.vm.ConsoleLog()
	e.s.mu.Unlock()
	data, _ := os.ReadFile(path)
	return string(data)
}

// TestRawBlockVolumeRefused: a create whose volume cannot be attached, or
// that the agent refuses, fails naming the path and leaves no disk.
func TestRawBlockVolumeRefused(t *testing.T) {
	e := newTaskEnv(t)
	e.startSandbox("pod")
	_, _, major, minor := hostLoop(t)
	for _, tc := range []struct {
		id, path     string
		major, minor int64
		wantErr      string
	}{
		{id: "gone", path: "/dev/xvda", major: 7, minor: 1 << 19, wantErr: "raw block volume at /dev/xvda: block device 7:524288 is not on this host"},
		// the gate refuses it first, and the agent would
		{id: "unclean", path: "/dev/../xvda", major: major, minor: minor, wantErr: `"/dev/../xvda": not a clean absolute path`},
	} {
		spec := e.containerSpec("pod", "", "true")
		withBlockVolume(spec, tc.path, tc.major, tc.minor)
		err := e.create(tc.id, spec)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("create %s: %v, want an error containing %q", tc.id, err, tc.wantErr)
		}
		if _, ok := e.agentVMLoops()[blockVolumeSerial(tc.id, tc.path)]; ok {
			t.Errorf("create %s failed, but its raw block volume stays attached", tc.id)
		}
	}
}

// TestAttachBlockVolumes: volumes take ports idle layers free; when one
// cannot be attached, those attached before are unplugged again.
func TestAttachBlockVolumes(t *testing.T) {
	host := fakeHostDevices(t, map[string][2]uint32{"loop3": {7, 3}, "loop4": {7, 4}})
	cache, err := layer.OpenCache(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	vm := &portsVM{ports: 2}
	pl := newPodLayers(cache)
	attach := func(ctx context.Context, d hypervisor.Disk) error { return pl.attachDisk(ctx, vm, d) }
	_, layerSerials, err := pl.acquire(ctx, vm, []layer.Blob{oneFileLayer(t, "base", "base")})
	if err != nil {
		t.Fatal(err)
	}
	pl.release(layerSerials) // idle: its port may go

	spec := &specs.Spec{Linux: &specs.Linux{}}
	withBlockVolume(spec, "/dev/xvda", 7, 3)
	withBlockVolume(spec, "/dev/xvdb", 7, 4)
	volumes, serials, err := attachBlockVolumes(ctx, vm, attach, host, "c1", spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(volumes) != 2 || volumes[0].ContainerPath != "/dev/xvda" || volumes[1].Serial != blockVolumeSerial("c1", "/dev/xvdb") {
		t.Errorf("volumes for the agent: %v", volumes)
	}
	if !slices.Equal(vm.attached, serials) || !slices.Equal(vm.detached, layerSerials) {
		t.Errorf("attached %v (want the volumes %v), detached %v (want the idle layer %v)", vm.attached, serials, vm.detached, layerSerials)
	}

	// No port left for c2's second volume: its first goes again.
	vm.detached = nil
	if err := detachBlockVolumes(ctx, vm, serials[1:]); err != nil {
		t.Fatal(err)
	}
	_, got, err := attachBlockVolumes(ctx, vm, attach, host, "c2", spec)
	if !errors.Is(err, errNoPort) || !strings.Contains(err.Error(), "raw block volume at /dev/xvdb") || got != nil {
		t.Fatalf("attach with no free port: serials %v, error %v", got, err)
	}
	if !slices.Equal(vm.attached, serials[:1]) || !slices.Contains(vm.detached, blockVolumeSerial("c2", "/dev/xvda")) {
		t.Errorf("after the failed attach: attached %v, detached %v; want only c1's first volume attached", vm.attached, vm.detached)
	}
	pl.close()
}
