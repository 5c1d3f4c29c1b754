package vmimage

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/Microsoft/hcsshim/ext4/dmverity"
	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"github.com/contrast-vm/contrast/api/agent"
)

// Image formats: how the guest gets its root file system.
const (
	// FormatRootDisk (the default) is a read-only ext4 disk image, rootfs.img,
	// with its dm-verity hash tree appended. The kernel opens it through
	// dm-verity itself (dm-mod.create on the command line, which carries the
	// root hash), so under SEV-SNP the measured command line pins every byte
	// of the root file system and the VM keeps no copy of it in RAM.
	FormatRootDisk = "rootfs"
	// FormatInitrd is the initramfs, unpacked into guest RAM at boot.
	FormatInitrd = "initrd"
)

// RootDisk describes rootfs.img: an ext4 file system of DataBlocks blocks
// of agent.VerityBlockSize bytes, then its dm-verity hash tree (format 1,
// sha256, no superblock) from block HashStartBlock on.
type RootDisk struct {
	DataBlocks     uint64 `json:"dataBlocks"`
	HashStartBlock uint64 `json:"hashStartBlock"`
	// RootHash is the root of the hash tree, lower-case hex.
	RootHash string `json:"rootHash"`
	// Salt is the salt in hex, as the verity table takes it.
	Salt string `json:"salt"`
}

// RootDiskDevice is the guest's name of the root disk: the runtime attaches
// it as the VM's only virtio-blk disk at boot, so the kernel names it first;
// hot-plugged disks come later and are found by serial.
const RootDiskDevice = "/dev/vda"

// Cmdline is the kernel command line that opens the root disk through
// dm-verity, without an initramfs: dm-init (CONFIG_DM_INIT) creates the
// read-only verity device "root" over RootDiskDevice, which the kernel
// mounts as / and runs the agent from.
func (rd RootDisk) Cmdline() string {
	const sectorsPerBlock = agent.VerityBlockSize / 512
	table := fmt.Sprintf("0 %d verity 1 %s %s %d %d %d %d %s %s %s",
		rd.DataBlocks*sectorsPerBlock, RootDiskDevice, RootDiskDevice,
		agent.VerityBlockSize, agent.VerityBlockSize, rd.DataBlocks, rd.HashStartBlock,
		agent.VerityAlgorithm, rd.RootHash, rd.Salt)
	return `dm-mod.create="root,,,ro,` + table + `" root=/dev/dm-0 rootfstype=ext4 ro init=` + GuestAgentPath
}

func (rd RootDisk) validate() error {
	if rd.DataBlocks == 0 {
		return errors.New("root disk: no data blocks")
	}
	if rd.HashStartBlock < rd.DataBlocks {
		return fmt.Errorf("root disk: hash tree at block %d overlaps the %d data blocks", rd.HashStartBlock, rd.DataBlocks)
	}
	if !isLowerHex(rd.RootHash, sha256.Size) {
		return fmt.Errorf("root disk: root hash %q is not %d lower-case hex digits", rd.RootHash, 2*sha256.Size)
	}
	if b, err := hex.DecodeString(rd.Salt); err != nil || len(b) == 0 || strings.ToLower(rd.Salt) != rd.Salt {
		return fmt.Errorf("root disk: salt %q is not lower-case hex", rd.Salt)
	}
	return nil
}

// rootDiskMaxSize is the largest file system the metadata of rootfs.img is
// laid out for. Like layers' (package layer), it shapes the bytes, so it is
// part of the format.
const rootDiskMaxSize = dmverity.RecommendedVHDSizeGB

