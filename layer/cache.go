package layer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Cache keeps converted layers in a directory, by diff ID, shared by the
// processes of a host. Per entry sha256-<hex> it holds:
//
//	.img      the ext4 image and hash tree
//	.json     its Info, written last: an entry without it is not complete
//	.lock     flock'ed exclusively while converting or evicting, shared
//	          while in use
//	.partial  a conversion under way (or one that crashed)
type Cache struct {
	dir      string
	maxBytes int64
}

// Entry is a converted layer in a Cache.
type Entry struct {
	// Path is the image file: ext4 followed by the hash tree.
	Path string
	Info Info
}

// lockPoll is how often a waiting Get retries a held lock: flock has no
// timeout, and a wait must end when its context does.
const lockPoll = 20 * time.Millisecond

// OpenCache opens (creating it if needed) a cache in dir that keeps its
// entries' total size at most maxBytes, except for entries in use.
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("layer cache %s: size limit %d is not positive", dir, maxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating layer cache %s: %w", dir, err)
	}
	return &Cache{dir: dir, maxBytes: maxBytes}, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Get returns the converted layer b, converting it first unless the cache
// has it; concurrent Gets of one layer, in any process, convert it once.
// The entry stays in the cache until release is called. progress, if not
// nil, sees the tar bytes read by a conversion.
func (c *Cache) Get(ctx context.Context, b Blob, progress func(int64)) (Entry, func(), error) {
	if err := b.DiffID.Validate(); err != nil || b.DiffID.Algorithm() != digest.SHA256 {
		return Entry{}, nil, fmt.Errorf("layer diff ID %q is not a sha256 digest", b.DiffID)
	}
	base := filepath.Join(c.dir, "sha256-"+b.DiffID.Encoded())
	for {
		// Shared first: the common case is a layer already there.
		lock, err := c.lock(ctx, base, unix.LOCK_SH)
		if err != nil {
			return Entry{}, nil, err
		}
		if info, ok := c.complete(base, b.DiffID); ok {
			now := time.Now()
			if err := os.Chtimes(base+".img", now, now); err != nil {
				lock.Close()
				return Entry{}, nil, fmt.Errorf("marking layer %s used: %w", b.DiffID, err)
			}
			var once sync.Once
			release := func() { once.Do(func() { lock.Close() }) }
			return Entry{Path: base + ".img", Info: info}, release, nil
		}
		lock.Close()

		// Not waiting for the exclusive lock: if another Get converts the
		// layer meanwhile, its users hold shared locks for as long as they
		// use it, and this Get would wait for all of them. The shared lock
		// above waits for a conversion instead.
		lock, err = c.lock(ctx, base, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			return Entry{}, nil, err
		}
		if lock == nil {
			select {
			case <-ctx.Done():
				return Entry{}, nil, fmt.Errorf("waiting for layer %s: %w", b.DiffID, ctx.Err())
			case <-time.After(lockPoll):
			}
			continue
		}
		if _, ok := c.complete(base, b.DiffID); !ok {
			err = c.add(ctx, base, b, progress)
		}
		lock.Close()
		if err != nil {
			return Entry{}, nil, err
		}
		// Evict only while this entry is held, so that it is not the one
		// evicted. Another process may still evict it before the shared lock
		// is taken (if it is the least recently used); the loop converts
		// it again then.
		lock, err = c.lock(ctx, base, unix.LOCK_SH)
		if err != nil {
			return Entry{}, nil, err
		}
		evictErr := c.evict()
		lock.Close()
		if evictErr != nil {
			return Entry{}, nil, evictErr
		}
	}
}

// lock opens base.lock and flocks it (how: LOCK_SH or LOCK_EX, with
// LOCK_NB not to wait: then a nil file means the lock is taken), waiting
// until it can or ctx ends. Eviction deletes lock files, so a lock counts
// only if the file locked is still the one at that path.
func (c *Cache) lock(ctx context.Context, base string, how int) (*os.File, error) {
	path := base + ".lock"
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening lock file %s: %w", path, err)
		}
		for {
			err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				break
			}
			if how&unix.LOCK_NB != 0 && errors.Is(err, unix.EWOULDBLOCK) {
				f.Close()
				return nil, nil
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
			case <-time.After(lockPoll):
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		same, err := sameFile(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		if same {
			return f, nil
		}
		f.Close()
	}
}

func sameFile(f *os.File, path string) (bool, error) {
	held, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat of lock file %s: %w", path, err)
	}
	now, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat of lock file %s: %w", path, err)
	}
	return os.SameFile(held, now), nil
}

