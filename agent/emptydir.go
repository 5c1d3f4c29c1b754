package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/contrast-vm/contrast/agent/guestspec"
	"github.com/contrast-vm/contrast/agent/storage"
	api "github.com/contrast-vm/contrast/api/agent"
)

// ScratchOpener makes the pod's scratch disk (the host's device) a
// writable file system mounted at dir, encrypted with a key only the guest
// knows (storage.EncryptedScratch). On error nothing of it may stay.
type ScratchOpener interface {
	Open(ctx context.Context, device, dir string) error
}

// emptyDirs are the pod's emptyDir volumes: those of medium Memory each a
// tmpfs, the others directories on the scratch disk, opened on first use.
// A volume lives as long as the pod (the VM), as on a node it lives as long
// as the pod: containers that come and go find it again.
type emptyDirs struct {
	devices       storage.DeviceFinder
	deviceTimeout time.Duration
	scratch       ScratchOpener
	// memTotal caps a Memory volume's size: the guest has no more.
	memTotal func() (uint64, error)

	// Under mu:
	mu          sync.Mutex
	scratchOpen bool
	memory      map[string]uint64   // Memory volumes made, by name: their size as the host asked
	onDisk      map[string]struct{} // volumes made on the scratch disk
}

func newEmptyDirs(cfg Config) *emptyDirs {
	return &emptyDirs{
		devices: cfg.Devices, deviceTimeout: cfg.DeviceTimeout, scratch: cfg.Scratch, memTotal: storage.MemTotal,
		memory: map[string]uint64{}, onDisk: map[string]struct{}{},
	}
}

// emptyDirInput is where guestspec points the container's emptyDir mounts.
func (s *Service) emptyDirInput(memory map[string]uint64) guestspec.EmptyDirInput {
	in := guestspec.EmptyDirInput{
		ScratchDir: filepath.Join(s.cfg.RunDir, "emptydir", "scratch"),
		MemoryDir:  filepath.Join(s.cfg.RunDir, "emptydir", "memory"),
		Memory:     map[string]bool{},
	}
	for name := range memory {
		in.Memory[name] = true
	}
	return in
}

// memoryVolumes checks a create request's Memory volumes: names that the
// spec mounts as emptyDirs, each once, with a size.
func memoryVolumes(in []*api.MemoryVolume) (map[string]uint64, error) {
	out := make(map[string]uint64, len(in))
	for _, v := range in {
		if err := api.ValidateVolumeName(v.GetName()); err != nil {
			return nil, fmt.Errorf("memory volume: %w", err)
		}
		if _, dup := out[v.GetName()]; dup {
			return nil, fmt.Errorf("memory volume %q given twice", v.GetName())
		}
		if v.GetSizeBytes() == 0 {
			return nil, fmt.Errorf("memory volume %q has size 0", v.GetName())
		}
		out[v.GetName()] = v.GetSizeBytes()
	}
	return out, nil
}

// checkMemoryVolumesMounted refuses a Memory volume the spec does not mount.
func checkMemoryVolumesMounted(memory map[string]uint64, mounted []guestspec.EmptyDir) error {
	for name := range memory {
		found := false
		for _, e := range mounted {
			found = found || e.Name == name
		}
		if !found {
			return fmt.Errorf("memory volume %q is no emptyDir mount of the spec", name)
		}
	}
	return nil
}

// prepare makes the directories of a container's emptyDir volumes. The
// errors name the volume. A volume already made is reused; one made with
// the other medium, or a Memory one with another size, is refused: the
// host must not turn a volume into another between containers.
func (e *emptyDirs) prepare(ctx context.Context, vols []guestspec.EmptyDir, memory map[string]uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, v := range vols {
		if err := e.prepareLocked(ctx, v, memory[v.Name]); err != nil {
			return fmt.Errorf("emptyDir volume %q: %w", v.Name, err)
		}
	}
	return nil
}

func (e *emptyDirs) prepareLocked(ctx context.Context, v guestspec.EmptyDir, size uint64) error {
	_, onDisk := e.onDisk[v.Name]
	madeSize, inMemory := e.memory[v.Name]
	switch {
	case v.Memory && onDisk:
		return errors.New("the pod has it on its scratch disk, this container asks for medium Memory")
	case !v.Memory && inMemory:
		return errors.New("the pod has it in memory, this container asks for the scratch disk")
	case inMemory && madeSize != size:
		return fmt.Errorf("the pod has it as a tmpfs of %d bytes, this container asks for %d", madeSize, size)
	case inMemory, onDisk:
		return nil
	}
	if v.Memory {
		limit, err := e.memTotal()
		if err != nil {
			return fmt.Errorf("guest memory: %w", err)
		}
		// A tmpfs larger than the guest could never fill anyway.
		if err := storage.MountMemory(v.Dir, min(size, limit)); err != nil {
			return err
		}
		e.memory[v.Name] = size
		return nil
	}
	if !e.scratchOpen {
		if err := e.openScratch(ctx, filepath.Dir(v.Dir)); err != nil {
			return err
		}
	}
	if err := os.Mkdir(v.Dir, 0o777); err != nil {
		return fmt.Errorf("create its directory on the scratch disk: %w", err)
	}
	// every user's to write, as the kubelet makes it (umask aside)
	if err := os.Chmod(v.Dir, 0o777); err != nil {
		os.Remove(v.Dir)
		return fmt.Errorf("create its directory on the scratch disk: %w", err)
	}
	e.onDisk[v.Name] = struct{}{}
	return nil
}

func (e *emptyDirs) openScratch(ctx context.Context, dir string) error {
	if e.scratch == nil {
		return errors.New("this guest cannot open a scratch disk")
	}
	dctx, cancel := context.WithTimeout(ctx, e.deviceTimeout)
	dev, err := e.devices.Find(dctx, api.ScratchDiskSerial)
	cancel()
	if err != nil {
		return fmt.Errorf("scratch disk (serial %s, waited up to %v): %w", api.ScratchDiskSerial, e.deviceTimeout, err)
	}
	start := time.Now()
	if err := e.scratch.Open(ctx, dev, dir); err != nil {
		return fmt.Errorf("scratch disk %s: %w", dev, err)
	}
	e.scratchOpen = true
	log.G(ctx).Infof("scratch disk %s opened (dm-crypt, new file system) at %s in %v", dev, dir, time.Since(start).Round(time.Millisecond))
	return nil
}
