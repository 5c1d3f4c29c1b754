package generate

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImageResolver finds an image by the reference a pod YAML names: a tag, a
// digest or both.
type ImageResolver interface {
	Resolve(ctx context.Context, ref string) (Image, error)
}

// Image is what the policy needs of an image.
type Image struct {
	// Ref is the image pinned by digest, normalized: name@sha256:...
	// (docker.io/library/nginx@sha256:... for "nginx:1.27").
	Ref    string
	Config ocispec.ImageConfig
	// EtcPasswd and EtcGroup are the image's /etc/passwd and /etc/group as
	// its top layer shows them; nil when the image has none. containerd
	// reads them to find a user's group and supplementary groups.
	EtcPasswd, EtcGroup []byte
	// Name is the name the image source holds the image under (containerd's
	// image name, the OCI layout's ref name), which a LayerSource may need to
	// find it again; "" when the source has none.
	Name string
	// DiffIDs are the config's rootfs.diff_ids, lowest layer first; nil when
	// the config is unknown. The generator checks the layers a LayerSource
	// returns against them, so the root hashes belong to the pinned image.
	DiffIDs []string
}

// ImageLayer is one layer of an image as the agent opens it.
type ImageLayer struct {
	// DiffID is "sha256:<hex>" of the layer's uncompressed tar.
	DiffID string
	// RootHash is the dm-verity root hash of the layer's filesystem image,
	// 64 lower-case hex characters.
	RootHash string
}

// LayerSource computes the dm-verity root hashes of an image's layers, which
// the policy pins. Conversion may be slow (it reads every layer); the
// generator asks once per image.
type LayerSource interface {
	// ImageLayers returns the layers of img, as a resolver found it (Ref
	// pinned by digest; Name and DiffIDs when known), lowest first.
	ImageLayers(ctx context.Context, img Image) ([]ImageLayer, error)
}

// ErrImageNotFound is what a resolver returns (wrapped) for an image it does
// not have.
var ErrImageNotFound = errors.New("image not found")

// StaticImages resolves from a fixed table, for tests and for images
// described by hand. An entry is found by the reference exactly as the YAML
// writes it, or by its normalized form (docker.io/library/... with the
// implied :latest), or, for a reference with a digest, by that digest.
func StaticImages(images map[string]Image) ImageResolver {
	return staticImages(images)
}

type staticImages map[string]Image

func (s staticImages) Resolve(_ context.Context, ref string) (Image, error) {
	if img, ok := s[ref]; ok {
		return img, nil
	}
	parsed, err := parseImageRef(ref)
	if err != nil {
		return Image{}, err
	}
	for key, img := range s {
		k, err := parseImageRef(key)
		if err != nil {
			continue
		}
		if k.lookupName() == parsed.lookupName() {
			return img, nil
		}
	}
	if parsed.digest != "" {
		for _, img := range s {
			if p, err := parseImageRef(img.Ref); err == nil && p.digest == parsed.digest && p.name == parsed.name {
				return img, nil
			}
		}
	}
	return Image{}, fmt.Errorf("%s: %w", ref, ErrImageNotFound)
}

// imageRef is a parsed image reference.
type imageRef struct {
	// name is the normalized repository (docker.io/library/nginx), tag the
	// tag or "" and digest the digest or "".
	name, tag, digest string
}

func parseImageRef(ref string) (imageRef, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return imageRef{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	r := imageRef{name: named.Name()}
	if t, ok := named.(reference.Tagged); ok {
		r.tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.digest = d.Digest().String()
	}
	return r, nil
}

// lookupName is the name containerd's CRI stores an image under for this
// reference: name@digest when there is a digest, else name:tag with the
// implied tag "latest".
func (r imageRef) lookupName() string {
	switch {
	case r.digest != "":
		return r.name + "@" + r.digest
	case r.tag != "":
		return r.name + ":" + r.tag
	default:
		return r.name + ":latest"
	}
}

// pinned is the normalized reference by digest.
func (r imageRef) pinned(digest string) string { return r.name + "@" + digest }
