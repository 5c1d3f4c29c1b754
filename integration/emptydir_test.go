package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestEmptyDir: two containers of a contrast pod share a disk emptyDir
// and a Memory one, as the kubelet hands them in (directories under
// pods/<uid>/volumes/kubernetes.io~empty-dir, the Memory one a tmpfs of
// its sizeLimit). What one writes the other reads; none of it is in the
// clear anywhere in the host's state (the scratch disk holds ciphertext
// only, the host's directories nothing); the Memory volume refuses writes
// past its size.
func TestEmptyDir(t *testing.T) {
	const scratchMiB = 256
	var stateDir string
	s := newSuite(t, handlerSpec{name: contrastHandler, edit: func(c *harness.ShimConfig) {
		stateDir = c.StateDir
		c.ScratchMiB = scratchMiB
	}})
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	marker := "contrast-emptydir-marker-" + hex.EncodeToString(nonce[:])

	before := s.snapshot(t)
	pod := s.runPod(t, contrastHandler, "emptydir")
	volumes := filepath.Join(s.c.KubeletRoot(), "pods", pod.UID, "volumes", "kubernetes.io~empty-dir")
	shared, fast := filepath.Join(volumes, "shared"), filepath.Join(volumes, "fast")
	for _, d := range []string{shared, fast} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", fast, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(fast, unix.MNT_DETACH) })
	mounts := []harness.CRIMount{{HostPath: shared, ContainerPath: "/shared"}, {HostPath: fast, ContainerPath: "/fast"}}
	run := func(name, script string) harness.ContainerStatus {
		t.Helper()
		c := s.startWith(t, pod, harness.ContainerConfig{Name: name, Command: []string{"sh", "-c", script}, Mounts: mounts})
		st := s.waitExited(t, c, 2*time.Minute)
		if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
			t.Errorf("crictl rm %s: %v", name, err)
		}
		return st
	}

	// The scripts spell the marker in printf's octal escapes: containerd
	// logs the command lines into the state searched below.
	spelled := ""
	for _, b := range []byte(marker) {
		spelled += fmt.Sprintf(`\%03o`, b)
	}
	// a MiB of markers on the scratch disk, synced to it: had it reached
	// the host in the clear, the search below would find it
	write := fmt.Sprintf(`m=$(printf '%s') && yes "$m" | head -c 1048576 > /shared/m && echo "$m" > /fast/m && sync`, spelled)
	if st := run("writer", write); st.ExitCode != 0 {
		t.Fatalf("writer exited %d", st.ExitCode)
	}
	read := fmt.Sprintf(`m=$(printf '%s') && test "$(head -n 1 /shared/m)" = "$m" && test "$(cat /fast/m)" = "$m"`, spelled)
	if st := run("reader", read); st.ExitCode != 0 {
		t.Errorf("reader exited %d: it does not see what the writer wrote", st.ExitCode)
	}
	if st := run("filler", `dd if=/dev/zero of=/fast/big bs=65536 count=32`); st.ExitCode == 0 {
		t.Error("2 MiB fit into the Memory emptyDir of 1 MiB")
	}

	scratch, err := filepath.Glob(filepath.Join(stateDir, "*", pod.ID, "disks", "scratch.img"))
	if err != nil || len(scratch) != 1 {
		t.Fatalf("the pod's scratch disk image: %v %v, want one", scratch, err)
	}
	written, err := dataBytes(scratch[0])
	if err != nil {
		t.Fatal(err)
	}
	if written < 1<<20 {
		t.Errorf("the scratch image holds %d bytes of data: the writer's MiB did not reach it", written)
	}
	for _, root := range []string{stateDir, volumes} {
		found, err := findInTree(root, []byte(marker))
		if err != nil {
			t.Fatal(err)
		}
		if found != "" {
			t.Errorf("the marker written in the VM is in the clear on the host: %s", found)
		}
	}
	t.Logf("scratch image: %d bytes of data in a %d MiB sparse file", written, scratchMiB)
	if console, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(scratch[0])), "console.log")); err == nil {
		if line := regexp.MustCompile(`scratch disk \S+ opened[^"]*`).Find(console); line != nil {
			t.Logf("guest: %s", line)
		}
	}

	trace := s.trace(t, pod)
	if err := unix.Unmount(fast, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	s.removePod(t, pod, trace, before)
}

// dataBytes is how much of a sparse file holds data (its extents).
func dataBytes(path string) (int64, error) {
	var total int64
	err := dataExtents(path, func(f *os.File, off, end int64) error {
		total += end - off
		return nil
	})
	return total, err
}

// dataExtents calls fn for each data extent of the file (SEEK_DATA,
// SEEK_HOLE), so that a sparse image is read only where it was written.
func dataExtents(path string, fn func(f *os.File, off, end int64) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var off int64
	for {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ESPIPE) {
			return nil // no more data; or a namespace file, which holds none
		}
		if err != nil {
			return fmt.Errorf("%s: SEEK_DATA: %w", path, err)
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("%s: SEEK_HOLE: %w", path, err)
		}
		if err := fn(f, start, end); err != nil {
			return err
		}
		off = end
	}
}

// findInTree searches every regular file under root (the data of sparse
// ones) for needle and names the first that holds it.
func findInTree(root string, needle []byte) (string, error) {
	found := ""
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // went while we walked
			}
			return err
		}
		if found != "" || !d.Type().IsRegular() {
			return nil
		}
		return dataExtents(p, func(f *os.File, off, end int64) error {
			buf := make([]byte, 1<<20+len(needle))
			for pos := off; pos < end && found == ""; pos += 1 << 20 {
				n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
				if err != nil && err != io.EOF {
					return err
				}
				if bytes.Contains(buf[:n], needle) {
					found = fmt.Sprintf("%s at offset %d", p, pos)
				}
			}
			return nil
		})
	})
	return found, err
}
