package shim

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/hypervisor"
	"github.com/contrast-vm/contrast/hypervisor/network"
)

// podTapName is the tap device the shim creates in a sandbox's network
// namespace; the namespace is the pod's alone, so one name serves every pod.
const podTapName = "tap0_contrast"

// podNetworkNamespace is the network namespace the pod VM joins: the path
// CNI set up for the sandbox, or "" when the spec asks for a new, empty one
// (a task started outside CRI), in which case the VM has no network card.
// A spec without a network namespace shares the node's network, which a VM
// cannot do: that is an error, not a pod without network.
func podNetworkNamespace(podID string, spec *specs.Spec) (string, error) {
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				return ns.Path, nil
			}
		}
	}
	return "", fmt.Errorf("pod %s asks for the node's network namespace (hostNetwork): "+
		"a pod VM has a kernel of its own and cannot share the node's network; run it without hostNetwork: %w",
		podID, errdefs.ErrNotImplemented)
}

// podNetwork is the pod's network as its VM takes it over: the CNI interface
// found in the sandbox's namespace and the tap connected to it.
type podNetwork struct {
	netns string
	iface *network.Interface
	tap   *network.Tap
}

// attachPodNetwork reads the CNI interface of the namespace at netnsPath and
// connects a new tap device to it. On error the namespace is as it was.
func attachPodNetwork(netnsPath string) (*podNetwork, error) {
	iface, err := network.Inspect(netnsPath)
	if err != nil {
		return nil, err
	}
	tap, err := network.Attach(netnsPath, iface.Name, podTapName)
	if err != nil {
		return nil, err
	}
	return &podNetwork{netns: netnsPath, iface: iface, tap: tap}, nil
}

// nic is the VM's network card on the tap.
func (n *podNetwork) nic() hypervisor.NIC {
	return hypervisor.NIC{Tap: n.tap.File, MAC: n.tap.GuestMAC, MTU: n.tap.MTU}
}

// releaseTapFile closes the shim's copy of the tap queue once the VM holds
// its own (or will never need it).
func (n *podNetwork) releaseTapFile() {
	if n.tap.File != nil {
		n.tap.File.Close()
		n.tap.File = nil
	}
}

// detach removes the tap and its tc redirects from the namespace.
func (n *podNetwork) detach() error {
	n.releaseTapFile()
	return network.Detach(n.netns, n.tap.Name)
}

// configureRequest is the guest's side of the CNI interface: the NIC with
// its name, MTU and addresses, the routes through it and its neighbours. The
// prefix routes the kernel adds with each address are left out: the guest
// kernel adds them too.
func (n *podNetwork) configureRequest() *agentapi.ConfigureNetworkRequest {
	iface := n.iface
	nic := &agentapi.NetworkInterface{Name: iface.Name, Mac: n.tap.GuestMAC.String(), Mtu: uint32(n.tap.MTU)}
	for _, a := range iface.Addresses {
		nic.Addresses = append(nic.Addresses, a.String())
	}
	req := &agentapi.ConfigureNetworkRequest{Interfaces: []*agentapi.NetworkInterface{nic}}
	for _, r := range iface.Routes {
		if r.KernelAddressRoute {
			continue
		}
		req.Routes = append(req.Routes, &agentapi.NetworkRoute{
			Destination: r.Destination.String(),
			Gateway:     ipString(r.Gateway),
			Source:      ipString(r.Source),
			Device:      iface.Name,
			LinkScope:   r.LinkScoped,
		})
	}
	for _, nb := range iface.Neighbors {
		req.Neighbors = append(req.Neighbors, &agentapi.NetworkNeighbor{Ip: nb.IP.String(), Mac: nb.MAC.String(), Device: iface.Name})
	}
	return req
}

func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

// configureNetwork has the agent configure the pod's network in the VM.
func (p *pod) configureNetwork(ctx context.Context) error {
	if p.network == nil {
		return nil
	}
	req := p.network.configureRequest()
	if _, err := p.agent.ConfigureNetwork(ctx, req); err != nil {
		return fmt.Errorf("configure network of pod %s in the VM: %w", p.id, err)
	}
	nic := req.Interfaces[0]
	log.G(ctx).WithFields(log.Fields{
		"pod": p.id, "netns": p.network.netns, "interface": nic.Name, "mac": nic.Mac, "mtu": nic.Mtu,
		"addresses": nic.Addresses, "routes": len(req.Routes), "neighbors": len(req.Neighbors),
	}).Info("pod network configured")
	return nil
}

// cleanupNetwork removes what the shim added to a sandbox's namespace
// (the port-forward redirect, the tap and its redirects), from a bundle
// record, whether or not the shim is still there.
func cleanupNetwork(netnsPath, tapName string) error {
	if netnsPath == "" {
		return nil
	}
	var errs []error
	if err := network.RemoveLoopbackRedirect(netnsPath); err != nil {
		errs = append(errs, err)
	}
	if tapName != "" {
		if err := network.Detach(netnsPath, tapName); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
