// Package layer turns container image layers into read-only ext4 images,
// each followed by its dm-verity hash tree, deterministically: the same layer
// tar always gives the same bytes and the same root hash, so the policy can
// pin a root hash that the host cannot change. The hash tree has no
// superblock; its parameters are the constants of api/agent (layer.go).
package layer

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/Microsoft/hcsshim/ext4/dmverity"
	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	"github.com/opencontainers/go-digest"

	"github.com/contrast-vm/contrast/api/agent"
)

// Info describes a converted layer: what the guest's verity table and the
// policy need.
type Info struct {
	// DiffID is the sha256 digest of the uncompressed layer tar.
	DiffID digest.Digest `json:"diffID"`
	// RootHash is the dm-verity root hash, lower-case hex.
	RootHash string `json:"rootHash"`
	// DataBlocks is the number of 4096-byte ext4 blocks; the hash tree
	// starts right after them.
	DataBlocks uint64 `json:"dataBlocks"`
	// Size is the file's size in bytes: ext4 plus hash tree.
	Size int64 `json:"size"`
}

// Convert reads an uncompressed layer tar and writes to out an ext4 file
// system (overlay whiteouts become 0:0 character devices, opaque directories
// get trusted.overlay.opaque=y) followed by its dm-verity hash tree. out, a
// regular file open for reading and writing, is truncated first. progress, if not nil, is called with the number of tar
// bytes read so far.
func Convert(tar io.Reader, out *os.File, progress func(tarBytesRead int64)) (Info, error) {
	if err := out.Truncate(0); err != nil {
		return Info{}, fmt.Errorf("truncating %s: %w", out.Name(), err)
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return Info{}, fmt.Errorf("seeking in %s: %w", out.Name(), err)
	}

	hasher := sha256.New()
	counted := &countingReader{r: tar, progress: progress}
	in := io.TeeReader(counted, hasher)
	// Not tar2ext4.AppendDMVerity: its verity superblock carries a random
	// UUID, and the file would differ on every conversion. The maximum disk
	// size shapes the metadata, so it is part of the format.
	err := tar2ext4.ConvertTarToExt4(in, out, tar2ext4.ConvertWhiteout, tar2ext4.MaximumDiskSize(maxLayerSize))
	if err != nil {
		return Info{}, fmt.Errorf("converting layer tar to ext4: %w", err)
	}
	// The tar reader stops at the end-of-archive marker; the diff ID covers
	// the whole stream, padding included. An error past the marker may have
	// reached only tar2ext4's read-ahead buffer: counted remembers it.
	if _, err := io.Copy(io.Discard, in); err != nil {
		return Info{}, fmt.Errorf("reading the layer tar after its end marker: %w", err)
	}
	if counted.err != nil {
		return Info{}, fmt.Errorf("reading the layer tar: %w", counted.err)
	}

	ext4Size, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		return Info{}, fmt.Errorf("finding the ext4 size of %s: %w", out.Name(), err)
	}
	if ext4Size == 0 || ext4Size%agent.VerityBlockSize != 0 {
		return Info{}, fmt.Errorf("ext4 image %s is %d bytes, not a positive multiple of %d", out.Name(), ext4Size, agent.VerityBlockSize)
	}
	if err := checkSuperblockSize(out, ext4Size); err != nil {
		return Info{}, err
	}
	if err := padInodeBitmaps(out); err != nil {
		return Info{}, err
	}

	tree, err := dmverity.MerkleTree(bufio.NewReaderSize(io.NewSectionReader(out, 0, ext4Size), dmverity.MerkleTreeBufioSize))
	if err != nil {
		return Info{}, fmt.Errorf("computing the dm-verity hash tree of %s: %w", out.Name(), err)
	}
	if _, err := out.WriteAt(tree, ext4Size); err != nil {
		return Info{}, fmt.Errorf("appending the dm-verity hash tree to %s: %w", out.Name(), err)
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return Info{}, fmt.Errorf("seeking in %s: %w", out.Name(), err)
	}

	if counted.n == 0 {
		return Info{}, fmt.Errorf("layer tar is empty")
	}
	return Info{
		DiffID:     digest.NewDigestFromBytes(digest.SHA256, hasher.Sum(nil)),
		RootHash:   hex.EncodeToString(dmverity.RootHash(tree)),
		DataBlocks: uint64(ext4Size / agent.VerityBlockSize),
		Size:       ext4Size + int64(len(tree)),
	}, nil
}

