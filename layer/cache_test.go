package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// numberedLayer is testLayer with one more file, so that each n is a
// different layer of about the same size.
func numberedLayer(t testing.TB, n int) []byte {
	entries := append(testLayer(), tarEntry{name: "id", typeflag: tar.TypeReg, mode: 0o644, body: []byte{byte(n), byte(n >> 8)}})
	return buildTar(t, entries)
}

// countedBlob serves tarBytes and counts how often it is opened.
func countedBlob(tarBytes []byte, opens *atomic.Int32) Blob {
	return Blob{
		DiffID:         digest.FromBytes(tarBytes),
		CompressedSize: int64(len(tarBytes)),
		Open: func(context.Context) (io.ReadCloser, error) {
			opens.Add(1)
			return io.NopCloser(bytes.NewReader(tarBytes)), nil
		},
	}
}

func openCache(t testing.TB, dir string, maxBytes int64) *Cache {
	t.Helper()
	c, err := OpenCache(dir, maxBytes)
	if err != nil {
		t.Fatalf("OpenCache: %v", err)
	}
	return c
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestCacheConvertsOnceForConcurrentGets(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30)
	if c.Dir() != dir {
		t.Errorf("Dir() = %s, want %s", c.Dir(), dir)
	}
	layerTar := numberedLayer(t, 1)
	var opens atomic.Int32
	blob := countedBlob(layerTar, &opens)

	const getters = 8
	entries := make([]Entry, getters)
	releases := make([]func(), getters)
	errs := make([]error, getters)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for i := range getters {
		wg.Go(func() {
			entries[i], releases[i], errs[i] = c.Get(ctx, blob, nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		releases[i]()
		releases[i]() // Twice is harmless.
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("%d concurrent Gets opened the layer %d times, want once", getters, n)
	}

	// Holders must not stall a Get that found the entry incomplete just
	// before another converted it: every Get here holds its entry until all
	// have returned. The interleaving is a race, hence the rounds.
	for round := range 15 {
		c := openCache(t, t.TempDir(), 1<<30)
		var roundOpens atomic.Int32
		roundBlob := countedBlob(numberedLayer(t, 100+round), &roundOpens)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		held := make(chan func(), getters)
		var wg sync.WaitGroup
		for range getters {
			wg.Go(func() {
				_, release, err := c.Get(ctx, roundBlob, nil)
				if err != nil {
					t.Errorf("round %d: Get while others hold the entry: %v", round, err)
					return
				}
				held <- release
			})
		}
		wg.Wait()
		cancel()
		close(held)
		for release := range held {
			release()
		}
		if n := roundOpens.Load(); n != 1 {
			t.Errorf("round %d: %d concurrent Gets opened the layer %d times, want once", round, getters, n)
		}
	}
	_, want := convertFile(t, layerTar)
	for i, e := range entries {
		if e.Info != want || e.Path != filepath.Join(dir, "sha256-"+blob.DiffID.Encoded()+".img") {
			t.Errorf("Get %d = %+v, want %+v in %s", i, e, want, dir)
		}
	}
	if got := readFile(t, entries[0].Path); int64(len(got)) != want.Size {
		t.Errorf("cached image has %d bytes, want %d", len(got), want.Size)
	}

	// A second cache on the same directory (another process, later) finds it.
	again, release, err := openCache(t, dir, 1<<30).Get(t.Context(), blob, nil)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if again != entries[0] || opens.Load() != 1 {
		t.Errorf("Get from a reopened cache = %+v after %d opens, want %+v without converting", again, opens.Load(), entries[0])
	}
}

// Environment of TestCacheHelperProcess, run as a separate process.
const (
	helperDirEnv  = "LAYER_TEST_HELPER_CACHE"
	helperModeEnv = "LAYER_TEST_HELPER_MODE"
	helperNEnv    = "LAYER_TEST_HELPER_LAYER"
)

// Helper modes, and the files through which the helper and the test talk.
const (
	// convert the layer, pausing its tar before the end until "go" exists.
	modeSlowConvert = "slow-convert"
	// get the layer and hold it until "go" exists.
	modeHold = "hold"

	helperStarted = "helper-started"
	helperGo      = "go"
)

// TestCacheHelperProcess is not a test: the other tests run it in a child
// process to use the cache from another process.
func TestCacheHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		return
	}
	n := 0
	if os.Getenv(helperNEnv) == "2" {
		n = 2
	}
	control := filepath.Dir(dir)
	layerTar := numberedLayer(t, n)
	started := func() {
		if err := os.WriteFile(filepath.Join(control, helperStarted), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitGo := func() {
		for {
			if _, err := os.Stat(filepath.Join(control, helperGo)); err == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	blob := Blob{DiffID: digest.FromBytes(layerTar), Open: func(context.Context) (io.ReadCloser, error) {
		if os.Getenv(helperModeEnv) != modeSlowConvert {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		}
		started()
		half := len(layerTar) / 2
		return io.NopCloser(io.MultiReader(
			bytes.NewReader(layerTar[:half]),
			readerFunc(func([]byte) (int, error) { waitGo(); return 0, io.EOF }),
			bytes.NewReader(layerTar[half:]),
		)), nil
	}}
	_, release, err := openCache(t, dir, 1<<30).Get(context.Background(), blob, nil)
	if err != nil {
		t.Fatalf("helper Get: %v", err)
	}
	if os.Getenv(helperModeEnv) == modeHold {
		started()
		waitGo()
	}
	release()
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// startHelper runs TestCacheHelperProcess on the cache in control/cache and
// waits until it has started its work.
func startHelper(t *testing.T, control, mode string, layer int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCacheHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		helperDirEnv+"="+filepath.Join(control, "cache"),
		helperModeEnv+"="+mode,
		helperNEnv+"="+string(rune('0'+layer)))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the helper process: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(control, helperStarted)); err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper process did not start its work in 30 s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCacheWaitsForAConversionInAnotherProcess(t *testing.T) {
	control := t.TempDir()
	helper := startHelper(t, control, modeSlowConvert, 0)

	var opens atomic.Int32
	blob := countedBlob(numberedLayer(t, 0), &opens)
	c := openCache(t, filepath.Join(control, "cache"), 1<<30)
	type result struct {
		entry Entry
		err   error
	}
	done := make(chan result, 1)
	go func() {
		e, release, err := c.Get(t.Context(), blob, nil)
		if err == nil {
			release()
		}
		done <- result{e, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Get returned (%+v, %v) while another process was converting the layer", r.entry, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := os.WriteFile(filepath.Join(control, helperGo), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Get: %v", r.err)
	}
	if err := helper.Wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	if opens.Load() != 0 {
		t.Errorf("Get converted the layer again (%d opens) instead of waiting for the other process", opens.Load())
	}
	if r.entry.Info.DiffID != blob.DiffID {
		t.Errorf("Get = %+v, want layer %s", r.entry, blob.DiffID)
	}
}

func TestCacheRecoversFromAProcessKilledWhileConverting(t *testing.T) {
	control := t.TempDir()
	cacheDir := filepath.Join(control, "cache")
	helper := startHelper(t, control, modeSlowConvert, 0)
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	for _, name := range dirNames(t, cacheDir) {
		if strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".img") {
			t.Errorf("a killed conversion left %s, which looks complete", name)
		}
	}

	var opens atomic.Int32
	blob := countedBlob(numberedLayer(t, 0), &opens)
	c := openCache(t, cacheDir, 1<<30)
	entry, release, err := c.Get(t.Context(), blob, nil)
	if err != nil {
		t.Fatalf("Get after a killed conversion: %v", err)
	}
	release()
	_, want := convertFile(t, numberedLayer(t, 0))
	if opens.Load() != 1 || entry.Info != want {
		t.Errorf("Get = %+v after %d opens, want %+v converted once", entry, opens.Load(), want)
	}
	if got := readFile(t, entry.Path); int64(len(got)) != want.Size {
		t.Errorf("cached image has %d bytes, want %d", len(got), want.Size)
	}
}

func TestCacheEvictsLeastRecentlyUsedEntriesNotInUse(t *testing.T) {
	control := t.TempDir()
	cacheDir := filepath.Join(control, "cache")
	_, info := convertFile(t, numberedLayer(t, 0))
	// Room for two entries, not three (they differ by a few bytes at most).
	c := openCache(t, cacheDir, info.Size*5/2)

	var opens atomic.Int32
	blobs := make([]Blob, 6)
	for i := range blobs {
		blobs[i] = countedBlob(numberedLayer(t, i), &opens)
	}
	get := func(i int) (Entry, func()) {
		t.Helper()
		e, release, err := c.Get(t.Context(), blobs[i], nil)
		if err != nil {
			t.Fatalf("Get layer %d: %v", i, err)
		}
		return e, release
	}
	has := func(i int) bool {
		_, err := os.Stat(filepath.Join(cacheDir, "sha256-"+blobs[i].DiffID.Encoded()+".img"))
		return err == nil
	}
	totalSize := func() int64 {
		var total int64
		for _, name := range dirNames(t, cacheDir) {
			if st, err := os.Stat(filepath.Join(cacheDir, name)); err == nil && strings.HasSuffix(name, ".img") {
				total += st.Size()
			}
		}
		return total
	}
	tick := func() { time.Sleep(20 * time.Millisecond) } // Distinct last-use times.

	_, release := get(0)
	release()
	tick()
	_, release = get(1)
	release()
	tick()
	_, release = get(0) // Now 1 is the least recently used.
	release()
	tick()
	_, release = get(2)
	release()
	if has(1) || !has(0) || !has(2) {
		t.Errorf("after using 0, 1, 0, 2 with room for two: cache has 0:%v 1:%v 2:%v, want 0 and 2", has(0), has(1), has(2))
	}
	if total := totalSize(); total > c.maxBytes {
		t.Errorf("cache holds %d bytes, more than its limit %d", total, c.maxBytes)
	}

	// Entries in use stay, in this process and in another, over the limit.
	_, releaseOld := get(0)
	tick()
	holder := startHelper(t, control, modeHold, 2)
	tick()
	_, release = get(3)
	release()
	tick()
	_, release = get(4)
	release()
	if !has(0) || !has(2) || !has(4) || has(3) {
		t.Errorf("with 0 held here and 2 in another process: cache has 0:%v 2:%v 3:%v 4:%v, want 0, 2 and 4", has(0), has(2), has(3), has(4))
	}
	if err := os.WriteFile(filepath.Join(control, helperGo), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	releaseOld()
	if err := holder.Wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	_, release = get(5)
	release()
	if total := totalSize(); total > c.maxBytes {
		t.Errorf("after the releases the cache holds %d bytes, more than its limit %d: %v", total, c.maxBytes, dirNames(t, cacheDir))
	}
	if !has(5) || !has(4) || has(0) || has(2) {
		t.Errorf("cache has 0:%v 2:%v 4:%v 5:%v, want only the most recent 4 and 5", has(0), has(2), has(4), has(5))
	}
}

func TestCacheFailedConversionLeavesNothing(t *testing.T) {
	layerTar := numberedLayer(t, 0)
	for _, tc := range []struct {
		name string
		blob Blob
		want string
	}{
		{"open fails", Blob{DiffID: digest.FromBytes(layerTar), Open: func(context.Context) (io.ReadCloser, error) {
			return nil, errors.New("registry unreachable")
		}}, "registry unreachable"},
		{"read fails midway", Blob{DiffID: digest.FromBytes(layerTar), Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(io.MultiReader(bytes.NewReader(layerTar[:len(layerTar)/2]),
				readerFunc(func([]byte) (int, error) { return 0, errors.New("disk on fire") }))), nil
		}}, "disk on fire"},
		{"tar of another diff ID", Blob{DiffID: digest.FromString("another"), Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		}}, "diff ID " + digest.FromBytes(layerTar).String()},
		{"diff ID not sha256", Blob{DiffID: "md5:abc"}, "not a sha256 digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, _, err := openCache(t, dir, 1<<30).Get(t.Context(), tc.blob, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Get = %v, want an error containing %q", err, tc.want)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("failed Get left %v", names)
			}
		})
	}
}

