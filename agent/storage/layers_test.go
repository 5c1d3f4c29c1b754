package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/contrast-vm/contrast/api/agent"
)

func hex64(c string) string { return strings.Repeat(c, 64) }

func goodLayer() Layer {
	return Layer{Serial: "layer-a", Digest: "sha256:" + hex64("a"), RootHash: hex64("b"), DataBlocks: 100}
}

func TestLayerValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(*Layer)
		wantErr string // "" = valid
	}{
		{"good", func(*Layer) {}, ""},
		{"empty serial", func(l *Layer) { l.Serial = "" }, "serial"},
		{"serial with slash", func(l *Layer) { l.Serial = "../x" }, "serial"},
		{"digest without algorithm", func(l *Layer) { l.Digest = hex64("a") }, "digest"},
		{"digest sha512", func(l *Layer) { l.Digest = "sha512:" + hex64("a") }, "digest"},
		{"digest upper case", func(l *Layer) { l.Digest = "sha256:" + hex64("A") }, "digest"},
		{"digest short", func(l *Layer) { l.Digest = "sha256:abc" }, "digest"},
		{"root hash upper case", func(l *Layer) { l.RootHash = hex64("B") }, "root_hash"},
		{"root hash 63", func(l *Layer) { l.RootHash = l.RootHash[1:] }, "root_hash"},
		{"root hash not hex", func(l *Layer) { l.RootHash = hex64("g") }, "root_hash"},
		{"no data blocks", func(l *Layer) { l.DataBlocks = 0 }, "data_blocks is 0"},
		{"too many data blocks", func(l *Layer) { l.DataBlocks = 1<<40 + 1 }, "data_blocks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := goodLayer()
			tc.change(&l)
			err := l.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("valid layer refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
			}
		})
	}
}

// The tree size must be what veritysetup (cryptsetup) writes for the same
// parameters, or the device size check would refuse good layers or pass
// short ones.
func TestVerityTreeBlocksMatchesVeritysetup(t *testing.T) {
	veritysetup, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Fatal("veritysetup is needed: apt-get install cryptsetup-bin")
	}
	dir := t.TempDir()
	for _, blocks := range []uint64{1, 2, 127, 128, 129, 1000, 16384, 16385} {
		data, hash := filepath.Join(dir, fmt.Sprint("data", blocks)), filepath.Join(dir, fmt.Sprint("hash", blocks))
		if err := os.WriteFile(data, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(data, int64(blocks*api.VerityBlockSize)); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(veritysetup, "format", "--no-superblock", "--salt="+api.VeritySaltHex,
			"--hash="+api.VerityAlgorithm, "--data-block-size=4096", "--hash-block-size=4096", data, hash).CombinedOutput()
		if err != nil {
			t.Fatalf("veritysetup format over %d blocks: %v\n%s", blocks, err, out)
		}
		st, err := os.Stat(hash)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := VerityTreeBlocks(blocks), uint64(st.Size())/api.VerityBlockSize; got != want {
			t.Errorf("%d data blocks: we compute %d hash blocks, veritysetup wrote %d", blocks, got, want)
		}
	}
}

func TestOverlayLowerDirs(t *testing.T) {
	for _, tc := range []struct {
		bottomFirst, want []string
	}{
		{[]string{"a"}, []string{"a"}},
		{[]string{"a", "b", "c"}, []string{"c", "b", "a"}},
		{[]string{"a", "b", "a"}, []string{"a", "b"}},
		{[]string{"a", "a", "b", "b"}, []string{"b", "a"}},
	} {
		if got := overlayLowerDirs(tc.bottomFirst); !slices.Equal(got, tc.want) {
			t.Errorf("%v: lowerdir %v, want %v", tc.bottomFirst, got, tc.want)
		}
	}
}

// fakeDevices maps serials to paths.
type fakeDevices map[string]string

func (f fakeDevices) Find(_ context.Context, serial string) (string, error) {
	if p, ok := f[serial]; ok {
		return p, nil
	}
	return "", fmt.Errorf("no block device with serial %q", serial)
}

// recordingOps records the operations and fails those named in fail.
type recordingOps struct {
	mu    sync.Mutex // Acquires of different layers open them at once
	size  uint64
	fail  map[string]error // by operation name
	calls []string
	open  map[string]bool // dm names open
	mnt   map[string]bool // dirs mounted
}

