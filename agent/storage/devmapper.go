package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	api "github.com/contrast-vm/contrast/api/agent"
)

// The device-mapper ioctl interface, laid out as in Linux's
// include/uapi/linux/dm-ioctl.h. We speak it directly because the guest has
// no dmsetup or libdevmapper.
const (
	dmIoctlType   = 0xfd
	dmIoctlSize   = 312 // sizeof(struct dm_ioctl)
	dmTargetSize  = 40  // sizeof(struct dm_target_spec), parameters follow
	dmNameLen     = 128 // DM_NAME_LEN, with the terminating NUL
	dmUUIDLen     = 129 // DM_UUID_LEN
	dmMaxTypeName = 16  // DM_MAX_TYPE_NAME, with the terminating NUL

	// The interface version we were written against; the kernel accepts
	// any request with the same major and a minor not above its own.
	dmVersionMajor = 4
	dmVersionMinor = 0
	dmVersionPatch = 0

	dmReadonlyFlag = 1 << 0 // DM_READONLY_FLAG
	dmSuspendFlag  = 1 << 1 // DM_SUSPEND_FLAG

	// Offsets of the fields of struct dm_ioctl.
	dmOffVersion     = 0
	dmOffDataSize    = 12
	dmOffDataStart   = 16
	dmOffTargetCount = 20
	dmOffOpenCount   = 24
	dmOffFlags       = 28
	dmOffEventNr     = 32
	dmOffDev         = 40
	dmOffName        = 48
	dmOffUUID        = dmOffName + dmNameLen // 176

	// Offsets of the fields of struct dm_target_spec.
	dmTargetOffSectorStart = 0
	dmTargetOffLength      = 8
	dmTargetOffStatus      = 16
	dmTargetOffNext        = 20
	dmTargetOffType        = 24
)

// dmCommand is a device-mapper ioctl command number (enum in dm-ioctl.h).
type dmCommand uint32

const (
	dmVersionCmd    dmCommand = 0
	dmDevCreateCmd  dmCommand = 3
	dmDevRemoveCmd  dmCommand = 4
	dmDevSuspendCmd dmCommand = 6
	dmTableLoadCmd  dmCommand = 9
)

func (c dmCommand) String() string {
	switch c {
	case dmVersionCmd:
		return "DM_VERSION"
	case dmDevCreateCmd:
		return "DM_DEV_CREATE"
	case dmDevRemoveCmd:
		return "DM_DEV_REMOVE"
	case dmDevSuspendCmd:
		return "DM_DEV_SUSPEND"
	case dmTableLoadCmd:
		return "DM_TABLE_LOAD"
	}
	return fmt.Sprintf("DM command %d", uint32(c))
}

// request is the ioctl request number: _IOWR(DM_IOCTL, cmd, struct dm_ioctl).
func (c dmCommand) request() uintptr {
	const iocRead, iocWrite = 2, 1
	return uintptr((iocRead|iocWrite)<<30 | dmIoctlSize<<16 | dmIoctlType<<8 | uint32(c))
}

// dmTarget is one line of a device-mapper table.
type dmTarget struct {
	SectorStart uint64 // in 512-byte sectors
	Length      uint64 // in 512-byte sectors
	Type        string // "verity"
	Params      string
}

// validateDMName checks a device-mapper device name: the kernel takes up to
// DM_NAME_LEN-1 bytes and refuses '/' (the name becomes a node in /dev/mapper).
func validateDMName(name string) error {
	switch {
	case name == "":
		return errors.New("device-mapper name is empty")
	case len(name) >= dmNameLen:
		return fmt.Errorf("device-mapper name %q is longer than %d bytes", name, dmNameLen-1)
	case strings.ContainsAny(name, "/\x00"), name == ".", name == "..":
		return fmt.Errorf("device-mapper name %q is not a valid file name", name)
	}
	return nil
}

