package vmimage

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/contrast-vm/contrast/internal/testenv"

	"github.com/cavaliergopher/cpio"
)

// rawHeader is a newc header as the kernel reads it, field by field.
type rawHeader struct {
	name                                     string
	ino, mode, uid, gid, nlink, mtime, size  uint64
	devMajor, devMinor, rdevMajor, rdevMinor uint64
	data                                     []byte
}

// parseNewc walks a newc archive by hand, independently of the writer, so
// the test sees the fields the cpio library does not expose (device numbers).
func parseNewc(t *testing.T, b []byte) []rawHeader {
	t.Helper()
	var out []rawHeader
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header at %d field %d: %v", off, i, err)
			}
			f[i] = v
		}
		if f[12] != 0 {
			t.Errorf("header at %d: checksum %d, want 0", off, f[12])
		}
		nameEnd := off + 110 + int(f[11])
		name := string(b[off+110 : nameEnd-1])
		if b[nameEnd-1] != 0 {
			t.Fatalf("name at %d not NUL-terminated", off)
		}
		dataStart := align(nameEnd)
		dataEnd := dataStart + int(f[6])
		if name == "TRAILER!!!" {
			if dataEnd != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-dataEnd)
			}
			return out
		}
		out = append(out, rawHeader{
			name: name, ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5], size: f[6],
			devMajor: f[7], devMinor: f[8], rdevMajor: f[9], rdevMinor: f[10],
			data: b[dataStart:dataEnd],
		})
		off = align(dataEnd)
	}
}

