package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/contrast-vm/contrast/agent/storage"
	"github.com/contrast-vm/contrast/api/lifecycle"
)

// container is one runc container in the VM.
//
// mu guards the bookkeeping and is never held across runc, mounts or
// waits. A request that changes the container's state outside the lock
// (start, pause, resume, remove) reserves the container with beginChange
// and settles it with endChange; a request that only needs the state to
// stay put while it runs runc (an exec start, an update) registers with
// beginUse and endUse. A change waits until the uses under way ended, and
// a new use waits until a change under way ended: execs never wait for
// each other, only for a state change of their own container.
type container struct {
	id     string
	bundle string
	rootfs *storage.Rootfs
	// subPathMounts are the binds of its subPath mounts (bindSubPaths),
	// in subPathDir.
	subPathMounts []string
	subPathDir    string
	// layers are the root hashes of the image layers the rootfs stacks,
	// held in layerSet until cleanup releases them.
	layerSet *storage.LayerSet
	layers   []string
	cgroup   string // the container's cgroup, below the hierarchy root
	// sharedCopies maps the mount destinations of the host files the
	// host sent (shared files) to their guest copies, which the container
	// bind-mounts. Set before the container is known, then read only.
	sharedCopies map[string]string

	mu sync.Mutex
	// state is read through currentState, which notices an init exit.
	state lifecycle.State
	// changing is set while a state change runs outside the lock.
	changing bool
	// using counts the uses (exec starts, updates) under way.
	using int
	// changed is closed, and replaced, when changing or using drops, to
	// wake the requests waiting for that.
	changed chan struct{}
	init    *process
	execs   map[string]*process
	// starting holds the ids of the execs runc is starting, reserved so
	// that a second exec with the same id is refused.
	starting map[string]bool
	// oom reports the container's OOM kills (nil if it cannot).
	oom *oomWatcher
}

func newContainer(id, bundle string, rootfs *storage.Rootfs, layerSet *storage.LayerSet, cgroup string) *container {
	return &container{
		id: id, bundle: bundle, rootfs: rootfs, layerSet: layerSet, cgroup: cgroup,
		state:   lifecycle.Creating,
		changed: make(chan struct{}),
		execs:   map[string]*process{}, starting: map[string]bool{},
	}
}

// currentState is the container's state, Stopped once its init process
// exited (which no request reports); the caller holds c.mu.
func (c *container) currentState() lifecycle.State {
	if c.init != nil && c.init.state().Ended() && lifecycle.Legal(c.state, lifecycle.Stopped) {
		c.state = lifecycle.Stopped
	}
	return c.state
}

// await locks c.mu and waits, unlocking it meanwhile, until ready (called
// under c.mu) holds. It returns with c.mu held, or, when ctx ends first,
// with the error the host sees and c.mu not held.
func (c *container) await(ctx context.Context, ready func() bool) error {
	c.mu.Lock()
	for !ready() {
		woken := c.changed
		c.mu.Unlock()
		select {
		case <-woken:
		case <-ctx.Done():
			return ended(ctx, "wait for a request under way on container %s", c.id)
		}
		c.mu.Lock()
	}
	return nil
}

// wake wakes the requests in await; the caller holds c.mu.
func (c *container) wake() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// beginChange reserves the container for a state change: it waits until
// no other change is under way and check (called under c.mu with the
// current state) allows the move, then until the uses under way ended,
// and checks again, for the state may have changed meanwhile (an init
// exit). On error nothing is reserved. Each successful beginChange needs
// one endChange.
func (c *container) beginChange(ctx context.Context, check func(from lifecycle.State) error) error {
	if err := c.await(ctx, func() bool { return !c.changing }); err != nil {
		return err
	}
	if err := check(c.currentState()); err != nil {
		c.mu.Unlock()
		return err
	}
	c.changing = true
	c.mu.Unlock()
	err := c.await(ctx, func() bool { return c.using == 0 })
	if err == nil {
		err = check(c.currentState())
		c.mu.Unlock()
	}
	if err != nil {
		c.endChange(nil)
	}
	return err
}

// endChange ends the change beginChange reserved; record (if any) runs
// under c.mu first, to record the change's result.
func (c *container) endChange(record func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if record != nil {
		record()
	}
	c.changing = false
	c.wake()
}

// beginUse registers a use of the container once no state change is under
// way and check (called under c.mu with the current state, to refuse or
// to reserve what the use needs) returned nil. Each successful beginUse
// needs one endUse.
func (c *container) beginUse(ctx context.Context, check func(from lifecycle.State) error) error {
	if err := c.await(ctx, func() bool { return !c.changing }); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if err := check(c.currentState()); err != nil {
		return err
	}
	c.using++
	return nil
}

// endUse ends a use; record (if any) runs under c.mu first.
func (c *container) endUse(record func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if record != nil {
		record()
	}
	c.using--
	if c.using == 0 {
		c.wake()
	}
}

// processes returns init and the exec processes; the caller holds c.mu.
func (c *container) processes() []*process {
	var ps []*process
	if c.init != nil {
		ps = append(ps, c.init)
	}
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	return ps
}

// refused is the error the host sees for a request the container's state
// does not allow: FailedPrecondition, as containerd maps it.
func refused(op string, err error) error {
	return errgrpc.ToGRPC(fmt.Errorf("%s: %w", op, err))
}

// checkRemove checks a remove of a container (what) in state from. A live
// container is killed first (runc delete --force), so it moves through
// stopped; a container whose earlier remove failed half-way is removed
// again.
func checkRemove(what string, from lifecycle.State) error {
	if from.Live() {
		if err := lifecycle.Check(what, from, lifecycle.Stopped); err != nil {
			return err
		}
		from = lifecycle.Stopped
	}
	if from == lifecycle.Deleting {
		return lifecycle.Check(what, from, lifecycle.Deleted)
	}
	return lifecycle.Check(what, from, lifecycle.Deleting)
}

// cleanup unmounts the rootfs and removes the bundle; safe to repeat.
func (c *container) cleanup() error {
	if err := c.unbindSubPaths(); err != nil {
		return fmt.Errorf("container %s: %w", c.id, err)
	}
	if err := c.rootfs.Unmount(); err != nil {
		return fmt.Errorf("unmount rootfs of container %s: %w", c.id, err)
	}
	// Top layer first; what fails stays recorded for the next try.
	for len(c.layers) > 0 {
		last := c.layers[len(c.layers)-1]
		if err := c.layerSet.Release(last); err != nil {
			return fmt.Errorf("container %s: %w", c.id, err)
		}
		c.layers = c.layers[:len(c.layers)-1]
	}
	if err := os.RemoveAll(c.bundle); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove bundle of container %s: %w", c.id, err)
	}
	return nil
}
