package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/podstate"
	"github.com/contrast-vm/contrast/hypervisor"
)

// scratchImage is the scratch disk's file in the pod's disks directory.
const scratchImage = "scratch.img"

// podScratch is the pod's scratch disk: one sparse file, attached on the
// first container with an emptyDir on disk and kept until the pod ends.
// The guest encrypts it with a key of its own, so the host only ever holds
// ciphertext; being sparse, it costs only what the pod writes.
type podScratch struct {
	mu       sync.Mutex
	attached bool
}

// attach creates and attaches the scratch disk unless it is attached. On
// error nothing of it stays, and the next container tries again.
func (ps *podScratch) attach(ctx context.Context, p *pod) (retErr error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.attached {
		return nil
	}
	dir := filepath.Join(p.stateDir, podstate.DisksDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	disk := hypervisor.Disk{Serial: agentapi.ScratchDiskSerial, Path: filepath.Join(dir, scratchImage)}
	f, err := os.OpenFile(disk.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.Remove(disk.Path)
		}
	}()
	size := p.cfg.Volumes.ScratchMiB << 20
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("scratch disk %s of %d MiB (volumes.scratch_mib): %w", disk.Path, p.cfg.Volumes.ScratchMiB, err)
	}
	if err := p.vm.AttachDisk(ctx, disk); err != nil {
		return fmt.Errorf("attach scratch disk %s: %w", disk.Path, err)
	}
	ps.attached = true
	return nil
}

// isMountPoint says whether dir is the root of a file system: on another
// device than its parent.
func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Join(dir, ".."), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// emptyDirs sorts a container's emptyDir mounts: those whose host
// directory is on a tmpfs (medium Memory: the kubelet mounts one sized to
// the sizeLimit) go to the guest as tmpfs volumes of that size, capped at
// the VM's memory; the others (onDisk, by name) need the pod's scratch
// disk. The errors name the volume.
func emptyDirs(spec *specs.Spec, vmMemoryMiB int) (memory []*agentapi.MemoryVolume, onDisk []string, err error) {
	seen := map[string]bool{}
	for _, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		name, ok, err := agentapi.EmptyDirName(m.Source)
		if err != nil {
			return nil, nil, err
		}
		if !ok || seen[name] {
			continue
		}
		seen[name] = true
		var st unix.Statfs_t
		if err := unix.Statfs(m.Source, &st); err != nil {
			return nil, nil, fmt.Errorf("emptyDir volume %q: medium of %s: %w", name, m.Source, err)
		}
		// The kubelet mounts a Memory volume's tmpfs on the volume's own
		// directory; a directory that is merely on a tmpfs (a kubelet root
		// in /run) is a volume on disk.
		mountPoint, err := isMountPoint(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("emptyDir volume %q: medium of %s: %w", name, m.Source, err)
		}
		if st.Type != unix.TMPFS_MAGIC || !mountPoint {
			onDisk = append(onDisk, name)
			continue
		}
		vmBytes := uint64(vmMemoryMiB) << 20
		size := st.Blocks * uint64(st.Bsize)
		if size == 0 || size > vmBytes {
			// an unlimited tmpfs, or one the VM could never fill
			size = vmBytes
		}
		if size == 0 {
			return nil, nil, fmt.Errorf("emptyDir volume %q: the VM has no memory size", name)
		}
		memory = append(memory, &agentapi.MemoryVolume{Name: name, SizeBytes: size})
	}
	return memory, onDisk, nil
}
