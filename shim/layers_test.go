package shim

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/layer"
)

// portsVM is the part of a VM the layer bookkeeping uses: disks on a fixed
// number of hot-plug ports. It records what is attached.
type portsVM struct {
	hypervisor.VM
	ports    int
	attached []string
	detached []string
}

var errNoPort = errors.New("no free hot-plug port")

func (vm *portsVM) AttachDisk(_ context.Context, d hypervisor.Disk) error {
	if len(vm.attached) == vm.ports {
		return errNoPort
	}
	vm.attached = append(vm.attached, d.Serial)
	return nil
}

func (vm *portsVM) DetachDisk(_ context.Context, serial string) error {
	i := slices.Index(vm.attached, serial)
	if i < 0 {
		return errors.New("not attached: " + serial)
	}
	vm.attached = slices.Delete(vm.attached, i, i+1)
	vm.detached = append(vm.detached, serial)
	return nil
}

func (vm *portsVM) Dial(context.Context, uint32) (net.Conn, error) { return nil, errors.ErrUnsupported }

// oneFileLayer is a layer tar with one file.
func oneFileLayer(t *testing.T, name, content string) layer.Blob {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(tw, content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	return layer.Blob{
		DiffID: digest.FromBytes(b),
		Open:   func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
	}
}

// TestPodLayers: containers share a layer's disk; a released layer stays
// attached until the VM runs out of ports, then idle layers are unplugged;
// a failed acquire leaves the container holding nothing; close returns the
// cache entries.
func TestPodLayers(t *testing.T) {
	cache, err := layer.OpenCache(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	base, app, other := oneFileLayer(t, "base", "base"), oneFileLayer(t, "app", "app"), oneFileLayer(t, "other", "other")
	vm := &portsVM{ports: 2}
	pl := newPodLayers(cache)
	ctx := context.Background()

	first, firstSerials, err := pl.acquire(ctx, vm, []layer.Blob{base, app})
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || first[0].Digest != base.DiffID.String() || len(first[0].RootHash) != 64 || first[0].DataBlocks == 0 {
		t.Fatalf("layers for the agent: %v", first)
	}
	// a second container of the same image shares both disks
	_, second, err := pl.acquire(ctx, vm, []layer.Blob{base, app})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(second, firstSerials) || len(vm.attached) != 2 {
		t.Fatalf("second container: serials %v (first %v), attached %v", second, firstSerials, vm.attached)
	}
	// all ports busy with used layers: a third layer cannot be attached,
	// and the container holds nothing afterwards
	if _, _, err := pl.acquire(ctx, vm, []layer.Blob{base, other}); !errors.Is(err, errNoPort) {
		t.Fatalf("acquire with no free port: %v", err)
	}
	if got := pl.attached[firstSerials[0]].users; got != 2 {
		t.Errorf("base layer users after the failed acquire: %d, want 2", got)
	}
	// released layers stay attached ...
	pl.release(firstSerials)
	pl.release(second)
	if len(vm.detached) != 0 {
		t.Fatalf("released layers unplugged at once: %v", vm.detached)
	}
	// ... until their ports are needed
	if _, _, err := pl.acquire(ctx, vm, []layer.Blob{other}); err != nil {
		t.Fatal(err)
	}
	if len(vm.detached) != 2 || len(vm.attached) != 1 {
		t.Errorf("after attaching over idle layers: attached %v, detached %v", vm.attached, vm.detached)
	}
	pl.close()
	if len(pl.attached) != 0 {
		t.Errorf("close left %d layers", len(pl.attached))
	}
}
