package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/contrast-vm/contrast/api/agent"
)

// The requests below are part of the protocol but not served yet; each
// answers Unimplemented, naming itself.

func (s *Service) ResizePty(ctx context.Context, req *api.ResizePtyRequest) (*api.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "resize terminal of %s: not supported yet", req.ContainerId)
}

func (s *Service) PauseContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "pause %s: not supported yet", req.ContainerId)
}

func (s *Service) ResumeContainer(ctx context.Context, req *api.ContainerRequest) (*api.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "resume %s: not supported yet", req.ContainerId)
}

func (s *Service) UpdateContainer(ctx context.Context, req *api.UpdateContainerRequest) (*api.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "update %s: not supported yet", req.ContainerId)
}

func (s *Service) StatsContainer(ctx context.Context, req *api.ContainerRequest) (*api.StatsContainerResponse, error) {
	return nil, status.Errorf(codes.Unimplemented, "stats of %s: not supported yet", req.ContainerId)
}

func (s *Service) WaitOOM(ctx context.Context, req *api.Empty) (*api.OOMEvent, error) {
	return nil, status.Errorf(codes.Unimplemented, "OOM events: not supported yet")
}
