package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/contrast-vm/contrast/hypervisor"
)

// maxSerial is virtio-blk's serial length (VIRTIO_BLK_ID_BYTES).
const maxSerial = 20

type diskState int

const (
	diskAttaching diskState = iota
	diskAttached
	diskDetaching
)

// disk is a hot-plugged disk: a raw format node over a file node, and a
// virtio-blk-pci device on one root port.
type disk struct {
	serial string
	port   int
	devID  string
	node   string // format node; its file child goes with it
	state  diskState
}

func checkSerial(s string) error {
	if s == "" || len(s) > maxSerial {
		return fmt.Errorf("serial %q: want 1 to %d bytes", s, maxSerial)
	}
	for _, r := range s {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("serial %q: want printable ASCII without spaces", s)
		}
	}
	return nil
}

// AttachDisk adds the image at d.Path as a raw block node and plugs a
// virtio-blk-pci device with d.Serial into a free root port. The guest sees
// it at once (PCIe native hot-plug); nothing here waits for the guest.
func (vm *VM) AttachDisk(ctx context.Context, d hypervisor.Disk) error {
	if err := vm.attachDisk(ctx, d); err != nil {
		return fmt.Errorf("attach disk %q (%s) to vm %s: %w", d.Serial, d.Path, vm.id, err)
	}
	return nil
}

func (vm *VM) attachDisk(ctx context.Context, d hypervisor.Disk) error {
	if err := checkSerial(d.Serial); err != nil {
		return err
	}
	fi, err := os.Stat(d.Path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory")
	}

	// Reserve serial and port, then talk to QEMU without the lock: a slow
	// detach must not hold up other disks.
	vm.diskMu.Lock()
	if _, ok := vm.disks[d.Serial]; ok {
		vm.diskMu.Unlock()
		return errors.New("a disk with this serial is already attached")
	}
	port := -1
	for i, used := range vm.portUsed {
		if !used {
			port = i
			break
		}
	}
	if port < 0 {
		vm.diskMu.Unlock()
		return fmt.Errorf("no free hot-plug port (all %d in use)", len(vm.portUsed))
	}
	n := vm.nextDisk
	vm.nextDisk++
	dk := &disk{
		serial: d.Serial,
		port:   port,
		devID:  fmt.Sprintf("disk%d", n),
		node:   fmt.Sprintf("disk%d-fmt", n),
		state:  diskAttaching,
	}
	vm.disks[d.Serial] = dk
	vm.portUsed[port] = true
	vm.diskMu.Unlock()

	release := func() {
		vm.diskMu.Lock()
		delete(vm.disks, d.Serial)
		vm.portUsed[port] = false
		vm.diskMu.Unlock()
	}

	type fileNode struct {
		Driver   string `json:"driver"`
		NodeName string `json:"node-name"`
		Filename string `json:"filename"`
		ReadOnly bool   `json:"read-only"`
		Locking  string `json:"locking,omitempty"`
	}
	file := fileNode{Driver: "file", NodeName: fmt.Sprintf("disk%d-file", n), Filename: d.Path, ReadOnly: d.ReadOnly}
	if fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
		// A host block device (a raw block volume) needs QEMU's host_device
		// driver; two containers of the pod may use the same one, each
		// through a disk of its own, so QEMU must not lock it.
		file.Driver, file.Locking = "host_device", "off"
	}
	add := struct {
		Driver   string   `json:"driver"`
		NodeName string   `json:"node-name"`
		ReadOnly bool     `json:"read-only"`
		File     fileNode `json:"file"`
	}{
		Driver:   "raw",
		NodeName: dk.node,
		ReadOnly: d.ReadOnly,
		File:     file,
	}
	dev := map[string]any{
		"driver": "virtio-blk-pci",
		"id":     dk.devID,
		"drive":  dk.node,
		"bus":    rootPortID(port),
		"serial": d.Serial,
	}
	// Both commands go out before either answer is awaited: one round
	// trip to QEMU instead of two. QEMU runs them in order, so device_add
	// finds the node blockdev-add made, or fails for want of it (the
	// node name is new) when blockdev-add failed.
	waitNode, err := vm.qmp.send(ctx, "blockdev-add", add)
	if err != nil {
		release()
		return err
	}
	waitDevice, devErr := vm.qmp.send(ctx, "device_add", dev)
	if err := waitNode(nil); err != nil {
		// QEMU refuses the device for want of its node; only when the
		// node's answer was lost (ctx, connection) may it have plugged
		// the device after all, whose port then stays taken.
		if devErr != nil || waitDevice(nil) != nil {
			release()
		}
		return err
	}
	if devErr == nil {
		devErr = waitDevice(nil)
	}
	if err := devErr; err != nil {
		if derr := vm.blockdevDel(context.WithoutCancel(ctx), dk.node); derr != nil {
			// The node stays in QEMU; keep the port and serial taken so
			// the leftovers are not reused half-broken.
			return errors.Join(err, derr)
		}
		release()
		return err
	}
	vm.diskMu.Lock()
	dk.state = diskAttached
	vm.diskMu.Unlock()
	vm.log.WithField("serial", d.Serial).Debugf("disk %s attached on %s", d.Path, rootPortID(port))
	return nil
}

