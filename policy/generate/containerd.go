package generate

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ContainerdResolver resolves images from a containerd's local image store:
// a tag resolves to the digest the store holds for it, so the policy pins the
// image the node will run. The images must have been pulled (crictl pull, or
// ctr -n k8s.io images pull) before.
type ContainerdResolver struct {
	client    *containerd.Client
	address   string
	namespace string
	platform  platforms.MatchComparer
}

// ContainerdImages connects to the containerd at address (its socket path)
// and reads images in namespace (k8s.io is the CRI's). The connection is
// made on the first Resolve; Close releases it.
func ContainerdImages(address, namespace string) (*ContainerdResolver, error) {
	if address == "" || namespace == "" {
		return nil, errors.New("containerd images: address and namespace are required")
	}
	// gRPC retries a missing socket until its timeout; say so at once.
	if path, ok := strings.CutPrefix(address, "unix://"); ok || !strings.Contains(address, "://") {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("containerd socket: %w", err)
		}
	}
	c, err := containerd.New(address, containerd.WithDefaultNamespace(namespace))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	return &ContainerdResolver{client: c, address: address, namespace: namespace, platform: platforms.Default()}, nil
}

// Close closes the connection to containerd.
func (r *ContainerdResolver) Close() error { return r.client.Close() }

// Resolve finds ref in the store. A reference with a digest is found by the
// digest under any name, since the digest alone names the content.
func (r *ContainerdResolver) Resolve(ctx context.Context, ref string) (Image, error) {
	parsed, err := parseImageRef(ref)
	if err != nil {
		return Image{}, err
	}
	img, err := r.find(ctx, parsed)
	if err != nil {
		return Image{}, err
	}
	resolved, err := imageFromStore(ctx, r.client.ContentStore(), img.Target, r.platform, parsed)
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	resolved.Name = img.Name
	return resolved, nil
}

// Client is the connection to containerd, for reading the image's layers.
func (r *ContainerdResolver) Client() *containerd.Client { return r.client }

// imageFromStore reads the image whose manifest or index is target from
// store: its config, diff IDs and user files, pinned as ref's name at
// target's digest.
func imageFromStore(ctx context.Context, store content.Provider, target ocispec.Descriptor, platform platforms.MatchComparer, ref imageRef) (Image, error) {
	manifest, err := images.Manifest(ctx, store, target, platform)
	if err != nil {
		return Image{}, fmt.Errorf("%s: manifest for %s: %w", target.Digest, platforms.DefaultString(), err)
	}
	var spec ocispec.Image
	if err := readJSONBlob(ctx, store, manifest.Config, &spec); err != nil {
		return Image{}, fmt.Errorf("%s: config: %w", target.Digest, err)
	}
	return assembleImage(ctx, target, ref, manifest, spec, providerOpener(store))
}

// assembleImage is what an image source gives once it has found the
// manifest and the config of target: the config, diff IDs and user files,
// pinned as ref's name at target's digest.
func assembleImage(ctx context.Context, target ocispec.Descriptor, ref imageRef, manifest ocispec.Manifest, spec ocispec.Image, open blobOpener) (Image, error) {
	passwd, group, err := readUserFilesFrom(ctx, open, manifest.Layers)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", target.Digest, err)
	}
	diffIDs := make([]string, len(spec.RootFS.DiffIDs))
	for i, d := range spec.RootFS.DiffIDs {
		diffIDs[i] = d.String()
	}
	if len(diffIDs) != len(manifest.Layers) {
		return Image{}, fmt.Errorf("%s: the config names %d layers, the manifest %d", target.Digest, len(diffIDs), len(manifest.Layers))
	}
	return Image{
		Ref:       ref.pinned(target.Digest.String()),
		Config:    spec.Config,
		EtcPasswd: passwd,
		EtcGroup:  group,
		DiffIDs:   diffIDs,
	}, nil
}

// blobOpener opens a layer blob as stored (compressed or not).
type blobOpener func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)

// providerOpener opens blobs of a content store (containerd's checks
// digests as it stores them).
func providerOpener(store content.Provider) blobOpener {
	return func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
		ra, err := store.ReaderAt(ctx, desc)
		if err != nil {
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{content.NewReader(ra), ra}, nil
	}
}

