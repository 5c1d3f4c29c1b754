package vmimage

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// staticBinary is a static Go program (testdata/bootinit) built once for the
// tests: the agent and runc of test images, and /init of the booted image.
var staticBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmimage-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	staticBinary = filepath.Join(dir, "bootinit")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", staticBinary, "./testdata/bootinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build testdata/bootinit: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testKernel writes a file with a bzImage setup header carrying the version
// string "<release> (test@test) #1": all that Build reads of a kernel. Tests
// that boot use the real kernel from CONTRAST_KERNEL.
func testKernel(t *testing.T, release string) string {
	t.Helper()
	b := make([]byte, 0x1000)
	binary.LittleEndian.PutUint16(b[bootFlagOffset:], 0xaa55)
	copy(b[headerMagicOffset:], "HdrS")
	binary.LittleEndian.PutUint16(b[protocolOffset:], 0x020f)
	binary.LittleEndian.PutUint16(b[kernelVersionOffset:], 0x400-0x200)
	copy(b[0x400:], release+" (test@test) #1 SMP\x00")
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// copyFile copies src to a new file in a temporary directory, with extra
// appended (an ELF file stays valid with trailing bytes).
func copyFile(t *testing.T, src, extra string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(p, append(b, extra...), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
