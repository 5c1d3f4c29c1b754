package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"
)

const qemuBinary = "/usr/bin/qemu-system-x86_64"

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(qemuBinary); err != nil {
		testenv.Missing(t, "deps", "tests need QEMU at %s (Debian package qemu-system-x86): %v", qemuBinary, err)
	}
}

// bareQEMU is a paused q35 QEMU without guest (-S) and with a few root
// ports, for talking QMP.
type bareQEMU struct {
	qmp *qmpClient
	cmd *exec.Cmd
	dir string
}

func startBareQEMU(t *testing.T) *bareQEMU {
	t.Helper()
	needQEMU(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer ln.Close()
	args := []string{
		"-machine", "q35,accel=tcg", "-S", "-m", "128M",
		"-nodefaults", "-no-user-config", "-nographic",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-device", rootPortArg(0), "-device", rootPortArg(1),
	}
	cmd := exec.Command(qemuBinary, args...)
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b := &bareQEMU{cmd: cmd, dir: dir}
	t.Cleanup(func() {
		if b.qmp != nil {
			b.qmp.Close()
		}
		cmd.Process.Kill()
		<-exited
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	b.qmp, err = newQMPClient(ctx, conn)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		t.Fatalf("qmp handshake: %v; qemu log: %s", err, log)
	}
	return b
}

func TestQMPStatusAndErrors(t *testing.T) {
	q := startBareQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := q.qmp.execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Errorf("status %+v, want prelaunch, not running", st)
	}

	err := q.qmp.execute(ctx, "no-such-command", nil, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Fatalf("unknown command: %v (%#v)", err, qe)
	}
	if !strings.Contains(err.Error(), "CommandNotFound") || !strings.Contains(err.Error(), "no-such-command") {
		t.Errorf("error text %q lacks class or command", err)
	}
	err = q.qmp.execute(ctx, "device_del", map[string]string{"id": "nope"}, nil)
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Errorf("device_del of a missing device: %v", err)
	}
	// Bad arguments: QEMU's description reaches the caller.
	err = q.qmp.execute(ctx, "blockdev-add", map[string]any{"driver": "raw", "node-name": "x",
		"file": map[string]any{"driver": "file", "filename": "/nonexistent/disk.img"}}, nil)
	if !errors.As(err, &qe) || !strings.Contains(qe.Desc, "/nonexistent/disk.img") {
		t.Errorf("blockdev-add of a missing file: %v", err)
	}

	// Many commands at once are each matched to their own answer.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				var s struct {
					Status string `json:"status"`
				}
				if err := q.qmp.execute(ctx, "query-status", nil, &s); err != nil || s.Status != "prelaunch" {
					errs <- errors.Join(err, errors.New("query-status: "+s.Status))
				}
				return
			}
			var n []struct {
				Name string `json:"name"`
			}
			if err := q.qmp.execute(ctx, "query-commands", nil, &n); err != nil || len(n) < 10 {
				errs <- errors.Join(err, errors.New("query-commands answered wrongly"))
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A cancelled context ends the wait with the context's error.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := q.qmp.execute(cctx, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	// ...and the client keeps working.
	if err := q.qmp.execute(ctx, "query-status", nil, nil); err != nil {
		t.Errorf("after a cancelled command: %v", err)
	}
}

