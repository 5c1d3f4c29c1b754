package harness

import (
	"bytes"
	"fmt"
	"os"
)

// WriteMuteInitrd writes an initramfs whose /init only sleeps: a guest
// that boots but never answers, for testing the shim's agent_ready
// timeout. It is an uncompressed newc cpio, reproducible byte for byte.
func WriteMuteInitrd(path, busyboxPath string) error {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("read busybox for mute initrd: %w", err)
	}
	var w cpioWriter
	w.add("bin", 0o040755, nil, 0, 0)
	w.add("bin/busybox", 0o100755, bb, 0, 0)
	w.add("bin/sh", 0o120777, []byte("busybox"), 0, 0)
	w.add("dev", 0o040755, nil, 0, 0)
	w.add("dev/console", 0o020600, nil, 5, 1)
	w.add("init", 0o100755, []byte("#!/bin/sh\n# Never starts an agent.\nexec /bin/busybox sleep 2147483647\n"), 0, 0)
	w.add("TRAILER!!!", 0, nil, 0, 0)
	if err := os.WriteFile(path, w.buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write mute initrd: %w", err)
	}
	return nil
}

// cpioWriter writes the "newc" format the kernel unpacks
// (Documentation/driver-api/early-userspace/buffer-format.rst).
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) add(name string, mode uint32, data []byte, rdevMajor, rdevMinor int) {
	w.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}
