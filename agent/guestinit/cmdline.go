// Package guestinit does what the agent must do as the VM's init (PID 1):
// leave the initramfs for a tmpfs root, mount the kernel filesystems, set up
// cgroup v2 for runc, bring up loopback, log to the console, power off.
package guestinit

import (
	"fmt"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
)

// Options are the agent's settings on the kernel command line, as
// contrast.<key>=<value>.
type Options struct {
	LogLevel logrus.Level // contrast.log_level (default info)
}

// ParseCmdline reads the contrast.* options from a kernel command line.
// Unknown contrast.* keys are errors: a typo must not pass silently.
func ParseCmdline(cmdline string) (Options, error) {
	opts := Options{LogLevel: logrus.InfoLevel}
	for _, field := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(field, "=")
		name, ok := strings.CutPrefix(key, "contrast.")
		if !ok {
			continue
		}
		switch name {
		case "log_level":
			lvl, err := logrus.ParseLevel(value)
			if err != nil {
				return opts, fmt.Errorf("kernel command line %s: %w", field, err)
			}
			opts.LogLevel = lvl
		default:
			return opts, fmt.Errorf("kernel command line: unknown option %s", key)
		}
	}
	return opts, nil
}

// ReadCmdline parses /proc/cmdline.
func ReadCmdline() (Options, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Options{LogLevel: logrus.InfoLevel}, fmt.Errorf("read kernel command line: %w", err)
	}
	return ParseCmdline(string(b))
}