func TestCacheGetEndsWithItsContext(t *testing.T) {
	control := t.TempDir()
	helper := startHelper(t, control, modeSlowConvert, 0)
	defer func() {
		os.WriteFile(filepath.Join(control, helperGo), nil, 0o600)
		helper.Wait()
	}()
	var opens atomic.Int32
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, _, err := openCache(t, filepath.Join(control, "cache"), 1<<30).Get(ctx, countedBlob(numberedLayer(t, 0), &opens), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get waiting for a lock past its deadline = %v, want %v", err, context.DeadlineExceeded)
	}
}

func TestComputeInfoLeavesNoFile(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	layerTar := numberedLayer(t, 0)
	var opens atomic.Int32
	var progress int64
	info, err := ComputeInfo(t.Context(), countedBlob(layerTar, &opens), func(n int64) { progress = n })
	if err != nil {
		t.Fatal(err)
	}
	if _, want := convertFile(t, layerTar); info != want {
		t.Errorf("ComputeInfo = %+v, Convert says %+v", info, want)
	}
	if progress != int64(len(layerTar)) {
		t.Errorf("progress ended at %d of %d bytes", progress, len(layerTar))
	}
	if names := dirNames(t, tmp); len(names) != 0 {
		t.Errorf("ComputeInfo left %v in TMPDIR", names)
	}
	if _, err := ComputeInfo(t.Context(), Blob{DiffID: digest.FromString("x"), Open: countedBlob(layerTar, &opens).Open}, nil); err == nil {
		t.Error("ComputeInfo accepted a tar of another diff ID")
	}
	if names := dirNames(t, tmp); len(names) != 0 {
		t.Errorf("failed ComputeInfo left %v in TMPDIR", names)
	}
}
