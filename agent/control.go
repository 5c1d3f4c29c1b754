package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/guestspec"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
)

// ResizePty sets the window size of a process's terminal.
func (s *Service) ResizePty(ctx context.Context, req *api.ResizePtyRequest) (*api.Empty, error) {
	_, p, err := s.lookupProcess("resize terminal", req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if err := p.resize(req.Width, req.Height); err != nil {
		return nil, err
	}
	return &api.Empty{}, nil
}

// PauseContainer freezes the container's processes (runc pause: the
// cgroup freezer).
func (s *Service) PauseContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	c, err := s.lookup("pause", req.ContainerId)
	if err != nil {
		return nil, err
	}
	// Execs being started end first: runc exec into a freezing cgroup
	// would hang until the resume.
	if err := c.beginChange(ctx, func(from lifecycle.State) error {
		if err := lifecycle.CheckOp("container "+c.id, from, lifecycle.Pause); err != nil {
			return refused("pause", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	err = s.runc.Pause(ctx, c.id)
	c.endChange(func() {
		if err == nil && c.currentState() == lifecycle.Running {
			c.state = lifecycle.Paused
		}
	})
	if err != nil {
		return nil, fmt.Errorf("pause container %s: %w", c.id, err)
	}
	log.G(ctx).WithField("container", c.id).Info("container paused")
	return &api.Empty{}, nil
}

// ResumeContainer thaws a paused container.
func (s *Service) ResumeContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	c, err := s.lookup("resume", req.ContainerId)
	if err != nil {
		return nil, err
	}
	if err := c.beginChange(ctx, func(from lifecycle.State) error {
		if err := lifecycle.CheckOp("container "+c.id, from, lifecycle.Resume); err != nil {
			return refused("resume", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	err = s.runc.Resume(ctx, c.id)
	c.endChange(func() {
		if err == nil && c.currentState() == lifecycle.Paused {
			c.state = lifecycle.Running
		}
	})
	if err != nil {
		return nil, fmt.Errorf("resume container %s: %w", c.id, err)
	}
	log.G(ctx).WithField("container", c.id).Info("container resumed")
	return &api.Empty{}, nil
}

// UpdateContainer changes the container's resources with runc update.
func (s *Service) UpdateContainer(ctx context.Context, req *api.UpdateContainerRequest) (*api.Empty, error) {
	if err := api.ValidateID("container id", req.ContainerId); err != nil {
		return nil, invalid("update container: %v", err)
	}
	// Checked before the lookup: a malformed request is wrong whatever
	// the container's state.
	res, notes, err := guestspec.RewriteResources(req.Resources)
	if err != nil {
		return nil, invalid("update container %s: %v", req.ContainerId, err)
	}
	c, err := s.lookup("update container", req.ContainerId)
	if err != nil {
		return nil, err
	}
	// An update changes no state, but needs the container to stay: a use.
	if err := c.beginUse(ctx, func(from lifecycle.State) error {
		if from != lifecycle.Created && !from.Live() {
			return refused("update container", fmt.Errorf("container %s is %s, not created, running or paused: %w", c.id, from, errdefs.ErrFailedPrecondition))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	defer c.endUse(nil)
	lg := log.G(ctx).WithField("container", c.id)
	if len(notes) > 0 {
		lg.Info("resources rewritten for the guest: " + strings.Join(notes, "; "))
	}
	// A file of its own: updates of one container may run at once.
	f, err := os.CreateTemp(c.bundle, "update-*.json")
	if err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(res)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("update container %s: write %s: %w", c.id, f.Name(), err)
	}
	if err := s.runc.Update(ctx, c.id, f.Name()); err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	lg.Infof("resources updated: %s", res)
	return &api.Empty{}, nil
}

// StatsContainer reads the container's cgroup metrics.
func (s *Service) StatsContainer(ctx context.Context, req *api.ContainerRequest) (*api.StatsContainerResponse, error) {
	c, err := s.lookup("stats", req.ContainerId)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	st := c.currentState()
	c.mu.Unlock()
	if st == lifecycle.Creating || st >= lifecycle.Deleting {
		return nil, precondition("stats: container %s is %s", c.id, st)
	}
	typeURL, value, err := cgroupStats(c.cgroup)
	if errors.Is(err, os.ErrNotExist) {
		return nil, notFound("stats of container %s: %v", c.id, err)
	}
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.id, err)
	}
	return &api.StatsContainerResponse{TypeUrl: typeURL, Value: value}, nil
}

// WaitOOM returns the id of a container that saw an OOM kill since the
// last call, waiting for one until the caller gives up.
func (s *Service) WaitOOM(ctx context.Context, _ *api.Empty) (*api.OOMEvent, error) {
	id, err := s.oom.wait(ctx)
	if err != nil {
		return nil, ended(ctx, "wait for OOM events")
	}
	log.G(ctx).WithField("container", id).Info("OOM kill reported")
	return &api.OOMEvent{ContainerId: id}, nil
}