// encodeDMIoctl lays out a request buffer: struct dm_ioctl followed, for a
// table load, by the target specs, each with its NUL-terminated parameters
// padded to 8 bytes (the kernel's alignment of the next spec).
func encodeDMIoctl(name string, flags uint32, targets []dmTarget) ([]byte, error) {
	if name != "" {
		if err := validateDMName(name); err != nil {
			return nil, err
		}
	}
	var payload []byte
	for _, t := range targets {
		if t.Type == "" || len(t.Type) >= dmMaxTypeName || strings.ContainsRune(t.Type, 0) {
			return nil, fmt.Errorf("device-mapper target type %q is empty or longer than %d bytes", t.Type, dmMaxTypeName-1)
		}
		if strings.ContainsRune(t.Params, 0) {
			return nil, fmt.Errorf("device-mapper %s target parameters contain a NUL byte", t.Type)
		}
		next := align8(dmTargetSize + len(t.Params) + 1)
		spec := make([]byte, next)
		binary.NativeEndian.PutUint64(spec[dmTargetOffSectorStart:], t.SectorStart)
		binary.NativeEndian.PutUint64(spec[dmTargetOffLength:], t.Length)
		binary.NativeEndian.PutUint32(spec[dmTargetOffStatus:], 0)
		binary.NativeEndian.PutUint32(spec[dmTargetOffNext:], uint32(next))
		copy(spec[dmTargetOffType:], t.Type)
		copy(spec[dmTargetSize:], t.Params)
		payload = append(payload, spec...)
	}
	// Room for what the kernel writes back (it reports errors, and sets
	// DM_BUFFER_FULL_FLAG, if its answer does not fit): a little for
	// commands without a payload, which answer with at most a name list.
	size := dmIoctlSize + len(payload)
	if len(targets) == 0 {
		size += 1024
	}
	buf := make([]byte, size)
	binary.NativeEndian.PutUint32(buf[dmOffVersion:], dmVersionMajor)
	binary.NativeEndian.PutUint32(buf[dmOffVersion+4:], dmVersionMinor)
	binary.NativeEndian.PutUint32(buf[dmOffVersion+8:], dmVersionPatch)
	binary.NativeEndian.PutUint32(buf[dmOffDataSize:], uint32(size))
	binary.NativeEndian.PutUint32(buf[dmOffDataStart:], dmIoctlSize)
	binary.NativeEndian.PutUint32(buf[dmOffTargetCount:], uint32(len(targets)))
	binary.NativeEndian.PutUint32(buf[dmOffFlags:], flags)
	copy(buf[dmOffName:dmOffName+dmNameLen-1], name)
	copy(buf[dmIoctlSize:], payload)
	return buf, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// dmReply is what we read back from struct dm_ioctl after an ioctl.
type dmReply struct {
	Version [3]uint32
	Flags   uint32
	Dev     uint64 // the kernel's huge_encode_dev, which unix.Major/Minor decode
}

func decodeDMReply(buf []byte) dmReply {
	var r dmReply
	for i := range r.Version {
		r.Version[i] = binary.NativeEndian.Uint32(buf[dmOffVersion+4*i:])
	}
	r.Flags = binary.NativeEndian.Uint32(buf[dmOffFlags:])
	r.Dev = binary.NativeEndian.Uint64(buf[dmOffDev:])
	return r
}

// DeviceMapper creates and removes device-mapper devices through
// /dev/mapper/control.
type DeviceMapper struct {
	// ControlPath is the control node, /dev/mapper/control.
	ControlPath string
	// SysControlDev is the sysfs file holding the control node's
	// "major:minor", used to create the node when devtmpfs did not.
	SysControlDev string
	// DevDir is where devtmpfs puts dm-<minor>.
	DevDir string
	// NodeDir is a private directory for device nodes we create ourselves
	// when devtmpfs has not (yet) made one.
	NodeDir string
}

// NewDeviceMapper returns the client for a real guest; nodeDir is the
// agent's private directory for device nodes.
func NewDeviceMapper(nodeDir string) *DeviceMapper {
	return &DeviceMapper{
		ControlPath:   "/dev/mapper/control",
		SysControlDev: "/sys/class/misc/device-mapper/dev",
		DevDir:        "/dev",
		NodeDir:       nodeDir,
	}
}

// openControl opens the control node, creating it if devtmpfs did not.
func (d *DeviceMapper) openControl() (*os.File, error) {
	f, err := os.OpenFile(d.ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open device-mapper control %s: %w", d.ControlPath, err)
	}
	majMin, rerr := os.ReadFile(d.SysControlDev)
	if rerr != nil {
		return nil, fmt.Errorf("device-mapper control %s is missing and the kernel does not offer device-mapper (%v): %w", d.ControlPath, rerr, err)
	}
	dev, perr := parseMajorMinor(string(majMin))
	if perr != nil {
		return nil, fmt.Errorf("device-mapper control number in %s: %w", d.SysControlDev, perr)
	}
	if err := os.MkdirAll(filepath.Dir(d.ControlPath), 0o755); err != nil {
		return nil, fmt.Errorf("create directory of device-mapper control: %w", err)
	}
	if err := unix.Mknod(d.ControlPath, unix.S_IFCHR|0o600, int(dev)); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create device-mapper control node %s: %w", d.ControlPath, err)
	}
	f, err = os.OpenFile(d.ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open device-mapper control %s: %w", d.ControlPath, err)
	}
	return f, nil
}

