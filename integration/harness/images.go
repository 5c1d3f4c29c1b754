package harness

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Image references of the test images. The registry host never resolves:
// the images are imported, and the pause image is pinned so CRI never pulls.
const (
	BusyboxImage = "localhost/contrast-test/busybox:1"
	PauseImage   = "localhost/contrast-test/pause:1"
)

// busyboxApplets get a symlink in /bin; the tests and the demo use these.
var busyboxApplets = []string{
	"cat", "chmod", "dd", "echo", "env", "false", "free", "grep", "head", "hostname", "httpd", "id", "ip",
	"kill", "ls", "mkdir", "nc", "nproc", "nslookup", "printf", "ps", "sed", "seq", "sh", "sha256sum",
	"sleep", "stty", "tail", "tar", "tr", "true", "tty", "uname", "wc", "yes",
}

// ImageFile is one regular file, directory or symlink of an image layer.
type ImageFile struct {
	Path     string // relative, without leading slash
	Mode     int64  // permission bits
	Dir      bool
	Linkname string // symlink target, if a symlink
	Data     []byte
}

// ImageSpec describes a single-layer linux/amd64 image.
type ImageSpec struct {
	Name       string // full reference, e.g. localhost/x/y:tag
	Files      []ImageFile
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// BusyboxSpec is an image with static busybox (from busyboxPath) and the
// applet links the tests use; its default command is sh.
func BusyboxSpec(name, busyboxPath string, cmd []string) (ImageSpec, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return ImageSpec{}, fmt.Errorf("read busybox for image %s: %w", name, err)
	}
	files := []ImageFile{
		{Path: "bin", Dir: true, Mode: 0o755},
		{Path: "bin/busybox", Mode: 0o755, Data: bb},
	}
	for _, d := range []string{"dev", "etc", "proc", "root", "sys", "tmp", "var"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		files = append(files, ImageFile{Path: d, Dir: true, Mode: mode})
	}
	files = append(files,
		ImageFile{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		ImageFile{Path: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
	)
	for _, a := range busyboxApplets {
		files = append(files, ImageFile{Path: "bin/" + a, Mode: 0o777, Linkname: "busybox"})
	}
	// GREETING: an image variable a pod may override (containerd then sends
	// both entries, and runc keeps the last).
	return ImageSpec{Name: name, Files: files, Cmd: cmd, Env: []string{"PATH=/bin", "GREETING=from the image"}}, nil
}

// epoch is the timestamp of every archive entry, so the same inputs give
// the same bytes (and the same image digests) on every run.
var epoch = time.Unix(0, 0).UTC()

// WriteOCIArchive writes spec as an OCI image layout tar that
// `ctr images import` accepts, byte-for-byte reproducibly.
func WriteOCIArchive(path string, spec ImageSpec) error {
	layer, err := layerTar(spec.Files)
	if err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	layerDigest := digest(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Env":        spec.Env,
			"Entrypoint": spec.Entrypoint,
			"Cmd":        spec.Cmd,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return fmt.Errorf("image %s: marshal config: %w", spec.Name, err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config, nil),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer, nil)},
	})
	if err != nil {
		return fmt.Errorf("image %s: marshal manifest: %w", spec.Name, err)
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest, map[string]string{
		// containerd names the imported image after this annotation.
		"io.containerd.image.name":          spec.Name,
		"org.opencontainers.image.ref.name": refTag(spec.Name),
	})
	md["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
	// The same manifest under its digest reference (repo@sha256:...), the
	// name a pull by digest gives an image: manifests whose images are
	// pinned by `contrast policy generate` resolve without a registry.
	mdDigest := descriptor("application/vnd.oci.image.manifest.v1+json", manifest, map[string]string{
		"io.containerd.image.name": repository(spec.Name) + "@" + digest(manifest),
	})
	mdDigest["platform"] = md["platform"]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md, mdDigest},
	})
	if err != nil {
		return fmt.Errorf("image %s: marshal index: %w", spec.Name, err)
	}
	entries := []ImageFile{
		{Path: "blobs", Dir: true, Mode: 0o755},
		{Path: "blobs/sha256", Dir: true, Mode: 0o755},
		{Path: "oci-layout", Mode: 0o644, Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{Path: "index.json", Mode: 0o644, Data: index},
	}
	for _, b := range [][]byte{layer, config, manifest} {
		entries = append(entries, ImageFile{Path: "blobs/sha256/" + digest(b)[len("sha256:"):], Mode: 0o644, Data: b})
	}
	archive, err := tarBytes(entries)
	if err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("image %s: %w", spec.Name, err)
	}
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	return nil
}

// repository is name without its tag.
func repository(name string) string {
	if tag := refTag(name); tag != name {
		return strings.TrimSuffix(name, ":"+tag)
	}
	return name
}

func refTag(name string) string {
	for i := len(name) - 1; i >= 0 && name[i] != '/'; i-- {
		if name[i] == ':' {
			return name[i+1:]
		}
	}
	return "latest"
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, b []byte, annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}

func layerTar(files []ImageFile) ([]byte, error) { return tarBytes(files) }

// tarBytes writes entries sorted by path, owned by root, dated at the epoch.
func tarBytes(files []ImageFile) ([]byte, error) {
	sorted := append([]ImageFile(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range sorted {
		hdr := &tar.Header{
			Name:    f.Path,
			Mode:    f.Mode,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		switch {
		case f.Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case f.Linkname != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = f.Linkname
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", f.Path, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, bytes.NewReader(f.Data)); err != nil {
				return nil, fmt.Errorf("tar data %s: %w", f.Path, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteTestImages writes the busybox and pause image archives into dir and
// returns their paths.
func WriteTestImages(dir, busyboxPath string) ([]string, error) {
	bb, err := BusyboxSpec(BusyboxImage, busyboxPath, []string{"sh"})
	if err != nil {
		return nil, err
	}
	// The pause container only has to stay alive; CRI ends it with SIGKILL.
	pause, err := BusyboxSpec(PauseImage, busyboxPath, nil)
	if err != nil {
		return nil, err
	}
	pause.Entrypoint = []string{"/bin/sleep", "infinity"}
	var paths []string
	for _, s := range []struct {
		file string
		spec ImageSpec
	}{{"busybox.tar", bb}, {"pause.tar", pause}} {
		p := filepath.Join(dir, s.file)
		if err := WriteOCIArchive(p, s.spec); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}
