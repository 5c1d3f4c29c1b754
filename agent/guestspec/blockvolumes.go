package guestspec

import (
	"fmt"
	"path"
)

// BlockVolume is a raw block volume (Kubernetes volumeDevices) as the guest
// sees it: the device the host attached for the spec's block device entry at
// ContainerPath, which names the host's device numbers.
type BlockVolume struct {
	ContainerPath string
	// Major and Minor are the guest device's numbers.
	Major, Minor int64
}

// rewriteBlockVolumes gives each block device entry a volume is for the
// guest device's numbers, and the device cgroup rules that name the host
// device's numbers the guest's with it: the host's numbers mean nothing in
// the VM, or another device. Every volume needs exactly one block device
// entry at its path; entries without a volume are left as they are (the
// policy decides them).
func (r *Result) rewriteBlockVolumes(volumes []BlockVolume) error {
	if len(volumes) == 0 {
		return nil
	}
	byPath := make(map[string]BlockVolume, len(volumes))
	for _, v := range volumes {
		if !path.IsAbs(v.ContainerPath) || path.Clean(v.ContainerPath) != v.ContainerPath {
			return fmt.Errorf("block volume path %q is not a clean absolute path", v.ContainerPath)
		}
		if _, dup := byPath[v.ContainerPath]; dup {
			return fmt.Errorf("two block volumes for %s", v.ContainerPath)
		}
		byPath[v.ContainerPath] = v
	}
	l := r.Spec.Linux
	type devNum struct{ major, minor int64 }
	hostToGuest := map[devNum]devNum{}
	found := map[string]bool{}
	for i := range l.Devices {
		d := &l.Devices[i]
		v, ok := byPath[d.Path]
		if !ok {
			continue
		}
		if d.Type != "b" {
			return fmt.Errorf("block volume for %s: the spec's device there has type %q, not a block device (b)", d.Path, d.Type)
		}
		if found[d.Path] {
			return fmt.Errorf("block volume for %s: the spec lists two devices there", d.Path)
		}
		found[d.Path] = true
		host := devNum{d.Major, d.Minor}
		if _, dup := hostToGuest[host]; dup {
			// the device cgroup rule naming it could not be told apart
			return fmt.Errorf("block volume for %s: another block volume's entry names the same host device %d:%d", d.Path, d.Major, d.Minor)
		}
		hostToGuest[host] = devNum{v.Major, v.Minor}
		r.note("block device %s: host device %d:%d becomes guest device %d:%d", d.Path, d.Major, d.Minor, v.Major, v.Minor)
		d.Major, d.Minor = v.Major, v.Minor
	}
	for _, v := range volumes {
		if !found[v.ContainerPath] {
			return fmt.Errorf("block volume for %s: the spec has no device there (linux.devices)", v.ContainerPath)
		}
	}
	if l.Resources == nil {
		return nil
	}
	for i := range l.Resources.Devices {
		rule := &l.Resources.Devices[i]
		if rule.Type != "b" || rule.Major == nil || rule.Minor == nil {
			continue
		}
		if guest, ok := hostToGuest[devNum{*rule.Major, *rule.Minor}]; ok {
			rule.Major, rule.Minor = &guest.major, &guest.minor
		}
	}
	return nil
}