// parseMajorMinor parses sysfs's "major:minor\n".
func parseMajorMinor(s string) (uint64, error) {
	maj, min, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return 0, fmt.Errorf("%q is not major:minor", s)
	}
	ma, err := strconv.ParseUint(maj, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("major in %q: %w", s, err)
	}
	mi, err := strconv.ParseUint(min, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("minor in %q: %w", s, err)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// ioctl runs one command on the control node.
func (d *DeviceMapper) ioctl(ctl *os.File, cmd dmCommand, name string, flags uint32, targets []dmTarget) (dmReply, error) {
	buf, err := encodeDMIoctl(name, flags, targets)
	if err != nil {
		return dmReply{}, fmt.Errorf("%v for %q: %w", cmd, name, err)
	}
	// a table may hold a key (dm-crypt): it stays in memory no longer than needed
	defer clear(buf)
	raw, err := ctl.SyscallConn()
	if err != nil {
		return dmReply{}, fmt.Errorf("%v for %q: %w", cmd, name, err)
	}
	var errno unix.Errno
	if cerr := raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, cmd.request(), uintptr(unsafe.Pointer(&buf[0])))
	}); cerr != nil {
		return dmReply{}, fmt.Errorf("%v for %q: %w", cmd, name, cerr)
	}
	if errno != 0 {
		what := "device-mapper"
		if name != "" {
			what = "device-mapper device " + name
		}
		return dmReply{}, fmt.Errorf("%v on %s: %w", cmd, what, errno)
	}
	return decodeDMReply(buf), nil
}

// Version asks the kernel for its device-mapper interface version and
// checks that it speaks ours.
func (d *DeviceMapper) Version() ([3]uint32, error) {
	ctl, err := d.openControl()
	if err != nil {
		return [3]uint32{}, err
	}
	defer ctl.Close()
	r, err := d.ioctl(ctl, dmVersionCmd, "", 0, nil)
	if err != nil {
		return [3]uint32{}, err
	}
	if r.Version[0] != dmVersionMajor {
		return r.Version, fmt.Errorf("DM_VERSION: the kernel's device-mapper interface is %d.%d.%d, we speak %d.x", r.Version[0], r.Version[1], r.Version[2], dmVersionMajor)
	}
	return r.Version, nil
}

