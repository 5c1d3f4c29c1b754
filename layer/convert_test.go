package layer

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/testenv"
)

// tool finds a command the tests need, failing with how to get it.
func tool(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	testenv.Missing(t, "deps", "%s not found (Debian package %s)", name, pkg)
	return ""
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// run returns a command's standard output; debugfs writes its banner to
// standard error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

// convertFile converts tarBytes into a file in a test directory.
func convertFile(t testing.TB, tarBytes []byte) (string, Info) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "layer.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := Convert(bytes.NewReader(tarBytes), f, nil)
	if err != nil {
		t.Fatalf("Convert: %v", err)
	}
	return path, info
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splitImage writes the ext4 part and the hash tree of a converted layer
// into two files.
func splitImage(t testing.TB, path string, info Info) (dataPath, treePath string) {
	t.Helper()
	img := readFile(t, path)
	dataSize := int64(info.DataBlocks) * agent.VerityBlockSize
	dir := t.TempDir()
	dataPath, treePath = filepath.Join(dir, "data"), filepath.Join(dir, "tree")
	if err := os.WriteFile(dataPath, img[:dataSize], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(treePath, img[dataSize:], 0o600); err != nil {
		t.Fatal(err)
	}
	return dataPath, treePath
}

// TestConvertGoldenRootHash pins the root hash of the test layer. Policies
// pin root hashes, so a change of conversion (an hcsshim upgrade, another
// ext4 layout, the bitmap padding) that changes them must be seen here and
// be deliberate: every policy generated before it stops matching.
func TestConvertGoldenRootHash(t *testing.T) {
	const (
		diffID     = "sha256:ab89ee8e42f0616fcfdd68b0abe2aff0a5762881e0ffe0f34473ff6077d4e1fb"
		rootHash   = "0782b8bb4ad084c56f3ff5623263623fec835233716200ca61497bc21c22f5c0"
		dataBlocks = 790
	)
	_, info := convertFile(t, buildTar(t, testLayer()))
	if info.DiffID != diffID {
		t.Fatalf("the test layer's tar changed (diff ID %s, was %s): the golden values below no longer apply", info.DiffID, diffID)
	}
	if info.RootHash != rootHash || info.DataBlocks != dataBlocks {
		t.Errorf("root hash %s over %d blocks, was %s over %d: the conversion changed, and every pinned policy with it",
			info.RootHash, info.DataBlocks, rootHash, dataBlocks)
	}
}

func TestConvertIsDeterministic(t *testing.T) {
	layerTar := buildTar(t, testLayer())
	firstPath, first := convertFile(t, layerTar)
	secondPath, second := convertFile(t, layerTar)
	if first != second {
		t.Errorf("two conversions of one tar: %+v, then %+v", first, second)
	}
	if !bytes.Equal(readFile(t, firstPath), readFile(t, secondPath)) {
		t.Error("two conversions of one tar wrote different bytes")
	}

	if want := digest.FromBytes(layerTar); first.DiffID != want {
		t.Errorf("DiffID = %s, want the tar's sha256 %s", first.DiffID, want)
	}
	st, err := os.Stat(firstPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != first.Size {
		t.Errorf("Size = %d, the file has %d bytes", first.Size, st.Size())
	}
	if dataSize := int64(first.DataBlocks) * agent.VerityBlockSize; dataSize <= largeFileSize || dataSize >= first.Size {
		t.Errorf("DataBlocks = %d (%d bytes) for a %d-byte file holding a %d-byte member", first.DataBlocks, dataSize, first.Size, largeFileSize)
	}
	if len(first.RootHash) != 64 || strings.ToLower(first.RootHash) != first.RootHash {
		t.Errorf("RootHash %q is not 64 lower-case hex characters", first.RootHash)
	}

	changed := func(change func([]tarEntry)) []tarEntry {
		entries := testLayer()
		change(entries)
		return entries
	}
	for _, tc := range []struct {
		name    string
		entries []tarEntry
	}{
		{"one byte of the large file", changed(func(e []tarEntry) { e[5].body[largeFileSize/2] ^= 1 })},
		{"a mode", changed(func(e []tarEntry) { e[1].mode = 0o600 })},
		{"a modification time", changed(func(e []tarEntry) { e[1].modTime = e[1].modTime.Add(1e9) })},
		{"a symlink target", changed(func(e []tarEntry) { e[3].linkname = "other" })},
		{"an xattr", changed(func(e []tarEntry) { e[10].xattrs["user.a"] = "3" })},
		{"a whiteout dropped", changed(func(e []tarEntry) { e[6].name = "bin/removed" })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, info := convertFile(t, buildTar(t, tc.entries))
			if info.RootHash == first.RootHash {
				t.Errorf("changing %s kept root hash %s", tc.name, info.RootHash)
			}
			if info.DiffID == first.DiffID {
				t.Errorf("changing %s kept diff ID %s", tc.name, info.DiffID)
			}
		})
	}
}

// TestConvertTreeMatchesVeritysetup checks our hash tree and root hash
// against cryptsetup's own implementation, and that veritysetup accepts the
// single file with the tree behind the data, as the guest opens it.
func TestConvertTreeMatchesVeritysetup(t *testing.T) {
	veritysetup := tool(t, "veritysetup", "cryptsetup-bin")
	for _, tc := range []struct {
		name    string
		entries []tarEntry
	}{
		{"every kind of member", testLayer()},
		{"only a directory", []tarEntry{{name: "d/", typeflag: tar.TypeDir, mode: 0o755}}},
		{"many files", manyFiles(600)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, info := convertFile(t, buildTar(t, tc.entries))
			dataPath, treePath := splitImage(t, path, info)
			ourTree := readFile(t, treePath)
			theirTreePath := filepath.Join(t.TempDir(), "veritysetup-tree")

			out := run(t, veritysetup, "format", "--no-superblock", "--hash=sha256",
				"--data-block-size=4096", "--hash-block-size=4096", "--salt="+agent.VeritySaltHex,
				dataPath, theirTreePath)
			m := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no root hash in veritysetup's output:\n%s", out)
			}
			if m[1] != info.RootHash {
				t.Errorf("root hash %s, veritysetup says %s", info.RootHash, m[1])
			}
			if theirs := readFile(t, theirTreePath); !bytes.Equal(ourTree, theirs) {
				t.Errorf("hash tree (%d bytes) differs from veritysetup's (%d bytes)", len(ourTree), len(theirs))
			}

			dataSize := strconv.FormatUint(info.DataBlocks*agent.VerityBlockSize, 10)
			run(t, veritysetup, "verify", "--no-superblock", "--hash=sha256",
				"--data-block-size=4096", "--hash-block-size=4096", "--salt="+agent.VeritySaltHex,
				"--data-blocks="+strconv.FormatUint(info.DataBlocks, 10), "--hash-offset="+dataSize,
				path, path, info.RootHash)

			// And it must notice a changed byte.
			img := readFile(t, path)
			img[len(img)/3] ^= 0x80
			tampered := filepath.Join(t.TempDir(), "tampered.img")
			if err := os.WriteFile(tampered, img, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(veritysetup, "verify", "--no-superblock", "--hash=sha256",
				"--data-block-size=4096", "--hash-block-size=4096", "--salt="+agent.VeritySaltHex,
				"--data-blocks="+strconv.FormatUint(info.DataBlocks, 10), "--hash-offset="+dataSize,
				tampered, tampered, info.RootHash)
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Errorf("veritysetup verify accepted a changed image:\n%s", out)
			}
		})
	}
}

