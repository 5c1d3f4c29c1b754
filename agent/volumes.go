package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	api "github.com/contrast-vm/contrast/api/agent"
)

// DefaultVolumeBytes is what the kubelet-managed volumes of a pod may hold
// in the guest's memory, all together: room for a few ConfigMaps and
// Secrets (at most 1 MiB each in Kubernetes) and the service-account token.
const DefaultVolumeBytes = 16 << 20

// stagingPrefix names the agent's work entries in a volume's directory;
// the kubelet's own names start with ".." (its payload directories and
// ..data) or are keys, which cannot start with ".contrast-".
const stagingPrefix = ".contrast-"

// volumeSet holds the pod's kubelet-managed volumes in the guest, each in
// dir/<kind>/<name>, a directory the containers that mount the volume
// bind (read-only, as the policy has them).
type volumeSet struct {
	dir      string
	maxBytes int64
	// retireAfter is how long a payload directory an update replaced stays:
	// a reader that resolved ..data to it just before the swap still finds
	// it (the kubelet removes it at once, and such a reader sees an error).
	retireAfter time.Duration

	mu    sync.Mutex
	vols  map[string]*guestVolume // by kind/name
	bytes int64                   // all volumes together
}

type guestVolume struct {
	mu     sync.Mutex // one update at a time
	bytes  int64
	digest [32]byte            // of the last tree applied
	tops   map[string]struct{} // the top-level names of the last tree applied
}

// defaultRetireAfter: readers finish resolving a path within microseconds;
// two seconds leave room for a guest under heavy load.
const defaultRetireAfter = 2 * time.Second

func newVolumeSet(dir string, maxBytes int64) *volumeSet {
	return &volumeSet{dir: dir, maxBytes: maxBytes, retireAfter: defaultRetireAfter, vols: map[string]*guestVolume{}}
}

// ShareVolume mirrors a kubelet-managed volume into the guest (see
// volumeSet.share). The policy judged the request before.
func (s *Service) ShareVolume(ctx context.Context, req *api.ShareVolumeRequest) (*api.Empty, error) {
	if err := api.CheckVolumeName(req.Kind, req.Name); err != nil {
		return nil, invalid("share volume: %v", err)
	}
	if err := api.CheckVolumeTree(req.Files); err != nil {
		return nil, invalid("share %s volume %s: %v", req.Kind, req.Name, err)
	}
	changed, err := s.volumes.share(req.Kind, req.Name, req.Files)
	if err != nil {
		return nil, fmt.Errorf("share %s volume %s: %w", req.Kind, req.Name, err)
	}
	if changed {
		log.G(ctx).WithFields(log.Fields{"kind": req.Kind, "volume": req.Name, "files": len(req.Files), "bytes": api.VolumeBytes(req.Files)}).Info("volume shared")
	}
	return &api.Empty{}, nil
}

// path returns the guest directory of a shared volume.
func (v *volumeSet) path(kind, name string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.vols[kind+"/"+name]; !ok {
		return "", false
	}
	return filepath.Join(v.dir, kind, name), true
}

// share makes the volume's directory hold exactly files, the way the
// kubelet's atomic writer updates its own: each top-level entry is built
// under a staging name and then swapped in with one rename (an atomic
// exchange where it exists), the payload directories first, the keys
// next and ..data last, then what the tree no longer has is removed. A
// reader following key -> ..data/key sees the old tree or the new one,
// never a mix. The tree was checked (api.CheckVolumeTree). It reports
// whether anything changed.
func (v *volumeSet) share(kind, name string, files []*api.VolumeFile) (bool, error) {
	size := api.VolumeBytes(files)
	digest, err := treeDigest(files)
	if err != nil {
		return false, err
	}
	key := kind + "/" + name
	v.mu.Lock()
	gv, ok := v.vols[key]
	if !ok {
		gv = &guestVolume{}
	}
	v.mu.Unlock()

	gv.mu.Lock()
	defer gv.mu.Unlock()
	if ok && gv.digest == digest {
		return false, nil
	}
	v.mu.Lock()
	total := v.bytes - gv.bytes + size
	v.mu.Unlock()
	if total > v.maxBytes {
		return false, fmt.Errorf("%d bytes do not fit: the pod's volumes may hold %d bytes in the VM's memory, %d are taken by the others",
			size, v.maxBytes, v.bytes-gv.bytes)
	}
	root := filepath.Join(v.dir, kind, name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return false, err
	}
	retired, err := applyTree(root, files)
	if err != nil {
		return false, err
	}
	gv.tops = topNames(files)
	if len(retired) > 0 {
		time.AfterFunc(v.retireAfter, func() { gv.removeRetired(root, retired) })
	}
	v.mu.Lock()
	v.bytes = v.bytes - gv.bytes + size
	gv.bytes, gv.digest = size, digest
	v.vols[key] = gv
	v.mu.Unlock()
	return true, nil
}

