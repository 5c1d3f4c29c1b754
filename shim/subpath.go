package shim

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// subPathSource matches the kubelet's bind of a volumeMount's subPath:
// <kubelet root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>.
var subPathSource = regexp.MustCompile(`^(.*/pods/[^/]+)/volume-subpaths/([^/]+)/[^/]+/[0-9]+$`)

// subPathSearchDepth bounds how deep the shim looks for a subPath's
// directory inside its volume.
const subPathSearchDepth = 16

// subPaths finds the volume and the path inside it of each directory
// subPath the spec mounts. The kubelet has bound the directory to the
// mount's source on the host; the shim finds it in the volume by its
// device and inode, so the path it names is one the volume really has.
// A file subPath is copied like any host file (sharedFiles): as with runc,
// it does not follow later updates of its volume.
func subPaths(spec *specs.Spec) ([]*agentapi.SubPath, error) {
	var out []*agentapi.SubPath
	for _, m := range spec.Mounts {
		if !isBind(m) {
			continue
		}
		match := subPathSource.FindStringSubmatch(filepath.Clean(m.Source))
		if match == nil {
			continue
		}
		info, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("subPath mount at %s: %w", m.Destination, err)
		}
		if !info.IsDir() {
			continue
		}
		podDir, volume := match[1], match[2]
		volumeDirs, err := filepath.Glob(filepath.Join(podDir, "volumes", "*", volume))
		if err != nil || len(volumeDirs) != 1 {
			return nil, fmt.Errorf("subPath mount at %s: volume %s: found %d directories for it in %s", m.Destination, volume, len(volumeDirs), podDir)
		}
		rel, err := findDir(volumeDirs[0], info)
		if err != nil {
			return nil, fmt.Errorf("subPath mount at %s: %w", m.Destination, err)
		}
		out = append(out, &agentapi.SubPath{Destination: m.Destination, Volume: volumeDirs[0], Path: rel})
	}
	return out, nil
}

var errFound = errors.New("found")

// findDir returns the path, relative to root, of the directory below root
// that is want (same device and inode), following no symlinks.
func findDir(root string, want fs.FileInfo) (string, error) {
	var rel string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		r, _ := filepath.Rel(root, p)
		if r != "." && depth(r) > subPathSearchDepth {
			return filepath.SkipDir
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if r != "." && sameFile(info, want) {
			rel = filepath.ToSlash(r)
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return rel, nil
	}
	if err != nil {
		return "", err
	}
	return "", fmt.Errorf("its directory is not inside volume %s", root)
}

func depth(rel string) int {
	n := 1
	for _, c := range rel {
		if c == '/' {
			n++
		}
	}
	return n
}

func sameFile(a, b fs.FileInfo) bool {
	sa, okA := a.Sys().(*syscall.Stat_t)
	sb, okB := b.Sys().(*syscall.Stat_t)
	return okA && okB && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
