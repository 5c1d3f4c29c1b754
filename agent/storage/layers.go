package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	api "github.com/contrast-vm/contrast/api/agent"
)

// Layer is one container image layer as the host announces it: a block
// device (found by serial) holding an ext4 filesystem of DataBlocks blocks
// of api.VerityBlockSize bytes, followed by its dm-verity hash tree.
type Layer struct {
	Serial     string
	Digest     string // "sha256:<64 hex>", the diff ID
	RootHash   string // 64 lower-case hex characters
	DataBlocks uint64
}

// maxLayerDataBlocks bounds DataBlocks so that sizes in bytes and sectors
// cannot overflow (2^40 blocks of 4 KiB is 4 PiB).
const maxLayerDataBlocks = 1 << 40

// Validate checks the fields of a layer; errors name the field.
func (l Layer) Validate() error {
	if err := ValidateSerial(l.Serial); err != nil {
		return fmt.Errorf("serial: %w", err)
	}
	hexDigest, ok := strings.CutPrefix(l.Digest, "sha256:")
	if !ok || !isLowerHex(hexDigest, 64) {
		return fmt.Errorf("digest %q is not \"sha256:\" and 64 lower-case hex characters", l.Digest)
	}
	if !isLowerHex(l.RootHash, 64) {
		return fmt.Errorf("root_hash %q is not 64 lower-case hex characters", l.RootHash)
	}
	if l.DataBlocks == 0 {
		return errors.New("data_blocks is 0")
	}
	if l.DataBlocks > maxLayerDataBlocks {
		return fmt.Errorf("data_blocks %d is more than the %d allowed", l.DataBlocks, uint64(maxLayerDataBlocks))
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// VerityTreeBlocks returns the number of hash blocks of the dm-verity tree
// over dataBlocks data blocks, computed as the kernel's verity_ctr does:
// each level holds ceil(dataBlocks / k^(i+1)) blocks, k digests per block,
// with as many levels as it takes to address dataBlocks-1.
func VerityTreeBlocks(dataBlocks uint64) uint64 {
	const digestSize = 32 // sha256
	bits := uint(0)
	for 1<<(bits+1) <= api.VerityBlockSize/digestSize {
		bits++ // log2 of the digests per hash block: 7
	}
	var total uint64
	for level := uint(0); bits*level < 64 && (dataBlocks-1)>>(bits*level) != 0; level++ {
		shift := bits * (level + 1)
		if shift >= 64 {
			total++
			continue
		}
		total += (dataBlocks + (1 << shift) - 1) >> shift
	}
	return total
}

// LayerOps are the system operations behind a LayerSet; RealLayerOps is
// the one the agent runs with.
type LayerOps interface {
	// DeviceSize returns the size of the block device in bytes.
	DeviceSize(device string) (uint64, error)
	// OpenVerity creates the read-only dm-verity device name over device
	// and returns its node.
	OpenVerity(name, device string, dataBlocks uint64, rootHash string) (node string, err error)
	// CloseVerity removes the dm-verity device name.
	CloseVerity(name string) error
	// MountReadOnly mounts the ext4 filesystem on node read-only at dir,
	// creating dir.
	MountReadOnly(node, dir string) error
	// Unmount unmounts dir and removes it; not mounted is fine.
	Unmount(dir string) error
}

// heldLayer is one open layer and the number of containers using it.
type heldLayer struct {
	layer   Layer
	dmName  string
	dir     string
	refs    int
	opened  bool // the dm-verity device exists
	mounted bool
	// opening is closed when the Acquire opening the layer is done with
	// it; nil once it is (then refs says whether it succeeded).
	opening chan struct{}
}

// LayerSet holds the pod's open image layers: each opened once through
// dm-verity and mounted once, shared by the containers that use it.
type LayerSet struct {
	dir     string
	devices DeviceFinder
	ops     LayerOps

	// mu guards held; it is not held while a layer's device is awaited
	// and opened, so that one container's layer waiting for its device
	// holds up no other. A layer two containers ask for at once is opened
	// once: the second waits for the first's opening.
	mu   sync.Mutex
	held map[string]*heldLayer // by root hash
}

// NewLayerSet returns the set mounting layers under dir, with the real
// device-mapper and mount operations.
func NewLayerSet(dir string, devices DeviceFinder) *LayerSet {
	return NewLayerSetWithOps(dir, devices, &RealLayerOps{DM: NewDeviceMapper(filepath.Join(dir, "dev"))})
}

// NewLayerSetWithOps returns a set using ops for the system operations.
func NewLayerSetWithOps(dir string, devices DeviceFinder, ops LayerOps) *LayerSet {
	return &LayerSet{dir: dir, devices: devices, ops: ops, held: map[string]*heldLayer{}}
}

// verityName is the device-mapper name of a layer: the root hash
// identifies the content, so two announcements of it are one device.
func verityName(rootHash string) string { return "contrast-layer-" + rootHash }

// Acquire opens the layer (or takes another reference on it if open) and
// returns the directory where its filesystem is mounted read-only. Each
// successful Acquire needs one Release. On error nothing of it is left.
func (s *LayerSet) Acquire(ctx context.Context, l Layer) (string, error) {
	if err := l.Validate(); err != nil {
		return "", err
	}
	s.mu.Lock()
	for {
		h, ok := s.held[l.RootHash]
		if !ok {
			break
		}
		if h.opening != nil {
			// Another Acquire is opening it: wait and look again.
			opening := h.opening
			s.mu.Unlock()
			select {
			case <-opening:
			case <-ctx.Done():
				return "", fmt.Errorf("layer %s: waiting for another open of it: %w", l.Digest, ctx.Err())
			}
			s.mu.Lock()
			continue
		}
		if h.refs > 0 {
			defer s.mu.Unlock()
			if h.layer.DataBlocks != l.DataBlocks {
				return "", fmt.Errorf("layer %s (root hash %s) is open with %d data blocks, now announced with %d", l.Digest, l.RootHash, h.layer.DataBlocks, l.DataBlocks)
			}
			h.refs++
			return h.dir, nil
		}
		// A previous release or open failed half-way: finish it before
		// reopening.
		if err := s.teardown(h); err != nil {
			s.mu.Unlock()
			return "", fmt.Errorf("layer %s: earlier close is unfinished: %w", l.Digest, err)
		}
		delete(s.held, l.RootHash)
	}
	h := &heldLayer{layer: l, dmName: verityName(l.RootHash), dir: filepath.Join(s.dir, l.RootHash), opening: make(chan struct{})}
	s.held[l.RootHash] = h // the reservation the others wait for
	s.mu.Unlock()

	err := s.open(ctx, h)
	leftOver := false
	if err != nil {
		if terr := s.teardown(h); terr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, terr)
			leftOver = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	close(h.opening)
	h.opening = nil
	switch {
	case err == nil:
		h.refs = 1
		return h.dir, nil
	case !leftOver:
		delete(s.held, l.RootHash)
	}
	// A half torn down layer stays, unreferenced, for the next Acquire
	// or Release to finish.
	return "", err
}

func (s *LayerSet) open(ctx context.Context, h *heldLayer) error {
	l := h.layer
	phases := api.PhasesFrom(ctx)
	begin := time.Now()
	dev, err := s.devices.Find(ctx, l.Serial)
	if err != nil {
		return fmt.Errorf("layer %s: device: %w", l.Digest, err)
	}
	begin = phases.Since("layer-device", begin)
	size, err := s.ops.DeviceSize(dev)
	if err != nil {
		return fmt.Errorf("layer %s: size of device %s (serial %s): %w", l.Digest, dev, l.Serial, err)
	}
	tree := VerityTreeBlocks(l.DataBlocks)
	if need := (l.DataBlocks + tree) * api.VerityBlockSize; size < need {
		return fmt.Errorf("layer %s: device %s (serial %s) has %d bytes, less than the %d data blocks and %d hash blocks (%d bytes) it must hold",
			l.Digest, dev, l.Serial, size, l.DataBlocks, tree, need)
	}
	node, err := s.ops.OpenVerity(h.dmName, dev, l.DataBlocks, l.RootHash)
	if err != nil {
		return fmt.Errorf("layer %s: open dm-verity over device %s (serial %s): %w", l.Digest, dev, l.Serial, err)
	}
	h.opened = true
	begin = phases.Since("verity-open", begin)
	if err := s.ops.MountReadOnly(node, h.dir); err != nil {
		return fmt.Errorf("layer %s: mount ext4 from %s (serial %s) at %s: %w", l.Digest, node, l.Serial, h.dir, err)
	}
	h.mounted = true
	phases.Since("layer-mount", begin)
	return nil
}

// teardown unmounts and closes what open did, as far as it got. The
// mount directory may exist after a failed mount, so unmount always runs.
func (s *LayerSet) teardown(h *heldLayer) error {
	if err := s.ops.Unmount(h.dir); err != nil {
		return fmt.Errorf("layer %s: %w", h.layer.Digest, err)
	}
	h.mounted = false
	if h.opened {
		if err := s.ops.CloseVerity(h.dmName); err != nil {
			return fmt.Errorf("layer %s: close dm-verity device: %w", h.layer.Digest, err)
		}
		h.opened = false
	}
	return nil
}

// Release drops a reference taken by Acquire; the last one unmounts the
// layer and removes its dm-verity device. If that fails, Release may be
// called again to retry.
func (s *LayerSet) Release(rootHash string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.held[rootHash]
	if !ok || h.opening != nil {
		return fmt.Errorf("release layer with root hash %q: not held", rootHash)
	}
	if h.refs > 0 {
		h.refs--
	}
	if h.refs > 0 {
		return nil
	}
	if err := s.teardown(h); err != nil {
		return fmt.Errorf("release %w", err)
	}
	delete(s.held, rootHash)
	return nil
}

// Refs returns how many references the layer with the root hash has (0 if
// it is not held).
func (s *LayerSet) Refs(rootHash string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.held[rootHash]; ok {
		return h.refs
	}
	return 0
}

// RealLayerOps are the agent's layer operations: ioctls and mounts.
type RealLayerOps struct {
	DM *DeviceMapper
}

// DeviceSize returns a block device's size (BLKGETSIZE64), or a regular
// file's.
func (RealLayerOps) DeviceSize(device string) (uint64, error) {
	f, err := os.Open(device)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode().IsRegular() {
		return uint64(st.Size()), nil
	}
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64 on %s: %w", device, errno)
	}
	return size, nil
}

// OpenVerity creates the dm-verity device.
func (o RealLayerOps) OpenVerity(name, device string, dataBlocks uint64, rootHash string) (string, error) {
	return o.DM.CreateReadOnly(name, verityTable(device, dataBlocks, rootHash))
}

// CloseVerity removes the dm-verity device.
func (o RealLayerOps) CloseVerity(name string) error { return o.DM.Remove(name) }

// MountReadOnly mounts ext4 read-only; noload keeps it from replaying the
// journal, which would be a write to a device that cannot take one.
func (RealLayerOps) MountReadOnly(node, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	if err := unix.Mount(node, dir, "ext4", unix.MS_RDONLY|unix.MS_NODEV, fsOptions["ext4"]); err != nil {
		return fmt.Errorf("mount %s (ext4) read-only at %s: %w", node, dir, err)
	}
	return nil
}

// Unmount unmounts dir and removes the mount point.
func (RealLayerOps) Unmount(dir string) error {
	if err := unmount(dir); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove mount point: %w", err)
	}
	return nil
}
