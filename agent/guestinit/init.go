package guestinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// kernelMounts are the filesystems the agent and runc need, in order.
var kernelMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
	// configfs-tsm (/sys/kernel/config/tsm/report) is how the guest asks
	// the SEV-SNP firmware for attestation reports.
	{"configfs", "/sys/kernel/config", "configfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

func (m mount) do() error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", m.target, err)
	}
	// Mounted already (MountEarly, or the kernel's devtmpfs.mount): a
	// second mount would stack on the first.
	var st, parent unix.Stat_t
	if unix.Stat(m.target, &st) == nil && unix.Stat(filepath.Dir(m.target), &parent) == nil && st.Dev != parent.Dev {
		return nil
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// MountEarly mounts /proc and /dev, which the agent needs before anything
// else (the console, the check for the initramfs), and returns the console.
func MountEarly() (*os.File, error) {
	for _, m := range []mount{kernelMounts[0], kernelMounts[2]} {
		if err := m.do(); err != nil {
			return nil, err
		}
	}
	console, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open console: %w", err)
	}
	// Go's own crash output (stderr) must reach the console too.
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(int(console.Fd()), fd, 0); err != nil {
			return nil, fmt.Errorf("console as fd %d: %w", fd, err)
		}
	}
	return console, nil
}

// UnmountEarly undoes MountEarly before SwitchRoot (open fds keep the
// console usable).
func UnmountEarly() error {
	for _, dir := range []string{"/dev", "/proc"} {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

// Setup mounts the kernel filesystems, prepares cgroups for runc and brings
// up loopback. Mounts that exist already are kept.
func Setup() error {
	for _, m := range kernelMounts {
		if err := m.do(); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join("/dev", name)); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create /dev/%s: %w", name, err)
		}
	}
	if err := SetupCgroups("/sys/fs/cgroup", "agent"); err != nil {
		return err
	}
	return BringUpLoopback()
}

// SetupCgroups moves the agent into a child cgroup (a cgroup v2 cgroup with
// processes cannot hand controllers to children, except the root) and
// enables every available controller for the root's children, where runc
// creates the containers' cgroups. A controller the kernel refuses is
// logged, not fatal: only containers whose limits need it fail.
func SetupCgroups(root, agentGroup string) error {
	dir := filepath.Join(root, agentGroup)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("move agent into cgroup %s: %w", dir, err)
	}
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read cgroup controllers: %w", err)
	}
	var failed []string
	for _, c := range strings.Fields(string(avail)) {
		// One at a time: one controller the kernel refuses must not keep
		// the others off.
		if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			failed = append(failed, fmt.Sprintf("%s (%v)", c, err))
		}
	}
	if len(failed) > 0 {
		log.L.Warnf("cgroup controllers not enabled: %s", strings.Join(failed, ", "))
	}
	return nil
}

// BringUpLoopback sets lo up in the current network namespace.
func BringUpLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: set flags: %w", err)
	}
	return nil
}

// SetHostname sets the VM's hostname.
func SetHostname(name string) error {
	return unix.Sethostname([]byte(name))
}

// PowerOff ends the VM: the host sees the VM exit instead of a kernel panic
// loop when init dies. It does not return.
func PowerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(os.Stderr, "contrast-agent: power off failed: %v\n", err)
	for {
		time.Sleep(time.Hour)
	}
}