// verityTable is the single-target dm-verity table of an image layer
// device: the data blocks followed by their hash tree on the same device
// (Documentation/admin-guide/device-mapper/verity.rst).
// The hash tree starts right after the data: hash_start_block, counted in
// hash blocks, equals the number of data blocks.
func verityTable(device string, dataBlocks uint64, rootHash string) dmTarget {
	const bs = api.VerityBlockSize
	params := fmt.Sprintf("1 %s %s %d %d %d %d %s %s %s",
		device, device, bs, bs, dataBlocks, dataBlocks, api.VerityAlgorithm, rootHash, api.VeritySaltHex)
	return dmTarget{SectorStart: 0, Length: dataBlocks * (bs / 512), Type: "verity", Params: params}
}

// CreateReadOnly creates the device name with the one target, activates
// it and returns its device node. On error the device is removed again.
func (d *DeviceMapper) CreateReadOnly(name string, target dmTarget) (node string, err error) {
	// The read-only flag on the table load opens the underlying device
	// read-only, which the verity target demands.
	return d.create(name, target, dmReadonlyFlag, fmt.Sprintf("%s %s", target.Type, target.Params))
}

// CreateReadWrite creates the writable device name with the one target,
// activates it and returns its device node. Its errors never show the
// table, which may hold a key. On error the device is removed again.
func (d *DeviceMapper) CreateReadWrite(name string, target dmTarget) (node string, err error) {
	return d.create(name, target, 0, target.Type+" target")
}

// create creates, loads and activates the device; flags go with every
// request, shownTable stands for the table in an error.
func (d *DeviceMapper) create(name string, target dmTarget, flags uint32, shownTable string) (node string, err error) {
	if err := validateDMName(name); err != nil {
		return "", err
	}
	ctl, err := d.openControl()
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	if _, err := d.ioctl(ctl, dmVersionCmd, "", 0, nil); err != nil {
		return "", err
	}
	if _, err := d.ioctl(ctl, dmDevCreateCmd, name, flags, nil); err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			if _, rerr := d.ioctl(ctl, dmDevRemoveCmd, name, 0, nil); rerr != nil {
				err = fmt.Errorf("%w (and removing it again: %v)", err, rerr)
			}
		}
	}()
	if _, err := d.ioctl(ctl, dmTableLoadCmd, name, flags, []dmTarget{target}); err != nil {
		return "", fmt.Errorf("%w (table: %s)", err, shownTable)
	}
	// DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: it makes the loaded
	// table live.
	r, err := d.ioctl(ctl, dmDevSuspendCmd, name, flags, nil)
	if err != nil {
		return "", err
	}
	node, err = d.deviceNode(name, r.Dev)
	if err != nil {
		return "", err
	}
	return node, nil
}

// deviceNode returns devtmpfs's /dev/dm-<minor> if it is there and is the
// device, else creates a node of its own in NodeDir.
func (d *DeviceMapper) deviceNode(name string, dev uint64) (string, error) {
	node := filepath.Join(d.DevDir, fmt.Sprintf("dm-%d", unix.Minor(dev)))
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev {
		return node, nil
	}
	if err := os.MkdirAll(d.NodeDir, 0o700); err != nil {
		return "", fmt.Errorf("create directory for device-mapper nodes: %w", err)
	}
	node = filepath.Join(d.NodeDir, name)
	if err := os.Remove(node); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("remove stale device node: %w", err)
	}
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return "", fmt.Errorf("create device node %s (%d:%d) of device-mapper device %s: %w", node, unix.Major(dev), unix.Minor(dev), name, err)
	}
	return node, nil
}

// Remove removes the device name (and the node we may have made for it).
func (d *DeviceMapper) Remove(name string) error {
	if err := validateDMName(name); err != nil {
		return err
	}
	ctl, err := d.openControl()
	if err != nil {
		return err
	}
	defer ctl.Close()
	if _, err := d.ioctl(ctl, dmDevRemoveCmd, name, 0, nil); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(d.NodeDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove device node of device-mapper device %s: %w", name, err)
	}
	return nil
}
