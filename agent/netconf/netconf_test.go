package netconf

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// addNIC stands in for a virtio-net NIC: one end of a veth pair named name
// with mac, whose peer (peer-<name>) is up so that the NIC has a carrier.
func addNIC(t *testing.T, handle *netlink.Handle, name, mac string) {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	peer := "peer-" + name
	if err := handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw}, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	p, err := handle.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := handle.LinkSetUp(p); err != nil {
		t.Fatalf("set %s up: %v", peer, err)
	}
}

func linkByName(t *testing.T, handle *netlink.Handle, name string) netlink.Link {
	t.Helper()
	link, err := handle.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return link
}

// addresses lists a link's global addresses as ip/len strings.
func addresses(t *testing.T, handle *netlink.Handle, link netlink.Link) []string {
	t.Helper()
	addrs, err := handle.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			out = append(out, a.IPNet.String()+" tentative")
			continue
		}
		out = append(out, a.IPNet.String())
	}
	slices.Sort(out)
	return out
}

// routes lists a link's main-table routes as "dst [via gw] [scope link]",
// leaving out IPv6 link-local and multicast ones the kernel adds itself.
func routes(t *testing.T, handle *netlink.Handle, link netlink.Link) []string {
	t.Helper()
	var out []string
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := handle.RouteList(link, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			dst := "default"
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones > 0 {
					dst = r.Dst.String()
				}
			}
			if strings.HasPrefix(dst, "fe80::") || strings.HasPrefix(dst, "ff00::") {
				continue
			}
			if family == netlink.FAMILY_V6 && dst == "default" {
				dst = "default6"
			}
			s := dst
			if r.Gw != nil {
				s += " via " + r.Gw.String()
			}
			if r.Scope == netlink.SCOPE_LINK {
				s += " scope link"
			}
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

func TestApply(t *testing.T) {
	const macA, macB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
	type nic struct{ name, mac string }
	for _, tc := range []struct {
		name string
		nics []nic
		req  *api.ConfigureNetworkRequest
		// want per final link name: addresses and routes
		wantAddrs  map[string][]string
		wantRoutes map[string][]string
		wantMTU    map[string]int
		wantMAC    map[string]string
		check      func(t *testing.T, handle *netlink.Handle)
	}{
		{
			name: "bridge CNI",
			nics: []nic{{"ens3", macA}},
			req: &api.ConfigureNetworkRequest{
				Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: macA, Mtu: 1450, Addresses: []string{"10.88.0.5/16"}}},
				Routes:     []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"}},
			},
			wantAddrs:  map[string][]string{"eth0": {"10.88.0.5/16"}},
			wantRoutes: map[string][]string{"eth0": {"10.88.0.0/16 scope link", "default via 10.88.0.1"}},
			wantMTU:    map[string]int{"eth0": 1450},
			wantMAC:    map[string]string{"eth0": macA},
		},
		{
			// The prefix route 10.88.0.0/16 is also the kernel's for the
			// address: its EEXIST is no error.
			name: "dual stack",
			nics: []nic{{"eth0", macA}},
			req: &api.ConfigureNetworkRequest{
				Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: macA, Mtu: 1500, Addresses: []string{"10.88.0.5/16", "fd00::5/64"}}},
				Routes: []*api.NetworkRoute{
					{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"},
					{Destination: "::/0", Gateway: "fd00::1", Device: "eth0"},
					{Destination: "10.88.0.0/16", Device: "eth0", LinkScope: true},
				},
			},
			wantAddrs:  map[string][]string{"eth0": {"10.88.0.5/16", "fd00::5/64"}},
			wantRoutes: map[string][]string{"eth0": {"10.88.0.0/16 scope link", "default via 10.88.0.1", "default6 via fd00::1", "fd00::/64"}},
			wantMTU:    map[string]int{"eth0": 1500},
		},
		{
			// The default route comes first in the request: it only works
			// once the route to its gateway is there.
			name: "Calico",
			nics: []nic{{"ens4", macA}},
			req: &api.ConfigureNetworkRequest{
				Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: macA, Mtu: 1480, Addresses: []string{"10.0.0.5/32"}}},
				Routes: []*api.NetworkRoute{
					{Destination: "0.0.0.0/0", Gateway: "169.254.1.1", Device: "eth0", Source: "10.0.0.5"},
					{Destination: "169.254.1.1/32", Device: "eth0", LinkScope: true},
				},
				Neighbors: []*api.NetworkNeighbor{{Ip: "169.254.1.1", Mac: "ee:ee:ee:ee:ee:ee", Device: "eth0"}},
			},
			wantAddrs:  map[string][]string{"eth0": {"10.0.0.5/32"}},
			wantRoutes: map[string][]string{"eth0": {"169.254.1.1/32 scope link", "default via 169.254.1.1"}},
			wantMTU:    map[string]int{"eth0": 1480},
			check: func(t *testing.T, handle *netlink.Handle) {
				link := linkByName(t, handle, "eth0")
				neighs, err := handle.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, n := range neighs {
					got = append(got, fmt.Sprintf("%s %s permanent=%t", n.IP, n.HardwareAddr, n.State == netlink.NUD_PERMANENT))
				}
				if want := "169.254.1.1 ee:ee:ee:ee:ee:ee permanent=true"; !slices.Contains(got, want) {
					t.Errorf("neighbours of eth0: %q, want %q among them", got, want)
				}
			},
		},
		{
			name: "names swapped, MTU kept",
			nics: []nic{{"eth0", macB}, {"eth1", macA}},
			req: &api.ConfigureNetworkRequest{
				Interfaces: []*api.NetworkInterface{
					{Name: "eth0", Mac: macA, Addresses: []string{"10.1.0.2/24"}},
					{Name: "eth1", Mac: macB, Addresses: []string{"10.2.0.2/24"}},
				},
			},
			wantAddrs:  map[string][]string{"eth0": {"10.1.0.2/24"}, "eth1": {"10.2.0.2/24"}},
			wantRoutes: map[string][]string{"eth0": {"10.1.0.0/24 scope link"}, "eth1": {"10.2.0.0/24 scope link"}},
			wantMTU:    map[string]int{"eth0": 1500, "eth1": 1500},
			wantMAC:    map[string]string{"eth0": macA, "eth1": macB},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handle := netnstest.New(t)
			for _, n := range tc.nics {
				addNIC(t, handle, n.name, n.mac)
			}
			if err := Apply(handle, tc.req); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			for name, want := range tc.wantAddrs {
				link := linkByName(t, handle, name)
				if got := addresses(t, handle, link); !slices.Equal(got, want) {
					t.Errorf("addresses of %s: %q, want %q", name, got, want)
				}
				if got, want := routes(t, handle, link), tc.wantRoutes[name]; !slices.Equal(got, want) {
					t.Errorf("routes of %s: %q, want %q", name, got, want)
				}
				if got := link.Attrs().MTU; got != tc.wantMTU[name] {
					t.Errorf("MTU of %s: %d, want %d", name, got, tc.wantMTU[name])
				}
				if link.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("%s is not up", name)
				}
				if mac, ok := tc.wantMAC[name]; ok && link.Attrs().HardwareAddr.String() != mac {
					t.Errorf("%s has MAC %s, want %s", name, link.Attrs().HardwareAddr, mac)
				}
			}
			if tc.check != nil {
				tc.check(t, handle)
			}
		})
	}
}