func TestQMPEventsAndClose(t *testing.T) {
	q := startBareQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	resumed, unsub := q.qmp.subscribe(func(e qmpEvent) bool { return e.Name == "RESUME" })
	all, _ := q.qmp.subscribe(nil)
	if err := q.qmp.execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-resumed:
		if ev.Timestamp.IsZero() || time.Since(ev.Timestamp) > time.Minute {
			t.Errorf("event timestamp %v", ev.Timestamp)
		}
	case <-ctx.Done():
		t.Fatal("no RESUME event")
	}
	unsub()
	if _, ok := <-resumed; ok {
		t.Error("channel open after unsubscribe")
	}
	unsub() // twice is harmless

	stopped := false
	if err := q.qmp.execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	for !stopped {
		select {
		case ev := <-all:
			stopped = ev.Name == "STOP"
		case <-ctx.Done():
			t.Fatal("no STOP event")
		}
	}

	// quit: QEMU goes away; the subscriber's channel closes and commands
	// fail with errQMPClosed.
	if err := q.qmp.execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, errQMPClosed) {
		t.Fatal(err)
	}
	var shutdown bool
	for ev := range all {
		if ev.Name == "SHUTDOWN" {
			var d struct {
				Reason string `json:"reason"`
			}
			json.Unmarshal(ev.Data, &d)
			shutdown = d.Reason == "host-qmp-quit"
		}
	}
	if !shutdown {
		t.Error("no SHUTDOWN (host-qmp-quit) event before the channel closed")
	}
	<-q.qmp.Done()
	if err := q.qmp.execute(ctx, "query-status", nil, nil); !errors.Is(err, errQMPClosed) {
		t.Errorf("after quit: %v", err)
	}
	if ch, _ := q.qmp.subscribe(nil); ch != nil {
		if _, ok := <-ch; ok {
			t.Error("subscription after close delivered something")
		}
	}
}

func TestQMPHotplugOnPausedGuest(t *testing.T) {
	q := startBareQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	img := filepath.Join(q.dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	add := map[string]any{"driver": "raw", "node-name": "d0-fmt", "read-only": true,
		"file": map[string]any{"driver": "file", "node-name": "d0-file", "filename": img, "read-only": true}}
	if err := q.qmp.execute(ctx, "blockdev-add", add, nil); err != nil {
		t.Fatal(err)
	}
	dev := map[string]any{"driver": "virtio-blk-pci", "id": "d0", "drive": "d0-fmt", "bus": rootPortID(1), "serial": "layer-abc"}
	if err := q.qmp.execute(ctx, "device_add", dev, nil); err != nil {
		t.Fatal(err)
	}
	var serial string
	if err := q.qmp.execute(ctx, "qom-get", map[string]string{"path": "/machine/peripheral/d0", "property": "serial"}, &serial); err != nil {
		t.Fatal(err)
	}
	if serial != "layer-abc" {
		t.Errorf("serial %q", serial)
	}
	var blocks []struct {
		Device   string `json:"device"`
		Qdev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
			RO       bool   `json:"ro"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := q.qmp.execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range blocks {
		if b.Inserted != nil && b.Inserted.NodeName == "d0-fmt" {
			found = true
			if !b.Inserted.RO || b.Inserted.File != img {
				t.Errorf("block %+v: want read-only %s", *b.Inserted, img)
			}
		}
	}
	if !found {
		t.Errorf("node d0-fmt not in query-block: %+v", blocks)
	}
	// The node is in use by the device: blockdev-del must refuse.
	if err := q.qmp.execute(ctx, "blockdev-del", map[string]string{"node-name": "d0-fmt"}, nil); err == nil {
		t.Error("blockdev-del of a node in use succeeded")
	}
	// The guest never powered the slot on (it never ran), so QEMU
	// unplugs at once, without guest cooperation.
	gone, _ := q.qmp.subscribe(func(e qmpEvent) bool {
		var d struct {
			Device string `json:"device"`
		}
		return e.Name == "DEVICE_DELETED" && json.Unmarshal(e.Data, &d) == nil && d.Device == "d0"
	})
	if err := q.qmp.execute(ctx, "device_del", map[string]string{"id": "d0"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
	case <-ctx.Done():
		t.Fatal("no DEVICE_DELETED for d0")
	}
	if err := q.qmp.execute(ctx, "blockdev-del", map[string]string{"node-name": "d0-fmt"}, nil); err != nil {
		t.Fatalf("blockdev-del after unplug: %v", err)
	}
	if err := q.qmp.execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if b.Inserted != nil && strings.HasPrefix(b.Inserted.NodeName, "d0-") {
			t.Errorf("node %s still there after blockdev-del", b.Inserted.NodeName)
		}
	}
}
