package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
)

// maxVolumeSnapshot bounds what the shim reads of one volume on the host;
// the guest and the policy bound it further.
const maxVolumeSnapshot = 8 << 20

// volumeSettle is how long a volume's directory must stay quiet after a
// change before the shim shares it again: the kubelet's atomic writer
// makes several changes (payload directory, ..data swap, keys) per update.
const volumeSettle = 100 * time.Millisecond

// podVolumes are the kubelet-managed volumes (ConfigMap, Secret, projected,
// downward API) the pod's containers mount, each shared with the VM once
// and then kept live: a watcher shares each kubelet update again.
type podVolumes struct {
	pod   string
	share func(ctx context.Context, req *agentapi.ShareVolumeRequest) error

	mu      sync.Mutex
	byDir   map[string]*watchedVolume // by host directory
	closed  bool
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	updates chan struct{} // test hook: a signal after each share by a watcher
}

type watchedVolume struct {
	kind, name, dir string
	inotify         *os.File
}

func newPodVolumes(ctx context.Context, podID string, share func(context.Context, *agentapi.ShareVolumeRequest) error) *podVolumes {
	v := &podVolumes{pod: podID, share: share, byDir: map[string]*watchedVolume{}}
	v.ctx, v.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return v
}

// ensure shares every kubelet volume the spec bind-mounts, or one of its
// directory subPaths names, that is not shared yet, and starts watching it.
func (v *podVolumes) ensure(ctx context.Context, spec *specs.Spec, subPaths []*agentapi.SubPath) error {
	type use struct{ source, destination string }
	var uses []use
	for _, m := range spec.Mounts {
		if isBind(m) {
			uses = append(uses, use{m.Source, m.Destination})
		}
	}
	for _, sp := range subPaths {
		uses = append(uses, use{sp.Volume, sp.Destination})
	}
	for _, u := range uses {
		kind, name, ok := agentapi.ParseVolumeSource(u.source)
		if !ok {
			continue
		}
		if err := v.ensureOne(ctx, kind, name, filepath.Clean(u.source)); err != nil {
			return fmt.Errorf("%s volume %s at %s: %w", kind, name, u.destination, err)
		}
	}
	return nil
}

func (v *podVolumes) ensureOne(ctx context.Context, kind, name, dir string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return errors.New("the pod is stopping")
	}
	if _, ok := v.byDir[dir]; ok {
		return nil
	}
	// Watch first, so that no update between the snapshot and the watch
	// is missed.
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	in := os.NewFile(uintptr(fd), "inotify "+dir)
	const events = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_ONLYDIR
	if _, err := unix.InotifyAddWatch(fd, dir, events); err != nil {
		in.Close()
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	w := &watchedVolume{kind: kind, name: name, dir: dir, inotify: in}
	if err := v.shareNow(ctx, w); err != nil {
		in.Close()
		return err
	}
	v.byDir[dir] = w
	v.wg.Add(1)
	go v.watch(w)
	return nil
}

// shareNow reads the volume's tree and shares it.
func (v *podVolumes) shareNow(ctx context.Context, w *watchedVolume) error {
	files, err := readVolumeTree(w.dir)
	if err != nil {
		return err
	}
	return v.share(ctx, &agentapi.ShareVolumeRequest{Kind: w.kind, Name: w.name, Files: files})
}

