// Command bootinit is /init of the image TestBootImage boots: it reports from
// inside the guest what the test checks (kernel release, the image's files,
// that runc runs), prints the marker from the kernel command line and powers
// the VM off.
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

func main() {
	// PID 1's stdout is /dev/console, opened by the kernel from the initramfs.
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		report("error mount /proc: %v", err)
	}
	// When /init started, for the boot time the test reports.
	start, _ := os.ReadFile("/proc/uptime")
	report("init uptime=%s", strings.Fields(string(start) + " ?")[0])
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		report("error uname: %v", err)
	}
	report("release=%s", cstr(uts.Release[:]))
	// The file system mounted on /: source, type and options.
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[1] == "/" {
			report("rootfs=%s %s %s", f[0], f[2], f[3])
		}
	}

	var st syscall.Stat_t
	if err := syscall.Stat("/dev/console", &st); err != nil {
		report("error stat /dev/console: %v", err)
	} else {
		report("console=%d,%d", (st.Rdev>>8)&0xfff, st.Rdev&0xff)
	}
	out, err := exec.Command("/usr/bin/runc", "--version").CombinedOutput()
	if err != nil {
		report("error runc --version: %v: %s", err, out)
	} else {
		report("runc=%s", strings.SplitN(string(out), "\n", 2)[0])
	}
	if err := syscall.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		report("error mount /sys: %v", err)
	}
	// The device-mapper device a root disk is opened through, if any.
	if name, err := os.ReadFile("/sys/block/dm-0/dm/name"); err == nil {
		table, _ := os.ReadFile("/sys/block/dm-0/ro")
		report("dm-0=%s ro=%s", strings.TrimSpace(string(name)), strings.TrimSpace(string(table)))
	}
	clock, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	report("clocksource=%s", strings.TrimSpace(string(clock)))
	uptime, _ := os.ReadFile("/proc/uptime")
	report("uptime=%s", strings.Fields(string(uptime) + " ?")[0])

	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, arg := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(arg, "contrast.test.marker="); ok {
			report("marker=%s", v)
		}
	}
	syscall.Sync()
	err = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	// Without ACPI power-off, a reset ends QEMU too (it runs with -no-reboot).
	report("error power off: %v", err)
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
}

func report(format string, args ...any) {
	fmt.Printf("BOOTINIT "+format+"\n", args...)
}

func cstr(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		s = append(s, byte(c))
	}
	return string(bytes.TrimRight(s, "\x00"))
}
