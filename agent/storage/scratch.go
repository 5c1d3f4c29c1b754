package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// ScratchDMName is the device-mapper name of the pod's opened scratch disk.
const ScratchDMName = "contrast-scratch"

// scratchCipher is dm-crypt's cipher of the scratch disk: AES-256 in XTS
// mode (a 512-bit key), the sector number as IV. The key is random and
// lives only in the guest kernel, so the host sees ciphertext only, and
// nothing it holds opens the disk again once the VM is gone.
const (
	scratchCipher  = "aes-xts-plain64"
	scratchKeySize = 64
)

// cryptTable is the single-target dm-crypt table over all of device
// (Documentation/admin-guide/device-mapper/dm-crypt.rst): no IV offset, the
// data from sector 0.
func cryptTable(device string, sectors uint64, key []byte) dmTarget {
	return dmTarget{SectorStart: 0, Length: sectors, Type: "crypt",
		Params: fmt.Sprintf("%s %s 0 %s 0", scratchCipher, hex.EncodeToString(key), device)}
}

// CommandRunner runs a command to its end; the agent's goes through its
// reaper (nothing else in the agent may wait for a child).
type CommandRunner func(ctx context.Context, cmd *exec.Cmd) error

// EncryptedScratch opens the pod's scratch disk: dm-crypt with a key made
// here from the guest's RNG and never stored, a fresh ext2 file system
// (the image's mke2fs), mounted read-write.
type EncryptedScratch struct {
	DM *DeviceMapper
	// Mke2fs is the guest's mke2fs (busybox's: ext2, which the kernel's
	// ext4 driver mounts).
	Mke2fs string
	Run    CommandRunner
}

// Open encrypts device, makes the file system and mounts it at dir. On
// error nothing of it stays: no device-mapper device, no mount.
func (s EncryptedScratch) Open(ctx context.Context, device, dir string) (err error) {
	size, err := RealLayerOps{}.DeviceSize(device)
	if err != nil {
		return fmt.Errorf("size of scratch disk %s: %w", device, err)
	}
	if size < 1<<20 || size%512 != 0 {
		return fmt.Errorf("scratch disk %s has %d bytes: not a whole number of sectors of at least 1 MiB", device, size)
	}
	key := make([]byte, scratchKeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("scratch disk key: %w", err)
	}
	table := cryptTable(device, size/512, key)
	clear(key)
	node, err := s.DM.CreateReadWrite(ScratchDMName, table)
	table.Params = ""
	if err != nil {
		return fmt.Errorf("open scratch disk %s with dm-crypt: %w", device, err)
	}
	defer func() {
		if err != nil {
			if rerr := s.DM.Remove(ScratchDMName); rerr != nil {
				err = fmt.Errorf("%w (and closing it again: %v)", err, rerr)
			}
		}
	}()
	if err := s.mkfs(ctx, node); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create scratch mount point: %w", err)
	}
	if err := unix.Mount(node, dir, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mount scratch file system %s at %s: %w", node, dir, err)
	}
	return nil
}

// mkfs makes the ext2 file system: 4 KiB blocks, no blocks reserved for
// root (the pod's containers own all of it), an inode per 64 KiB. ext2 has
// no lazy inode table initialization, so mke2fs writes every inode table,
// each byte through dm-crypt, at pod start: mke2fs's default of an inode
// per 16 KiB wrote 170 MB of a 10 GiB disk, 22 s under TCG; a quarter of
// that is still 160k inodes for 10 GiB.
func (s EncryptedScratch) mkfs(ctx context.Context, node string) error {
	errFile, err := os.CreateTemp("", "mke2fs-*.err")
	if err != nil {
		return fmt.Errorf("make file system on scratch disk: %w", err)
	}
	defer os.Remove(errFile.Name())
	defer errFile.Close()
	cmd := exec.Command(s.Mke2fs, "-F", "-b", "4096", "-i", "65536", "-m", "0", "-L", "scratch", node)
	cmd.Stderr = errFile
	if err := s.Run(ctx, cmd); err != nil {
		msg, _ := os.ReadFile(errFile.Name())
		return fmt.Errorf("make file system on scratch disk (%s): %w: %s", s.Mke2fs, err, strings.TrimSpace(string(msg)))
	}
	return nil
}

// MountMemory mounts a tmpfs of size bytes at dir, every user's to write
// (as the kubelet makes an emptyDir), for an emptyDir of medium Memory.
func MountMemory(dir string, size uint64) error {
	if size == 0 {
		return errors.New("tmpfs of size 0")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, fmt.Sprintf("size=%d,mode=0777", size)); err != nil {
		os.Remove(dir)
		return fmt.Errorf("mount tmpfs of %d bytes at %s: %w", size, dir, err)
	}
	return nil
}

// MemTotal is the guest's memory (MemTotal of /proc/meminfo) in bytes.
func MemTotal() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kib uint64
		if n, _ := fmt.Sscanf(line, "MemTotal: %d kB", &kib); n == 1 {
			return kib << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo has no MemTotal")
}
