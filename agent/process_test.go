package agent

import (
	"os"
	"testing"

	"github.com/contrast-vm/contrast/agent/stdio"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/pipes"
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
	size := func(f *os.File) int {
		n, err := pipes.Size(f)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for name, f := range map[string]*os.File{"stdout": pio.stdoutR, "stderr": pio.stderrR} {
		if got := size(f); got != stdio.OutputPipeSize {
			t.Errorf("%s pipe holds %d bytes, want %d", name, got, stdio.OutputPipeSize)
		}
	}
	if got := size(pio.stdinW); got >= stdio.OutputPipeSize {
		t.Errorf("stdin pipe holds %d bytes, want the default", got)
	}
}
