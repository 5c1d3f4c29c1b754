package layer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocilayout"
)

// Blob is one layer of an image, as a source to convert.
type Blob struct {
	// DiffID is the digest of the uncompressed layer tar (from the image
	// config's rootfs.diff_ids).
	DiffID digest.Digest
	// CompressedSize is the size of the blob as stored, for progress.
	CompressedSize int64
	// Open returns the uncompressed layer tar. Reading it fails at its end
	// when the bytes do not match DiffID.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// maxMetadataBlobSize bounds what is read into memory as an index, manifest
// or config.
const maxMetadataBlobSize = 16 << 20

// ContainerdImageLayers returns the layers, bottom first, of the image named
// ref in containerd's image store (the namespace comes from ctx), for the
// host platform.
func ContainerdImageLayers(ctx context.Context, client *containerd.Client, ref string) ([]Blob, error) {
	img, err := client.ImageService().Get(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("looking up image %q in containerd: %w", ref, err)
	}
	// The blobs' Open may get a context without the namespace (a cache's
	// caller need not know containerd): the layers remember theirs.
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, fmt.Errorf("image %q in containerd: %w", ref, err)
	}
	blobs, err := imageLayers(ctx, namespacedProvider{client.ContentStore(), ns}, img.Target)
	if err != nil {
		return nil, fmt.Errorf("image %q in containerd: %w", ref, err)
	}
	return blobs, nil
}

// OCILayoutImageLayers returns the layers, bottom first, of an image in the
// OCI image layout directory dir, for the host platform. ref names the image
// by the rules of package ocilayout (the reference the policy generator
// resolved, e.g. pinned by digest); "" picks the only image there is.
func OCILayoutImageLayers(ctx context.Context, dir, ref string) ([]Blob, error) {
	layout, err := ocilayout.Open(dir)
	if err != nil {
		return nil, err
	}
	img, err := layout.Resolve(ref, platforms.Default())
	if err != nil {
		return nil, err
	}
	blobs, err := pairLayers(img.Manifest, img.Config, func(desc ocispec.Descriptor) blobOpener {
		return func(context.Context) (io.ReadCloser, error) { return layout.OpenBlob(desc) }
	})
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s, image %q: %w", dir, ref, err)
	}
	return blobs, nil
}

// imageLayers resolves target (index or manifest) in containerd's content
// store to the host platform's manifest and pairs its layers with the
// config's diff IDs.
func imageLayers(ctx context.Context, provider content.Provider, target ocispec.Descriptor) ([]Blob, error) {
	verified := verifyingProvider{provider}
	manifest, err := images.Manifest(ctx, verified, target, platforms.Default())
	if err != nil {
		return nil, fmt.Errorf("finding the manifest for %s: %w", platforms.Format(platforms.DefaultSpec()), err)
	}
	configBytes, err := content.ReadBlob(ctx, verified, manifest.Config)
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", manifest.Config.Digest, err)
	}
	var config ocispec.Image
	if err := json.Unmarshal(configBytes, &config); err != nil {
		return nil, fmt.Errorf("parsing config %s: %w", manifest.Config.Digest, err)
	}
	// images.Manifest checks the platform of an index's entries only; an
	// image that is a lone manifest says its platform in the config.
	if config.OS != "" && !platforms.Default().Match(config.Platform) {
		return nil, fmt.Errorf("image is for %s, not %s", platforms.Format(config.Platform), platforms.Format(platforms.DefaultSpec()))
	}
	return pairLayers(manifest, config, func(desc ocispec.Descriptor) blobOpener {
		return func(ctx context.Context) (io.ReadCloser, error) {
			if err := desc.Digest.Validate(); err != nil {
				return nil, fmt.Errorf("layer blob digest %q: %w", desc.Digest, err)
			}
			ra, err := provider.ReaderAt(ctx, desc)
			if err != nil {
				return nil, fmt.Errorf("opening layer blob %s: %w", desc.Digest, err)
			}
			return readCloser{ocilayout.VerifyReader(content.NewReader(ra), desc, "containerd's content store"), ra}, nil
		}
	})
}

// blobOpener opens a layer blob as stored (compressed or not); its reads
// fail at the end (with an *ocilayout.BlobError) unless the bytes match the
// blob's descriptor.
type blobOpener func(ctx context.Context) (io.ReadCloser, error)

type readCloser struct {
	io.Reader
	io.Closer
}