// removeRetired removes the payload directories an earlier update
// replaced, unless a later tree has one of those names again.
func (gv *guestVolume) removeRetired(root string, names []string) {
	gv.mu.Lock()
	defer gv.mu.Unlock()
	for _, name := range names {
		if _, live := gv.tops[name]; live {
			continue
		}
		// Nothing to report to: the host's request ended long ago, and a
		// leftover only takes memory until the pod ends.
		_ = os.RemoveAll(filepath.Join(root, name))
	}
}

func topNames(files []*api.VolumeFile) map[string]struct{} {
	tops := map[string]struct{}{}
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		tops[top] = struct{}{}
	}
	return tops
}

// treeDigest identifies a tree, to skip an update that changes nothing.
func treeDigest(files []*api.VolumeFile) ([32]byte, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(f)
		if err != nil {
			return [32]byte{}, err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return [32]byte(h.Sum(nil)), nil
}

// applyTree brings root to hold exactly files, but for the payload
// directories (..<timestamp>) the tree no longer has: it returns their
// names, for the caller to remove once no reader can be on its way into
// them.
func applyTree(root string, files []*api.VolumeFile) (retired []string, err error) {
	byTop := map[string][]*api.VolumeFile{}
	var tops []string
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		if _, seen := byTop[top]; !seen {
			tops = append(tops, top)
		}
		byTop[top] = append(byTop[top], f)
	}
	// Payload directories (the kubelet's ..<timestamp>), then the rest,
	// ..data last: what it points to exists before it does.
	rank := func(top string) int {
		switch {
		case top == "..data":
			return 2
		case strings.HasPrefix(top, "..") && byTop[top][0].Type == api.VolumeFileDir:
			return 0
		}
		return 1
	}
	slices.SortStableFunc(tops, func(a, b string) int { return rank(a) - rank(b) })

	for i, top := range tops {
		staging := filepath.Join(root, fmt.Sprintf("%snew-%d", stagingPrefix, i))
		if err := os.RemoveAll(staging); err != nil {
			return nil, err
		}
		if err := writeEntries(staging, top, byTop[top]); err != nil {
			os.RemoveAll(staging)
			return nil, fmt.Errorf("write %s: %w", top, err)
		}
		if err := swapIn(staging, filepath.Join(root, top)); err != nil {
			os.RemoveAll(staging)
			return nil, fmt.Errorf("put %s in place: %w", top, err)
		}
	}
	// Gone from the tree: keys now (a reader of a removed key finds
	// nothing, as it should), old payload directories later.
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		name := e.Name()
		if _, keep := byTop[name]; keep {
			continue
		}
		if e.IsDir() && strings.HasPrefix(name, "..") {
			retired = append(retired, name)
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
			return nil, fmt.Errorf("remove %s: %w", name, err)
		}
	}
	return retired, nil
}

// writeEntries writes the entries of one top-level name (top and what lies
// below it) with top renamed to dst; parents come before their children.
func writeEntries(dst, top string, files []*api.VolumeFile) error {
	for _, f := range files {
		p := dst
		if f.Path != top {
			p = filepath.Join(dst, strings.TrimPrefix(f.Path, top+"/"))
		}
		switch f.Type {
		case api.VolumeFileDir:
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
		case api.VolumeFileSymlink:
			if err := os.Symlink(f.Target, p); err != nil {
				return err
			}
		case api.VolumeFileRegular:
			if err := writeNewFile(p, f.Content); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: type %q", f.Path, f.Type)
		}
		if err := os.Lchown(p, int(f.Uid), int(f.Gid)); err != nil {
			return err
		}
		if f.Type != api.VolumeFileSymlink {
			// Set after chown, which clears set-id bits.
			if err := os.Chmod(p, os.FileMode(f.Mode&0o777)|modeBits(f.Mode)); err != nil {
				return err
			}
		}
	}
	return nil
}

// modeBits turns the set-id and sticky bits of a Unix mode into Go's.
func modeBits(m uint32) os.FileMode {
	var out os.FileMode
	if m&unix.S_ISUID != 0 {
		out |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		out |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		out |= os.ModeSticky
	}
	return out
}

func writeNewFile(p string, content []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// swapIn puts staging at dst in one step: a rename where dst does not
// exist, an atomic exchange where it does (then the old entry, now at
// staging, is removed).
func swapIn(staging, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	return os.RemoveAll(staging)
}

// volumeMountSource is the guest directory a bind mount of a kubelet
// volume directory (host source) becomes, if the source is one.
func (v *volumeSet) mountSource(hostSource string) (guest string, isVolume bool, err error) {
	kind, name, ok := api.ParseVolumeSource(hostSource)
	if !ok {
		return "", false, nil
	}
	p, shared := v.path(kind, name)
	if !shared {
		return "", true, fmt.Errorf("the %s volume %s (%s) was not shared with the VM before the container that mounts it", kind, name, path.Clean(hostSource))
	}
	return p, true, nil
}
