// Package pipes sizes pipes and FIFOs, for the agent's output pipes and the
// shim's output FIFOs alike.
package pipes

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Grow asks the kernel for size bytes of room in the pipe or FIFO f (any of
// its ends). The kernel rounds up to a power of two pages and refuses sizes
// above fs.pipe-max-size to callers without CAP_SYS_RESOURCE.
func Grow(f *os.File, size int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("grow pipe %s: %w", f.Name(), err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { _, serr = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size) }); err != nil {
		return fmt.Errorf("grow pipe %s: %w", f.Name(), err)
	}
	if serr != nil {
		return fmt.Errorf("grow pipe %s to %d bytes: %w", f.Name(), size, serr)
	}
	return nil
}

// Size returns the room the kernel gives the pipe or FIFO f.
func Size(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("pipe size of %s: %w", f.Name(), err)
	}
	var n int
	var serr error
	if err := rc.Control(func(fd uintptr) { n, serr = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) }); err != nil {
		return 0, fmt.Errorf("pipe size of %s: %w", f.Name(), err)
	}
	if serr != nil {
		return 0, fmt.Errorf("pipe size of %s: %w", f.Name(), serr)
	}
	return n, nil
}
