package agent

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/contrast-vm/contrast/agent/storage"
)

type containerState string

const (
	stateCreating containerState = "being created"
	stateCreated  containerState = "created"
	stateRunning  containerState = "running"
	stateRemoving containerState = "being removed"
)

// container is one runc container in the VM. Its init process having
// exited is read from init, not from state.
type container struct {
	id     string
	bundle string
	rootfs *storage.Rootfs
	// layers are the root hashes of the image layers the rootfs stacks,
	// held in layerSet until cleanup releases them.
	layerSet *storage.LayerSet
	layers   []string
	cgroup   string // the container's cgroup, below the hierarchy root

	mu     sync.Mutex
	state  containerState
	paused bool
	init   *process
	execs  map[string]*process
	// oom reports the container's OOM kills (nil if it cannot).
	oom *oomWatcher
}

// processes returns init and the exec processes.
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

// cleanup unmounts the rootfs and removes the bundle; safe to repeat.
func (c *container) cleanup() error {
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
