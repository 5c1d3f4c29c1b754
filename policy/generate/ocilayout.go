package generate

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/contrast-vm/contrast/internal/ocilayout"
)

// OCILayoutResolver resolves images from an OCI image layout directory
// (oci-layout, index.json, blobs/<algorithm>/<hex>), as skopeo, crane,
// buildkit or `ctr images export` write it. An image is found by the name
// the index gives it (package ocilayout's rules, which the layer converter
// shares): org.opencontainers.image.ref.name, or containerd's
// io.containerd.image.name. A full name (registry.example/app:v1) matches
// the YAML's reference normalized; a bare tag (v1, as `skopeo copy ...
// oci:DIR:v1` writes it) matches the reference's tag whatever its
// repository. Every blob read is checked against its digest.
type OCILayoutResolver struct {
	layout   *ocilayout.Layout
	platform platforms.MatchComparer
}

// OCILayoutImages reads the index of the OCI layout at dir.
func OCILayoutImages(dir string) (*OCILayoutResolver, error) {
	layout, err := ocilayout.Open(dir)
	if err != nil {
		return nil, err
	}
	return &OCILayoutResolver{layout: layout, platform: platforms.Default()}, nil
}

// Dir is the layout's directory.
func (r *OCILayoutResolver) Dir() string { return r.layout.Dir() }

// Resolve finds ref among the layout's named images and reads it; the
// Image's Name is the layout's name for it.
func (r *OCILayoutResolver) Resolve(ctx context.Context, ref string) (Image, error) {
	parsed, err := parseImageRef(ref)
	if err != nil {
		return Image{}, err
	}
	found, err := r.layout.Resolve(ref, r.platform)
	var notFound *ocilayout.NotFoundError
	if errors.As(err, &notFound) {
		return Image{}, fmt.Errorf("image %s is not in OCI layout %s, whose images are named %q: %w",
			ref, r.layout.Dir(), notFound.Names, ErrImageNotFound)
	}
	if err != nil {
		return Image{}, err
	}
	open := func(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
		return r.layout.OpenBlob(desc)
	}
	img, err := assembleImage(ctx, found.Entry.Descriptor, parsed, found.Manifest, found.Config, open)
	if err != nil {
		return Image{}, fmt.Errorf("image %s in OCI layout %s: %w", ref, r.layout.Dir(), err)
	}
	img.Name = found.Entry.Name
	return img, nil
}