func newRecordingOps() *recordingOps {
	return &recordingOps{size: 1 << 30, fail: map[string]error{}, open: map[string]bool{}, mnt: map[string]bool{}}
}

func (o *recordingOps) DeviceSize(device string) (uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "size "+device)
	return o.size, o.fail["size"]
}

func (o *recordingOps) OpenVerity(name, device string, dataBlocks uint64, rootHash string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, fmt.Sprintf("open %s %s %d %s", name, device, dataBlocks, rootHash))
	if err := o.fail["open"]; err != nil {
		return "", err
	}
	o.open[name] = true
	return "/dev/mapper/" + name, nil
}

func (o *recordingOps) CloseVerity(name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "close "+name)
	if err := o.fail["close"]; err != nil {
		return err
	}
	delete(o.open, name)
	return nil
}

func (o *recordingOps) MountReadOnly(node, dir string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "mount "+node+" "+dir)
	if err := o.fail["mount"]; err != nil {
		return err
	}
	o.mnt[dir] = true
	return nil
}

func (o *recordingOps) Unmount(dir string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "unmount "+dir)
	if err := o.fail["unmount"]; err != nil {
		return err
	}
	delete(o.mnt, dir)
	return nil
}

func (o *recordingOps) assertNothingOpen(t *testing.T) {
	t.Helper()
	if len(o.open) > 0 || len(o.mnt) > 0 {
		t.Fatalf("left open: dm %v, mounts %v (calls %q)", o.open, o.mnt, o.calls)
	}
}

func TestLayerSetSharesAndReleases(t *testing.T) {
	ops := newRecordingOps()
	set := NewLayerSetWithOps("/run/l", fakeDevices{"layer-a": "/dev/vdb", "layer-b": "/dev/vdc"}, ops)
	a := goodLayer()
	b := Layer{Serial: "layer-b", Digest: "sha256:" + hex64("c"), RootHash: hex64("d"), DataBlocks: 7}
	ctx := context.Background()

	dir1, err := set.Acquire(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if want := "/run/l/" + a.RootHash; dir1 != want {
		t.Fatalf("layer mounted at %s, want %s", dir1, want)
	}
	dir2, err := set.Acquire(ctx, a)
	if err != nil || dir2 != dir1 {
		t.Fatalf("second Acquire: %s %v, want the same mount %s", dir2, err, dir1)
	}
	if _, err := set.Acquire(ctx, b); err != nil {
		t.Fatal(err)
	}
	wantCalls := []string{
		"size /dev/vdb",
		"open contrast-layer-" + a.RootHash + " /dev/vdb 100 " + a.RootHash,
		"mount /dev/mapper/contrast-layer-" + a.RootHash + " /run/l/" + a.RootHash,
		"size /dev/vdc",
		"open contrast-layer-" + b.RootHash + " /dev/vdc 7 " + b.RootHash,
		"mount /dev/mapper/contrast-layer-" + b.RootHash + " /run/l/" + b.RootHash,
	}
	if !slices.Equal(ops.calls, wantCalls) {
		t.Fatalf("calls\n%s\nwant\n%s", strings.Join(ops.calls, "\n"), strings.Join(wantCalls, "\n"))
	}
	if n := set.Refs(a.RootHash); n != 2 {
		t.Fatalf("layer a has %d references, want 2", n)
	}

	ops.calls = nil
	if err := set.Release(a.RootHash); err != nil {
		t.Fatal(err)
	}
	if len(ops.calls) != 0 || !ops.mnt["/run/l/"+a.RootHash] {
		t.Fatalf("first Release of a shared layer tore it down: %q", ops.calls)
	}
	if err := set.Release(a.RootHash); err != nil {
		t.Fatal(err)
	}
	if err := set.Release(b.RootHash); err != nil {
		t.Fatal(err)
	}
	ops.assertNothingOpen(t)
	if err := set.Release(a.RootHash); err == nil || !strings.Contains(err.Error(), "not held") {
		t.Fatalf("Release of a released layer: %v", err)
	}
}

func TestLayerSetRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		layer   func() Layer
		setup   func(*recordingOps)
		wantErr []string
	}{
		{"invalid", func() Layer { l := goodLayer(); l.RootHash = "x"; return l }, nil, []string{"root_hash"}},
		{"missing device", func() Layer { l := goodLayer(); l.Serial = "nope"; return l }, nil, []string{`serial "nope"`}},
		{"device too small", goodLayer, func(o *recordingOps) { o.size = 100 * 4096 }, []string{"/dev/vdb", "100 data blocks and 1 hash blocks", "413696 bytes"}},
		{"just the data and the tree", goodLayer, func(o *recordingOps) { o.size = 101 * 4096 }, nil},
		{"verity fails", goodLayer, func(o *recordingOps) { o.fail["open"] = errors.New("DM_TABLE_LOAD: EINVAL") }, []string{"dm-verity", "/dev/vdb", "DM_TABLE_LOAD"}},
		{"mount fails", goodLayer, func(o *recordingOps) { o.fail["mount"] = errors.New("EIO") }, []string{"mount ext4", "EIO"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops := newRecordingOps()
			if tc.setup != nil {
				tc.setup(ops)
			}
			set := NewLayerSetWithOps("/run/l", fakeDevices{"layer-a": "/dev/vdb"}, ops)
			l := tc.layer()
			_, err := set.Acquire(context.Background(), l)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			ops.assertNothingOpen(t)
			if n := set.Refs(l.RootHash); n != 0 {
				t.Fatalf("failed layer has %d references", n)
			}
		})
	}
}

