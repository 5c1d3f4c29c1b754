package layer

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// tarEntry is one member of a test layer tar.
type tarEntry struct {
	name     string
	typeflag byte
	mode     int64
	body     []byte
	linkname string
	xattrs   map[string]string
	modTime  time.Time
}

// buildTar writes entries as a layer tar, the same bytes every time.
func buildTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, e := range entries {
		mtime := e.modTime
		if mtime.IsZero() {
			mtime = time.Unix(1700000000, 0)
		}
		hdr := &tar.Header{
			Name:     e.name,
			Typeflag: e.typeflag,
			Mode:     e.mode,
			Size:     int64(len(e.body)),
			Linkname: e.linkname,
			ModTime:  mtime,
			Uid:      1000,
			Gid:      1000,
			Format:   tar.FormatPAX,
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := w.WriteHeader(hdr); err != nil {
			t.Fatalf("writing tar header %s: %v", e.name, err)
		}
		if _, err := w.Write(e.body); err != nil {
			t.Fatalf("writing tar body %s: %v", e.name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("closing tar: %v", err)
	}
	return buf.Bytes()
}

// pseudoRandom returns n bytes that are the same for the same seed.
func pseudoRandom(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// largeFileSize is above 1 MiB, so the file needs more than one extent
// block run and the tree more than one hash block.
const largeFileSize = 3<<20 + 123

// testLayer has every kind of member a layer has, whiteouts included.
func testLayer() []tarEntry {
	return []tarEntry{
		{name: "etc/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "etc/hostname", typeflag: tar.TypeReg, mode: 0o644, body: []byte("layer-test\n")},
		{name: "etc/hostname.link", typeflag: tar.TypeLink, linkname: "etc/hostname"},
		{name: "etc/motd", typeflag: tar.TypeSymlink, mode: 0o777, linkname: "hostname"},
		{name: "bin/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "bin/large", typeflag: tar.TypeReg, mode: 0o755, body: pseudoRandom(1, largeFileSize)},
		{name: "bin/.wh.removed", typeflag: tar.TypeReg, mode: 0o600},
		{name: "opaque/", typeflag: tar.TypeDir, mode: 0o750},
		{name: "opaque/.wh..wh..opq", typeflag: tar.TypeReg, mode: 0o600},
		{name: "opaque/kept", typeflag: tar.TypeReg, mode: 0o640, body: []byte("kept")},
		{name: "attrs", typeflag: tar.TypeReg, mode: 0o644, body: []byte("x"), xattrs: map[string]string{"user.b": "2", "user.a": "1"}},
		{name: "empty", typeflag: tar.TypeReg, mode: 0o600},
	}
}