func (r *ContainerdResolver) find(ctx context.Context, ref imageRef) (images.Image, error) {
	store := r.client.ImageService()
	img, err := store.Get(ctx, ref.lookupName())
	if err == nil {
		if ref.digest != "" && img.Target.Digest.String() != ref.digest {
			return images.Image{}, fmt.Errorf("image %s: containerd's store has digest %s for it", ref.lookupName(), img.Target.Digest)
		}
		return img, nil
	}
	if !errdefs.IsNotFound(err) {
		return images.Image{}, fmt.Errorf("image %s: containerd at %s: %w", ref.lookupName(), r.address, err)
	}
	if ref.digest != "" {
		// CRI stores a pull by tag under the tag and the config digest, so a
		// reference with both tag and digest may only be found by digest.
		list, err := store.List(ctx, fmt.Sprintf("target.digest==%s", ref.digest))
		if err != nil {
			return images.Image{}, fmt.Errorf("images with digest %s: containerd at %s: %w", ref.digest, r.address, err)
		}
		for _, img := range list {
			if p, err := parseImageRef(img.Name); err == nil && p.name == ref.name {
				return img, nil
			}
		}
	}
	return images.Image{}, fmt.Errorf("image %s is not in containerd's store at %s (namespace %s); pull it first, e.g. crictl pull %s: %w",
		ref.lookupName(), r.address, r.namespace, ref.lookupName(), ErrImageNotFound)
}

// maxUserFile bounds /etc/passwd and /etc/group read from an image.
const maxUserFile = 4 << 20

// readUserFiles returns /etc/passwd and /etc/group as the image's top layer
// shows them, reading layers from the top down until both are decided (a
// layer that holds a file, deletes it or makes /etc opaque decides it).
func readUserFiles(ctx context.Context, store content.Provider, layers []ocispec.Descriptor) (passwd, group []byte, err error) {
	return readUserFilesFrom(ctx, providerOpener(store), layers)
}

func readUserFilesFrom(ctx context.Context, open blobOpener, layers []ocispec.Descriptor) (passwd, group []byte, err error) {
	files := map[string]*layerFile{"etc/passwd": {}, "etc/group": {}}
	for i := len(layers) - 1; i >= 0; i-- {
		if err := scanLayer(ctx, open, layers[i], files); err != nil {
			return nil, nil, fmt.Errorf("layer %d (%s): %w", i, layers[i].Digest, err)
		}
		if files["etc/passwd"].decided && files["etc/group"].decided {
			break
		}
	}
	return files["etc/passwd"].data, files["etc/group"].data, nil
}

type layerFile struct {
	decided bool
	data    []byte
}

func scanLayer(ctx context.Context, open blobOpener, desc ocispec.Descriptor, files map[string]*layerFile) error {
	blob, err := open(ctx, desc)
	if err != nil {
		return err
	}
	defer blob.Close()
	stream, err := compression.DecompressStream(blob)
	if err != nil {
		return err
	}
	defer stream.Close()
	if err := scanTar(stream, files); err != nil {
		return err
	}
	// To its end, where a verifying source checks the blob's digest: the
	// tar's end marker may come before the end of the decompressed stream,
	// and that before the end of the blob.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	return nil
}

// scanTar applies what a layer tar says about files.
func scanTar(stream io.Reader, files map[string]*layerFile) error {
	// What this layer says, applied once the whole layer is read: within a
	// layer, a whiteout and a file of the same path may come in any order.
	found := map[string][]byte{}
	deleted := map[string]bool{}
	opaqueEtc := false
	tr := tar.NewReader(stream)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		dir, base := path.Split(name)
		switch {
		case name == ".wh.etc" || (name == "etc" && hdr.Typeflag != tar.TypeDir):
			opaqueEtc = true
		case dir == "etc/" && base == ".wh..wh..opq":
			opaqueEtc = true
		case dir == "etc/" && strings.HasPrefix(base, ".wh."):
			target := "etc/" + strings.TrimPrefix(base, ".wh.")
			if _, ok := files[target]; ok {
				deleted[target] = true
			}
		default:
			if _, ok := files[name]; !ok {
				continue
			}
			switch hdr.Typeflag {
			case tar.TypeReg:
			case tar.TypeSymlink, tar.TypeLink:
				return fmt.Errorf("/%s is a link; reading users through links is not supported", name)
			default:
				deleted[name] = true // not a file: no users from it
				continue
			}
			if hdr.Size > maxUserFile {
				return fmt.Errorf("/%s is %d bytes, more than %d", name, hdr.Size, maxUserFile)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("read /%s: %w", name, err)
			}
			found[name] = data
		}
	}
	for name, f := range files {
		if f.decided {
			continue
		}
		switch data, ok := found[name]; {
		case ok:
			f.data, f.decided = data, true
		case deleted[name] || opaqueEtc:
			f.decided = true
		}
	}
	return nil
}

func readJSONBlob(ctx context.Context, store content.Provider, desc ocispec.Descriptor, v any) error {
	raw, err := content.ReadBlob(ctx, store, desc)
	if err != nil {
		return err
	}
	return unmarshalJSON(raw, v)
}
