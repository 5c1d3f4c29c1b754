package generate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// OCILayoutResolver resolves images from an OCI image layout directory
// (oci-layout, index.json, blobs/<algorithm>/<hex>), as skopeo, crane,
// buildkit or `ctr images export` write it. An image is found by the name
// the index gives it: org.opencontainers.image.ref.name, or containerd's
// io.containerd.image.name. A full name (registry.example/app:v1) matches the
// YAML's reference normalized; a bare tag (v1, as `skopeo copy ...
// oci:DIR:v1` writes it) matches the reference's tag whatever its
// repository.
type OCILayoutResolver struct {
	dir      string
	index    ocispec.Index
	store    layoutStore
	platform platforms.MatchComparer
}

// OCILayoutImages reads the index of the OCI layout at dir.
func OCILayoutImages(dir string) (*OCILayoutResolver, error) {
	var layout ocispec.ImageLayout
	if err := readLayoutJSON(filepath.Join(dir, ocispec.ImageLayoutFile), &layout); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("OCI layout %s: imageLayoutVersion %q, want %q", dir, layout.Version, ocispec.ImageLayoutVersion)
	}
	var index ocispec.Index
	if err := readLayoutJSON(filepath.Join(dir, ocispec.ImageIndexFile), &index); err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return &OCILayoutResolver{dir: dir, index: index, store: layoutStore{dir: dir}, platform: platforms.Default()}, nil
}

// Dir is the layout's directory.
func (r *OCILayoutResolver) Dir() string { return r.dir }

// Resolve finds ref among the layout's named images and reads it; the
// Image's Name is the layout's name for it.
func (r *OCILayoutResolver) Resolve(ctx context.Context, ref string) (Image, error) {
	parsed, err := parseImageRef(ref)
	if err != nil {
		return Image{}, err
	}
	desc, name, err := r.find(ref, parsed)
	if err != nil {
		return Image{}, err
	}
	img, err := imageFromStore(ctx, r.store, desc, r.platform, parsed)
	if err != nil {
		return Image{}, fmt.Errorf("image %s in OCI layout %s: %w", ref, r.dir, err)
	}
	img.Name = name
	return img, nil
}

// layoutMatch is an index entry that a reference matches, by one of its
// names.
type layoutMatch struct {
	desc ocispec.Descriptor
	name string
}

func (r *OCILayoutResolver) find(written string, ref imageRef) (ocispec.Descriptor, string, error) {
	var byName, byTag []layoutMatch
	var names []string
	for _, m := range r.index.Manifests {
		for _, key := range []string{images.AnnotationImageName, ocispec.AnnotationRefName} {
			name := m.Annotations[key]
			if name == "" {
				continue
			}
			names = append(names, name)
			if isBareTag(name) {
				if name == ref.tag || (ref.tag == "" && ref.digest == "" && name == "latest") || m.Digest.String() == ref.digest {
					byTag = append(byTag, layoutMatch{m, name})
				}
				continue
			}
			p, err := parseImageRef(name)
			if err != nil || p.name != ref.name {
				continue
			}
			if p.lookupName() == ref.lookupName() || (ref.tag != "" && p.tag == ref.tag) || m.Digest.String() == ref.digest {
				byName = append(byName, layoutMatch{m, name})
			}
		}
	}
	if len(byName)+len(byTag) == 0 {
		slices.Sort(names)
		return ocispec.Descriptor{}, "", fmt.Errorf("image %s is not in OCI layout %s, whose images are named %q: %w",
			written, r.dir, slices.Compact(names), ErrImageNotFound)
	}
	if ref.digest != "" {
		// The digest names the content, whatever tag the layout gives it.
		otherDigest := func(m layoutMatch) bool { return m.desc.Digest.String() != ref.digest }
		all := slices.Concat(byName, byTag)
		byName, byTag = slices.DeleteFunc(byName, otherDigest), slices.DeleteFunc(byTag, otherDigest)
		if len(byName)+len(byTag) == 0 {
			return ocispec.Descriptor{}, "", fmt.Errorf("image %s: OCI layout %s has digest %s for it (%s)", written, r.dir, all[0].desc.Digest, all[0].name)
		}
	}
	matches := byName
	if len(matches) == 0 {
		matches = byTag
	}
	for _, m := range matches[1:] {
		if m.desc.Digest != matches[0].desc.Digest {
			return ocispec.Descriptor{}, "", fmt.Errorf("image %s is ambiguous in OCI layout %s: %s is %s, %s is %s",
				written, r.dir, matches[0].name, matches[0].desc.Digest, m.name, m.desc.Digest)
		}
	}
	return matches[0].desc, matches[0].name, nil
}

// isBareTag tells a ref name that is only a tag from a full reference.
func isBareTag(name string) bool { return !strings.ContainsAny(name, "/:@") }

// maxVerifiedBlob bounds the blobs a layoutStore reads whole and checks
// against their digest: indexes, manifests and configs. Layers are larger
// and streamed; the layer source checks their diff IDs.
const maxVerifiedBlob = 16 << 20

// layoutStore serves an OCI layout's blobs as a content.Provider.
type layoutStore struct{ dir string }

func (s layoutStore) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	// Validate keeps a crafted digest from naming a path outside blobs/.
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %w", desc.Digest, err)
	}
	p := filepath.Join(s.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if desc.Size != 0 && fi.Size() != desc.Size {
		f.Close()
		return nil, fmt.Errorf("blob %s: %s is %d bytes, the descriptor says %d", desc.Digest, p, fi.Size(), desc.Size)
	}
	if fi.Size() > maxVerifiedBlob {
		return sizedFile{f, fi.Size()}, nil
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if got := desc.Digest.Algorithm().FromBytes(data); got != desc.Digest {
		return nil, fmt.Errorf("blob %s: %s has digest %s", desc.Digest, p, got)
	}
	return bytesReaderAt{bytes.NewReader(data)}, nil
}

type sizedFile struct {
	*os.File
	size int64
}

func (f sizedFile) Size() int64 { return f.size }

type bytesReaderAt struct{ *bytes.Reader }

func (bytesReaderAt) Close() error { return nil }

func readLayoutJSON(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}