// pairLayers pairs a manifest's layers with the config's diff IDs.
func pairLayers(manifest ocispec.Manifest, config ocispec.Image, open func(ocispec.Descriptor) blobOpener) ([]Blob, error) {
	diffIDs := config.RootFS.DiffIDs
	if len(diffIDs) != len(manifest.Layers) {
		return nil, fmt.Errorf("manifest has %d layers, config %s has %d diff IDs", len(manifest.Layers), manifest.Config.Digest, len(diffIDs))
	}
	blobs := make([]Blob, len(diffIDs))
	for i, desc := range manifest.Layers {
		if err := diffIDs[i].Validate(); err != nil || diffIDs[i].Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("config %s: diff ID %d %q is not a sha256 digest", manifest.Config.Digest, i, diffIDs[i])
		}
		blobs[i] = Blob{
			DiffID:         diffIDs[i],
			CompressedSize: desc.Size,
			Open:           layerOpener(open(desc), desc, diffIDs[i]),
		}
	}
	return blobs, nil
}

// layerOpener opens a layer blob, decompressed (gzip, zstd or none), checking
// at the end both the blob's digest and the diff ID.
func layerOpener(open blobOpener, desc ocispec.Descriptor, diffID digest.Digest) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		blob, err := open(ctx)
		if err != nil {
			return nil, err
		}
		tar, err := compression.DecompressStream(blob)
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("decompressing layer blob %s: %w", desc.Digest, explainBlobError(err))
		}
		return &checkedLayer{
			tar: tar, blob: blob, blobDigest: desc.Digest,
			diffID: diffID, tarHash: digest.SHA256.Hash(),
		}, nil
	}
}

// explainBlobError words a blob that is not the manifest's for the layer
// it is.
func explainBlobError(err error) error {
	var blobErr *ocilayout.BlobError
	if errors.As(err, &blobErr) && blobErr.Got != "" {
		return fmt.Errorf("layer blob has digest %s, the manifest says %s (%s)", blobErr.Got, blobErr.Blob, blobErr.Where)
	}
	return err
}

// checkedLayer is a decompressed layer whose final Read fails unless the
// compressed bytes match the blob's descriptor and the tar matches the diff
// ID.
type checkedLayer struct {
	tar        compression.DecompressReadCloser
	blob       io.ReadCloser // verified by its descriptor
	blobDigest digest.Digest
	diffID     digest.Digest
	tarHash    hash.Hash
	// end is what every Read returns once the layer has ended.
	end error
}

func (l *checkedLayer) Read(p []byte) (int, error) {
	if l.end != nil {
		// Again: a buffering reader above may have swallowed it the first
		// time.
		return 0, l.end
	}
	n, err := l.tar.Read(p)
	l.tarHash.Write(p[:n])
	if err == nil {
		return n, nil
	}
	if err == io.EOF {
		err = l.check()
	} else {
		err = explainBlobError(err)
	}
	l.end = err
	return n, err
}

// check returns io.EOF if the blob and the tar have their digests, an
// error naming both digests if not.
func (l *checkedLayer) check() error {
	// The decompressor may stop before the blob's last bytes; the blob's
	// own check is at its end.
	if _, err := io.Copy(io.Discard, l.blob); err != nil {
		return fmt.Errorf("reading the rest of layer blob %s: %w", l.blobDigest, explainBlobError(err))
	}
	if got := digest.NewDigest(digest.SHA256, l.tarHash); got != l.diffID {
		return fmt.Errorf("layer %s decompresses to diff ID %s, the config says %s", l.blobDigest, got, l.diffID)
	}
	return io.EOF
}

func (l *checkedLayer) Close() error {
	return errors.Join(l.tar.Close(), l.blob.Close())
}

// verifyingProvider serves whole small blobs (indexes, manifests, configs)
// only after checking their digest.
type verifyingProvider struct {
	content.Provider
}

func (v verifyingProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %w", desc.Digest, err)
	}
	if desc.Size < 0 || desc.Size > maxMetadataBlobSize {
		return nil, fmt.Errorf("blob %s (%s) has size %d, more than the %d a %s may have", desc.Digest, desc.MediaType, desc.Size, maxMetadataBlobSize, "manifest, index or config")
	}
	ra, err := v.Provider.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	b := make([]byte, desc.Size)
	if _, err := ra.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && desc.Size == 0) {
		return nil, fmt.Errorf("reading blob %s: %w", desc.Digest, err)
	}
	if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
		return nil, fmt.Errorf("blob has digest %s, its descriptor says %s", got, desc.Digest)
	}
	return bytesReaderAt{bytes.NewReader(b)}, nil
}

type bytesReaderAt struct{ *bytes.Reader }

func (bytesReaderAt) Close() error { return nil }

// namespacedProvider reads blobs in containerd namespace ns.
type namespacedProvider struct {
	content.Provider
	ns string
}

func (n namespacedProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	return n.Provider.ReaderAt(namespaces.WithNamespace(ctx, n.ns), desc)
}
