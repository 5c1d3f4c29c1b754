package stdio

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// eofTimeout bounds the write of the end-of-file character: a process that
// does not read its terminal must not hold up CloseStdin.
const eofTimeout = time.Second

// Terminal is the stdin of a process whose stdio is a terminal: bytes go
// to the pty master, and the end of the input is the terminal's end-of-file
// character (VEOF, ^D), as if typed: the master must stay open, closing it
// would hang up the terminal and lose the output still to come.
type Terminal struct {
	master *os.File

	mu      sync.Mutex
	closing bool
	// pending: the bytes written since the last line end; a canonical
	// terminal needs one VEOF to end that line, another for EOF.
	pending bool
}

// NewTerminal returns a stdin sink writing to master, a pollable pty master
// (non-blocking fd); Terminal owns it.
func NewTerminal(master *os.File) *Terminal { return &Terminal{master: master} }

func (t *Terminal) Write(p []byte) (int, error) {
	n, err := t.master.Write(p)
	if n > 0 {
		t.mu.Lock()
		switch p[n-1] {
		case '\n', '\r':
			t.pending = false
		default:
			t.pending = true
		}
		t.mu.Unlock()
	}
	return n, err
}

// Interrupt makes a pending Write return; once Close began it does nothing.
func (t *Terminal) Interrupt() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closing {
		_ = t.master.SetWriteDeadline(time.Now())
	}
}

// Close sends end-of-file the way the line discipline reads it, then closes
// this reference to the master.
func (t *Terminal) Close() error {
	t.mu.Lock()
	t.closing = true
	pending := t.pending
	t.mu.Unlock()
	err := t.sendEOF(pending)
	if cerr := t.master.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	return err
}

func (t *Terminal) sendEOF(pending bool) error {
	var tio *unix.Termios
	var ierr error
	rc, err := t.master.SyscallConn()
	if err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	// On a pty master, TCGETS reads the slave's settings: the ones the
	// process set.
	if err := rc.Control(func(fd uintptr) { tio, ierr = unix.IoctlGetTermios(int(fd), unix.TCGETS) }); err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("terminal: read settings: %w", ierr)
	}
	eof := tio.Cc[unix.VEOF]
	if eof == 0 { // _POSIX_VDISABLE: the process turned EOF off
		return errors.New("terminal: end-of-file character is disabled, stdin stays open")
	}
	seq := []byte{eof}
	// Canonical mode: a VEOF after unterminated input only ends that line.
	// In raw mode the character itself goes to the process (shells and
	// line editors read it as EOF on an empty line).
	if tio.Lflag&unix.ICANON != 0 && pending {
		seq = append(seq, eof)
	}
	if err := t.master.SetWriteDeadline(time.Now().Add(eofTimeout)); err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	if _, err := t.master.Write(seq); err != nil {
		return fmt.Errorf("terminal: send end-of-file: %w", err)
	}
	return nil
}
