package layer

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// benchLayer is a layer tar of about totalSize bytes: files of mixed sizes,
// from a few bytes to a few MiB, in nested directories.
func benchLayer(b *testing.B, totalSize int) []byte {
	sizes := []int{60, 700, 3000, 12000, 45000, 180000, 900000, 3 << 20}
	var entries []tarEntry
	written := 0
	for i := 0; written < totalSize; i++ {
		dir := "usr/lib/d" + strconv.Itoa(i/50) + "/"
		if i%50 == 0 {
			entries = append(entries, tarEntry{name: dir, typeflag: tar.TypeDir, mode: 0o755})
		}
		// Mostly small files, as in real layers, with the large ones
		// holding most of the bytes.
		size := sizes[(i*i+i/3)%len(sizes)]
		if size > 200000 && i%5 != 0 {
			size = sizes[i%4]
		}
		entries = append(entries, tarEntry{
			name: dir + "f" + strconv.Itoa(i), typeflag: tar.TypeReg, mode: 0o644,
			body: pseudoRandom(uint64(i), size),
		})
		written += size + 512
	}
	return buildTar(b, entries)
}

// BenchmarkConvert measures conversion against sha256sum of the same
// layer file, in the same run: the least any conversion (which hashes the
// tar for its diff ID and the ext4 for the tree) can cost.
func BenchmarkConvert(b *testing.B) {
	sha256sum, err := exec.LookPath("sha256sum")
	if err != nil {
		b.Fatal("sha256sum (coreutils) is needed as the baseline")
	}
	layerTar := benchLayer(b, 64<<20)
	dir := b.TempDir()
	tarPath := filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(tarPath, layerTar, 0o644); err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "layer.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()

	var convertTime, hashTime time.Duration
	var rounds int
	var info Info
	for b.Loop() {
		// both read the layer from the same file (in the page cache)
		in, err := os.Open(tarPath)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		info, err = Convert(in, out, nil)
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
		convertTime += time.Since(start)

		start = time.Now()
		if msg, err := exec.Command(sha256sum, tarPath).CombinedOutput(); err != nil {
			b.Fatalf("sha256sum: %v: %s", err, msg)
		}
		hashTime += time.Since(start)
		rounds++
	}
	mb := float64(len(layerTar)) * float64(rounds) / 1e6
	b.ReportMetric(float64(len(layerTar))/1e6, "tar-MB")
	b.ReportMetric(float64(info.Size)/1e6, "image-MB")
	b.ReportMetric(mb/convertTime.Seconds(), "convert-MB/s")
	b.ReportMetric(mb/hashTime.Seconds(), "sha256sum-MB/s")
	b.ReportMetric(hashTime.Seconds()/convertTime.Seconds(), "convert/sha256sum-speed")
}
