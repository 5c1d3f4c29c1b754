package agent

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendFd connects to the console socket and sends f as runc does.
func sendFd(t *testing.T, path string, name string, f *os.File) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.(*net.UnixConn).WriteMsgUnix([]byte(name), unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Fatal(err)
	}
}

func TestConsoleSocket(t *testing.T) {
	dir := t.TempDir()
	s, err := newConsoleSocket(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(s.path())); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket directory %v %v: only root may enter it", fi.Mode(), err)
	}

	// Nothing sent: a bounded wait.
	if _, err := s.receive(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "runc sent no terminal") {
		t.Errorf("receive without a sender: %v", err)
	}
	// Not a terminal.
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	sendFd(t, s.path(), "/dev/pts/0", r)
	if _, err := s.receive(time.Second); err == nil || !strings.Contains(err.Error(), "is not a pty master") {
		t.Errorf("a pipe as the master: %v", err)
	}
	// A pty master.
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	sendFd(t, s.path(), "/dev/pts/7", ptmx)
	ptmx.Close()
	m, err := s.receive(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name() != "/dev/pts/7" {
		t.Errorf("master named %q", m.Name())
	}
	if err := setWinsize(m, 100, 30); err != nil {
		t.Errorf("resize: %v", err)
	}
	m.Close()
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	long := filepath.Join(dir, strings.Repeat("d", 100))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := newConsoleSocket(long); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("socket path too long: %v", err)
	}
	if left, _ := os.ReadDir(long); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
