package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Cleanup ends the QEMU of a VM whose shim is gone (containerd's "delete"
// after a shim crash) and removes its sockets and pid file, keeping logs.
// It reads the pid from the state directory's pid file and kills only a
// process whose command line names that very pid file, so a recycled pid is
// left alone. Nothing running, or no pid file, is not an error.
func Cleanup(ctx context.Context, stateDir string) error {
	if err := cleanup(ctx, stateDir); err != nil {
		return fmt.Errorf("clean up qemu in %s: %w", stateDir, err)
	}
	return nil
}

func cleanup(ctx context.Context, stateDir string) error {
	pidPath := filepath.Join(stateDir, pidFileName)
	pid, err := readPIDFile(pidPath)
	if errors.Is(err, os.ErrNotExist) {
		removeRuntimeFiles(stateDir)
		return nil
	}
	if err != nil {
		return err
	}
	// A pidfd pins the process: once it is open, the checks below and the
	// signal are about the same process even if the pid is recycled.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		removeRuntimeFiles(stateDir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)

	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, os.ErrNotExist) {
		removeRuntimeFiles(stateDir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read command line of pid %d: %w", pid, err)
	}
	if len(cmdline) == 0 {
		// An exiting process has no command line any more: typically our
		// QEMU, killed with its shim a moment ago. It ends on its own.
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := waitPidfd(waitCtx, pidfd); err != nil {
			return fmt.Errorf("wait for exiting pid %d: %w", pid, err)
		}
		removeRuntimeFiles(stateDir)
		return nil
	}
	if !isOurQEMU(cmdline, pidPath) {
		log.G(ctx).WithField("pid", pid).Infof("pid file %s names a process that is not its qemu; leaving it alone", pidPath)
		removeRuntimeFiles(stateDir)
		return nil
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill qemu pid %d: %w", pid, err)
	}
	if err := waitPidfd(ctx, pidfd); err != nil {
		return fmt.Errorf("wait for qemu pid %d to end: %w", pid, err)
	}
	log.G(ctx).WithField("pid", pid).Info("killed leftover qemu")
	removeRuntimeFiles(stateDir)
	return nil
}

// isOurQEMU tells whether a NUL-separated /proc/<pid>/cmdline is a QEMU
// started with exactly this pid file.
func isOurQEMU(cmdline []byte, pidPath string) bool {
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == "-pidfile" && string(args[i+1]) == pidPath {
			return true
		}
	}
	return false
}

// waitPidfd waits until the process behind pidfd has ended (a pidfd turns
// readable then, also for processes that are not our children).
func waitPidfd(ctx context.Context, pidfd int) error {
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
