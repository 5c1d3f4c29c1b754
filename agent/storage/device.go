// Package storage finds the block devices the host attached for containers
// and builds container root filesystems from them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DeviceFinder finds a block device by the serial the host gave it.
type DeviceFinder interface {
	// Find returns the path of the device node whose serial is serial,
	// waiting until it appears or ctx ends.
	Find(ctx context.Context, serial string) (string, error)
}

// SysBlock finds virtio-blk devices by scanning /sys/block/*/serial. The
// guest has no udev, so /dev/disk/by-id does not exist; devtmpfs creates the
// nodes under /dev.
type SysBlock struct {
	SysDir string        // /sys/block
	DevDir string        // /dev
	Poll   time.Duration // how often to rescan while waiting
	// Uevents rescans whenever the kernel announces a device (a uevent),
	// so a hot-plugged disk is found as it appears; Poll still rescans,
	// in case the kernel's socket buffer dropped the announcement.
	Uevents bool
}

// NewSysBlock returns the finder for a real guest.
func NewSysBlock() *SysBlock {
	return &SysBlock{SysDir: "/sys/block", DevDir: "/dev", Poll: 100 * time.Millisecond, Uevents: true}
}

// ValidateSerial checks a serial as virtio-blk can carry it: at most 20
// bytes (longer ones are cut by the device) of letters, digits, '.', '_', '-'.
func ValidateSerial(serial string) error {
	if serial == "" {
		return errors.New("block device serial is empty")
	}
	if len(serial) > 20 {
		return fmt.Errorf("block device serial %q is longer than the 20 bytes virtio-blk carries", serial)
	}
	for _, c := range serial {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("block device serial %q: character %q is not allowed", serial, c)
		}
	}
	return nil
}

// Find waits for the device with the serial.
func (b *SysBlock) Find(ctx context.Context, serial string) (string, error) {
	if err := ValidateSerial(serial); err != nil {
		return "", err
	}
	// Listen before the first scan, so that no device appears unnoticed
	// between the two.
	var events *uevents
	if b.Uevents {
		var err error
		if events, err = listenUevents(); err != nil {
			return "", err
		}
		defer events.close()
	}
	t := time.NewTicker(b.Poll)
	defer t.Stop()
	for {
		seen, dev, err := b.scan(serial)
		if err != nil {
			return "", err
		}
		if dev != "" {
			node := filepath.Join(b.DevDir, dev)
			if _, err := os.Stat(node); err == nil {
				return node, nil
			}
			// sysfs can be ahead of devtmpfs by a moment.
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no block device with serial %q appeared (present: %s): %w", serial, seen, ctx.Err())
		case <-t.C:
		case <-events.next():
		}
	}
}

// scan returns the device with the serial, and a list of what it saw for
// the error message.
func (b *SysBlock) scan(serial string) (seen, dev string, err error) {
	entries, err := os.ReadDir(b.SysDir)
	if err != nil {
		return "", "", fmt.Errorf("list block devices: %w", err)
	}
	var all []string
	for _, e := range entries {
		s, err := os.ReadFile(filepath.Join(b.SysDir, e.Name(), "serial"))
		if err != nil {
			continue // not every block device has a serial (loop, ram)
		}
		got := strings.TrimSpace(string(s))
		all = append(all, fmt.Sprintf("%s=%q", e.Name(), got))
		if got == serial {
			dev = e.Name()
		}
	}
	sort.Strings(all)
	if len(all) == 0 {
		return "none with a serial", dev, nil
	}
	return strings.Join(all, ", "), dev, nil
}