// checkSuperblockSize checks that the file system claims exactly the bytes
// written: the guest's verity table covers DataBlocks, and the file system
// must not reach into the hash tree behind them.
func checkSuperblockSize(f *os.File, ext4Size int64) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seeking in %s: %w", f.Name(), err)
	}
	fsSize, blockSize, err := tar2ext4.Ext4FileSystemSize(f)
	if err != nil {
		return fmt.Errorf("reading the ext4 superblock of %s: %w", f.Name(), err)
	}
	if blockSize != agent.VerityBlockSize || fsSize != ext4Size {
		return fmt.Errorf("ext4 superblock of %s says %d bytes in %d-byte blocks, the file has %d bytes", f.Name(), fsSize, blockSize, ext4Size)
	}
	return nil
}

// Offsets in the ext4 superblock (at byte 1024) and in a 32-byte group
// descriptor (the file system has no 64bit feature), from the ext4 disk
// layout.
const (
	superblockOffset         = 1024
	sbInodesCount            = 0x0
	sbInodesPerGroup         = 0x28
	groupDescriptorSize      = 32
	gdInodeBitmap            = 0x4
	groupDescriptorsFirstBlk = 1
)

// padInodeBitmaps sets the bits after the last inode of each group in the
// inode bitmaps, as e2fsck expects and compactext4 leaves clear: without
// this `e2fsck -fn` reports every layer as damaged. Nothing the kernel reads
// changes; no checksums cover the bitmaps here (no metadata_csum).
func padInodeBitmaps(f *os.File) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		return fmt.Errorf("reading the ext4 superblock of %s: %w", f.Name(), err)
	}
	inodes := binary.LittleEndian.Uint32(sb[sbInodesCount:])
	perGroup := binary.LittleEndian.Uint32(sb[sbInodesPerGroup:])
	const bitsPerBlock = agent.VerityBlockSize * 8
	if perGroup == 0 || perGroup > bitsPerBlock || inodes%perGroup != 0 {
		return fmt.Errorf("ext4 superblock of %s: %d inodes in groups of %d", f.Name(), inodes, perGroup)
	}
	if perGroup == bitsPerBlock {
		return nil
	}
	groups := inodes / perGroup
	descriptors := make([]byte, groups*groupDescriptorSize)
	if _, err := f.ReadAt(descriptors, groupDescriptorsFirstBlk*agent.VerityBlockSize); err != nil {
		return fmt.Errorf("reading the ext4 group descriptors of %s: %w", f.Name(), err)
	}
	bitmap := make([]byte, agent.VerityBlockSize)
	for g := range groups {
		block := int64(binary.LittleEndian.Uint32(descriptors[g*groupDescriptorSize+gdInodeBitmap:]))
		if _, err := f.ReadAt(bitmap, block*agent.VerityBlockSize); err != nil {
			return fmt.Errorf("reading inode bitmap %d of %s: %w", g, f.Name(), err)
		}
		for bit := perGroup; bit < bitsPerBlock; bit++ {
			bitmap[bit/8] |= 1 << (bit % 8)
		}
		if _, err := f.WriteAt(bitmap, block*agent.VerityBlockSize); err != nil {
			return fmt.Errorf("writing inode bitmap %d of %s: %w", g, f.Name(), err)
		}
	}
	return nil
}

// maxLayerSize is the largest ext4 image a layer may become.
const maxLayerSize = dmverity.RecommendedVHDSizeGB

// countingReader reports the bytes read so far to progress, and remembers
// the first error other than io.EOF.
type countingReader struct {
	r        io.Reader
	n        int64
	progress func(int64)
	err      error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	if n > 0 {
		c.n += int64(n)
		if c.progress != nil {
			c.progress(c.n)
		}
	}
	return n, err
}
