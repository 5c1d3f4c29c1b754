package shim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
)

// annotationImageName is the image CRI created a container from, as the
// pod spec names it.
const annotationImageName = "io.kubernetes.cri.image-name"

// layerSerial is the virtio-blk serial of an image layer's disk: derived
// from its root hash, so that containers sharing a layer share the disk.
func layerSerial(rootHash string) string { return "l" + rootHash[:19] }

// imageLayers finds a container image in containerd's store, as CRI named
// it: CRI stores a short name like busybox:1 normalized
// (docker.io/library/busybox:1), and a name with both tag and digest by
// its digest alone (name@sha256:...).
func imageLayers(ctx context.Context, client *containerd.Client, namespace, image string) ([]layer.Blob, error) {
	ctx = namespaces.WithNamespace(ctx, namespace)
	blobs, err := layer.ContainerdImageLayers(ctx, client, image)
	if errdefs.IsNotFound(err) {
		if named, perr := reference.ParseDockerRef(image); perr == nil && named.String() != image {
			blobs, err = layer.ContainerdImageLayers(ctx, client, named.String())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("layers of image %s in containerd's store (namespace %s): %w", image, namespace, err)
	}
	if len(blobs) == 0 {
		return nil, fmt.Errorf("image %s has no layers", image)
	}
	return blobs, nil
}

// podLayers are the image layers attached to a pod VM. A layer stays
// attached while the pod runs, also when no container uses it any more
// (a restarted container finds it again); idle ones are unplugged only when
// the VM runs out of hot-plug ports. Each holds its cache entry, which the
// cache then does not evict.
type podLayers struct {
	mu       sync.Mutex
	cache    *layer.Cache
	attached map[string]*attachedLayer // by serial
}

type attachedLayer struct {
	disk    hypervisor.Disk
	info    layer.Info
	release func() // the cache entry
	users   int
}

func newPodLayers(cache *layer.Cache) *podLayers {
	return &podLayers{cache: cache, attached: map[string]*attachedLayer{}}
}

// acquire converts (through the cache) and attaches the layers of one
// container, lowest first, and returns what the agent needs to open them.
// Conversion, which can take minutes for a large image, runs outside the
// lock (the cache converts each layer once, whoever asks); only attaching
// holds it. On error the container holds none of them.
func (pl *podLayers) acquire(ctx context.Context, vm hypervisor.VM, blobs []layer.Blob) (_ []*agentapi.Layer, serials []string, retErr error) {
	type converted struct {
		entry   layer.Entry
		release func()
	}
	entries := make([]converted, 0, len(blobs))
	defer func() {
		for _, e := range entries {
			if e.release != nil {
				e.release()
			}
		}
	}()
	phases := agentapi.PhasesFrom(ctx)
	begin := time.Now()
	for i, b := range blobs {
		entry, release, err := pl.cache.Get(ctx, b, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %d (%s): %w", i, b.DiffID, err)
		}
		entries = append(entries, converted{entry, release})
	}
	// a cache hit is a lookup; a miss converts the layer
	begin = phases.Since("layer-convert", begin)

	pl.mu.Lock()
	defer pl.mu.Unlock()
	defer func() {
		if retErr != nil {
			pl.releaseLocked(serials)
			serials = nil
		}
	}()
	defer phases.Since("layer-attach", begin)
	var layers []*agentapi.Layer
	for i := range entries {
		e := &entries[i]
		serial := layerSerial(e.entry.Info.RootHash)
		a, ok := pl.attached[serial]
		if !ok {
			a = &attachedLayer{disk: hypervisor.Disk{Serial: serial, Path: e.entry.Path, ReadOnly: true}, info: e.entry.Info}
			if err := pl.attachLocked(ctx, vm, a.disk); err != nil {
				return nil, serials, fmt.Errorf("layer %d (%s): %w", i, blobs[i].DiffID, err)
			}
			// the attached layer keeps the conversion's hold on the entry
			a.release, e.release = e.release, nil
			pl.attached[serial] = a
		}
		a.users++
		serials = append(serials, serial)
		layers = append(layers, &agentapi.Layer{
			Serial: serial, Digest: a.info.DiffID.String(), RootHash: a.info.RootHash, DataBlocks: a.info.DataBlocks,
		})
	}
	return layers, serials, nil
}

// attachLocked hot-plugs a disk (a layer's, or another the pod needs);
// when that fails and idle layers hold ports, those are unplugged and the
// attach is tried once more.
func (pl *podLayers) attachLocked(ctx context.Context, vm hypervisor.VM, disk hypervisor.Disk) error {
	err := vm.AttachDisk(ctx, disk)
	if err == nil {
		return nil
	}
	var idle []*attachedLayer
	for _, a := range pl.attached {
		if a.users == 0 {
			idle = append(idle, a)
		}
	}
	if len(idle) == 0 {
		return err
	}
	for _, a := range idle {
		if detachErr := vm.DetachDisk(ctx, a.disk.Serial); detachErr != nil {
			return errors.Join(err, fmt.Errorf("unplug idle layer %s: %w", a.info.DiffID, detachErr))
		}
		delete(pl.attached, a.disk.Serial)
		a.release()
	}
	log.G(ctx).WithField("unplugged", len(idle)).Info("unplugged idle image layers to attach another disk")
	return vm.AttachDisk(ctx, disk)
}

// attachDisk hot-plugs a disk that is no layer (a raw block volume), with
// the idle layers making room as for a layer.
func (pl *podLayers) attachDisk(ctx context.Context, vm hypervisor.VM, disk hypervisor.Disk) error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.attachLocked(ctx, vm, disk)
}

// release drops one container's use of its layers; they stay attached.
func (pl *podLayers) release(serials []string) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.releaseLocked(serials)
}

func (pl *podLayers) releaseLocked(serials []string) {
	for _, s := range serials {
		if a, ok := pl.attached[s]; ok && a.users > 0 {
			a.users--
		}
	}
}

// close returns every cache entry once the VM is gone.
func (pl *podLayers) close() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for serial, a := range pl.attached {
		a.release()
		delete(pl.attached, serial)
	}
}
