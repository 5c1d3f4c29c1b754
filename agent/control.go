package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/guestspec"
	api "github.com/contrast-vm/contrast/api/agent"
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

// live returns a container that has been created, is not being removed
// and whose init process has not exited; the caller holds c.mu.
func (s *Service) live(op, id string) (*container, error) {
	c, err := s.lookup(op, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	switch {
	case c.state == stateCreating || c.state == stateRemoving:
		c.mu.Unlock()
		return nil, precondition("%s: container %s is %s", op, id, c.state)
	case c.init.hasExited():
		c.mu.Unlock()
		return nil, precondition("%s: container %s is stopped (its init process exited)", op, id)
	}
	return c, nil
}

// PauseContainer freezes the container's processes (runc pause: the
// cgroup freezer).
func (s *Service) PauseContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	c, err := s.live("pause", req.ContainerId)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if c.paused {
		return nil, precondition("pause: container %s is already paused", c.id)
	}
	if err := s.runc.Pause(ctx, c.id); err != nil {
		return nil, fmt.Errorf("pause container %s: %w", c.id, err)
	}
	c.paused = true
	log.G(ctx).WithField("container", c.id).Info("container paused")
	return &api.Empty{}, nil
}

// ResumeContainer thaws a paused container.
func (s *Service) ResumeContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	c, err := s.live("resume", req.ContainerId)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if !c.paused {
		return nil, precondition("resume: container %s is not paused", c.id)
	}
	if err := s.runc.Resume(ctx, c.id); err != nil {
		return nil, fmt.Errorf("resume container %s: %w", c.id, err)
	}
	c.paused = false
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
	c, err := s.live("update container", req.ContainerId)
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	lg := log.G(ctx).WithField("container", c.id)
	if len(notes) > 0 {
		lg.Info("resources rewritten for the guest: " + strings.Join(notes, "; "))
	}
	file := filepath.Join(c.bundle, "update.json")
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	if err := writeFile(file, res, 0o600); err != nil {
		return nil, fmt.Errorf("update container %s: %w", c.id, err)
	}
	if err := s.runc.Update(ctx, c.id, file); err != nil {
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
	st := c.state
	c.mu.Unlock()
	if st == stateCreating || st == stateRemoving {
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
