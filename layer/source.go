package layer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
// OCI image layout directory dir, for the host platform. ref picks the image
// by its org.opencontainers.image.ref.name (or io.containerd.image.name)
// annotation in index.json; "" picks the only image there is.
func OCILayoutImageLayers(ctx context.Context, dir, ref string) ([]Blob, error) {
	layoutFile, err := os.ReadFile(filepath.Join(dir, ocispec.ImageLayoutFile))
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(layoutFile, &layout); err != nil {
		return nil, fmt.Errorf("parsing %s in %s: %w", ocispec.ImageLayoutFile, dir, err)
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("OCI layout %s has version %q, want %q", dir, layout.Version, ocispec.ImageLayoutVersion)
	}
	indexFile, err := os.ReadFile(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		return nil, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(indexFile, &index); err != nil {
		return nil, fmt.Errorf("parsing %s in %s: %w", ocispec.ImageIndexFile, dir, err)
	}
	target, err := pickImage(index.Manifests, ref)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	blobs, err := imageLayers(ctx, layoutProvider{dir: dir}, target)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s, image %q: %w", dir, ref, err)
	}
	return blobs, nil
}

// pickImage finds the entry of index.json named ref. Entries of other
// platforms under the same name (as some exporters write them) are left to
// the host-platform match that follows.
func pickImage(entries []ocispec.Descriptor, ref string) (ocispec.Descriptor, error) {
	if len(entries) == 0 {
		return ocispec.Descriptor{}, errors.New("index.json lists no images")
	}
	var picked []ocispec.Descriptor
	if ref == "" {
		picked = entries
	} else {
		for _, e := range entries {
			if e.Annotations[ocispec.AnnotationRefName] == ref || e.Annotations[images.AnnotationImageName] == ref {
				picked = append(picked, e)
			}
		}
	}
	if len(picked) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no image named %q; index.json has %s", ref, imageNames(entries))
	}
	if len(picked) == 1 {
		return picked[0], nil
	}
	host := platforms.Default()
	var matching []ocispec.Descriptor
	for _, e := range picked {
		if e.Platform != nil && host.Match(*e.Platform) {
			matching = append(matching, e)
		}
	}
	if len(matching) == 1 {
		return matching[0], nil
	}
	if ref == "" {
		return ocispec.Descriptor{}, fmt.Errorf("index.json has %d images, name one of %s", len(entries), imageNames(entries))
	}
	return ocispec.Descriptor{}, fmt.Errorf("%d images named %q, %d of them for platform %s", len(picked), ref, len(matching), platforms.Format(platforms.DefaultSpec()))
}

func imageNames(entries []ocispec.Descriptor) string {
	var names []string
	for _, e := range entries {
		name := e.Annotations[ocispec.AnnotationRefName]
		if name == "" {
			name = e.Annotations[images.AnnotationImageName]
		}
		if name == "" {
			name = "(unnamed " + e.Digest.String() + ")"
		}
		names = append(names, fmt.Sprintf("%q", name))
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// imageLayers resolves target (index or manifest) to the host platform's
// manifest and pairs its layers with the config's diff IDs.
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
			Open:           layerOpener(provider, desc, diffIDs[i]),
		}
	}
	return blobs, nil
}

// layerOpener opens a layer blob, decompressed (gzip, zstd or none), checking
// at the end both the blob's digest and the diff ID.
func layerOpener(provider content.Provider, desc ocispec.Descriptor, diffID digest.Digest) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		ra, err := provider.ReaderAt(ctx, desc)
		if err != nil {
			return nil, fmt.Errorf("opening layer blob %s: %w", desc.Digest, err)
		}
		blobHash := desc.Digest.Algorithm().Hash()
		if err := desc.Digest.Validate(); err != nil {
			ra.Close()
			return nil, fmt.Errorf("layer blob digest %q: %w", desc.Digest, err)
		}
		compressed := io.TeeReader(content.NewReader(ra), blobHash)
		tar, err := compression.DecompressStream(compressed)
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("decompressing layer blob %s: %w", desc.Digest, err)
		}
		return &checkedLayer{
			tar: tar, compressed: compressed, blob: ra,
			blobDigest: desc.Digest, blobHash: blobHash,
			diffID: diffID, tarHash: digest.SHA256.Hash(),
		}, nil
	}
}

// checkedLayer is a decompressed layer whose final Read fails unless the
// compressed bytes match the blob digest and the tar matches the diff ID.
type checkedLayer struct {
	tar        compression.DecompressReadCloser
	compressed io.Reader
	blob       io.Closer
	blobDigest digest.Digest
	blobHash   hash.Hash
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
	}
	l.end = err
	return n, err
}

// check returns io.EOF if the blob and the tar have their digests, an
// error naming both digests if not.
func (l *checkedLayer) check() error {
	// The decompressor may stop before the blob's last bytes.
	if _, err := io.Copy(io.Discard, l.compressed); err != nil {
		return fmt.Errorf("reading the rest of layer blob %s: %w", l.blobDigest, err)
	}
	if got := digest.NewDigest(l.blobDigest.Algorithm(), l.blobHash); got != l.blobDigest {
		return fmt.Errorf("layer blob has digest %s, the manifest says %s", got, l.blobDigest)
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

// layoutProvider reads blobs from an OCI layout's blobs/<alg>/<hex>.
type layoutProvider struct {
	dir string
}

func (l layoutProvider) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %w", desc.Digest, err)
	}
	path := filepath.Join(l.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening blob %s: %w", desc.Digest, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if desc.Size != 0 && st.Size() != desc.Size {
		f.Close()
		return nil, fmt.Errorf("blob %s is %d bytes, its descriptor says %d", path, st.Size(), desc.Size)
	}
	return fileReaderAt{File: f, size: st.Size()}, nil
}

type fileReaderAt struct {
	*os.File
	size int64
}

func (f fileReaderAt) Size() int64 { return f.size }
