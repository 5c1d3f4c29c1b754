// Command init is the /init of the QEMU backend's boot test: it reports
// block devices (with their serial and first bytes) appearing and vanishing
// on the serial console, and echoes on vsock port 1024.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const echoPort = 1024

func main() {
	for _, m := range []struct{ src, dst, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			fatal("mount %s: %v", m.dst, err)
		}
	}
	// No /dev/console node existed when the kernel started us: write to
	// the serial port directly.
	if tty, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0); err == nil {
		os.Stdout, os.Stderr = tty, tty
	}
	go echo()
	say("INIT: ready")
	seen := map[string]bool{}
	for {
		now := map[string]bool{}
		ents, _ := filepath.Glob("/sys/block/vd*")
		sort.Strings(ents)
		for _, e := range ents {
			name := filepath.Base(e)
			now[name] = true
			if seen[name] {
				continue
			}
			serial, _ := os.ReadFile(e + "/serial")
			say("DISK-ADDED %s %s", name, strings.TrimSpace(string(serial)))
			head := make([]byte, 32)
			if f, err := os.Open("/dev/" + name); err == nil {
				n, _ := io.ReadFull(f, head)
				f.Close()
				say("DISK-DATA %s %s", name, bytes.TrimRight(head[:n], "\x00"))
			} else {
				say("DISK-DATA %s error %v", name, err)
			}
		}
		for name := range seen {
			if !now[name] {
				say("DISK-REMOVED %s", name)
			}
		}
		seen = now
		time.Sleep(50 * time.Millisecond)
	}
}

func echo() {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		say("VSOCK: socket: %v", err)
		return
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: echoPort}); err != nil {
		say("VSOCK: bind: %v", err)
		return
	}
	if err := unix.Listen(fd, 8); err != nil {
		say("VSOCK: listen: %v", err)
		return
	}
	say("VSOCK: listening on %d", echoPort)
	for {
		nfd, _, err := unix.Accept(fd)
		if err != nil {
			say("VSOCK: accept: %v", err)
			return
		}
		go func() {
			f := os.NewFile(uintptr(nfd), "vsock")
			defer f.Close()
			io.Copy(f, f)
		}()
	}
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func fatal(format string, args ...any) {
	say("INIT: "+format, args...)
	os.Exit(1)
}
