package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/contrast-vm/contrast/agent/stdio"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/internal/splice"
	"github.com/contrast-vm/contrast/policy/enforce"
)

// portForwardMethod is the name the policy gate judges a port-forward
// connection under, as if it were an RPC (policy kind PortForward).
const portForwardMethod = enforce.ServicePrefix + "PortForward"

// Bounds of a port-forward connection's setup: the host's header, and the
// agent's dial of the pod's port.
const (
	forwardHeaderTimeout = 10 * time.Second
	forwardDialTimeout   = 5 * time.Second
)

// serveForward accepts the host's port-forward connections on l (api/agent
// ForwardPort) until ctx ends; each asks for one TCP connection to a port
// on the pod's loopback (kubectl port-forward).
func (s *Service) serveForward(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	return stdio.AcceptUntil(ctx, l, "port-forward", func(conn net.Conn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.forward(ctx, conn)
		}()
	})
}

// forward serves one port-forward connection: it reads the header, has
// the policy judge it, connects to the port, answers, and then copies both
// ways until both directions ended (or ctx does).
func (s *Service) forward(ctx context.Context, host net.Conn) {
	defer host.Close()
	lg := log.G(ctx).WithField("method", portForwardMethod)
	_ = host.SetReadDeadline(time.Now().Add(forwardHeaderTimeout))
	hdr, err := api.ReadForwardHeader(host)
	if err != nil {
		lg.WithError(err).Warn("port forward: refused a connection")
		_ = api.WriteForwardReply(host, err)
		return
	}
	_ = host.SetReadDeadline(time.Time{})
	lg = lg.WithField("port", hdr.Port)

	target, err := s.dialForward(ctx, hdr.Port)
	if err != nil {
		lg.WithError(err).Warn("port forward refused")
		_ = api.WriteForwardReply(host, err)
		return
	}
	defer target.Close()
	if err := api.WriteForwardReply(host, nil); err != nil {
		lg.WithError(err).Warn("port forward: answer the host")
		return
	}
	lg.Debug("request: port forward open")
	stop := context.AfterFunc(ctx, func() { host.Close(); target.Close() })
	defer stop()
	splice.Splice(host, target)
	log.G(ctx).WithField("port", hdr.Port).Debug("port forward closed")
}

// dialForward decides a port-forward to port with the policy and connects
// to it on the pod's loopback: IPv4 first, then IPv6, as containerd's CRI
// does for a runc pod.
func (s *Service) dialForward(ctx context.Context, port uint16) (net.Conn, error) {
	if err := s.policy.authorize(ctx, portForwardMethod, &api.PortForwardRequest{Port: uint32(port)}); err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: forwardDialTimeout}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	conn, err4 := d.DialContext(ctx, "tcp4", addr)
	if err4 == nil {
		return conn, nil
	}
	conn, err6 := d.DialContext(ctx, "tcp6", net.JoinHostPort("::1", strconv.Itoa(int(port))))
	if err6 == nil {
		return conn, nil
	}
	return nil, fmt.Errorf("connect to port %d in the pod: IPv4: %v; IPv6: %v", port, err4, err6)
}
