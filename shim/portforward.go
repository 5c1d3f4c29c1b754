package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/network"
	"github.com/contrast-vm/contrast/internal/splice"
)

// forwardSetupTimeout bounds a forwarded connection's setup in the guest:
// the vsock dial, the policy's decision and the agent's connect.
const forwardSetupTimeout = 15 * time.Second

// portForwarder carries kubectl port-forward into the pod VM. containerd's
// CRI serves a port-forward by dialling localhost:<port> inside the
// sandbox's network namespace; there, a redirect of every loopback TCP
// connection (network.ListenLoopback) brings it to the forwarder, which
// asks the guest agent for a connection to the same port on the pod's
// loopback (api/agent ForwardHeader), where the policy decides it.
type portForwarder struct {
	pod      string
	netns    string
	listener *net.TCPListener
	guest    hypervisor.Transport

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startPortForward sets up port forwarding in the sandbox's namespace and
// serves it until close.
func startPortForward(ctx context.Context, podID, netnsPath string, guest hypervisor.Transport) (*portForwarder, error) {
	l, err := network.ListenLoopback(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("port forwarding for pod %s: %w", podID, err)
	}
	f := &portForwarder{pod: podID, netns: netnsPath, listener: l, guest: guest}
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *portForwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.listener.AcceptTCP()
		if err != nil {
			if f.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.G(f.ctx).WithError(err).WithField("pod", f.pod).Warn("port forwarding stopped")
			}
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(c)
		}()
	}
}

// forward carries one connection to the guest. A connection the guest
// refuses (the policy, or nothing listening) is reset, so that containerd
// reports an error to kubectl as it does for a runc pod's closed port.
func (f *portForwarder) forward(c *net.TCPConn) {
	defer c.Close()
	lg := log.G(f.ctx).WithField("pod", f.pod)
	port, err := network.OriginalPort(c)
	if err != nil {
		lg.WithError(err).Warn("port forward: connection without its original port")
		resetConn(c)
		return
	}
	lg = lg.WithField("port", port)
	guest, err := f.openGuest(port)
	if err != nil {
		lg.WithError(err).Warn("port forward refused")
		resetConn(c)
		return
	}
	defer guest.Close()
	lg.Debug("port forward open")
	stop := context.AfterFunc(f.ctx, func() { c.Close(); guest.Close() })
	defer stop()
	splice.Splice(c, guest)
	lg.Debug("port forward closed")
}

// openGuest opens the guest's side of a forward to port and returns it
// once the agent said yes.
func (f *portForwarder) openGuest(port uint16) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(f.ctx, forwardSetupTimeout)
	defer cancel()
	conn, err := f.guest.Dial(ctx, agentapi.ForwardPort)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest agent: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := (agentapi.ForwardHeader{Port: port}).WriteTo(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ask the guest agent: %w", err)
	}
	if err := agentapi.ReadForwardReply(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("the guest agent refused: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// resetConn closes c with a reset instead of an orderly shutdown.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}

// close stops accepting, ends the forwarded connections and removes the
// redirect from the namespace.
func (f *portForwarder) close() error {
	f.cancel()
	f.listener.Close()
	f.wg.Wait()
	return network.RemoveLoopbackRedirect(f.netns)
}
