package layer

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/contrast-vm/contrast/api/agent"
)

// TestConvertLayerOfSeveralBlockGroups covers a file system larger than one
// ext4 block group (128 MiB), where each group has its own inode bitmap.
func TestConvertLayerOfSeveralBlockGroups(t *testing.T) {
	e2fsck := tool(t, "e2fsck", "e2fsprogs")
	const files, fileSize = 300, 512 << 10 // 150 MiB
	r, w := io.Pipe()
	go func() {
		tw := tar.NewWriter(w)
		chunk := make([]byte, fileSize)
		for i := range files {
			chunk[0] = byte(i) // Not all alike.
			err := tw.WriteHeader(&tar.Header{Name: "f" + strconv.Itoa(i), Typeflag: tar.TypeReg, Mode: 0o644, Size: fileSize})
			if err == nil {
				_, err = tw.Write(chunk)
			}
			if err != nil {
				w.CloseWithError(err)
				return
			}
		}
		w.CloseWithError(tw.Close())
	}()
	path := filepath.Join(t.TempDir(), "layer.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := Convert(r, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	const blocksPerGroup = 32768
	if info.DataBlocks <= blocksPerGroup {
		t.Fatalf("%d data blocks fit in one block group; the test needs more", info.DataBlocks)
	}
	// e2fsck reads only the ext4 part: the file cut at the data's end.
	if err := f.Truncate(int64(info.DataBlocks) * agent.VerityBlockSize); err != nil {
		t.Fatal(err)
	}
	run(t, e2fsck, "-fn", path)
}
