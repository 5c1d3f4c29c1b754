package stdio

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPty returns a pty master (non-blocking, as the agent receives it
// from runc) and its slave.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(m, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	master = os.NewFile(uintptr(m), "ptmx")
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// setLflag turns local mode flags on the slave on or off.
func setLflag(t *testing.T, slave *os.File, flag uint32, on bool) {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if on {
		tio.Lflag |= flag
	} else {
		tio.Lflag &^= flag
	}
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
}

// readOnce reads one read(2) of the slave: in canonical mode, one line or
// what an end-of-file released.
func readOnce(t *testing.T, slave *os.File) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := slave.Read(buf)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// Closing a Terminal is end-of-file for a reader of the slave, after a
// partial line too, and the master stays usable for the output.
func TestTerminalEOF(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		reads       []string
	}{
		{"after a full line", "hello\n", []string{"hello\n", ""}},
		{"after a partial line", "hello\npart", []string{"hello\n", "part", ""}},
		{"nothing sent", "", []string{""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, slave := openPty(t)
			defer slave.Close()
			out, err := dupForTest(master)
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			setLflag(t, slave, unix.ECHO, false)
			term := NewTerminal(master)
			if _, err := term.Write([]byte(tc.input)); err != nil {
				t.Fatal(err)
			}
			if err := term.Close(); err != nil {
				t.Fatal(err)
			}
			for i, want := range tc.reads {
				if got := readOnce(t, slave); got != want {
					t.Fatalf("read %d: %q, want %q", i, got, want)
				}
			}
			// The terminal is not hung up: output still flows.
			slave.Write([]byte("still here\n"))
			out.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := out.Read(buf)
			if err != nil || string(buf[:n]) != "still here\r\n" {
				t.Fatalf("output after EOF: %q %v", buf[:n], err)
			}
		})
	}
}

// In raw mode the end-of-file character goes to the process as a byte,
// once: shells read it as EOF on an empty line.
func TestTerminalEOFRaw(t *testing.T) {
	master, slave := openPty(t)
	defer slave.Close()
	out, err := dupForTest(master) // as the output copier holds it
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	setLflag(t, slave, unix.ICANON|unix.ECHO, false)
	term := NewTerminal(master)
	term.Write([]byte("ab"))
	if err := term.Close(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if _, err := io.ReadFull(slave, got); err != nil || string(got) != "ab\x04" {
		t.Fatalf("raw read %q %v", got, err)
	}
}

// A process that never reads its terminal: Interrupt frees a blocked
// Write, and Close gives up on the end-of-file character in bounded time.
func TestTerminalInterrupt(t *testing.T) {
	master, slave := openPty(t)
	defer slave.Close()
	out, err := dupForTest(master)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	setLflag(t, slave, unix.ICANON|unix.ECHO, false)
	term := NewTerminal(master)
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(term, bytes.NewReader(bytes.Repeat([]byte("x"), 1<<20)))
		werr <- err
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-werr:
		t.Fatalf("1 MiB went into a terminal nobody reads: %v", err)
	default:
	}
	term.Interrupt()
	select {
	case <-werr:
	case <-time.After(5 * time.Second):
		t.Fatal("Interrupt did not end the blocked write")
	}
	// Whether the character still fits depends on the kernel's buffers;
	// Close must not wait longer than eofTimeout either way.
	start := time.Now()
	err = term.Close()
	if d := time.Since(start); d > 3*eofTimeout {
		t.Errorf("Close took %v (%v)", d, err)
	}
}

// A terminal's output ends with EIO once the slave is closed: the copier
// sends everything and ends without complaint.
func TestOutputFromTerminal(t *testing.T) {
	h := NewHub()
	dial := serveUnix(t, h)
	master, slave := openPty(t)
	o := h.StartOutput(context.Background(), keyOut, master, 5*time.Second)
	host := dial(hdr(keyOut))
	data := bytes.Repeat([]byte("line\n"), 2000)
	go func() {
		slave.Write(data)
		slave.Close()
		o.ProcessExited()
	}()
	got, err := io.ReadAll(host)
	if err != nil {
		t.Fatal(err)
	}
	if want := bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n")); !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	<-o.Drained()
	<-o.Done()
}

// dupForTest duplicates f without f.Fd(), which would make the shared
// file description blocking.
func dupForTest(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), f.Name()), derr
}
