package installer

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// undoStack records how to take back each step an install or uninstall
// took on the host, so that a failure in a later step can put the host
// back as it was.
type undoStack struct {
	steps []undoStep
	// discard are directories set aside by a step: its undo puts them
	// back, and they are removed once the change stands.
	discard []string
}

type undoStep struct {
	what string // the step, for errors: "write /etc/containerd/conf.d/x.toml"
	undo func() error
}

// push records the undo of a step just done.
func (u *undoStack) push(what string, undo func() error) {
	u.steps = append(u.steps, undoStep{what: what, undo: undo})
}

// rollback undoes every recorded step, the last first. It goes on past a
// failing undo, so as much as possible is restored, and reports them all.
func (u *undoStack) rollback() error {
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		if err := u.steps[i].undo(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", u.steps[i].what, err))
		}
	}
	u.steps, u.discard = nil, nil
	return errors.Join(errs...)
}

// commit forgets the undo steps and removes what only they needed.
func (u *undoStack) commit() error {
	var errs []error
	for _, d := range u.discard {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove replaced %s: %w", d, err))
		}
	}
	u.steps, u.discard = nil, nil
	return errors.Join(errs...)
}

// change is one install or uninstall in progress: the steps it took on
// the host's files, and whether containerd was restarted on them.
type change struct {
	opts      *Options
	undo      undoStack
	restarted bool
}

// end is deferred by Install and Uninstall with their error: on success
// it commits the change; on failure it undoes every step taken and, when
// containerd was restarted on the new files, restarts it on the old ones.
func (c *change) end(ctx context.Context, errp *error) {
	if *errp == nil {
		*errp = c.undo.commit()
		return
	}
	if err := c.undo.rollback(); err != nil {
		*errp = errors.Join(*errp, fmt.Errorf("roll back: %w", err))
		return
	}
	if !c.restarted || c.opts.Restart == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.WaitTimeout)
	defer cancel()
	if err := c.opts.Restart(ctx); err != nil {
		*errp = errors.Join(*errp, fmt.Errorf("files restored, but restarting containerd on them failed: %w", err))
	}
}

// apply restarts containerd when the host changed, and waits until it
// serves the handlers waitFor, within WaitTimeout.
func (c *change) apply(ctx context.Context, changed bool, waitFor []string) error {
	if !changed {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.WaitTimeout)
	defer cancel()
	if c.opts.Restart != nil {
		c.restarted = true
		if err := c.opts.Restart(ctx); err != nil {
			return fmt.Errorf("restart containerd: %w", err)
		}
	}
	if c.opts.WaitHandlers != nil {
		if err := c.opts.WaitHandlers(ctx, waitFor); err != nil {
			return fmt.Errorf("containerd after restart (waited up to %s): %w", c.opts.WaitTimeout, err)
		}
	}
	return nil
}
