package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// consoleSocket is the unix socket runc sends a terminal process's pty
// master to (runc --console-socket). It lives in a directory of its own
// that only root can enter: whoever connects first hands us "the" master.
type consoleSocket struct {
	dir string
	l   *net.UnixListener
}

// maxSocketPath is the room in sockaddr_un.sun_path, without the NUL.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

func newConsoleSocket(parent string) (_ *consoleSocket, err error) {
	dir, err := os.MkdirTemp(parent, "tty-")
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	path := filepath.Join(dir, "s")
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("console socket path %s is longer than %d bytes", path, maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return &consoleSocket{dir: dir, l: l}, nil
}

func (s *consoleSocket) path() string { return s.l.Addr().String() }

// receive takes the pty master runc sent. runc has exited by now, so its
// connection waits in the backlog: the deadline only guards against a runc
// that never connected.
func (s *consoleSocket) receive(timeout time.Duration) (*os.File, error) {
	if err := s.l.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	conn, err := s.l.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("console socket: runc sent no terminal: %w", err)
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	// runc sends the slave's name as data and the master as SCM_RIGHTS.
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, fmt.Errorf("console socket: receive terminal: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	if len(fds) != 1 {
		closeFds(fds)
		return nil, fmt.Errorf("console socket: got %d file descriptors, want the pty master alone", len(fds))
	}
	fd := fds[0]
	// A pty master answers TIOCGPTN (its slave's number); anything else
	// is not a terminal we can serve.
	if _, err := unix.IoctlGetInt(fd, unix.TIOCGPTN); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("console socket: %q is not a pty master: %w", name[:n], err)
	}
	// Non-blocking, so the runtime poller serves it: read deadlines drain
	// the output at exit, write deadlines bound stdin.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return os.NewFile(uintptr(fd), string(name[:n])), nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func (s *consoleSocket) close() error {
	s.l.Close()
	if err := os.RemoveAll(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove console socket: %w", err)
	}
	return nil
}

// dupFile duplicates f's descriptor (close-on-exec), for a second owner
// that closes it on its own schedule.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), derr)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// setWinsize sets a terminal's window size; the kernel sends SIGWINCH to
// its foreground process group.
func setWinsize(master *os.File, width, height uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: height, Col: width})
	}); err != nil {
		return err
	}
	return ierr
}