// manyFiles is a layer of n small files in a few directories.
func manyFiles(n int) []tarEntry {
	var entries []tarEntry
	for d := range 4 {
		dir := "dir" + strconv.Itoa(d) + "/"
		entries = append(entries, tarEntry{name: dir, typeflag: tar.TypeDir, mode: 0o755})
		for i := range n / 4 {
			entries = append(entries, tarEntry{
				name: dir + "file" + strconv.Itoa(i), typeflag: tar.TypeReg, mode: 0o644,
				body: pseudoRandom(uint64(d*n+i), 100+i*37%5000),
			})
		}
	}
	return entries
}

// TestConvertWritesValidExt4 reads the file system back with e2fsprogs.
func TestConvertWritesValidExt4(t *testing.T) {
	e2fsck := tool(t, "e2fsck", "e2fsprogs")
	debugfs := tool(t, "debugfs", "e2fsprogs")
	entries := testLayer()
	path, info := convertFile(t, buildTar(t, entries))
	dataPath, _ := splitImage(t, path, info)

	run(t, e2fsck, "-fn", dataPath)

	debug := func(request string) string {
		t.Helper()
		return run(t, debugfs, "-R", request, dataPath)
	}
	for _, tc := range []struct {
		request string
		want    []*regexp.Regexp
	}{
		{"ls -l /", []*regexp.Regexp{
			regexp.MustCompile(`40755 \(2\)\s+1000\s+1000\s+4096 .* etc\n`),
			regexp.MustCompile(`40750 \(2\)\s+1000\s+1000\s+4096 .* opaque\n`),
			regexp.MustCompile(`100600 \(1\)\s+1000\s+1000\s+0 .* empty\n`),
		}},
		{"ls -l /etc", []*regexp.Regexp{
			// A hard link: both names on one inode.
			regexp.MustCompile(`(?m)^\s+(\d+)\s+100644 \(1\)\s+1000\s+1000\s+11 .* hostname\n\s+(\d+)\s+100644 \(1\)\s+1000\s+1000\s+11 .* hostname.link\n`),
			regexp.MustCompile(`120777 \(7\)\s+1000\s+1000\s+8 .* motd\n`),
		}},
		{"cat /etc/hostname.link", []*regexp.Regexp{regexp.MustCompile(`^layer-test\n$`)}},
		{"stat /etc/hostname", []*regexp.Regexp{regexp.MustCompile(`Links: 2`)}},
		{"stat /etc/motd", []*regexp.Regexp{regexp.MustCompile(`Fast link dest: "hostname"`)}},
		// A whiteout is a 0:0 character device of the removed name.
		{"stat /bin/removed", []*regexp.Regexp{
			regexp.MustCompile(`Type: character special`),
			regexp.MustCompile(`Device major/minor number: 00:00`),
		}},
		{"ls /bin", []*regexp.Regexp{regexp.MustCompile(`^[^w]*large[^w]*removed[^w]*$`)}},
		{"ea_list /opaque", []*regexp.Regexp{regexp.MustCompile(`trusted.overlay.opaque \(1\) = "y"`)}},
		{"ls /opaque", []*regexp.Regexp{regexp.MustCompile(`kept`)}},
		{"ea_list /attrs", []*regexp.Regexp{regexp.MustCompile(`user.a \(1\) = "1"\s+user.b \(1\) = "2"`)}},
	} {
		out := debug(tc.request)
		for _, want := range tc.want {
			if !want.MatchString(out) {
				t.Errorf("debugfs %q: no match for %s in:\n%s", tc.request, want, out)
			}
		}
	}
	if out := debug("ls -l /etc"); strings.Contains(out, "hostname") {
		m := regexp.MustCompile(`(?m)^\s+(\d+)\s+\S+.* hostname(\.link)?$`).FindAllStringSubmatch(out, -1)
		if len(m) != 2 || m[0][1] != m[1][1] {
			t.Errorf("hostname and hostname.link are not one inode:\n%s", out)
		}
	}

	large := filepath.Join(t.TempDir(), "large")
	run(t, debugfs, "-R", "dump /bin/large "+large, dataPath)
	if got, want := sha256.Sum256(readFile(t, large)), sha256.Sum256(entries[5].body); got != want {
		t.Errorf("/bin/large reads back with sha256 %s, want %s", hex.EncodeToString(got[:]), hex.EncodeToString(want[:]))
	}
}