func TestInitramfsEntries(t *testing.T) {
	opts := testOptions(t)
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := os.ReadFile(res.Image.Initrd())
	if err != nil {
		t.Fatal(err)
	}
	agent, _ := os.ReadFile(opts.Agent)
	runc, _ := os.ReadFile(opts.Runc)

	type want struct {
		name         string
		mode         uint64
		major, minor uint64
		data         []byte
	}
	wants := []want{
		{"dev", 0o40755, 0, 0, nil},
		{"dev/console", 0o20600, 5, 1, nil},
		{"dev/null", 0o20666, 1, 3, nil},
		{"etc", 0o40755, 0, 0, nil},
		{"etc/group", 0o100644, 0, 0, []byte("root:x:0:\nnogroup:x:65534:\n")},
		{"etc/hostname", 0o100644, 0, 0, []byte("contrast\n")},
		{"etc/hosts", 0o100644, 0, 0, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n")},
		{"etc/passwd", 0o100644, 0, 0, []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{"init", 0o100755, 0, 0, agent},
		{"mnt", 0o40755, 0, 0, nil},
		{"proc", 0o40555, 0, 0, nil},
		{"root", 0o40700, 0, 0, nil},
		{"run", 0o40755, 0, 0, nil},
		{"sbin", 0o40755, 0, 0, nil},
		{"sys", 0o40555, 0, 0, nil},
		{"tmp", 0o41777, 0, 0, nil},
		{"usr", 0o40755, 0, 0, nil},
		{"usr/bin", 0o40755, 0, 0, nil},
		{"usr/bin/runc", 0o100755, 0, 0, runc},
		{"usr/sbin", 0o40755, 0, 0, nil},
		{"var", 0o40755, 0, 0, nil},
		{"var/lib", 0o40755, 0, 0, nil},
		{"var/tmp", 0o41777, 0, 0, nil},
	}

	got := parseNewc(t, initrd)
	if len(got) != len(wants) {
		var names []string
		for _, h := range got {
			names = append(names, h.name)
		}
		t.Fatalf("initrd holds %d entries %q, want %d", len(got), names, len(wants))
	}
	for i, w := range wants {
		h := got[i]
		if h.name != w.name {
			t.Errorf("entry %d is %s, want %s", i, h.name, w.name)
			continue
		}
		wantNlink := uint64(1)
		if w.mode&0o170000 == 0o40000 {
			wantNlink = 2
		}
		if h.mode != w.mode || h.uid != 0 || h.gid != 0 || h.mtime != 0 || h.ino != uint64(i+1) || h.nlink != wantNlink ||
			h.devMajor != 0 || h.devMinor != 0 || h.rdevMajor != w.major || h.rdevMinor != w.minor {
			t.Errorf("%s: mode %#o uid %d gid %d mtime %d ino %d nlink %d dev %d,%d rdev %d,%d; want mode %#o, 0:0, mtime 0, ino %d, nlink %d, dev 0,0, rdev %d,%d",
				h.name, h.mode, h.uid, h.gid, h.mtime, h.ino, h.nlink, h.devMajor, h.devMinor, h.rdevMajor, h.rdevMinor,
				w.mode, i+1, wantNlink, w.major, w.minor)
		}
		if !bytes.Equal(h.data, w.data) {
			t.Errorf("%s: %d bytes of content differ from the %d expected", h.name, len(h.data), len(w.data))
		}
	}

	// An independent reader agrees on names, modes, owners, times and content.
	r := cpio.NewReader(bytes.NewReader(initrd))
	for i := 0; ; i++ {
		hdr, err := r.Next()
		if err == io.EOF {
			if i != len(wants) {
				t.Errorf("cpio library read %d entries, want %d", i, len(wants))
			}
			break
		}
		if err != nil {
			t.Fatalf("cpio library: entry %d: %v", i, err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("cpio library: %s: %v", hdr.Name, err)
		}
		if i >= len(wants) {
			t.Fatalf("cpio library: extra entry %s", hdr.Name)
		}
		w := wants[i]
		if hdr.Name != w.name || uint64(hdr.Mode) != w.mode || hdr.Uid != 0 || hdr.Guid != 0 || hdr.ModTime.Unix() != 0 || !bytes.Equal(data, w.data) {
			t.Errorf("cpio library: entry %d %s mode %#o uid %d gid %d mtime %v (%d bytes); want %s mode %#o",
				i, hdr.Name, hdr.Mode, hdr.Uid, hdr.Guid, hdr.ModTime.Unix(), len(data), w.name, w.mode)
		}
	}
}

// TestInitramfsGNUCpio lists the archive with GNU cpio, a third reader, which
// also prints device numbers.
func TestInitramfsGNUCpio(t *testing.T) {
	testenv.Command(t, "cpio", "cpio")
	opts := testOptions(t)
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(res.Image.Initrd())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("cpio", "-t", "-v", "--numeric-uid-gid", "--quiet")
	cmd.Stdin = f
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	listing := string(out)
	for _, want := range []string{
		"crw-------   1 0        0          5,   1 Jan  1  1970 dev/console",
		"crw-rw-rw-   1 0        0          1,   3 Jan  1  1970 dev/null",
		"drwxrwxrwt   2 0        0               0 Jan  1  1970 tmp",
		"-rwxr-xr-x   1 0        0",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, listing)
		}
	}
	if n := strings.Count(listing, "\n"); n != 23 {
		t.Errorf("cpio lists %d entries, want 23:\n%s", n, listing)
	}
}

func TestWriteInitramfsRejects(t *testing.T) {
	dir := Entry{Name: "etc", Mode: ModeDir | 0o755}
	for _, tc := range []struct {
		name    string
		entries []Entry
		want    string
	}{
		{"absolute name", []Entry{{Name: "/etc", Mode: ModeDir | 0o755}}, "clean relative path"},
		{"dot dot", []Entry{{Name: "../etc", Mode: ModeDir | 0o755}}, "clean relative path"},
		{"unclean", []Entry{dir, {Name: "etc//x", Mode: ModeRegular | 0o644}}, "clean relative path"},
		{"trailer name", []Entry{{Name: "TRAILER!!!", Mode: ModeRegular | 0o644}}, "clean relative path"},
		{"duplicate", []Entry{dir, dir}, "listed twice"},
		{"no parent", []Entry{{Name: "etc/passwd", Mode: ModeRegular | 0o644}}, "parent directory etc"},
		{"no type", []Entry{{Name: "x", Mode: 0o644}}, "unsupported file type"},
		{"stray bits", []Entry{{Name: "x", Mode: ModeRegular | 0o1000000}}, "beyond type and permissions"},
		{"data on dir", []Entry{{Name: "etc", Mode: ModeDir | 0o755, Data: []byte("x")}}, "non-regular"},
		{"symlink no target", []Entry{{Name: "bin", Mode: ModeSymlink | 0o777}}, "without target"},
		{"device numbers on file", []Entry{{Name: "x", Mode: ModeRegular | 0o644, Major: 1}}, "non-device"},
		{"missing source", []Entry{{Name: "x", Mode: ModeRegular | 0o644, Source: "/nonexistent/x"}}, "entry x: open /nonexistent/x"},
		{"directory source", []Entry{{Name: "x", Mode: ModeRegular | 0o644, Source: "/"}}, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteInitramfs(io.Discard, tc.entries)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteInitramfsSymlink(t *testing.T) {
	var buf bytes.Buffer
	err := WriteInitramfs(&buf, []Entry{
		{Name: "usr", Mode: ModeDir | 0o755},
		{Name: "bin", Mode: ModeSymlink | 0o777, Linkname: "usr/bin"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := parseNewc(t, buf.Bytes())
	if len(got) != 2 || got[0].name != "bin" || got[0].mode != 0o120777 || string(got[0].data) != "usr/bin" {
		t.Errorf("symlink entry %+v", got)
	}
	// Same entries in another order, same bytes.
	var again bytes.Buffer
	if err := WriteInitramfs(&again, []Entry{
		{Name: "bin", Mode: ModeSymlink | 0o777, Linkname: "usr/bin"},
		{Name: "usr", Mode: ModeDir | 0o755},
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("entry order changed the archive")
	}
}
