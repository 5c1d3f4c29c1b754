package storage

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dmIoctlC mirrors struct dm_ioctl of include/uapi/linux/dm-ioctl.h field
// by field, so that the compiler computes the layout the header implies.
type dmIoctlC struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Padding     uint32
	Dev         uint64
	Name        [128]byte
	UUID        [129]byte
	Data        [7]byte
}

// dmTargetSpecC mirrors struct dm_target_spec.
type dmTargetSpecC struct {
	SectorStart uint64
	Length      uint64
	Status      int32
	Next        uint32
	TargetType  [16]byte
}

func TestDMLayoutMatchesHeader(t *testing.T) {
	var io dmIoctlC
	var ts dmTargetSpecC
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct dm_ioctl)", unsafe.Sizeof(io), dmIoctlSize},
		{"version", unsafe.Offsetof(io.Version), dmOffVersion},
		{"data_size", unsafe.Offsetof(io.DataSize), dmOffDataSize},
		{"data_start", unsafe.Offsetof(io.DataStart), dmOffDataStart},
		{"target_count", unsafe.Offsetof(io.TargetCount), dmOffTargetCount},
		{"open_count", unsafe.Offsetof(io.OpenCount), dmOffOpenCount},
		{"flags", unsafe.Offsetof(io.Flags), dmOffFlags},
		{"event_nr", unsafe.Offsetof(io.EventNr), dmOffEventNr},
		{"dev", unsafe.Offsetof(io.Dev), dmOffDev},
		{"name", unsafe.Offsetof(io.Name), dmOffName},
		{"uuid", unsafe.Offsetof(io.UUID), dmOffUUID},
		{"DM_NAME_LEN", unsafe.Sizeof(io.Name), dmNameLen},
		{"DM_UUID_LEN", unsafe.Sizeof(io.UUID), dmUUIDLen},
		{"sizeof(struct dm_target_spec)", unsafe.Sizeof(ts), dmTargetSize},
		{"sector_start", unsafe.Offsetof(ts.SectorStart), dmTargetOffSectorStart},
		{"length", unsafe.Offsetof(ts.Length), dmTargetOffLength},
		{"status", unsafe.Offsetof(ts.Status), dmTargetOffStatus},
		{"next", unsafe.Offsetof(ts.Next), dmTargetOffNext},
		{"target_type", unsafe.Offsetof(ts.TargetType), dmTargetOffType},
		{"DM_MAX_TYPE_NAME", unsafe.Sizeof(ts.TargetType), dmMaxTypeName},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: header layout gives %d, we use %d", tc.name, tc.got, tc.want)
		}
	}
	if got := unsafe.Offsetof(io.Data); got != 305 {
		t.Errorf("data: offset %d, want 305", got)
	}
}

func TestDMRequestNumbers(t *testing.T) {
	// _IOWR(0xfd, nr, struct dm_ioctl) on x86-64, as the kernel headers
	// expand it: dir 3 << 30 | 312 << 16 | 0xfd << 8 | nr.
	for _, tc := range []struct {
		cmd  dmCommand
		name string
		want uintptr
	}{
		{dmVersionCmd, "DM_VERSION", 0xc138fd00},
		{dmDevCreateCmd, "DM_DEV_CREATE", 0xc138fd03},
		{dmDevRemoveCmd, "DM_DEV_REMOVE", 0xc138fd04},
		{dmDevSuspendCmd, "DM_DEV_SUSPEND", 0xc138fd06},
		{dmTableLoadCmd, "DM_TABLE_LOAD", 0xc138fd09},
	} {
		if got := tc.cmd.request(); got != tc.want {
			t.Errorf("%s: request %#x, want %#x", tc.name, got, tc.want)
		}
		if tc.cmd.String() != tc.name {
			t.Errorf("%d is named %q, want %q", tc.cmd, tc.cmd, tc.name)
		}
	}
}