func TestConvertReportsProgressAndReadsToTheEnd(t *testing.T) {
	layerTar := buildTar(t, testLayer())
	// Trailing zero blocks after the end marker, as some tar writers add:
	// the diff ID covers them.
	padded := append(append([]byte{}, layerTar...), make([]byte, 10240)...)
	f, err := os.Create(filepath.Join(t.TempDir(), "layer.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last int64
	info, err := Convert(bytes.NewReader(padded), f, func(n int64) {
		if n < last {
			t.Errorf("progress went back from %d to %d", last, n)
		}
		last = n
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != int64(len(padded)) {
		t.Errorf("progress ended at %d, the tar has %d bytes", last, len(padded))
	}
	if want := digest.FromBytes(padded); info.DiffID != want {
		t.Errorf("DiffID %s, want %s (of every byte read)", info.DiffID, want)
	}
}

func TestConvertRejectsBadTars(t *testing.T) {
	good := buildTar(t, testLayer())
	failingAfter := func(data []byte) io.Reader {
		return io.MultiReader(bytes.NewReader(data), readerFunc(func([]byte) (int, error) {
			return 0, errors.New("digest mismatch at the end")
		}))
	}
	for _, tc := range []struct {
		name string
		tar  io.Reader
		want string
	}{
		{"empty", bytes.NewReader(nil), "empty"},
		{"truncated", bytes.NewReader(good[:len(good)/2]), "converting layer tar"},
		{"not a tar", bytes.NewReader(bytes.Repeat([]byte("not a tar "), 200)), "converting layer tar"},
		// The source checks its digest at its end, after the end marker
		// tar2ext4 stops at.
		{"error after the whole tar", failingAfter(good), "digest mismatch at the end"},
		{"error after a small tar", failingAfter(buildTar(t, manyFiles(4))), "digest mismatch at the end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "layer.img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = Convert(tc.tar, f, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Convert = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
