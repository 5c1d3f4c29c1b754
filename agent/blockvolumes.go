package agent

import (
	"context"
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/agent/guestspec"
	"github.com/contrast-vm/contrast/agent/storage"
	api "github.com/contrast-vm/contrast/api/agent"
)

// checkBlockVolumes checks a container's raw block volumes as the host sent
// them: valid serials, clean absolute paths, and no serial of a disk the
// request uses otherwise (its rootfs, its image layers), which the
// container would then write.
func checkBlockVolumes(req *api.CreateContainerRequest) error {
	other := map[string]string{}
	if req.Rootfs != nil {
		other[req.Rootfs.Serial] = "the rootfs device"
	}
	for i, l := range req.Layers {
		other[l.GetSerial()] = fmt.Sprintf("image layer %d", i)
	}
	serials := map[string]bool{}
	for i, v := range req.BlockVolumes {
		if v == nil {
			return fmt.Errorf("block volume %d is empty", i)
		}
		p := v.ContainerPath
		if !path.IsAbs(p) || path.Clean(p) != p {
			return fmt.Errorf("block volume %d: container path %q is not a clean absolute path", i, p)
		}
		if err := storage.ValidateSerial(v.Serial); err != nil {
			return fmt.Errorf("block volume for %s: %w", p, err)
		}
		if what, ok := other[v.Serial]; ok {
			return fmt.Errorf("block volume for %s: serial %q is %s's", p, v.Serial, what)
		}
		if serials[v.Serial] {
			return fmt.Errorf("block volume for %s: serial %q is another block volume's too", p, v.Serial)
		}
		serials[v.Serial] = true
	}
	return nil
}

// findBlockVolumes finds the guest devices of a container's raw block
// volumes (checked with checkBlockVolumes) by their serials.
func (s *Service) findBlockVolumes(ctx context.Context, volumes []*api.BlockVolume) ([]guestspec.BlockVolume, error) {
	out := make([]guestspec.BlockVolume, 0, len(volumes))
	for _, v := range volumes {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DeviceTimeout)
		node, err := s.cfg.Devices.Find(dctx, v.Serial)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("block volume for %s (waited up to %v): %w", v.ContainerPath, s.cfg.DeviceTimeout, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(node, &st); err != nil {
			return nil, fmt.Errorf("block volume for %s: %w", v.ContainerPath, &os.PathError{Op: "stat", Path: node, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return nil, fmt.Errorf("block volume for %s: %s is not a block device", v.ContainerPath, node)
		}
		out = append(out, guestspec.BlockVolume{
			ContainerPath: v.ContainerPath,
			Major:         int64(unix.Major(uint64(st.Rdev))),
			Minor:         int64(unix.Minor(uint64(st.Rdev))),
		})
	}
	return out, nil
}
