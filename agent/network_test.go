package agent

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/contrast-vm/contrast/agent/netconf"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// nicNamespace makes a network namespace of the test's own holding a NIC,
// one end of a veth pair named ens3 with mac, and returns a netlink handle
// in it. The namespace goes when the test ends.
func nicNamespace(t *testing.T, mac string) *netlink.Handle {
	t.Helper()
	handle := netnstest.New(t)
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ens3", HardwareAddr: hw}, PeerName: "peer-ens3"}); err != nil {
		t.Fatalf("add veth ens3: %v", err)
	}
	return handle
}

// TestConfigureNetwork goes through the RPC: refused before CreateSandbox,
// InvalidArgument for a malformed request, a failed attempt may be
// retried, and once configured never again.
func TestConfigureNetwork(t *testing.T) {
	const mac = "02:00:00:00:00:05"
	handle := nicNamespace(t, mac)
	h := newHarness(t, func(cfg *Config) {
		cfg.ConfigureNetwork = func(req *api.ConfigureNetworkRequest) error { return netconf.Apply(handle, req) }
	})
	ctx := context.Background()
	req := &api.ConfigureNetworkRequest{
		Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: mac, Mtu: 1450, Addresses: []string{"10.88.0.5/16"}}},
		Routes:     []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"}},
	}

	_, err := h.client.ConfigureNetwork(ctx, req)
	wantStatus(t, "before CreateSandbox", err, codes.FailedPrecondition, "CreateSandbox was not called")
	h.sandbox()

	_, err = h.client.ConfigureNetwork(ctx, &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:05"}}})
	// The policy's input check may refuse it before the service does.
	wantStatus(t, "malformed MAC", err, codes.InvalidArgument, "interfaces[0].mac")

	_, err = h.client.ConfigureNetwork(ctx, &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:99"}}})
	wantStatus(t, "MAC of no NIC", err, codes.Unknown, "sandbox pod1", "no link has MAC 02:00:00:00:00:99")

	if _, err := h.client.ConfigureNetwork(ctx, req); err != nil {
		t.Fatalf("ConfigureNetwork: %v", err)
	}
	link, err := handle.LinkByName("eth0")
	if err != nil {
		t.Fatalf("the NIC was not renamed eth0: %v", err)
	}
	addrs, err := handle.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == "10.88.0.5/16" }) {
		t.Errorf("eth0 has addresses %v, want 10.88.0.5/16 among them", addrs)
	}

	_, err = h.client.ConfigureNetwork(ctx, req)
	wantStatus(t, "second call", err, codes.FailedPrecondition, "already configured")
}

// TestConfigureNetworkAfterContainer refuses to change the network under a
// container; without a hook (not the VM's init) the request is only logged.
func TestConfigureNetworkAfterContainer(t *testing.T) {
	h := newHarness(t, func(cfg *Config) { cfg.ConfigureNetwork = nil })
	ctx := context.Background()
	req := &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:05"}}}
	h.sandbox()
	h.create("c1", podSpec("true"), nil)
	_, err := h.client.ConfigureNetwork(ctx, req)
	wantStatus(t, "after CreateContainer", err, codes.FailedPrecondition, "1 containers exist already")
	h.remove("c1")
	if _, err := h.client.ConfigureNetwork(ctx, req); err != nil {
		t.Fatalf("ConfigureNetwork without a hook: %v", err)
	}
	_, err = h.client.ConfigureNetwork(ctx, req)
	wantStatus(t, "second call without a hook", err, codes.FailedPrecondition, "already configured")
}
