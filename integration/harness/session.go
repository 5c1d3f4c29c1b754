package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Session is a long-running crictl (or ctr) call the test talks to while
// it runs: `crictl attach -i`, `crictl exec -i` with stdin kept open,
// `crictl exec -it` on a terminal the test holds the other end of, or
// `ctr events`. Its messages name it "crictl" either way.
type Session struct {
	cmd   *exec.Cmd
	args  []string
	stdin io.WriteCloser // pipe, or the pty master
	pty   *os.File       // pty master; nil for pipes

	mu     sync.Mutex
	out    bytes.Buffer // stdout (and, on a terminal, everything)
	errOut bytes.Buffer
	grew   chan struct{} // closed and replaced whenever output arrives

	copied sync.WaitGroup // output copiers
	done   chan struct{}  // closed when crictl has exited and output is in
	err    error          // crictl's exit; read after done
}

// StartSession starts crictl with args and pipes for stdin, stdout and
// stderr.
func (c *CRI) StartSession(ctx context.Context, args ...string) (*Session, error) {
	full, err := c.fullArgs(args)
	if err != nil {
		return nil, err
	}
	return startPipeSession(exec.CommandContext(ctx, c.Bin, full...), args)
}

// StartCtrSession starts ctr against this instance (k8s.io namespace)
// with args, for a call that streams, like `ctr events`.
func (c *Containerd) StartCtrSession(ctx context.Context, args ...string) (*Session, error) {
	full := append([]string{"--address", c.Socket, "--namespace", "k8s.io"}, args...)
	return startPipeSession(exec.CommandContext(ctx, c.tools.Ctr, full...), args)
}

func startPipeSession(cmd *exec.Cmd, args []string) (*Session, error) {
	s := newSession(args)
	s.cmd = cmd
	stdin, err := s.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("%s %s: stdin pipe: %w", cmd.Path, strings.Join(args, " "), err)
	}
	s.stdin = stdin
	s.cmd.Stdout = &sessionWriter{s: s, buf: &s.out}
	s.cmd.Stderr = &sessionWriter{s: s, buf: &s.errOut}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", cmd.Path, strings.Join(args, " "), err)
	}
	go func() {
		s.err = s.cmd.Wait() // returns once the output pipes are drained
		close(s.done)
	}()
	return s, nil
}

// StartTerminalSession starts crictl with args on a new pseudo-terminal
// of rows x cols, as a person at a terminal would run `crictl exec -it`:
// crictl is the session leader with the terminal as its controlling tty,
// so a resize of the terminal reaches it as SIGWINCH.
func (c *CRI) StartTerminalSession(ctx context.Context, rows, cols uint16, args ...string) (*Session, error) {
	full, err := c.fullArgs(args)
	if err != nil {
		return nil, err
	}
	return startTerminalSession(exec.CommandContext(ctx, c.Bin, full...), rows, cols, args)
}

// startTerminalSession starts cmd on a new pseudo-terminal (see
// StartTerminalSession).
func startTerminalSession(cmd *exec.Cmd, rows, cols uint16, args []string) (_ *Session, retErr error) {
	master, slave, err := openPTY()
	if err != nil {
		return nil, err
	}
	defer slave.Close() // the command holds its own copy
	defer func() {
		if retErr != nil {
			master.Close()
		}
	}()
	s := newSession(args)
	s.pty, s.stdin = master, master
	if err := s.Resize(rows, cols); err != nil {
		return nil, err
	}
	s.cmd = cmd
	s.cmd.Stdin, s.cmd.Stdout, s.cmd.Stderr = slave, slave, slave
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", cmd.Path, strings.Join(args, " "), err)
	}
	s.copied.Add(1)
	go func() {
		defer s.copied.Done()
		// Ends with EIO once the command, the last holder of the slave, exits.
		_, _ = io.Copy(&sessionWriter{s: s, buf: &s.out}, master)
	}()
	go func() {
		err := s.cmd.Wait()
		waitTimeout(&s.copied, 5*time.Second)
		s.err = err
		close(s.done)
	}()
	return s, nil
}

func newSession(args []string) *Session {
	return &Session{args: args, grew: make(chan struct{}), done: make(chan struct{})}
}

