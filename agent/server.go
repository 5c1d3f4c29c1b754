package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	api "github.com/contrast-vm/contrast/api/agent"
)

// Serve serves the Agent service on agentL and stdio connections on stdioL
// until ctx ends (then it returns nil) or a listener fails. It closes both.
// With Config.AttestationEndpoint it serves the containers' attestation
// endpoint too.
func (s *Service) Serve(ctx context.Context, agentL, stdioL net.Listener) error {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.intercept))
	if err != nil {
		agentL.Close()
		stdioL.Close()
		return fmt.Errorf("create ttrpc server: %w", err)
	}
	api.RegisterAgentService(srv, s)
	var attestL net.Listener
	if dir := s.attestationDir(); dir != "" {
		if attestL, err = listenAttestation(dir); err != nil {
			agentL.Close()
			stdioL.Close()
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var attestErr chan error // nil, never ready, without the endpoint
	if attestL != nil {
		attestErr = make(chan error, 1)
		go func() { attestErr <- s.serveAttestation(ctx, attestL) }()
	}
	stdioErr := make(chan error, 1)
	go func() { stdioErr <- s.hub.Serve(ctx, stdioL) }()
	agentErr := make(chan error, 1)
	go func() { agentErr <- srv.Serve(ctx, agentL) }()
	log.G(ctx).Infof("agent serving on %v (ttrpc) and %v (stdio)", agentL.Addr(), stdioL.Addr())

	var result error
	select {
	case <-ctx.Done():
	case err := <-agentErr:
		result = fmt.Errorf("serve agent API: %w", err)
		agentErr <- nil
	case err := <-stdioErr:
		result = err
		stdioErr <- nil
	case err := <-attestErr:
		result = err
		attestErr <- nil
	}
	cancel()
	// Close stops new requests and closes every connection.
	if err := srv.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close ttrpc server")
	}
	if err := <-agentErr; err != nil && !errors.Is(err, ttrpc.ErrServerClosed) && result == nil {
		result = fmt.Errorf("serve agent API: %w", err)
	}
	if err := <-stdioErr; err != nil && result == nil {
		result = err
	}
	if attestErr != nil {
		if err := <-attestErr; err != nil && result == nil {
			result = err
		}
	}
	return result
}

// intercept puts every request, once it is decoded and before the service
// sees it, through the policy gate, and logs every call at debug level and
// every failure as a warning, so the VM's console log tells what the host
// asked and what went wrong.
func (s *Service) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	start := time.Now()
	var allowed any // the request, once the gate allowed it
	checked := func(req any) error {
		if err := unmarshal(req); err != nil {
			return err
		}
		if err := s.policy.authorize(ctx, info.FullMethod, req); err != nil {
			return err
		}
		allowed = req
		return nil
	}
	resp, err := method(ctx, checked)
	if allowed != nil {
		s.policy.done(info.FullMethod, allowed, err)
	}
	lg := log.G(ctx).WithField("method", info.FullMethod).WithField("duration", time.Since(start).Round(time.Microsecond))
	switch {
	case err != nil && ctx.Err() != nil:
		// The host gave up waiting (a long poll, a dropped connection).
		lg.WithError(err).Debug("request ended by the caller")
	case err != nil:
		lg.WithError(err).Warn("request failed")
	default:
		lg.Debug("request")
	}
	return resp, err
}
