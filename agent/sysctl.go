package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// setSysctls sets the pod's sysctls in the VM, in name order; the names
// were checked (api.CheckSysctlName) and the policy judged them.
func (s *Service) setSysctls(ctx context.Context, sandbox string, sysctls map[string]string) error {
	names := make([]string, 0, len(sysctls))
	for n := range sysctls {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if s.cfg.SetSysctl == nil {
			log.G(ctx).Infof("sandbox %s: sysctl %s=%q not set (not the VM's init)", sandbox, n, sysctls[n])
			continue
		}
		if err := s.cfg.SetSysctl(n, sysctls[n]); err != nil {
			return fmt.Errorf("create sandbox %s: set sysctl %s=%q: %w", sandbox, n, sysctls[n], err)
		}
	}
	if len(names) > 0 {
		log.G(ctx).Infof("sandbox %s: sysctls %s set", sandbox, strings.Join(names, ", "))
	}
	return nil
}

// writeSysctl writes a kernel parameter through /proc/sys, never following
// a symlink there.
func writeSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
	f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