// watch shares the volume again after each change the kubelet made,
// once its directory stayed quiet for volumeSettle. A refused update is
// logged: the containers keep the content shared last.
func (v *podVolumes) watch(w *watchedVolume) {
	defer v.wg.Done()
	defer w.inotify.Close()
	lg := log.G(v.ctx).WithFields(log.Fields{"pod": v.pod, "kind": w.kind, "volume": w.name})
	changed := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := w.inotify.Read(buf); err != nil {
				close(changed)
				return
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	}()
	stop := context.AfterFunc(v.ctx, func() { w.inotify.Close() })
	defer stop()
	for {
		if _, ok := <-changed; !ok {
			return
		}
		// Let the kubelet finish its update.
	settle:
		for {
			select {
			case _, ok := <-changed:
				if !ok {
					return
				}
			case <-time.After(volumeSettle):
				break settle
			}
		}
		if err := v.shareNow(v.ctx, w); err != nil {
			if v.ctx.Err() != nil {
				return
			}
			lg.WithError(err).Warn("volume update not shared with the VM; its containers keep the content shared before")
		} else {
			lg.Debug("volume update shared with the VM")
		}
		if v.updates != nil {
			v.updates <- struct{}{}
		}
	}
}

// close stops watching.
func (v *podVolumes) close() {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.cancel()
	v.wg.Wait()
}

// readVolumeTree reads a volume's directory without following symlinks:
// every entry below it, parents before children, in a stable order. What
// is neither a file, a directory nor a symlink is sent as what it is, for
// the agent and the policy to refuse by name.
func readVolumeTree(dir string) ([]*agentapi.VolumeFile, error) {
	var files []*agentapi.VolumeFile
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		f := &agentapi.VolumeFile{Path: filepath.ToSlash(rel), Mode: unixMode(info.Mode())}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			f.Uid, f.Gid = st.Uid, st.Gid
		}
		switch {
		case info.Mode().IsRegular():
			f.Type = agentapi.VolumeFileRegular
			if total += info.Size(); total > maxVolumeSnapshot {
				return fmt.Errorf("its files hold more than %d bytes", maxVolumeSnapshot)
			}
			if f.Content, err = os.ReadFile(p); err != nil {
				return err
			}
		case info.IsDir():
			f.Type = agentapi.VolumeFileDir
		case info.Mode()&fs.ModeSymlink != 0:
			f.Type = agentapi.VolumeFileSymlink
			if f.Target, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			f.Type = info.Mode().Type().String()
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the volume on the host: %w", err)
	}
	return files, nil
}

// unixMode is a Go file mode's permission, set-id and sticky bits as Unix
// has them.
func unixMode(m fs.FileMode) uint32 {
	out := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		out |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		out |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		out |= unix.S_ISVTX
	}
	return out
}

// containerVolumes puts what the container mounts of the pod's volumes
// into its create request: the host files it binds (copied), its
// directory subPaths, the kubelet-managed volumes (shared, and kept live),
// its raw block volumes (attached: their serials are returned, for the
// caller to detach should the create fail; nothing stays attached when
// containerVolumes fails) and its emptyDirs (Memory ones named, the
// scratch disk attached for the others, also those only a subPath names).
func (p *pod) containerVolumes(ctx context.Context, id string, spec *specs.Spec, req *agentapi.CreateContainerRequest) ([]string, error) {
	subs, err := subPaths(spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	req.SubPaths = subs
	if err := p.volumes.ensure(ctx, spec, subs); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if req.SharedFiles, err = sharedFiles(spec); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	memory, onDisk, err := emptyDirs(spec, p.size.MemoryMiB)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	for _, sp := range subs {
		if name, ok, _ := agentapi.EmptyDirName(sp.Volume); ok {
			// A subPath's emptyDir is on the scratch disk unless a mount of
			// the whole volume names it Memory.
			onDisk = append(onDisk, name)
		}
	}
	req.MemoryVolumes = memory
	if len(onDisk) > 0 {
		if err := p.scratch.attach(ctx, p); err != nil {
			return nil, fmt.Errorf("container %s: emptyDir volumes %q: %w", id, onDisk, err)
		}
	}
	attach := func(ctx context.Context, d hypervisor.Disk) error { return p.layers.attachDisk(ctx, p.vm, d) }
	volumes, serials, err := attachBlockVolumes(ctx, p.vm, attach, newHostDevices(), id, spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	req.BlockVolumes = volumes
	return serials, nil
}
