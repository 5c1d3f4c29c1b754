// Package ocilayout reads images from an OCI image layout directory
// (oci-layout, index.json, blobs/<algorithm>/<hex>), as skopeo, crane,
// buildkit or `ctr images export` write it. The policy generator and the
// layer converter both read layouts through it, so they agree on which
// image a reference names and on what its bytes are.
//
// # Names
//
// An index.json entry's names are the values of its
// org.opencontainers.image.ref.name and io.containerd.image.name
// annotations. A reference (parsed like a pod's image: "busybox" is
// docker.io/library/busybox:latest) selects the entries with a name that
//
//   - is a full reference (it holds '/', ':' or '@') of the same repository
//     and either the same tag (the implied "latest" when the reference has
//     neither tag nor digest) or, when the reference has a digest, any tag;
//   - or is a bare tag (no '/', ':' or '@', as `skopeo copy ... oci:DIR:v1`
//     writes it) equal to the reference's tag, whatever its repository, or
//     any bare tag when the reference has a digest.
//
// Entries found by a full reference win over entries found by a bare tag.
// A reference with a digest keeps only the entries with that digest: the
// digest names the content, whatever tag the layout gives it. The empty
// reference selects every entry.
//
// # Platforms
//
// When the selected entries have more than one digest, those whose
// descriptor names a platform the matcher refuses are dropped; one digest
// must remain. From there, indexes are walked (nested ones too) to a manifest:
// an index's entries for other platforms are skipped, the rest are tried in
// the matcher's order of preference, and a manifest whose config names
// another platform is skipped. A lone manifest for another platform is an
// error.
//
// # Blobs
//
// Every blob read is checked against its descriptor: its size first, then
// its digest. Indexes, manifests and configs are read whole (at most
// MaxMetadataSize bytes) and checked before they are parsed; layers are
// streamed, and the stream fails at its end when the bytes do not match. A
// blob that is missing, malformed or not what its descriptor says is a
// *BlobError naming the blob and the layout.
package ocilayout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxMetadataSize bounds what is read into memory as index.json, an index,
// a manifest or a config.
const MaxMetadataSize = 16 << 20

// maxIndexDepth bounds how deep indexes may nest.
const maxIndexDepth = 8

// containerdImageName is the annotation containerd's export gives an
// index.json entry (github.com/containerd/containerd/v2/core/images).
const containerdImageName = "io.containerd.image.name"

// Docker's media types, which some exporters still write.
const (
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
)

// Layout is an OCI image layout directory whose index.json has been read.
type Layout struct {
	dir   string
	index ocispec.Index
}

// Open reads the oci-layout and index.json files of the layout at dir.
func Open(dir string) (*Layout, error) {
	layoutFile, err := readFileLimited(filepath.Join(dir, ocispec.ImageLayoutFile))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(layoutFile, &layout); err != nil {
		return nil, fmt.Errorf("OCI layout %s: parsing %s: %w", dir, ocispec.ImageLayoutFile, err)
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("OCI layout %s: imageLayoutVersion %q, want %q", dir, layout.Version, ocispec.ImageLayoutVersion)
	}
	indexFile, err := readFileLimited(filepath.Join(dir, ocispec.ImageIndexFile))
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	index, err := ParseIndex(indexFile)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %s: %w", dir, ocispec.ImageIndexFile, err)
	}
	return &Layout{dir: dir, index: index}, nil
}

// Dir is the layout's directory.
func (l *Layout) Dir() string { return l.dir }

func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxMetadataSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > MaxMetadataSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxMetadataSize)
	}
	return b, nil
}

// ParseIndex parses an image index (index.json or an index blob) and checks
// what the reader relies on: known media types and well-formed digests and
// sizes in its entries.
func ParseIndex(data []byte) (ocispec.Index, error) {
	var index ocispec.Index
	if err := json.Unmarshal(data, &index); err != nil {
		return ocispec.Index{}, fmt.Errorf("parsing index: %w", err)
	}
	if index.MediaType != "" && index.MediaType != ocispec.MediaTypeImageIndex && index.MediaType != dockerManifestList {
		return ocispec.Index{}, fmt.Errorf("index has media type %q", index.MediaType)
	}
	for i, d := range index.Manifests {
		if err := checkDescriptor(d); err != nil {
			return ocispec.Index{}, fmt.Errorf("index entry %d: %w", i, err)
		}
	}
	return index, nil
}

// ParseManifest parses an image manifest and checks its descriptors.
func ParseManifest(data []byte) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("parsing manifest: %w", err)
	}
	if m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest && m.MediaType != dockerManifest {
		return ocispec.Manifest{}, fmt.Errorf("manifest has media type %q", m.MediaType)
	}
	if err := checkDescriptor(m.Config); err != nil {
		return ocispec.Manifest{}, fmt.Errorf("manifest config: %w", err)
	}
	for i, d := range m.Layers {
		if err := checkDescriptor(d); err != nil {
			return ocispec.Manifest{}, fmt.Errorf("manifest layer %d: %w", i, err)
		}
	}
	return m, nil
}