func TestEncodeDMIoctlHeader(t *testing.T) {
	buf, err := encodeDMIoctl("layer-1", dmReadonlyFlag, nil)
	if err != nil {
		t.Fatal(err)
	}
	u32 := func(off int) uint32 { return binary.NativeEndian.Uint32(buf[off:]) }
	if len(buf) < dmIoctlSize {
		t.Fatalf("buffer is %d bytes, shorter than struct dm_ioctl", len(buf))
	}
	for _, tc := range []struct {
		field     string
		got, want uint32
	}{
		{"version[0]", u32(0), 4},
		{"version[1]", u32(4), 0},
		{"version[2]", u32(8), 0},
		{"data_size", u32(12), uint32(len(buf))},
		{"data_start", u32(16), 312},
		{"target_count", u32(20), 0},
		{"open_count", u32(24), 0},
		{"flags", u32(28), 1},
		{"event_nr", u32(32), 0},
		{"padding", u32(36), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.field, tc.got, tc.want)
		}
	}
	if got := unix.ByteSliceToString(buf[48:176]); got != "layer-1" {
		t.Errorf("name = %q", got)
	}
	for i := 48 + len("layer-1"); i < len(buf); i++ {
		if buf[i] != 0 {
			t.Fatalf("byte %d after the name is %#x, want 0", i, buf[i])
		}
	}
}

func TestEncodeDMIoctlTable(t *testing.T) {
	params := "1 /dev/vdb /dev/vdb 4096 4096 3 3 sha256 ab 00"
	tgt := dmTarget{SectorStart: 0, Length: 24, Type: "verity", Params: params}
	buf, err := encodeDMIoctl("v", dmReadonlyFlag, []dmTarget{tgt})
	if err != nil {
		t.Fatal(err)
	}
	specLen := (40 + len(params) + 1 + 7) / 8 * 8
	if len(buf) != 312+specLen {
		t.Fatalf("buffer is %d bytes, want %d (struct dm_ioctl, spec, params, NUL, padding to 8)", len(buf), 312+specLen)
	}
	if got := binary.NativeEndian.Uint32(buf[12:]); got != uint32(len(buf)) {
		t.Errorf("data_size = %d, want %d", got, len(buf))
	}
	if got := binary.NativeEndian.Uint32(buf[20:]); got != 1 {
		t.Errorf("target_count = %d, want 1", got)
	}
	spec := buf[312:]
	if got := binary.NativeEndian.Uint64(spec[0:]); got != 0 {
		t.Errorf("sector_start = %d", got)
	}
	if got := binary.NativeEndian.Uint64(spec[8:]); got != 24 {
		t.Errorf("length = %d, want 24", got)
	}
	if got := binary.NativeEndian.Uint32(spec[16:]); got != 0 {
		t.Errorf("status = %d", got)
	}
	if got := binary.NativeEndian.Uint32(spec[20:]); got != uint32(specLen) || got%8 != 0 {
		t.Errorf("next = %d, want %d (8-aligned)", got, specLen)
	}
	if got := unix.ByteSliceToString(spec[24:40]); got != "verity" {
		t.Errorf("target_type = %q", got)
	}
	if got := string(spec[40 : 40+len(params)]); got != params {
		t.Errorf("params = %q", got)
	}
	for i := 40 + len(params); i < len(spec); i++ {
		if spec[i] != 0 {
			t.Fatalf("byte %d after the params is %#x, want NUL padding", i, spec[i])
		}
	}
}

func TestEncodeDMIoctlRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dmName  string
		targets []dmTarget
		wantErr string
	}{
		{"name of 128 bytes", strings.Repeat("n", 128), nil, "longer than 127"},
		{"name with slash", "a/b", nil, "not a valid file name"},
		{"name dot-dot", "..", nil, "not a valid file name"},
		{"type of 16 bytes", "v", []dmTarget{{Type: strings.Repeat("t", 16)}}, "longer than 15"},
		{"empty type", "v", []dmTarget{{Type: ""}}, "empty"},
		{"NUL in params", "v", []dmTarget{{Type: "verity", Params: "a\x00b"}}, "NUL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := encodeDMIoctl(tc.dmName, 0, tc.targets)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
	if _, err := encodeDMIoctl(strings.Repeat("n", 127), 0, nil); err != nil {
		t.Fatalf("name of 127 bytes (the most DM_NAME_LEN holds): %v", err)
	}
}

func TestVerityTable(t *testing.T) {
	root := strings.Repeat("ab", 32)
	tgt := verityTable("/dev/vdc", 1000, root)
	want := "1 /dev/vdc /dev/vdc 4096 4096 1000 1000 sha256 " + root + " " + strings.Repeat("0", 64)
	if tgt.Params != want {
		t.Errorf("params\n got %s\nwant %s", tgt.Params, want)
	}
	if tgt.Type != "verity" || tgt.SectorStart != 0 || tgt.Length != 8000 {
		t.Errorf("target %s at %d length %d, want verity at 0 length 8000 sectors", tgt.Type, tgt.SectorStart, tgt.Length)
	}
}

func TestDecodeDMReply(t *testing.T) {
	buf := make([]byte, dmIoctlSize)
	binary.NativeEndian.PutUint32(buf[0:], 4)
	binary.NativeEndian.PutUint32(buf[4:], 48)
	binary.NativeEndian.PutUint32(buf[8:], 0)
	binary.NativeEndian.PutUint32(buf[28:], dmReadonlyFlag|dmSuspendFlag)
	binary.NativeEndian.PutUint64(buf[40:], unix.Mkdev(253, 300))
	r := decodeDMReply(buf)
	if r.Version != [3]uint32{4, 48, 0} || r.Flags != 3 || unix.Major(r.Dev) != 253 || unix.Minor(r.Dev) != 300 {
		t.Fatalf("decoded %+v", r)
	}
}

func TestParseMajorMinor(t *testing.T) {
	for _, tc := range []struct {
		in       string
		maj, min uint32
		ok       bool
	}{
		{"10:236\n", 10, 236, true},
		{"253:0", 253, 0, true},
		{"10", 0, 0, false},
		{"a:1", 0, 0, false},
		{"1:-1", 0, 0, false},
	} {
		dev, err := parseMajorMinor(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%q: error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (unix.Major(dev) != tc.maj || unix.Minor(dev) != tc.min) {
			t.Errorf("%q: %d:%d", tc.in, unix.Major(dev), unix.Minor(dev))
		}
	}
}

// The control node is created from sysfs's number when devtmpfs did not
// make it. The host has no device-mapper, so opening it fails there, but
// the node must be the right one.
func TestControlNodeCreated(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mknod): run the tests as root, as CI does")
	}
	dir := t.TempDir()
	sys := filepath.Join(dir, "dev-file")
	if err := os.WriteFile(sys, []byte("10:236\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &DeviceMapper{ControlPath: filepath.Join(dir, "mapper", "control"), SysControlDev: sys, DevDir: dir, NodeDir: filepath.Join(dir, "nodes")}
	f, err := d.openControl()
	if err == nil {
		f.Close()
	}
	var st unix.Stat_t
	if serr := unix.Stat(d.ControlPath, &st); serr != nil {
		t.Fatalf("control node not created (open: %v): %v", err, serr)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 236 {
		t.Fatalf("control node mode %o dev %d:%d, want a character device 10:236", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}

	missing := &DeviceMapper{ControlPath: filepath.Join(dir, "none", "control"), SysControlDev: filepath.Join(dir, "no-sys")}
	if _, err := missing.Version(); err == nil || !strings.Contains(err.Error(), missing.ControlPath) {
		t.Fatalf("Version without device-mapper: %v, want an error naming %s", err, missing.ControlPath)
	}
}
