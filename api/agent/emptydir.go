package agent

import (
	"fmt"
	"path"
	"regexp"
)

// ScratchDiskSerial is the virtio serial of the pod's scratch disk: the one
// sparse disk image per pod that holds its emptyDir volumes, which the guest
// opens only through dm-crypt with a key it makes up and never discloses.
const ScratchDiskSerial = "contrast-scratch"

// emptyDirPlugin is the kubelet's directory of a pod's emptyDir volumes:
// <kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>.
const emptyDirPlugin = "kubernetes.io~empty-dir"

// volumeName is a Kubernetes volume name: a DNS-1123 label.
var volumeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// EmptyDirName returns the volume name of a bind mount source that is a
// kubelet emptyDir directory, and false for any other source. A source in
// that directory whose last component is not a volume name is an error:
// the name becomes a directory name in the guest.
func EmptyDirName(source string) (string, bool, error) {
	clean := path.Clean(source)
	dir, name := path.Split(clean)
	dir = path.Clean(dir)
	if !path.IsAbs(clean) || path.Base(dir) != emptyDirPlugin || path.Base(path.Dir(dir)) != "volumes" {
		return "", false, nil
	}
	if err := ValidateVolumeName(name); err != nil {
		return "", false, fmt.Errorf("emptyDir source %q: %w", source, err)
	}
	return name, true, nil
}

// ValidateVolumeName checks a Kubernetes volume name (a DNS-1123 label).
func ValidateVolumeName(name string) error {
	if !volumeName.MatchString(name) {
		return fmt.Errorf("volume name %q is not a DNS-1123 label", name)
	}
	return nil
}
