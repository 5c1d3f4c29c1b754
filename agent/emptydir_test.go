package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/agent/guestspec"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/vmimage"
)

// fakeScratch "opens" the scratch disk as a plain directory, counting the
// opens, or fails.
type fakeScratch struct {
	opens int
	fail  error
}

func (f *fakeScratch) Open(_ context.Context, device, dir string) error {
	if f.fail != nil {
		return f.fail
	}
	f.opens++
	return os.MkdirAll(dir, 0o700)
}

type oneDevice string

func (d oneDevice) Find(_ context.Context, serial string) (string, error) {
	if serial != api.ScratchDiskSerial {
		return "", errors.New("no such serial")
	}
	return string(d), nil
}

func newTestEmptyDirs(scratch ScratchOpener) *emptyDirs {
	return &emptyDirs{
		devices: oneDevice("/dev/vdz"), deviceTimeout: time.Second, scratch: scratch,
		memTotal: func() (uint64, error) { return 1 << 30, nil },
		memory:   map[string]uint64{}, onDisk: map[string]struct{}{},
	}
}

func TestEmptyDirsScratchOpenedOnce(t *testing.T) {
	scratch := &fakeScratch{}
	e := newTestEmptyDirs(scratch)
	dir := t.TempDir()
	vol := func(name string) guestspec.EmptyDir {
		return guestspec.EmptyDir{Name: name, Dir: filepath.Join(dir, "scratch", name)}
	}
	ctx := context.Background()
	if err := e.prepare(ctx, []guestspec.EmptyDir{vol("a"), vol("b")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "scratch", "a", "marker"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// a second container with the same volume finds what the first wrote
	if err := e.prepare(ctx, []guestspec.EmptyDir{vol("a")}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "scratch", "a", "marker")); err != nil {
		t.Errorf("the volume's content is gone: %v", err)
	}
	if scratch.opens != 1 {
		t.Errorf("scratch disk opened %d times, want once per pod", scratch.opens)
	}
	info, err := os.Stat(filepath.Join(dir, "scratch", "b"))
	if err != nil || info.Mode().Perm() != 0o777 {
		t.Errorf("volume directory: %v, %v; want mode 0777", info, err)
	}
	// the host must not turn a disk volume into a Memory one
	err = e.prepare(ctx, []guestspec.EmptyDir{{Name: "a", Memory: true, Dir: filepath.Join(dir, "memory", "a")}}, map[string]uint64{"a": 1 << 20})
	if err == nil || !strings.Contains(err.Error(), `emptyDir volume "a"`) {
		t.Errorf("medium switched between containers: %v, want an error naming the volume", err)
	}
}

func TestEmptyDirsScratchFailureNamesVolume(t *testing.T) {
	e := newTestEmptyDirs(&fakeScratch{fail: errors.New("dm-crypt unavailable")})
	err := e.prepare(context.Background(), []guestspec.EmptyDir{{Name: "cache", Dir: filepath.Join(t.TempDir(), "scratch", "cache")}}, nil)
	if err == nil || !strings.Contains(err.Error(), `emptyDir volume "cache"`) || !strings.Contains(err.Error(), "dm-crypt unavailable") {
		t.Fatalf("prepare: %v, want an error naming the volume and the cause", err)
	}
	// no fallback: a later try opens the scratch disk again, or fails again
	if e.scratchOpen || len(e.onDisk) > 0 {
		t.Errorf("a failed open left state: open %v, volumes %v", e.scratchOpen, e.onDisk)
	}
	e.scratch = nil
	if err := e.prepare(context.Background(), []guestspec.EmptyDir{{Name: "cache", Dir: filepath.Join(t.TempDir(), "c")}}, nil); err == nil {
		t.Error("a guest without a scratch opener made a disk emptyDir")
	}
}

func TestMemoryVolumes(t *testing.T) {
	good := []*api.MemoryVolume{{Name: "fast", SizeBytes: 1 << 20}}
	if m, err := memoryVolumes(good); err != nil || m["fast"] != 1<<20 {
		t.Errorf("memoryVolumes(%v) = %v, %v", good, m, err)
	}
	for name, in := range map[string][]*api.MemoryVolume{
		"size 0":   {{Name: "fast"}},
		"twice":    {{Name: "fast", SizeBytes: 1}, {Name: "fast", SizeBytes: 1}},
		"bad name": {{Name: "../etc", SizeBytes: 1}},
	} {
		if _, err := memoryVolumes(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	mounted := []guestspec.EmptyDir{{Name: "fast", Memory: true}}
	if err := checkMemoryVolumesMounted(map[string]uint64{"fast": 1, "other": 1}, mounted); err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Errorf("a Memory volume the spec does not mount: %v, want refused naming it", err)
	}
}

// The agent runs the mke2fs the image builder puts into the initramfs.
func TestGuestMke2fsPath(t *testing.T) {
	if GuestMke2fsPath != vmimage.GuestMke2fsPath {
		t.Errorf("agent runs %s, the image carries mke2fs at %s", GuestMke2fsPath, vmimage.GuestMke2fsPath)
	}
}
