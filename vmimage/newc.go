package vmimage

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// File type bits of Entry.Mode, as in stat(2) and the cpio newc format.
const (
	ModeDir     uint32 = 0o040000
	ModeRegular uint32 = 0o100000
	ModeSymlink uint32 = 0o120000
	ModeChar    uint32 = 0o020000
	ModeBlock   uint32 = 0o060000

	modeTypeMask uint32 = 0o170000
	modePermMask uint32 = 0o007777
)

// newcMagic starts every newc header (no checksums: the kernel ignores them).
const newcMagic = "070701"

// newcTrailer is the name of the entry that ends an archive.
const newcTrailer = "TRAILER!!!"

// Entry is one file of an initramfs.
type Entry struct {
	// Name is the path inside the image, relative to its root, without a
	// leading slash: "usr/bin/runc".
	Name string
	// Mode holds the file type (ModeDir, ModeRegular, ...) and permission bits.
	// It is written as given: nothing is taken from the host file.
	Mode uint32
	// Data is the content of a regular file, unless Source is set.
	Data []byte
	// Source is a host file whose content becomes this regular file.
	Source string
	// Linkname is the target of a symlink.
	Linkname string
	// Major and Minor are the device numbers of a char or block device node.
	Major, Minor uint32
}

// WriteInitramfs writes entries to w as an uncompressed newc cpio archive
// that the Linux kernel unpacks as its initramfs.
//
// The archive depends only on the entries: they are sorted by name (so a
// directory precedes its contents), every entry is owned by 0:0 with mtime 0,
// inode numbers are assigned in that order and nothing is read from the host
// but Source files' contents. Every entry's parent directory must itself be
// an entry.
func WriteInitramfs(w io.Writer, entries []Entry) error {
	sorted := append([]Entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	if err := validateEntries(sorted); err != nil {
		return err
	}
	cw := &newcWriter{w: w}
	for i, e := range sorted {
		if err := cw.writeEntry(uint32(i+1), e); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Name, err)
		}
	}
	if err := cw.writeHeader(newcHeader{name: newcTrailer, nlink: 1}); err != nil {
		return fmt.Errorf("initramfs trailer: %w", err)
	}
	return nil
}

func validateEntries(sorted []Entry) error {
	dirs := map[string]bool{}
	for i, e := range sorted {
		if e.Name == "" || e.Name == "." || strings.HasPrefix(e.Name, "/") || path.Clean(e.Name) != e.Name ||
			e.Name == ".." || strings.HasPrefix(e.Name, "../") || e.Name == newcTrailer {
			return fmt.Errorf("initramfs entry %q: name must be a clean relative path", e.Name)
		}
		if i > 0 && sorted[i-1].Name == e.Name {
			return fmt.Errorf("initramfs entry %s: listed twice", e.Name)
		}
		if parent := path.Dir(e.Name); parent != "." && !dirs[parent] {
			return fmt.Errorf("initramfs entry %s: parent directory %s is not an entry", e.Name, parent)
		}
		if e.Mode&^(modeTypeMask|modePermMask) != 0 {
			return fmt.Errorf("initramfs entry %s: mode %#o has bits beyond type and permissions", e.Name, e.Mode)
		}
		typ := e.Mode & modeTypeMask
		hasContent := e.Data != nil || e.Source != ""
		switch typ {
		case ModeDir:
			dirs[e.Name] = true
		case ModeRegular:
			if e.Data != nil && e.Source != "" {
				return fmt.Errorf("initramfs entry %s: both Data and Source set", e.Name)
			}
		case ModeSymlink:
			if e.Linkname == "" {
				return fmt.Errorf("initramfs entry %s: symlink without target", e.Name)
			}
		case ModeChar, ModeBlock:
		default:
			return fmt.Errorf("initramfs entry %s: unsupported file type %#o", e.Name, typ)
		}
		if hasContent && typ != ModeRegular {
			return fmt.Errorf("initramfs entry %s: content given for a non-regular file", e.Name)
		}
		if e.Linkname != "" && typ != ModeSymlink {
			return fmt.Errorf("initramfs entry %s: link target given for a non-symlink", e.Name)
		}
		if (e.Major != 0 || e.Minor != 0) && typ != ModeChar && typ != ModeBlock {
			return fmt.Errorf("initramfs entry %s: device numbers given for a non-device", e.Name)
		}
	}
	return nil
}

// newcHeader holds the fields of a newc header that vary between entries;
// uid, gid, mtime, the archive's device and the checksum are always 0.
type newcHeader struct {
	ino, mode, nlink uint32
	size             int64
	rdevMajor        uint32
	rdevMinor        uint32
	name             string
}

type newcWriter struct {
	w   io.Writer
	off int64
}

func (cw *newcWriter) writeEntry(ino uint32, e Entry) error {
	h := newcHeader{ino: ino, mode: e.Mode, nlink: 1, name: e.Name}
	switch e.Mode & modeTypeMask {
	case ModeDir:
		// "." and the entry in the parent; the kernel recomputes it anyway.
		h.nlink = 2
		return cw.writeHeader(h)
	case ModeSymlink:
		h.size = int64(len(e.Linkname))
		if err := cw.writeHeader(h); err != nil {
			return err
		}
		return cw.writeData(strings.NewReader(e.Linkname), h.size)
	case ModeChar, ModeBlock:
		h.rdevMajor, h.rdevMinor = e.Major, e.Minor
		return cw.writeHeader(h)
	}
	if e.Source == "" {
		h.size = int64(len(e.Data))
		if err := cw.writeHeader(h); err != nil {
			return err
		}
		return cw.writeData(strings.NewReader(string(e.Data)), h.size)
	}
	f, err := os.Open(e.Source)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file", e.Source)
	}
	h.size = st.Size()
	if err := cw.writeHeader(h); err != nil {
		return err
	}
	if err := cw.writeData(f, h.size); err != nil {
		return fmt.Errorf("copy %s: %w", e.Source, err)
	}
	return nil
}

func (cw *newcWriter) writeHeader(h newcHeader) error {
	// newc stores sizes in 32 bits.
	if h.size > 0xffffffff {
		return fmt.Errorf("%d bytes is more than a newc archive can hold", h.size)
	}
	var b strings.Builder
	b.WriteString(newcMagic)
	for _, v := range []uint32{
		h.ino, h.mode, 0 /* uid */, 0 /* gid */, h.nlink, 0, /* mtime */
		uint32(h.size), 0, 0 /* archive device */, h.rdevMajor, h.rdevMinor,
		uint32(len(h.name) + 1), 0, /* checksum */
	} {
		fmt.Fprintf(&b, "%08X", v)
	}
	b.WriteString(h.name)
	b.WriteByte(0)
	if err := cw.write([]byte(b.String())); err != nil {
		return err
	}
	return cw.pad()
}

// writeData copies exactly size bytes of r, then pads to 4 bytes.
func (cw *newcWriter) writeData(r io.Reader, size int64) error {
	n, err := io.Copy(cw.w, io.LimitReader(r, size))
	cw.off += n
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("got %d bytes, want %d (file changed while reading?)", n, size)
	}
	return cw.pad()
}

func (cw *newcWriter) pad() error {
	if n := (4 - cw.off%4) % 4; n > 0 {
		return cw.write(make([]byte, n))
	}
	return nil
}

func (cw *newcWriter) write(p []byte) error {
	n, err := cw.w.Write(p)
	cw.off += int64(n)
	return err
}
