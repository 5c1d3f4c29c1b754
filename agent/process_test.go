package agent

import (
	"testing"

	"github.com/contrast-vm/contrast/agent/stdio"
	api "github.com/contrast-vm/contrast/api/agent"
	"golang.org/x/sys/unix"
)

// The output pipes get stdio.OutputPipeSize of room, no more (a host that
// does not read holds the process back at that bound); stdin keeps the
// kernel's default.
func TestProcIOPipeSizes(t *testing.T) {
	pio, err := newProcIO(&api.Stdio{Stdin: true, Stdout: true, Stderr: true}, 0, 0, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer pio.closeAgent()
	defer pio.closeChild()
	size := func(fd uintptr) int {
		n, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for name, fd := range map[string]uintptr{"stdout": pio.stdoutR.Fd(), "stderr": pio.stderrR.Fd()} {
		if got := size(fd); got != stdio.OutputPipeSize {
			t.Errorf("%s pipe holds %d bytes, want %d", name, got, stdio.OutputPipeSize)
		}
	}
	if got := size(pio.stdinW.Fd()); got >= stdio.OutputPipeSize {
		t.Errorf("stdin pipe holds %d bytes, want the default", got)
	}
}
