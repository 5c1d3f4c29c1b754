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

// Listeners are what the agent serves on: the Agent API (ttrpc), the stdio
// connections, and the port-forward connections (nil: the VM forwards no
// port).
type Listeners struct {
	Agent, Stdio, Forward net.Listener
}

func (l Listeners) closeAll() {
	for _, ln := range []net.Listener{l.Agent, l.Stdio, l.Forward} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Serve serves the Agent service, stdio and port-forward connections on
// ls until ctx ends (then it returns nil) or a listener fails. It closes
// them all. With Config.AttestationEndpoint it serves the containers'
// attestation endpoint too.
func (s *Service) Serve(ctx context.Context, ls Listeners) error {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.intercept))
	if err != nil {
		ls.closeAll()
		return fmt.Errorf("create ttrpc server: %w", err)
	}
	api.RegisterAgentService(srv, s)
	var attestL net.Listener
	if dir := s.attestationDir(); dir != "" {
		if attestL, err = listenAttestation(dir); err != nil {
			ls.closeAll()
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Every server sends its result once; the first to end, or ctx, stops
	// them all.
	ended := make(chan error, 4)
	servers := 0
	start := func(serve func() error) {
		servers++
		go func() { ended <- serve() }()
	}
	start(func() error {
		if err := srv.Serve(ctx, ls.Agent); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			return fmt.Errorf("serve agent API: %w", err)
		}
		return nil
	})
	start(func() error { return s.hub.Serve(ctx, ls.Stdio) })
	if ls.Forward != nil {
		start(func() error { return s.serveForward(ctx, ls.Forward) })
	}
	if attestL != nil {
		start(func() error { return s.serveAttestation(ctx, attestL) })
	}
	log.G(ctx).Infof("agent serving on %v (ttrpc), %v (stdio) and %v (port forward)", ls.Agent.Addr(), ls.Stdio.Addr(), addrOf(ls.Forward))

	var result error
	waiting := servers
	select {
	case <-ctx.Done():
	case result = <-ended:
		waiting--
		if result == nil && ctx.Err() == nil {
			result = errors.New("agent: a server stopped on its own")
		}
	}
	cancel()
	// Close stops new requests and closes every connection.
	if err := srv.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close ttrpc server")
	}
	for ; waiting > 0; waiting-- {
		if err := <-ended; err != nil && result == nil {
			result = err
		}
	}
	return result
}

func addrOf(l net.Listener) any {
	if l == nil {
		return "none"
	}
	return l.Addr()
}

// intercept puts every request, once it is decoded and before the service
// sees it, through the policy gate, and logs every call at debug level and
// every failure as a warning, so the VM's console log tells what the host
// asked and what went wrong.
func (s *Service) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	start := time.Now()
	// The handlers that report their steps to the host (CreateContainer,
	// StartContainer) find the recorder in ctx, with the policy's share.
	phases := &api.Phases{}
	ctx = api.WithPhases(ctx, phases)
	var allowed any // the request, once the gate allowed it
	var judged time.Duration
	checked := func(req any) error {
		if err := unmarshal(req); err != nil {
			return err
		}
		begin := phases.Since("decode", start)
		err := s.policy.authorize(ctx, info.FullMethod, req)
		judged = time.Since(begin)
		if err != nil {
			return err
		}
		phases.Add("policy", judged)
		allowed = req
		return nil
	}
	resp, err := method(ctx, checked)
	if allowed != nil {
		s.policy.done(info.FullMethod, allowed, err)
	}
	lg := log.G(ctx).WithField("method", info.FullMethod).WithField("duration", time.Since(start).Round(time.Microsecond)).
		WithField("policy", judged.Round(time.Microsecond))
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