// TestApplyErrors checks that a failed Apply names what failed and leaves
// the NIC as it found it: its old name and MTU, down, without addresses.
func TestApplyErrors(t *testing.T) {
	const mac = "02:00:00:00:00:05"
	eth0 := func(addrs ...string) []*api.NetworkInterface {
		return []*api.NetworkInterface{{Name: "eth0", Mac: mac, Mtu: 1450, Addresses: addrs}}
	}
	for _, tc := range []struct {
		name    string
		req     *api.ConfigureNetworkRequest
		wantErr []string
	}{
		{
			name:    "unknown MAC",
			req:     &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:99", Addresses: []string{"10.88.0.5/16"}}}},
			wantErr: []string{"no link has MAC 02:00:00:00:00:99", "(links: ", "ens3 " + mac, "peer-ens3"},
		},
		{
			name:    "bad CIDR",
			req:     &api.ConfigureNetworkRequest{Interfaces: eth0("10.88.0.5/33")},
			wantErr: []string{"interfaces[0].addresses[0]", "10.88.0.5/33"},
		},
		{
			name: "route device not requested",
			req: &api.ConfigureNetworkRequest{Interfaces: eth0("10.88.0.5/16"),
				Routes: []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth1"}}},
			wantErr: []string{"routes[0]", `"eth1"`, "not one of the requested interfaces"},
		},
		{
			name: "gateway unreachable",
			req: &api.ConfigureNetworkRequest{Interfaces: eth0("10.88.0.5/16", "fd00::5/64"),
				Routes: []*api.NetworkRoute{
					{Destination: "::/0", Gateway: "fd00::1", Device: "eth0"},
					{Destination: "0.0.0.0/0", Gateway: "192.168.1.1", Device: "eth0"},
				}},
			wantErr: []string{"route 0.0.0.0/0 via 192.168.1.1 dev eth0", "unreachable"},
		},
		{
			name:    "name held by a link not requested",
			req:     &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "peer-ens3", Mac: mac, Addresses: []string{"10.88.0.5/16"}}}},
			wantErr: []string{"the name is taken by link peer-ens3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handle := netnstest.New(t)
			addNIC(t, handle, "ens3", mac)
			err := Apply(handle, tc.req)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			link := linkByName(t, handle, "ens3") // the old name is back
			if got := addresses(t, handle, link); len(got) != 0 {
				t.Errorf("ens3 kept addresses %q", got)
			}
			if got := routes(t, handle, link); len(got) != 0 {
				t.Errorf("ens3 kept routes %q", got)
			}
			if link.Attrs().Flags&net.FlagUp != 0 {
				t.Error("ens3 is up")
			}
			if link.Attrs().MTU != 1500 {
				t.Errorf("ens3 has MTU %d, want its old 1500", link.Attrs().MTU)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	const mac = "02:00:00:00:00:05"
	nic := func(name, mac string, addrs ...string) *api.NetworkInterface {
		return &api.NetworkInterface{Name: name, Mac: mac, Addresses: addrs}
	}
	one := []*api.NetworkInterface{nic("eth0", mac, "10.88.0.5/16", "fd00::5/64")}
	for _, tc := range []struct {
		name    string
		req     *api.ConfigureNetworkRequest
		wantErr string // empty: valid
	}{
		{"valid", &api.ConfigureNetworkRequest{Interfaces: one,
			Routes:    []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0", Source: "10.88.0.5"}},
			Neighbors: []*api.NetworkNeighbor{{Ip: "10.88.0.1", Mac: "ee:ee:ee:ee:ee:ee", Device: "eth0"}}}, ""},
		{"empty", &api.ConfigureNetworkRequest{}, ""},
		{"no name", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("", mac)}}, "interfaces[0].name: empty"},
		{"loopback", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("lo", mac)}}, `interfaces[0].name: "lo" is the loopback`},
		{"long name", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0123456789abc", mac)}}, "longer than 15 bytes"},
		{"slash", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth/0", mac)}}, `"eth/0" contains`},
		{"duplicate name", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", mac), nic("eth0", "02:00:00:00:00:06")}}, `interfaces[1].name "eth0": interfaces[0] has it too`},
		{"bad MAC", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", "02:00:00:00:05")}}, `interfaces[0].mac: "02:00:00:00:05" is not an Ethernet MAC`},
		{"zero MAC", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", "00:00:00:00:00:00")}}, "zero address"},
		{"multicast MAC", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", "01:00:5e:00:00:01")}}, "multicast"},
		{"duplicate MAC", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", mac), nic("eth1", "02:00:00:00:00:05")}}, "interfaces[1].mac 02:00:00:00:00:05: interfaces[0] has it too"},
		{"MTU", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: mac, Mtu: 40}}}, "interfaces[0].mtu 40"},
		{"address without prefix", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", mac, "10.88.0.5")}}, `interfaces[0].addresses[0] "10.88.0.5"`},
		{"loopback address", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", mac, "127.0.0.2/8")}}, "interfaces[0].addresses[0] 127.0.0.2/8"},
		{"address twice", &api.ConfigureNetworkRequest{Interfaces: []*api.NetworkInterface{nic("eth0", mac, "10.0.0.1/24"), nic("eth1", "02:00:00:00:00:06", "10.0.0.1/16")}}, "interfaces[1].addresses[0] 10.0.0.1/16: the address is given twice (also on eth0)"},
		{"route destination", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "default", Device: "eth0"}}}, `routes[0].destination "default"`},
		{"route host bits", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "10.88.0.5/16", Device: "eth0"}}}, "routes[0].destination 10.88.0.5/16: host bits are set (the network is 10.88.0.0/16)"},
		{"route twice", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"}, {Destination: "0.0.0.0/0", Gateway: "10.88.0.2", Device: "eth0"}}}, "routes[1].destination 0.0.0.0/0: routes[0] has it too"},
		{"route device", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1"}}}, `routes[0] (0.0.0.0/0).device "": not one of the requested interfaces`},
		{"gateway family", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "::/0", Gateway: "10.88.0.1", Device: "eth0"}}}, "routes[0] (::/0).gateway: 10.88.0.1 is not of the destination's address family"},
		{"gateway and link scope", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0", LinkScope: true}}}, "link scope and gateway 10.88.0.1 contradict"},
		{"source not local", &api.ConfigureNetworkRequest{Interfaces: one, Routes: []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0", Source: "10.88.0.6"}}}, "routes[0] (0.0.0.0/0).source 10.88.0.6: not one of the requested addresses"},
		{"neighbour IP", &api.ConfigureNetworkRequest{Interfaces: one, Neighbors: []*api.NetworkNeighbor{{Ip: "10.88.0.1/32", Mac: mac, Device: "eth0"}}}, `neighbors[0].ip "10.88.0.1/32"`},
		{"neighbour MAC", &api.ConfigureNetworkRequest{Interfaces: one, Neighbors: []*api.NetworkNeighbor{{Ip: "10.88.0.1", Mac: "ee", Device: "eth0"}}}, `neighbors[0] (10.88.0.1).mac "ee"`},
		{"neighbour device", &api.ConfigureNetworkRequest{Interfaces: one, Neighbors: []*api.NetworkNeighbor{{Ip: "10.88.0.1", Mac: mac, Device: "eth9"}}}, `neighbors[0] (10.88.0.1).device "eth9": not one of the requested interfaces`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.req)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("Validate accepted it, want an error saying %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not say %q", err, tc.wantErr)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	got := Summary(&api.ConfigureNetworkRequest{
		Interfaces: []*api.NetworkInterface{{Name: "eth0", Mac: "02:00:00:00:00:05", Mtu: 1450, Addresses: []string{"10.88.0.5/16", "fd00::5/64"}}},
		Routes:     []*api.NetworkRoute{{Destination: "0.0.0.0/0", Gateway: "10.88.0.1", Device: "eth0"}},
	})
	if want := "eth0 (02:00:00:00:00:05) mtu 1450 10.88.0.5/16 fd00::5/64; 1 routes, 0 neighbours"; got != want {
		t.Errorf("Summary: %q, want %q", got, want)
	}
}