// waitTimeout waits for wg, at most d (a grandchild holding the pty
// open must not hang the test).
func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

type sessionWriter struct {
	s   *Session
	buf *bytes.Buffer
}

func (w *sessionWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.buf.Write(p)
	close(w.s.grew)
	w.s.grew = make(chan struct{})
	return len(p), nil
}

// Write sends text to crictl's stdin (the terminal, for a terminal
// session: what a person types).
func (s *Session) Write(text string) error {
	if _, err := io.WriteString(s.stdin, text); err != nil {
		return fmt.Errorf("write to crictl %s: %w", strings.Join(s.args, " "), err)
	}
	return nil
}

// CloseStdin ends crictl's input: the pipe is closed; on a terminal the
// line discipline's end-of-file character (^D) is typed.
func (s *Session) CloseStdin() error {
	if s.pty != nil {
		return s.Write("\x04")
	}
	if err := s.stdin.Close(); err != nil {
		return fmt.Errorf("close stdin of crictl %s: %w", strings.Join(s.args, " "), err)
	}
	return nil
}

// Resize sets the terminal's window size; the kernel signals crictl,
// which forwards the size to the container.
func (s *Session) Resize(rows, cols uint16) error {
	if s.pty == nil {
		return errors.New("resize: the session has no terminal")
	}
	ws := &unix.Winsize{Row: rows, Col: cols}
	if err := unix.IoctlSetWinsize(int(s.pty.Fd()), unix.TIOCSWINSZ, ws); err != nil {
		return fmt.Errorf("set terminal size %dx%d: %w", rows, cols, err)
	}
	return nil
}

// Output is everything crictl printed to stdout so far (on a terminal,
// stdout and stderr both, with the terminal's \r\n line ends).
func (s *Session) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// Stderr is what crictl printed to stderr so far (pipe sessions only).
func (s *Session) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errOut.String()
}

// Exited tells whether crictl has exited (and its output is all in).
func (s *Session) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// WaitOutput waits until the output contains want. It fails when crictl
// exits first or timeout passes, quoting what was printed.
func (s *Session) WaitOutput(want string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		got, grew := s.out.String(), s.grew
		s.mu.Unlock()
		if strings.Contains(got, want) {
			return nil
		}
		select {
		case <-grew:
		case <-s.done:
			if strings.Contains(s.Output(), want) {
				return nil
			}
			return fmt.Errorf("crictl %s exited (%v) before printing %q; stdout %q, stderr %q",
				strings.Join(s.args, " "), s.err, want, s.Output(), s.Stderr())
		case <-deadline.C:
			return fmt.Errorf("crictl %s did not print %q within %s; stdout %q, stderr %q",
				strings.Join(s.args, " "), want, timeout, s.Output(), s.Stderr())
		}
	}
}

// Wait waits up to timeout for crictl to exit and returns its exit code
// (crictl exits 1 when the command in the container fails). On timeout
// crictl is killed and the error says so.
func (s *Session) Wait(timeout time.Duration) (int, error) {
	select {
	case <-s.done:
	case <-time.After(timeout):
		s.Kill()
		return -1, fmt.Errorf("crictl %s still running after %s (killed); stdout %q, stderr %q",
			strings.Join(s.args, " "), timeout, s.Output(), s.Stderr())
	}
	if s.err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(s.err, &ee) {
		return ee.ExitCode(), nil
	}
	return -1, fmt.Errorf("crictl %s: %w", strings.Join(s.args, " "), s.err)
}

// Kill ends crictl (if still running) and releases the terminal; safe to
// call more than once and after Wait.
func (s *Session) Kill() {
	select {
	case <-s.done:
	default:
		if s.cmd.Process != nil {
			_ = s.cmd.Process.Kill()
		}
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
	}
	if s.pty != nil {
		s.pty.Close()
	} else if s.stdin != nil {
		s.stdin.Close()
	}
}

// openPTY opens a new pseudo-terminal pair (posix_openpt, unlockpt,
// ptsname by hand: no pty package in go.mod).
func openPTY() (master, slave *os.File, retErr error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	defer func() {
		if retErr != nil {
			master.Close()
		}
	}()
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, fmt.Errorf("get pty number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	slave, err = os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return master, slave, nil
}
