package qemu

import (
	"bytes"
	"context"
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

	kind, err := identify(pid, pidfd, pidPath)
	if err != nil {
		return err
	}
	switch kind {
	case processEnded:
		removeRuntimeFiles(stateDir)
		return nil
	case processExiting:
		// Typically our QEMU, killed with its shim a moment ago: it ends on
		// its own.
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := waitPidfd(waitCtx, pidfd); err != nil {
			return fmt.Errorf("wait for exiting pid %d: %w", pid, err)
		}
		removeRuntimeFiles(stateDir)
		return nil
	case processOther:
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

// processKind is what the pid in a pid file turned out to be.
type processKind int

const (
	processEnded   processKind = iota // no such process (any more)
	processExiting                    // in exit or a zombie: it ends on its own
	processOurQEMU                    // a QEMU started with this very pid file
	processOther                      // anything else: a recycled pid
)

// identify tells what the process behind pid (pinned by pidfd) is.
//
// An empty /proc/<pid>/cmdline does not by itself mean "exiting": a process
// in the middle of execve has one too, between the kernel installing the new
// address space and recording the argument strings in it, and a loaded
// machine can stretch that window. The kernel's own word for exiting is in
// /proc/<pid>/stat: state Z or X, or the PF_EXITING flag, which do_exit sets
// before it drops the address space (and with it the command line). Our QEMU
// wrote the pid file itself, long after its exec, so a live process with an
// empty command line is never ours.
func identify(pid, pidfd int, pidPath string) (processKind, error) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return processEnded, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read command line of pid %d: %w", pid, err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return processEnded, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	state, flags, err := parseProcStat(stat)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	// A pid is reused only after its process is reaped: if the pinned
	// process still exists now, both files above were about it.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); errors.Is(err, unix.ESRCH) {
		return processEnded, nil
	} else if err != nil {
		return 0, fmt.Errorf("signal 0 to pid %d: %w", pid, err)
	}
	return classify(cmdline, state, flags, pidPath), nil
}

// pfExiting is the kernel's PF_EXITING task flag (include/linux/sched.h),
// set as a process starts to exit.
const pfExiting = 0x4

// classify decides from a process's command line and its /proc stat state
// and flags.
func classify(cmdline []byte, state byte, flags uint64, pidPath string) processKind {
	switch {
	case state == 'Z' || state == 'X' || flags&pfExiting != 0:
		return processExiting
	case isOurQEMU(cmdline, pidPath):
		return processOurQEMU
	default:
		return processOther
	}
}

// parseProcStat returns the state and the flags of a /proc/<pid>/stat line.
// The command name in parentheses may itself hold spaces and parentheses,
// so the fields are counted from its last ')'.
func parseProcStat(stat []byte) (state byte, flags uint64, err error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("malformed /proc stat %q", truncate(string(stat), 80))
	}
	// After the name: state ppid pgrp session tty_nr tpgid flags ...
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 7 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("malformed /proc stat %q", truncate(string(stat), 80))
	}
	flags, err = strconv.ParseUint(fields[6], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed flags in /proc stat %q: %w", truncate(string(stat), 80), err)
	}
	return fields[0][0], flags, nil
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
