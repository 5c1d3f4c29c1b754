package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
)

// blockVolumeSerial is the virtio-blk serial of a container's raw block
// volume: derived from the container id and the path in the container, so
// that it is the same on every try and differs between volumes.
func blockVolumeSerial(containerID, containerPath string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + containerPath))
	return "v" + hex.EncodeToString(sum[:])[:19]
}

// rawBlockDevices are the spec's raw block volumes (Kubernetes
// volumeDevices): the block device entries that CRI gave an allow rule of
// their own (WithDevices). A privileged container's host devices, which
// come with a rule allowing every device instead, are not among them.
func rawBlockDevices(spec *specs.Spec) []specs.LinuxDevice {
	if spec.Linux == nil || spec.Linux.Resources == nil {
		return nil
	}
	allowed := func(d specs.LinuxDevice) bool {
		for _, r := range spec.Linux.Resources.Devices {
			if r.Allow && r.Type == "b" && r.Major != nil && r.Minor != nil && *r.Major == d.Major && *r.Minor == d.Minor {
				return true
			}
		}
		return false
	}
	var out []specs.LinuxDevice
	for _, d := range spec.Linux.Devices {
		if d.Type == "b" && allowed(d) {
			out = append(out, d)
		}
	}
	return out
}

// hostDevices finds host block devices by number: sysfs names the
// device (/sys/dev/block/<major>:<minor>/uevent, DEVNAME), devtmpfs holds
// its node. Fields for tests.
type hostDevices struct {
	sysDir string // /sys/dev/block
	devDir string // /dev
}

func newHostDevices() hostDevices { return hostDevices{sysDir: "/sys/dev/block", devDir: "/dev"} }

// node returns the path of the host's node of block device major:minor,
// checked to be that device.
func (h hostDevices) node(major, minor int64) (string, error) {
	if major < 0 || minor < 0 || major > 0xfff || minor > 0xfffff {
		return "", fmt.Errorf("block device %d:%d: no such device number", major, minor)
	}
	uevent, err := os.ReadFile(filepath.Join(h.sysDir, fmt.Sprintf("%d:%d", major, minor), "uevent"))
	if err != nil {
		return "", fmt.Errorf("block device %d:%d is not on this host: %w", major, minor, err)
	}
	var name string
	for _, line := range strings.Split(string(uevent), "\n") {
		if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			name = v
		}
	}
	if name == "" || filepath.Clean("/"+name) != "/"+name || strings.Contains(name, "..") {
		return "", fmt.Errorf("block device %d:%d: sysfs names no usable device node (DEVNAME %q)", major, minor, name)
	}
	node := filepath.Join(h.devDir, name)
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		return "", fmt.Errorf("block device %d:%d: %w", major, minor, &os.PathError{Op: "stat", Path: node, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || int64(unix.Major(st.Rdev)) != major || int64(unix.Minor(st.Rdev)) != minor {
		return "", fmt.Errorf("block device %d:%d: %s is not that block device", major, minor, node)
	}
	return node, nil
}

// attachBlockVolumes hot-plugs (with attach) the host devices of a
// container's raw block volumes as read-write disks of vm and returns what
// the agent needs to put them at their container paths, and the serials to
// detach at removal. On error nothing stays attached.
func attachBlockVolumes(ctx context.Context, vm hypervisor.VM, attach func(context.Context, hypervisor.Disk) error, host hostDevices, containerID string, spec *specs.Spec) (_ []*agentapi.BlockVolume, serials []string, retErr error) {
	devices := rawBlockDevices(spec)
	if len(devices) == 0 {
		return nil, nil, nil
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, detachBlockVolumes(context.WithoutCancel(ctx), vm, serials))
			serials = nil
		}
	}()
	volumes := make([]*agentapi.BlockVolume, 0, len(devices))
	for _, d := range devices {
		node, err := host.node(d.Major, d.Minor)
		if err != nil {
			return nil, serials, fmt.Errorf("raw block volume at %s: %w", d.Path, err)
		}
		disk := hypervisor.Disk{Serial: blockVolumeSerial(containerID, d.Path), Path: node}
		if err := attach(ctx, disk); err != nil {
			return nil, serials, fmt.Errorf("raw block volume at %s (host device %s): %w", d.Path, node, err)
		}
		serials = append(serials, disk.Serial)
		volumes = append(volumes, &agentapi.BlockVolume{Serial: disk.Serial, ContainerPath: d.Path})
		log.G(ctx).WithFields(log.Fields{"container": containerID, "device": node, "path": d.Path}).Debug("attached raw block volume")
	}
	return volumes, serials, nil
}

// detachBlockVolumes unplugs a container's raw block volumes; it tries
// every one and reports what failed.
func detachBlockVolumes(ctx context.Context, vm hypervisor.VM, serials []string) error {
	var errs []error
	for _, s := range serials {
		if err := vm.DetachDisk(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("detach raw block volume: %w", err))
		}
	}
	return errors.Join(errs...)
}
