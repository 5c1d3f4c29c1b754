package guestspec

import (
	"fmt"
	"path"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/contrast-vm/contrast/api/agent"
)

// EmptyDirInput says where the guest keeps the pod's emptyDir volumes.
type EmptyDirInput struct {
	// ScratchDir holds a directory per emptyDir on the encrypted scratch disk.
	ScratchDir string
	// MemoryDir holds a tmpfs per emptyDir of medium Memory.
	MemoryDir string
	// Memory names the volumes of medium Memory.
	Memory map[string]bool
}

// EmptyDir is an emptyDir volume the container mounts; the caller makes
// its directory (Source of the rewritten mount) before runc runs.
type EmptyDir struct {
	Name   string
	Memory bool
	Dir    string
}

// rewriteEmptyDir points a bind mount of a kubelet emptyDir directory at
// the guest's own directory of that volume: the same volume name is the
// same directory for every container of the pod. It reports false for a
// mount that is no emptyDir.
func (r *Result) rewriteEmptyDir(in EmptyDirInput, m *specs.Mount) (bool, error) {
	name, ok, err := api.EmptyDirName(m.Source)
	if err != nil || !ok {
		return false, err
	}
	ed := EmptyDir{Name: name, Memory: in.Memory[name], Dir: path.Join(in.ScratchDir, name)}
	where := "the encrypted scratch disk"
	if ed.Memory {
		ed.Dir, where = path.Join(in.MemoryDir, name), "a tmpfs"
	}
	if in.ScratchDir == "" || in.MemoryDir == "" {
		return false, fmt.Errorf("emptyDir volume %q at %q: the guest has no place for emptyDir volumes", name, m.Destination)
	}
	if !slices.ContainsFunc(r.EmptyDirs, func(e EmptyDir) bool { return e.Name == name }) {
		r.EmptyDirs = append(r.EmptyDirs, ed)
	}
	r.note("emptyDir volume %q at %s: host directory %q replaced by %s on %s", name, m.Destination, m.Source, ed.Dir, where)
	m.Source = ed.Dir
	return true, nil
}