// WriteRootDisk writes entries to out (an empty file open for reading and
// writing) as an ext4 file system followed by its dm-verity hash tree, and
// returns where the tree starts and its root hash.
//
// The disk depends only on the entries, as WriteInitramfs's archive does:
// they go, sorted by name, through a tar stream with every file owned by
// 0:0 and all times 0 into hcsshim's tar2ext4, which lays out the file
// system deterministically (no random UUID); the hash tree has no
// superblock (whose UUID would be random).
func WriteRootDisk(ctx context.Context, out *os.File, entries []Entry) (RootDisk, error) {
	sorted := append([]Entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	if err := validateEntries(sorted); err != nil {
		return RootDisk{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(ctx, pw, sorted)) }()
	err := tar2ext4.ConvertTarToExt4(pr, out, tar2ext4.MaximumDiskSize(rootDiskMaxSize))
	pr.CloseWithError(errors.New("ext4 conversion ended")) // stops writeTar if conversion failed early
	if err != nil {
		return RootDisk{}, fmt.Errorf("convert the root tree to ext4: %w", err)
	}
	ext4Size, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		return RootDisk{}, fmt.Errorf("size of the ext4 image: %w", err)
	}
	if ext4Size == 0 || ext4Size%agent.VerityBlockSize != 0 {
		return RootDisk{}, fmt.Errorf("ext4 image is %d bytes, not a positive multiple of %d", ext4Size, agent.VerityBlockSize)
	}
	fsSize, blockSize, err := tar2ext4.Ext4FileSystemSize(io.NewSectionReader(out, 0, ext4Size))
	if err != nil {
		return RootDisk{}, fmt.Errorf("read the ext4 superblock: %w", err)
	}
	// The verity table covers exactly the written blocks: the file system
	// must not reach into the hash tree.
	if blockSize != agent.VerityBlockSize || fsSize != ext4Size {
		return RootDisk{}, fmt.Errorf("ext4 superblock says %d bytes in %d-byte blocks, the image has %d bytes", fsSize, blockSize, ext4Size)
	}
	tree, err := dmverity.MerkleTree(bufio.NewReaderSize(io.NewSectionReader(out, 0, ext4Size), dmverity.MerkleTreeBufioSize))
	if err != nil {
		return RootDisk{}, fmt.Errorf("compute the dm-verity hash tree: %w", err)
	}
	if _, err := out.WriteAt(tree, ext4Size); err != nil {
		return RootDisk{}, fmt.Errorf("append the dm-verity hash tree: %w", err)
	}
	blocks := uint64(ext4Size / agent.VerityBlockSize)
	return RootDisk{
		DataBlocks:     blocks,
		HashStartBlock: blocks, // right after the data, no verity superblock
		RootHash:       hex.EncodeToString(dmverity.RootHash(tree)),
		Salt:           agent.VeritySaltHex,
	}, nil
}

// writeTar writes sorted entries as a tar stream with nothing taken from
// the host but Source files' contents.
func writeTar(ctx context.Context, w io.Writer, sorted []Entry) error {
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	for _, e := range sorted {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr := &tar.Header{
			Name:    e.Name,
			Mode:    int64(e.Mode & modePermMask),
			ModTime: epoch,
			Format:  tar.FormatUSTAR,
		}
		var src *os.File
		switch e.Mode & modeTypeMask {
		case ModeDir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case ModeSymlink:
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.Linkname
		case ModeChar, ModeBlock:
			hdr.Typeflag = tar.TypeChar
			if e.Mode&modeTypeMask == ModeBlock {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor, hdr.Devminor = int64(e.Major), int64(e.Minor)
		case ModeRegular:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.Data))
			if e.Source != "" {
				f, err := os.Open(e.Source)
				if err != nil {
					return fmt.Errorf("root disk entry %s: %w", e.Name, err)
				}
				st, err := f.Stat()
				if err == nil && !st.Mode().IsRegular() {
					err = fmt.Errorf("source %s is not a regular file", e.Source)
				}
				if err != nil {
					f.Close()
					return fmt.Errorf("root disk entry %s: %w", e.Name, err)
				}
				hdr.Size, src = st.Size(), f
			}
		}
		err := tw.WriteHeader(hdr)
		var n int64
		switch {
		case src != nil:
			if err == nil {
				n, err = io.Copy(tw, io.LimitReader(src, hdr.Size))
			}
			src.Close()
		case err == nil && e.Data != nil:
			var k int
			k, err = tw.Write(e.Data)
			n = int64(k)
		}
		if err != nil {
			return fmt.Errorf("root disk entry %s: %w", e.Name, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("root disk entry %s: got %d bytes, want %d (file changed while reading?)", e.Name, n, hdr.Size)
		}
	}
	return tw.Close()
}
