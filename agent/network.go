package agent

import (
	"context"
	"fmt"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/netconf"
	api "github.com/contrast-vm/contrast/api/agent"
)

// ConfigureNetwork gives the VM the pod's network (see package netconf):
// once, after CreateSandbox and before any container, so that no container
// ever sees the network change under it. A failed attempt is undone as far
// as netconf can and may be retried.
func (s *Service) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.Empty, error) {
	s.networkMu.Lock()
	defer s.networkMu.Unlock()
	if s.networkConfigured {
		return nil, precondition("configure network: the network is already configured (ConfigureNetwork is called once)")
	}
	s.mu.Lock()
	sandbox, containers := s.sandboxID, len(s.containers)
	s.mu.Unlock()
	if sandbox == "" {
		return nil, precondition("configure network: CreateSandbox was not called")
	}
	if containers > 0 {
		return nil, precondition("configure network of sandbox %s: %d containers exist already; the network is configured before any", sandbox, containers)
	}
	if err := netconf.Validate(req); err != nil {
		return nil, invalid("configure network of sandbox %s: %v", sandbox, err)
	}
	summary := netconf.Summary(req)
	if s.cfg.ConfigureNetwork == nil {
		log.G(ctx).Infof("sandbox %s: network left alone (not the VM's init), asked for: %s", sandbox, summary)
	} else {
		if err := s.cfg.ConfigureNetwork(req); err != nil {
			return nil, fmt.Errorf("configure network of sandbox %s: %w", sandbox, err)
		}
		log.G(ctx).Infof("sandbox %s: network configured: %s", sandbox, summary)
	}
	s.networkConfigured = true
	return &api.Empty{}, nil
}