// complete reports whether base is a finished entry for diffID, and its Info.
func (c *Cache) complete(base string, diffID digest.Digest) (Info, bool) {
	data, err := os.ReadFile(base + ".json")
	if err != nil {
		return Info{}, false
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil || info.DiffID != diffID {
		return Info{}, false
	}
	st, err := os.Stat(base + ".img")
	if err != nil || st.Size() != info.Size {
		return Info{}, false
	}
	return info, true
}

// add converts b into base.img and writes base.json, holding the entry's
// exclusive lock. On failure nothing of the entry remains.
func (c *Cache) add(ctx context.Context, base string, b Blob, progress func(int64)) (err error) {
	defer func() {
		if err != nil {
			os.Remove(base + ".partial")
			os.Remove(base + ".json")
			os.Remove(base + ".img")
			os.Remove(base + ".lock")
		}
	}()
	// A damaged entry (one that is not complete) goes first.
	os.Remove(base + ".json")

	out, err := os.OpenFile(base+".partial", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", base+".partial", err)
	}
	defer out.Close()
	info, err := convertBlob(ctx, b, out, progress)
	if err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", out.Name(), err)
	}
	if err := os.Rename(base+".partial", base+".img"); err != nil {
		return fmt.Errorf("renaming %s: %w", out.Name(), err)
	}
	data, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("encoding the info of layer %s: %w", b.DiffID, err)
	}
	if err := writeFileAtomic(base+".json", data); err != nil {
		return err
	}
	return nil
}

// convertBlob converts b into out and checks the result is the layer asked
// for.
func convertBlob(ctx context.Context, b Blob, out *os.File, progress func(int64)) (Info, error) {
	tar, err := b.Open(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("opening layer %s: %w", b.DiffID, err)
	}
	defer tar.Close()
	info, err := Convert(contextReader{ctx: ctx, r: tar}, out, progress)
	if err != nil {
		return Info{}, fmt.Errorf("converting layer %s: %w", b.DiffID, err)
	}
	if info.DiffID != b.DiffID {
		return Info{}, fmt.Errorf("layer %s: its tar has diff ID %s", b.DiffID, info.DiffID)
	}
	return info, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	return nil
}

// cached is an entry as eviction sees it.
type cached struct {
	base     string
	size     int64
	lastUsed time.Time
}

// evict removes least recently used entries that nobody holds until the
// total size is at most maxBytes, and leftovers of crashed conversions.
func (c *Cache) evict() error {
	names, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("listing layer cache %s: %w", c.dir, err)
	}
	var entries []cached
	var total int64
	for _, de := range names {
		name := de.Name()
		base := filepath.Join(c.dir, strings.TrimSuffix(name, filepath.Ext(name)))
		switch filepath.Ext(name) {
		case ".partial":
			// Only a crashed conversion leaves a partial file unlocked.
			c.removeIfUnused(base)
		case ".img":
			st, err := de.Info()
			if err != nil {
				continue // Evicted by someone else meanwhile.
			}
			entries = append(entries, cached{base: base, size: st.Size(), lastUsed: st.ModTime()})
			total += st.Size()
		}
	}
	if total <= c.maxBytes {
		return nil
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].lastUsed.Before(entries[j].lastUsed) })
	for _, e := range entries {
		if total <= c.maxBytes {
			break
		}
		removed, err := c.removeIfUnused(e.base)
		if err != nil {
			return err
		}
		if removed {
			total -= e.size
		}
	}
	return nil
}

// removeIfUnused deletes the entry base unless its lock is held.
func (c *Cache) removeIfUnused(base string) (bool, error) {
	path := base + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("locking %s: %w", path, err)
	}
	if same, err := sameFile(f, path); err != nil || !same {
		return false, err
	}
	// The info file first: without it the entry no longer looks complete.
	for _, ext := range []string{".json", ".img", ".partial", ".json.tmp", ".lock"} {
		if err := os.Remove(base + ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("evicting layer %s: %w", base, err)
		}
	}
	return true, nil
}

// ComputeInfo converts b into a temporary file, removed afterwards, and
// returns its Info: what a policy pins, without a cache.
func ComputeInfo(ctx context.Context, b Blob, progress func(int64)) (Info, error) {
	out, err := os.CreateTemp("", "contrast-layer-*.img")
	if err != nil {
		return Info{}, fmt.Errorf("creating a temporary file for layer %s: %w", b.DiffID, err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	return convertBlob(ctx, b, out, progress)
}

// contextReader ends a read when its context does.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