// DetachDisk unplugs the disk with this serial: it asks the guest to
// release the device, waits for QEMU's DEVICE_DELETED (bounded by ctx, or
// UnplugTimeout when ctx has no deadline) and removes the block node. When
// the guest does not let go in time the disk stays attached and a later
// DetachDisk waits again.
func (vm *VM) DetachDisk(ctx context.Context, serial string) error {
	if err := vm.detachDisk(ctx, serial); err != nil {
		return fmt.Errorf("detach disk %q from vm %s: %w", serial, vm.id, err)
	}
	return nil
}

func (vm *VM) detachDisk(ctx context.Context, serial string) error {
	vm.diskMu.Lock()
	dk, ok := vm.disks[serial]
	if !ok {
		vm.diskMu.Unlock()
		return errors.New("no such disk")
	}
	if dk.state != diskAttached {
		vm.diskMu.Unlock()
		return errors.New("disk is being attached or detached")
	}
	dk.state = diskDetaching
	vm.diskMu.Unlock()
	restore := func() {
		vm.diskMu.Lock()
		dk.state = diskAttached
		vm.diskMu.Unlock()
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, vm.cfg.UnplugTimeout)
		defer cancel()
	}
	// Subscribe before device_del: the event may come before its answer.
	deleted, unsub := vm.qmp.subscribe(func(e qmpEvent) bool {
		if e.Name != "DEVICE_DELETED" {
			return false
		}
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(e.Data, &d) == nil && d.Device == dk.devID
	})
	defer unsub()

	gone := false
	if err := vm.qmp.execute(ctx, "device_del", map[string]string{"id": dk.devID}, nil); err != nil {
		var qe *QMPError
		switch {
		case errors.As(err, &qe) && qe.Class == "DeviceNotFound":
			// An earlier, timed-out detach completed meanwhile.
			gone = true
		case errors.As(err, &qe) && strings.Contains(qe.Desc, "process of unplug"):
			// An earlier detach is still pending: wait for it again.
		default:
			restore()
			return err
		}
	}
	if !gone {
		select {
		case _, ok := <-deleted:
			if !ok {
				restore()
				return errors.New("qmp connection closed while waiting for the guest to release the disk")
			}
		case <-ctx.Done():
			restore()
			return fmt.Errorf("guest did not release the disk (unplug stays pending): %w", ctx.Err())
		}
	}
	if err := vm.blockdevDel(ctx, dk.node); err != nil {
		// The device is gone; the node lingers but blocks nothing but its
		// own name, which is never reused.
		vm.log.WithError(err).WithField("serial", serial).Warn("remove block node of detached disk")
	}
	vm.diskMu.Lock()
	delete(vm.disks, serial)
	vm.portUsed[dk.port] = false
	vm.diskMu.Unlock()
	vm.log.WithField("serial", serial).Debug("disk detached")
	return nil
}

func (vm *VM) blockdevDel(ctx context.Context, node string) error {
	return vm.qmp.execute(ctx, "blockdev-del", map[string]string{"node-name": node}, nil)
}
