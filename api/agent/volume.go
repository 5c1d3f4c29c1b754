package agent

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Kinds of VolumeFile.
const (
	VolumeFileRegular = "file"
	VolumeFileDir     = "dir"
	VolumeFileSymlink = "symlink"
)

// VolumeKinds are the kubelet's volume plugins whose volumes the shim
// shares with ShareVolume: the kubelet writes them itself (atomic-writer
// layout) and mounts them read-only.
var VolumeKinds = []string{"configmap", "secret", "projected", "downward-api"}

// volumeSource matches a kubelet volume directory:
// <kubelet root>/pods/<uid>/volumes/kubernetes.io~<kind>/<name>.
var volumeSource = regexp.MustCompile(`/pods/[^/]+/volumes/kubernetes\.io~([a-z-]+)/([^/]+)$`)

// ParseVolumeSource tells whether a bind mount's host source is the
// directory of a volume of one of VolumeKinds, and which.
func ParseVolumeSource(source string) (kind, name string, ok bool) {
	m := volumeSource.FindStringSubmatch(path.Clean(source))
	if m == nil || !slices.Contains(VolumeKinds, m[1]) {
		return "", "", false
	}
	return m[1], m[2], true
}

// CheckVolumeName checks a volume's kind and name as ShareVolume carries
// them (a Kubernetes volume name is a DNS label; the name becomes a
// directory in the guest).
func CheckVolumeName(kind, name string) error {
	if !slices.Contains(VolumeKinds, kind) {
		return fmt.Errorf("volume kind %q is none of %s", kind, strings.Join(VolumeKinds, ", "))
	}
	if name == "" || len(name) > 253 || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("volume name %q is not a directory name", name)
	}
	return nil
}

// CheckVolumeTree checks a volume's tree as ShareVolume carries it: every
// path relative, clean and given once, inside a directory given before it;
// only regular files, directories and symlinks; every symlink's target
// relative and made of downward steps only (no "..", so it cannot leave
// the volume however links chain: the kubelet's "key -> ..data/key" and
// "..data -> ..<timestamp>" are of that kind).
func CheckVolumeTree(files []*VolumeFile) error {
	types := map[string]string{}
	for i, f := range files {
		p := f.GetPath()
		if err := CheckRelativePath(p); err != nil {
			return fmt.Errorf("files[%d]: path %q: %w", i, p, err)
		}
		if _, dup := types[p]; dup {
			return fmt.Errorf("files[%d]: path %q given twice", i, p)
		}
		if dir := path.Dir(p); dir != "." && types[dir] != VolumeFileDir {
			return fmt.Errorf("files[%d]: path %q: its directory %q is not a directory given before it", i, p, dir)
		}
		switch f.GetType() {
		case VolumeFileRegular, VolumeFileDir:
			if f.GetTarget() != "" {
				return fmt.Errorf("files[%d]: %s %q has a symlink target", i, f.GetType(), p)
			}
			if f.GetType() == VolumeFileDir && len(f.GetContent()) > 0 {
				return fmt.Errorf("files[%d]: directory %q has content", i, p)
			}
		case VolumeFileSymlink:
			if err := CheckRelativePath(f.GetTarget()); err != nil {
				return fmt.Errorf("files[%d]: symlink %q: target %q: %w", i, p, f.GetTarget(), err)
			}
			if len(f.GetContent()) > 0 {
				return fmt.Errorf("files[%d]: symlink %q has content", i, p)
			}
		default:
			return fmt.Errorf("files[%d]: %q is of type %q: only %s, %s and %s may be in a volume",
				i, p, f.GetType(), VolumeFileRegular, VolumeFileDir, VolumeFileSymlink)
		}
		if f.GetMode()&^0o7777 != 0 {
			return fmt.Errorf("files[%d]: %q: mode %#o has bits beyond the permissions", i, p, f.GetMode())
		}
		types[p] = f.GetType()
	}
	return nil
}

// CheckRelativePath requires a relative, clean path without "." or ".."
// components: one that stays below the directory it is taken from, as long
// as no symlink is followed.
func CheckRelativePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty")
	case path.IsAbs(p):
		return fmt.Errorf("absolute")
	case path.Clean(p) != p:
		return fmt.Errorf("not clean")
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("contains NUL")
	}
	for _, c := range strings.Split(p, "/") {
		if c == "." || c == ".." {
			return fmt.Errorf("has a %q component", c)
		}
	}
	return nil
}

// VolumeBytes is the sum of a tree's file contents.
func VolumeBytes(files []*VolumeFile) int64 {
	var n int64
	for _, f := range files {
		n += int64(len(f.GetContent()))
	}
	return n
}
