package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/contrast-vm/contrast/api/agent"
)

// ConfigureNetwork is being built (issue 7).
func (s *Service) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.Empty, error) {
	return nil, status.Error(codes.Unimplemented, "ConfigureNetwork is not implemented yet")
}