// checkDescriptor refuses a digest that is malformed or of an algorithm
// this build cannot compute (which also keeps it from naming a path
// outside blobs/), and a negative size.
func checkDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", d.Digest, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("blob %s has size %d", d.Digest, d.Size)
	}
	return nil
}

// NotFoundError is a reference that names no image of the layout.
type NotFoundError struct {
	Layout, Ref string
	// Names are the names index.json gives its images, sorted.
	Names []string
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("no image named %q in OCI layout %s; its images are named %s", e.Ref, e.Layout, quoteNames(e.Names))
}

func quoteNames(names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// Entry is the index.json entry a reference selected.
type Entry struct {
	ocispec.Descriptor
	// Name is the entry's name that the reference matched; "" for the
	// empty reference.
	Name string
}

// entryNames are the names an index.json entry gives its image, in the
// order they are tried.
func entryNames(d ocispec.Descriptor) []string {
	var names []string
	for _, key := range []string{containerdImageName, ocispec.AnnotationRefName} {
		if n := d.Annotations[key]; n != "" {
			names = append(names, n)
		}
	}
	return names
}

// isBareTag tells a name that is only a tag from a full reference.
func isBareTag(name string) bool { return !strings.ContainsAny(name, "/:@") }

// parsedRef is a normalized reference: repository, tag or "", digest or "".
type parsedRef struct{ repo, tag, digest string }

func parseRef(ref string) (parsedRef, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return parsedRef{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	p := parsedRef{repo: named.Name()}
	if t, ok := named.(reference.Tagged); ok {
		p.tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		p.digest = d.Digest().String()
	}
	return p, nil
}

// wantTag is the tag a reference asks for: its own, or the implied
// "latest" when it has neither tag nor digest.
func (p parsedRef) wantTag() string {
	if p.tag == "" && p.digest == "" {
		return "latest"
	}
	return p.tag
}

// Find selects the index.json entry ref names, by the rules of the package
// documentation; platform decides between entries of several digests.
func (l *Layout) Find(ref string, platform platforms.MatchComparer) (Entry, error) {
	var byName, byTag []Entry
	var ref0 parsedRef
	if ref == "" {
		for _, d := range l.index.Manifests {
			byName = append(byName, Entry{Descriptor: d})
		}
		if len(byName) == 0 {
			return Entry{}, fmt.Errorf("OCI layout %s: index.json lists no images", l.dir)
		}
	} else {
		var err error
		if ref0, err = parseRef(ref); err != nil {
			return Entry{}, err
		}
		byName, byTag = l.match(ref0)
		if len(byName)+len(byTag) == 0 {
			return Entry{}, &NotFoundError{Layout: l.dir, Ref: ref, Names: l.names()}
		}
	}
	if ref0.digest != "" {
		otherDigest := func(e Entry) bool { return e.Digest.String() != ref0.digest }
		all := slices.Concat(byName, byTag)
		byName, byTag = slices.DeleteFunc(byName, otherDigest), slices.DeleteFunc(byTag, otherDigest)
		if len(byName)+len(byTag) == 0 {
			return Entry{}, fmt.Errorf("image %s: OCI layout %s has digest %s for it (%s)", ref, l.dir, all[0].Digest, all[0].Name)
		}
	}
	matches := byName
	if len(matches) == 0 {
		matches = byTag
	}
	if !oneDigest(matches) {
		var forPlatform []Entry
		for _, e := range matches {
			if e.Platform == nil || platform.Match(*e.Platform) {
				forPlatform = append(forPlatform, e)
			}
		}
		if len(forPlatform) == 0 || !oneDigest(forPlatform) {
			if ref == "" {
				return Entry{}, fmt.Errorf("OCI layout %s has %d images, name one of %s", l.dir, len(matches), quoteNames(l.names()))
			}
			a, b := matches[0], matches[1]
			for _, m := range matches[1:] {
				if m.Digest != a.Digest {
					b = m
					break
				}
			}
			return Entry{}, fmt.Errorf("image %s is ambiguous in OCI layout %s: %s is %s, %s is %s (and no single one is for this platform)",
				ref, l.dir, a.Name, a.Digest, b.Name, b.Digest)
		}
		matches = forPlatform
	}
	return matches[0], nil
}

func oneDigest(entries []Entry) bool {
	for _, e := range entries[1:] {
		if e.Digest != entries[0].Digest {
			return false
		}
	}
	return true
}

// match returns the entries with a full-reference name and those with a
// bare-tag name that ref selects.
func (l *Layout) match(ref parsedRef) (byName, byTag []Entry) {
	for _, d := range l.index.Manifests {
		for _, name := range entryNames(d) {
			if isBareTag(name) {
				if name == ref.wantTag() || ref.digest != "" {
					byTag = append(byTag, Entry{Descriptor: d, Name: name})
				}
				continue
			}
			p, err := parseRef(name)
			if err != nil || p.repo != ref.repo {
				continue
			}
			if ref.digest != "" || (p.tag != "" && p.tag == ref.wantTag()) || (p.tag == "" && p.digest == "" && ref.wantTag() == "latest") {
				byName = append(byName, Entry{Descriptor: d, Name: name})
			}
		}
	}
	return byName, byTag
}

// names are index.json's names of its images, sorted, each once.
func (l *Layout) names() []string {
	var names []string
	for _, d := range l.index.Manifests {
		n := entryNames(d)
		if len(n) == 0 {
			n = []string{"(unnamed " + d.Digest.String() + ")"}
		}
		names = append(names, n...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Image is an image of the layout resolved for a platform.
type Image struct {
	// Entry is the index.json entry the reference selected.
	Entry Entry
	// ManifestDescriptor and Manifest are the platform's manifest, found
	// through Entry (itself, or an index below it).
	ManifestDescriptor ocispec.Descriptor
	Manifest           ocispec.Manifest
	// Config is the manifest's config.
	Config ocispec.Image
}

// Resolve finds the image ref names (Find) and walks its indexes to the
// manifest and config for platform.
func (l *Layout) Resolve(ref string, platform platforms.MatchComparer) (*Image, error) {
	entry, err := l.Find(ref, platform)
	if err != nil {
		return nil, err
	}
	desc, manifest, config, err := l.resolve(entry.Descriptor, platform, 0)
	if errors.Is(err, errOtherPlatform) {
		return nil, fmt.Errorf("image %s (%s) in OCI layout %s: %w", displayRef(ref, entry), entry.Digest, l.dir, err)
	}
	if err != nil {
		return nil, err
	}
	return &Image{Entry: entry, ManifestDescriptor: desc, Manifest: manifest, Config: config}, nil
}

func displayRef(ref string, e Entry) string {
	if ref == "" {
		return e.Name
	}
	return ref
}

// errOtherPlatform is a manifest or index with nothing for the platform.
var errOtherPlatform = errors.New("no manifest for this platform")

// resolve walks desc down to a manifest for platform.
func (l *Layout) resolve(desc ocispec.Descriptor, platform platforms.MatchComparer, depth int) (ocispec.Descriptor, ocispec.Manifest, ocispec.Image, error) {
	var none ocispec.Manifest
	if depth > maxIndexDepth {
		return desc, none, ocispec.Image{}, l.blobError(desc, fmt.Errorf("indexes nest deeper than %d", maxIndexDepth))
	}
	data, err := l.ReadBlob(desc)
	if err != nil {
		return desc, none, ocispec.Image{}, err
	}
	kind, err := documentKind(desc.MediaType, data)
	if err != nil {
		return desc, none, ocispec.Image{}, l.blobError(desc, err)
	}
	if kind == kindManifest {
		manifest, config, err := l.manifest(desc, data, platform)
		return desc, manifest, config, err
	}
	index, err := ParseIndex(data)
	if err != nil {
		return desc, none, ocispec.Image{}, l.blobError(desc, err)
	}
	var candidates []ocispec.Descriptor
	for _, child := range index.Manifests {
		if child.Platform == nil || platform.Match(*child.Platform) {
			candidates = append(candidates, child)
		}
	}
	// Best match first; entries that name no platform are tried last,
	// each by its config.
	slices.SortStableFunc(candidates, func(a, b ocispec.Descriptor) int {
		switch {
		case a.Platform == nil && b.Platform == nil:
			return 0
		case a.Platform == nil:
			return 1
		case b.Platform == nil:
			return -1
		case platform.Less(*a.Platform, *b.Platform):
			return -1
		case platform.Less(*b.Platform, *a.Platform):
			return 1
		}
		return 0
	})
	for _, child := range candidates {
		mdesc, manifest, config, err := l.resolve(child, platform, depth+1)
		if errors.Is(err, errOtherPlatform) {
			continue
		}
		return mdesc, manifest, config, err
	}
	return desc, none, ocispec.Image{}, fmt.Errorf("index %s lists %s: %w", desc.Digest, platformList(index.Manifests), errOtherPlatform)
}

func platformList(entries []ocispec.Descriptor) string {
	var ps []string
	for _, e := range entries {
		if e.Platform != nil {
			ps = append(ps, platforms.Format(*e.Platform))
		} else {
			ps = append(ps, "(no platform)")
		}
	}
	if len(ps) == 0 {
		return "nothing"
	}
	return strings.Join(ps, ", ")
}

// manifest parses a manifest blob and reads its config, checking the
// config's platform.
func (l *Layout) manifest(desc ocispec.Descriptor, data []byte, platform platforms.MatchComparer) (ocispec.Manifest, ocispec.Image, error) {
	manifest, err := ParseManifest(data)
	if err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, l.blobError(desc, err)
	}
	configData, err := l.ReadBlob(manifest.Config)
	if err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, err
	}
	var config ocispec.Image
	if err := json.Unmarshal(configData, &config); err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, l.blobError(manifest.Config, fmt.Errorf("parsing config: %w", err))
	}
	// An index's entries may name their platform; a lone manifest says it
	// only in its config.
	if config.OS != "" && !platform.Match(config.Platform) {
		return ocispec.Manifest{}, ocispec.Image{}, fmt.Errorf("manifest %s is for %s: %w", desc.Digest, platforms.Format(config.Platform), errOtherPlatform)
	}
	return manifest, config, nil
}

type documentType int

const (
	kindManifest documentType = iota
	kindIndex
)

// documentKind tells an index from a manifest by the descriptor's media
// type, or, when the descriptor has none, by the document's own; the two
// must agree when both are given.
func documentKind(descType string, data []byte) (documentType, error) {
	var doc struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("parsing: %w", err)
	}
	if descType != "" && doc.MediaType != "" && descType != doc.MediaType {
		return 0, fmt.Errorf("the descriptor says media type %q, the document %q", descType, doc.MediaType)
	}
	t := descType
	if t == "" {
		t = doc.MediaType
	}
	switch t {
	case ocispec.MediaTypeImageIndex, dockerManifestList:
		return kindIndex, nil
	case ocispec.MediaTypeImageManifest, dockerManifest:
		return kindManifest, nil
	case "":
		// Neither says: the fields do (image-spec's guidance).
		switch {
		case doc.Manifests != nil && doc.Config == nil:
			return kindIndex, nil
		case doc.Config != nil && doc.Manifests == nil:
			return kindManifest, nil
		}
		return 0, errors.New("neither an index nor a manifest")
	}
	return 0, fmt.Errorf("media type %q is neither an index nor a manifest", t)
}

// BlobError is a blob of the layout that is missing, malformed or not the
// bytes its descriptor names.
type BlobError struct {
	// Where is the store the blob was read from: "OCI layout <dir>".
	Where string
	// Blob is the digest the descriptor names.
	Blob digest.Digest
	// Got is the digest of the blob's bytes when that is what is wrong.
	Got digest.Digest
	Err error
}

func (e *BlobError) Error() string {
	return fmt.Sprintf("%s: blob %s: %v", e.Where, e.Blob, e.Err)
}

func (e *BlobError) Unwrap() error { return e.Err }

func (l *Layout) blobError(desc ocispec.Descriptor, err error) error {
	return &BlobError{Where: l.where(), Blob: desc.Digest, Err: err}
}

func (l *Layout) where() string { return "OCI layout " + l.dir }

// BlobPath is where the layout stores the blob desc names.
func (l *Layout) BlobPath(desc ocispec.Descriptor) (string, error) {
	if err := checkDescriptor(desc); err != nil {
		return "", l.blobError(desc, err)
	}
	return filepath.Join(l.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded()), nil
}

// ReadBlob reads a metadata blob (at most MaxMetadataSize bytes) whole and
// checks its size and digest.
func (l *Layout) ReadBlob(desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > MaxMetadataSize {
		return nil, l.blobError(desc, fmt.Errorf("size %d is more than the %d an index, manifest or config may have", desc.Size, MaxMetadataSize))
	}
	r, err := l.OpenBlob(desc)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var buf bytes.Buffer
	buf.Grow(int(desc.Size))
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// OpenBlob opens a blob to stream it. The file must have the descriptor's
// size; reading it fails at its end, with a *BlobError, unless the bytes
// have the descriptor's digest.
func (l *Layout) OpenBlob(desc ocispec.Descriptor) (io.ReadCloser, error) {
	path, err := l.BlobPath(desc)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, l.blobError(desc, fmt.Errorf("missing: %w", err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, l.blobError(desc, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, l.blobError(desc, fmt.Errorf("%s is not a regular file", path))
	}
	if st.Size() != desc.Size {
		f.Close()
		return nil, l.blobError(desc, fmt.Errorf("%s is %d bytes, its descriptor says %d", path, st.Size(), desc.Size))
	}
	return &verifiedBlob{
		r:     VerifyReader(f, desc, l.where()),
		close: f.Close,
	}, nil
}

type verifiedBlob struct {
	r     io.Reader
	close func() error
}

func (b *verifiedBlob) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *verifiedBlob) Close() error               { return b.close() }