func TestLayerSetRetriesFailedClose(t *testing.T) {
	ops := newRecordingOps()
	set := NewLayerSetWithOps("/run/l", fakeDevices{"layer-a": "/dev/vdb"}, ops)
	l := goodLayer()
	if _, err := set.Acquire(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	ops.fail["close"] = errors.New("DM_DEV_REMOVE: EBUSY")
	if err := set.Release(l.RootHash); err == nil || !strings.Contains(err.Error(), "EBUSY") {
		t.Fatalf("Release with a busy device: %v", err)
	}
	delete(ops.fail, "close")
	// The retry (the container's cleanup runs again) finishes the close.
	if err := set.Release(l.RootHash); err != nil {
		t.Fatalf("retried Release: %v", err)
	}
	ops.assertNothingOpen(t)

	// A close that failed is finished before the layer opens again.
	if _, err := set.Acquire(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	ops.fail["close"] = errors.New("EBUSY")
	set.Release(l.RootHash)
	delete(ops.fail, "close")
	ops.calls = nil
	if _, err := set.Acquire(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ops.calls[1], "close ") || !strings.HasPrefix(ops.calls[2], "size ") {
		t.Fatalf("reopen after a failed close: calls %q, want the close finished first", ops.calls)
	}
	if n := set.Refs(l.RootHash); n != 1 {
		t.Fatalf("reopened layer has %d references, want 1", n)
	}
}

// Overlay stacks layer directories with the last one on top.
func TestRootfsMountLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (mount): run the tests as root, as CI does")
	}
	dir := t.TempDir()
	var layers []string
	for i, files := range []map[string]string{
		{"etc/os": "bottom", "bin/tool": "from bottom"},
		{"etc/os": "middle", "etc/extra": "middle"},
		{"etc/os": "top"},
	} {
		l := filepath.Join(dir, "layers", fmt.Sprint(i))
		for name, content := range files {
			p := filepath.Join(l, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		layers = append(layers, l)
	}
	r := NewRootfs(filepath.Join(dir, "c1"))
	if err := r.MountLayers(layers); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"etc/os": "top", "etc/extra": "middle", "bin/tool": "from bottom"} {
		if b, err := os.ReadFile(filepath.Join(r.Merged, name)); err != nil || string(b) != want {
			t.Errorf("%s through the overlay: %q %v, want %q", name, b, err, want)
		}
	}
	if err := os.WriteFile(filepath.Join(r.Merged, "etc/os"), []byte("written"), 0o644); err != nil {
		t.Fatalf("rootfs not writable: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(layers[2], "etc/os")); string(b) != "top" {
		t.Fatalf("write reached a layer: %q", b)
	}
	if err := r.Unmount(); err != nil {
		t.Fatal(err)
	}
	assertNoMountsUnder(t, dir)
	if entries, _ := os.ReadDir(filepath.Join(dir, "c1")); len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}

	// More layers than one page of mount(2) options could name.
	var many []string
	for i := range 60 {
		l := filepath.Join(dir, "many", fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 100)))
		if err := os.MkdirAll(l, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(l, fmt.Sprint("f", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		many = append(many, l)
	}
	r = NewRootfs(filepath.Join(dir, "c4"))
	if err := r.MountLayers(many); err != nil {
		t.Fatalf("60 layers: %v", err)
	}
	for _, f := range []string{"f0", "f59"} {
		if _, err := os.Stat(filepath.Join(r.Merged, f)); err != nil {
			t.Errorf("60 layers: %v", err)
		}
	}
	if err := r.Unmount(); err != nil {
		t.Fatal(err)
	}

	// A layer repeated in the image (bottom, middle, bottom) is mounted once,
	// at its top position.
	r = NewRootfs(filepath.Join(dir, "c3"))
	if err := r.MountLayers([]string{layers[0], layers[1], layers[0]}); err != nil {
		t.Fatalf("image repeating a layer: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(r.Merged, "etc/os")); err != nil || string(b) != "bottom" {
		t.Errorf("etc/os with the bottom layer repeated on top: %q %v, want \"bottom\"", b, err)
	}
	if err := r.Unmount(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		dirs    []string
		wantErr string
	}{
		{"no layers", nil, "no image layers"},
		{"missing layer dir", []string{filepath.Join(dir, "gone")}, "lowerdir+=" + filepath.Join(dir, "gone")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := NewRootfs(filepath.Join(dir, "c2")).MountLayers(tc.dirs)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
			assertNoMountsUnder(t, dir)
		})
	}
}

// gatedDevices finds serial "gated" (as device /dev/gated) only once the
// test closes release, counting the lookups.
type gatedDevices struct {
	fakeDevices
	release chan struct{}
	finds   atomic.Int32
}

func (d *gatedDevices) Find(ctx context.Context, serial string) (string, error) {
	if serial != "gated" {
		return d.fakeDevices.Find(ctx, serial)
	}
	d.finds.Add(1)
	select {
	case <-d.release:
		return "/dev/gated", nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TestLayerSetOpensAtOnce checks that a layer waiting for its device
// holds up no other layer, and that a second Acquire of it waits for the
// first's open instead of opening it again.
func TestLayerSetOpensAtOnce(t *testing.T) {
	ops := newRecordingOps()
	devices := &gatedDevices{fakeDevices: fakeDevices{"layer-a": "/dev/vdb"}, release: make(chan struct{})}
	set := NewLayerSetWithOps("/run/l", devices, ops)
	gated := Layer{Serial: "gated", Digest: "sha256:" + hex64("e"), RootHash: hex64("f"), DataBlocks: 7}
	ctx := context.Background()
	type result struct {
		dir string
		err error
	}
	acquire := func(ctx context.Context, l Layer) <-chan result {
		done := make(chan result, 1)
		go func() {
			dir, err := set.Acquire(ctx, l)
			done <- result{dir, err}
		}()
		return done
	}
	first := acquire(ctx, gated)
	for devices.finds.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	select {
	case r := <-acquire(ctx, goodLayer()):
		if r.err != nil {
			t.Fatal(r.err)
		}
	case <-time.After(10 * time.Second):
		close(devices.release) // lets the test end
		t.Fatal("a layer whose device is there waits for another's")
	}
	second := acquire(ctx, gated)
	impatient, cancelImpatient := context.WithCancel(ctx)
	third := acquire(impatient, gated)
	cancelImpatient()
	if r := <-third; r.err == nil || !strings.Contains(r.err.Error(), "waiting for another open") {
		t.Fatalf("Acquire given up while another opens the layer: %q %v", r.dir, r.err)
	}
	select {
	case r := <-second:
		t.Fatalf("second Acquire did not wait for the open under way: %q %v", r.dir, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	close(devices.release)
	r1, r2 := <-first, <-second
	if r1.err != nil || r2.err != nil || r1.dir != r2.dir {
		t.Fatalf("Acquires: %q %v, %q %v", r1.dir, r1.err, r2.dir, r2.err)
	}
	if n := devices.finds.Load(); n != 1 {
		t.Errorf("device looked up %d times, want once", n)
	}
	if n := set.Refs(gated.RootHash); n != 2 {
		t.Errorf("gated layer has %d references, want 2", n)
	}
	for _, h := range []string{gated.RootHash, gated.RootHash, goodLayer().RootHash} {
		if err := set.Release(h); err != nil {
			t.Fatal(err)
		}
	}
	ops.assertNothingOpen(t)
}
