package generate

import (
	"fmt"
	"path"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// blockDevices are the container paths of a container's raw block volumes
// (volumeDevices), sorted: the only paths at which the policy lets the
// container get a block device.
func (p *pod) blockDevices(c *corev1.Container) ([]string, error) {
	if len(c.VolumeDevices) == 0 {
		return nil, nil
	}
	declared := map[string]bool{}
	for _, v := range p.spec.Volumes {
		declared[v.Name] = true
	}
	paths := make([]string, 0, len(c.VolumeDevices))
	for _, d := range c.VolumeDevices {
		if !declared[d.Name] {
			return nil, fmt.Errorf("container %s: volumeDevice %s names volume %q, which the pod does not declare", c.Name, d.DevicePath, d.Name)
		}
		if !path.IsAbs(d.DevicePath) || path.Clean(d.DevicePath) != d.DevicePath {
			return nil, fmt.Errorf("container %s: volumeDevice devicePath %q is not a clean absolute path", c.Name, d.DevicePath)
		}
		if slices.Contains(paths, d.DevicePath) {
			return nil, fmt.Errorf("container %s: two volumeDevices at %s", c.Name, d.DevicePath)
		}
		paths = append(paths, d.DevicePath)
	}
	slices.Sort(paths)
	return paths, nil
}
