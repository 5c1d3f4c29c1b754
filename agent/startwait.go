package agent

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// execWaitLimit bounds how long a start waits for the container's process
// to replace runc's init.
const execWaitLimit = 2 * time.Second

// processImage identifies what a process runs: the target of its exe link
// with the link's inode, "" once it is gone.
func processImage(pid int) string {
	p := fmt.Sprintf("/proc/%d/exe", pid)
	target, err := os.Readlink(p)
	if err != nil {
		return ""
	}
	info, err := os.Stat(p)
	if err != nil {
		return ""
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return target
	}
	return fmt.Sprintf("%s %d:%d", target, st.Dev, st.Ino)
}

// waitExec waits, bounded, until the process pid runs another image than
// before (runc's init, waiting to be started): `runc start` returns once it
// released runc's init, before that execs the container's program. In a
// guest under emulation that exec takes long enough that a SIGTERM right
// after the start (a kubelet stopping a container it just started) would
// reach runc's init, which as its namespace's PID 1 ignores it, and be
// lost; after the exec it reaches the program, as on a node with runc.
func waitExec(ctx context.Context, pid int, before string) {
	if before == "" {
		return
	}
	deadline := time.Now().Add(execWaitLimit)
	for delay := 100 * time.Microsecond; time.Now().Before(deadline) && ctx.Err() == nil; delay = min(2*delay, 5*time.Millisecond) {
		if now := processImage(pid); now != before {
			return
		}
		time.Sleep(delay)
	}
}
