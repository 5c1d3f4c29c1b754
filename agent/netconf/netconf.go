// Package netconf gives the pod VM the pod's network as the host found it in
// the sandbox's network namespace (api/agent ConfigureNetworkRequest).
//
// The host attached one NIC per pod interface with the CNI interface's MAC;
// the guest has no udev and the kernel named it eth0 or similar, so each NIC
// is found by its MAC, then renamed, given its MTU and addresses and set up.
// Routes follow, those on the link before those through a gateway (the
// kernel accepts a gateway only once a route reaches it), then permanent
// neighbours. Everything is validated before anything changes, and on an
// error what was already done is undone as far as that is cheap.
package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Configure applies req to the network namespace of the calling thread: the
// VM's own network, when the agent is the VM's init.
func Configure(req *api.ConfigureNetworkRequest) error {
	// Routing netlink only: without arguments NewHandle also opens XFRM
	// and netfilter sockets, which the guest kernel does not have.
	handle, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open routing netlink: %w", err)
	}
	defer handle.Close()
	return Apply(handle, req)
}

// Apply validates req and applies it through handle. On an error it removes
// the neighbours, routes and addresses it added and leaves the links it
// touched down with their old names and MTUs, as far as it can; the error
// names the step and the object.
func Apply(handle *netlink.Handle, req *api.ConfigureNetworkRequest) error {
	p, err := parse(req)
	if err != nil {
		return err
	}
	a := &applier{handle: handle}
	if err := a.apply(p); err != nil {
		if undoErr := a.undo(); undoErr != nil {
			return errors.Join(err, fmt.Errorf("undo what was configured: %w", undoErr))
		}
		return err
	}
	return nil
}

// Validate checks req without touching any link: names, MACs, addresses and
// that routes and neighbours name requested interfaces.
func Validate(req *api.ConfigureNetworkRequest) error {
	_, err := parse(req)
	return err
}

// Summary is a one-line description of req for the log.
func Summary(req *api.ConfigureNetworkRequest) string {
	var parts []string
	for _, i := range req.GetInterfaces() {
		s := fmt.Sprintf("%s (%s) mtu %d", i.GetName(), i.GetMac(), i.GetMtu())
		if len(i.GetAddresses()) > 0 {
			s += " " + strings.Join(i.GetAddresses(), " ")
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		parts = append(parts, "no interfaces")
	}
	return fmt.Sprintf("%s; %d routes, %d neighbours", strings.Join(parts, ", "), len(req.GetRoutes()), len(req.GetNeighbors()))
}

// plan is a validated request.
type plan struct {
	interfaces []iface
	routes     []route
	neighbors  []neighbor
}

type iface struct {
	name      string
	mac       net.HardwareAddr
	mtu       int // 0 keeps the link's
	addresses []netip.Prefix
}

type route struct {
	destination netip.Prefix
	gateway     netip.Addr // invalid: on the link
	source      netip.Addr // invalid: none
	device      string
}

func (r route) String() string {
	s := "route " + r.destination.String()
	if r.gateway.IsValid() {
		s += " via " + r.gateway.String()
	}
	s += " dev " + r.device
	if r.source.IsValid() {
		s += " src " + r.source.String()
	}
	return s
}

type neighbor struct {
	ip     netip.Addr
	mac    net.HardwareAddr
	device string
}

func (n neighbor) String() string {
	return fmt.Sprintf("neighbour %s lladdr %s dev %s", n.ip, n.mac, n.device)
}

// The MTU bounds: IPv4's minimum and the largest value the field carries on
// the host side.
const (
	minMTU = 68
	maxMTU = 65535
)

func parse(req *api.ConfigureNetworkRequest) (*plan, error) {
	p := &plan{}
	names := map[string]int{}
	macs := map[string]int{}
	addrs := map[netip.Addr]string{}
	for i, in := range req.GetInterfaces() {
		field := fmt.Sprintf("interfaces[%d]", i)
		if err := validateName(in.GetName()); err != nil {
			return nil, fmt.Errorf("%s.name: %w", field, err)
		}
		if j, ok := names[in.GetName()]; ok {
			return nil, fmt.Errorf("%s.name %q: interfaces[%d] has it too", field, in.GetName(), j)
		}
		names[in.GetName()] = i
		mac, err := parseNICMAC(in.GetMac())
		if err != nil {
			return nil, fmt.Errorf("%s.mac: %w", field, err)
		}
		if j, ok := macs[mac.String()]; ok {
			return nil, fmt.Errorf("%s.mac %s: interfaces[%d] has it too", field, mac, j)
		}
		macs[mac.String()] = i
		if m := in.GetMtu(); m != 0 && (m < minMTU || m > maxMTU) {
			return nil, fmt.Errorf("%s.mtu %d: not between %d and %d (0 keeps the link's)", field, m, minMTU, maxMTU)
		}
		nic := iface{name: in.GetName(), mac: mac, mtu: int(in.GetMtu())}
		for k, a := range in.GetAddresses() {
			prefix, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("%s.addresses[%d] %q: not an address in CIDR notation: %w", field, k, a, err)
			}
			if ip := prefix.Addr(); ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.Zone() != "" {
				return nil, fmt.Errorf("%s.addresses[%d] %s: not an address an interface may have", field, k, a)
			}
			if other, ok := addrs[prefix.Addr()]; ok {
				return nil, fmt.Errorf("%s.addresses[%d] %s: the address is given twice (also on %s)", field, k, a, other)
			}
			addrs[prefix.Addr()] = in.GetName()
			nic.addresses = append(nic.addresses, prefix)
		}
		p.interfaces = append(p.interfaces, nic)
	}

	destinations := map[netip.Prefix]int{}
	for i, r := range req.GetRoutes() {
		field := fmt.Sprintf("routes[%d]", i)
		dst, err := netip.ParsePrefix(r.GetDestination())
		if err != nil {
			return nil, fmt.Errorf("%s.destination %q: not a prefix in CIDR notation: %w", field, r.GetDestination(), err)
		}
		if dst != dst.Masked() {
			return nil, fmt.Errorf("%s.destination %s: host bits are set (the network is %s)", field, dst, dst.Masked())
		}
		if j, ok := destinations[dst]; ok {
			return nil, fmt.Errorf("%s.destination %s: routes[%d] has it too", field, dst, j)
		}
		destinations[dst] = i
		rt := route{destination: dst, device: r.GetDevice()}
		if _, ok := names[r.GetDevice()]; !ok {
			return nil, fmt.Errorf("%s (%s).device %q: not one of the requested interfaces", field, dst, r.GetDevice())
		}
		if g := r.GetGateway(); g != "" {
			if r.GetLinkScope() {
				return nil, fmt.Errorf("%s (%s): link scope and gateway %s contradict each other", field, dst, g)
			}
			if rt.gateway, err = parseUnicast(g, dst.Addr().Is4()); err != nil {
				return nil, fmt.Errorf("%s (%s).gateway: %w", field, dst, err)
			}
		}
		if s := r.GetSource(); s != "" {
			if rt.source, err = parseUnicast(s, dst.Addr().Is4()); err != nil {
				return nil, fmt.Errorf("%s (%s).source: %w", field, dst, err)
			}
			if _, ok := addrs[rt.source]; !ok {
				// The kernel takes only a local address as preferred source.
				return nil, fmt.Errorf("%s (%s).source %s: not one of the requested addresses", field, dst, s)
			}
		}
		p.routes = append(p.routes, rt)
	}

	neighbors := map[string]int{}
	for i, n := range req.GetNeighbors() {
		field := fmt.Sprintf("neighbors[%d]", i)
		ip, err := netip.ParseAddr(n.GetIp())
		if err != nil || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() || ip.Zone() != "" {
			return nil, fmt.Errorf("%s.ip %q: not a unicast IP address", field, n.GetIp())
		}
		mac, err := net.ParseMAC(n.GetMac())
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("%s (%s).mac %q: not an Ethernet MAC address", field, ip, n.GetMac())
		}
		if _, ok := names[n.GetDevice()]; !ok {
			return nil, fmt.Errorf("%s (%s).device %q: not one of the requested interfaces", field, ip, n.GetDevice())
		}
		key := ip.String() + " dev " + n.GetDevice()
		if j, ok := neighbors[key]; ok {
			return nil, fmt.Errorf("%s: neighbour %s is given twice (also neighbors[%d])", field, key, j)
		}
		neighbors[key] = i
		p.neighbors = append(p.neighbors, neighbor{ip: ip, mac: mac, device: n.GetDevice()})
	}
	return p, nil
}

// validateName accepts what the kernel accepts as a link name, but not
// loopback's, which is never the host's.
func validateName(name string) error {
	if name == "lo" {
		return errors.New(`"lo" is the loopback, which is not the host's to configure`)
	}
	return api.ValidateLinkName(name)
}

// parseNICMAC parses the MAC of a NIC: an Ethernet unicast address.
func parseNICMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	switch {
	case err != nil || len(mac) != 6:
		return nil, fmt.Errorf("%q is not an Ethernet MAC address", s)
	case mac[0]&1 != 0:
		return nil, fmt.Errorf("%s is a multicast address", mac)
	case slices.Equal(mac, make(net.HardwareAddr, 6)):
		return nil, fmt.Errorf("%s is the zero address", mac)
	}
	return mac, nil
}

func parseUnicast(s string, want4 bool) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return ip, fmt.Errorf("%q is not an IP address", s)
	case ip.Is4() != want4:
		return ip, fmt.Errorf("%s is not of the destination's address family", s)
	case ip.IsUnspecified() || ip.IsMulticast() || ip.Zone() != "":
		return ip, fmt.Errorf("%s is not a unicast address", s)
	}
	return ip, nil
}

// applier applies a plan and remembers what it changed, for undo.
type applier struct {
	handle *netlink.Handle

	links     []*touchedLink
	addresses []addedAddress
	routes    []*netlink.Route
	neighbors []*netlink.Neigh
}

// touchedLink is a NIC of the plan and what it was before.
type touchedLink struct {
	index   int
	name    string // current name
	oldName string
	oldMTU  int
	want    iface
}

type addedAddress struct {
	link *touchedLink
	addr *netlink.Addr
}

func (a *applier) apply(p *plan) error {
	if err := a.findLinks(p.interfaces); err != nil {
		return err
	}
	for _, l := range a.links {
		if err := a.handle.LinkSetDown(a.link(l)); err != nil {
			return fmt.Errorf("interface %s (link %s): set down: %w", l.want.name, l.name, err)
		}
	}
	if err := a.rename(func(l *touchedLink) string { return l.want.name }); err != nil {
		return err
	}
	for _, l := range a.links {
		if l.want.mtu != 0 && l.want.mtu != l.oldMTU {
			if err := a.handle.LinkSetMTU(a.link(l), l.want.mtu); err != nil {
				return fmt.Errorf("interface %s: set MTU %d: %w", l.name, l.want.mtu, err)
			}
		}
		for _, prefix := range l.want.addresses {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}}
			if prefix.Addr().Is6() {
				// The host already owns the address; duplicate address
				// detection would only delay it by a second or more.
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := a.handle.AddrAdd(a.link(l), addr); err != nil {
				return fmt.Errorf("interface %s: add address %s: %w", l.name, prefix, err)
			}
			a.addresses = append(a.addresses, addedAddress{link: l, addr: addr})
		}
		if err := a.handle.LinkSetUp(a.link(l)); err != nil {
			return fmt.Errorf("interface %s: set up: %w", l.name, err)
		}
	}

	indexOf := map[string]int{}
	for _, l := range a.links {
		indexOf[l.want.name] = l.index
	}
	// Routes on the link first: a gateway must be reachable when its route
	// is added.
	ordered := slices.Clone(p.routes)
	slices.SortStableFunc(ordered, func(x, y route) int {
		switch {
		case !x.gateway.IsValid() && y.gateway.IsValid():
			return -1
		case x.gateway.IsValid() && !y.gateway.IsValid():
			return 1
		}
		return 0
	})
	for _, r := range ordered {
		if err := a.addRoute(r, indexOf[r.device]); err != nil {
			return err
		}
	}

	for _, n := range p.neighbors {
		neigh := &netlink.Neigh{
			LinkIndex:    indexOf[n.device],
			Family:       family(n.ip),
			State:        netlink.NUD_PERMANENT,
			IP:           n.ip.AsSlice(),
			HardwareAddr: n.mac,
		}
		// Set, not add: the kernel may have learnt the neighbour already.
		if err := a.handle.NeighSet(neigh); err != nil {
			return fmt.Errorf("%s: add: %w", n, err)
		}
		a.neighbors = append(a.neighbors, neigh)
	}
	return nil
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// link is a netlink.Link value that names l by its index, which stays the
// same across renames.
func (a *applier) link(l *touchedLink) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: l.index, Name: l.name}}
}

// findLinks finds each requested NIC by its MAC among the links.
func (a *applier) findLinks(want []iface) error {
	links, err := listLinks(a.handle)
	if err != nil {
		return err
	}
	var present []string
	for _, link := range links {
		if link.Attrs().Flags&net.FlagLoopback == 0 {
			present = append(present, fmt.Sprintf("%s %s", link.Attrs().Name, link.Attrs().HardwareAddr))
		}
	}
	found := map[int]bool{}
	var touched []*touchedLink
	for _, w := range want {
		var match []netlink.Link
		for _, link := range links {
			if slices.Equal(link.Attrs().HardwareAddr, w.mac) {
				match = append(match, link)
			}
		}
		switch {
		case len(match) == 0:
			return fmt.Errorf("interface %s: no link has MAC %s (links: %s)", w.name, w.mac, strings.Join(present, ", "))
		case len(match) > 1:
			return fmt.Errorf("interface %s: several links have MAC %s (links: %s)", w.name, w.mac, strings.Join(present, ", "))
		}
		attrs := match[0].Attrs()
		if attrs.Flags&net.FlagLoopback != 0 {
			return fmt.Errorf("interface %s: MAC %s is loopback %s's, which is not the host's to configure", w.name, w.mac, attrs.Name)
		}
		found[attrs.Index] = true
		touched = append(touched, &touchedLink{index: attrs.Index, name: attrs.Name, oldName: attrs.Name, oldMTU: attrs.MTU, want: w})
	}
	// A requested name another link holds would make the rename fail
	// half-way: refuse before changing anything.
	for _, w := range want {
		for _, link := range links {
			if attrs := link.Attrs(); attrs.Name == w.name && !found[attrs.Index] {
				return fmt.Errorf("interface %s (MAC %s): the name is taken by link %s (MAC %s), which the request does not configure", w.name, w.mac, attrs.Name, attrs.HardwareAddr)
			}
		}
	}
	a.links = touched
	return nil
}

// listLinks lists the links, again if the dump was interrupted by a change.
func listLinks(handle *netlink.Handle) ([]netlink.Link, error) {
	for attempt := 0; ; attempt++ {
		links, err := handle.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		return links, nil
	}
}

// rename gives every touched link the name nameOf says. When a name is
// still held by another of the links (NICs whose names are swapped), every
// link to rename first gets a temporary name.
func (a *applier) rename(nameOf func(*touchedLink) string) error {
	var renaming []*touchedLink
	held := map[string]bool{}
	for _, l := range a.links {
		held[l.name] = true
		if nameOf(l) != l.name {
			renaming = append(renaming, l)
		}
	}
	viaTemporary := slices.ContainsFunc(renaming, func(l *touchedLink) bool { return held[nameOf(l)] })
	set := func(l *touchedLink, name string) error {
		if err := a.handle.LinkSetName(a.link(l), name); err != nil {
			return fmt.Errorf("interface %s: rename link %s to %s: %w", nameOf(l), l.name, name, err)
		}
		l.name = name
		return nil
	}
	if viaTemporary {
		for _, l := range renaming {
			if err := set(l, fmt.Sprintf("netconf%d", l.index)); err != nil {
				return err
			}
		}
	}
	for _, l := range renaming {
		if err := set(l, nameOf(l)); err != nil {
			return err
		}
	}
	return nil
}

// addRoute adds r through the link with index dev. A route the kernel
// already made for an address, the same prefix on the same link, is fine.
func (a *applier) addRoute(r route, dev int) error {
	nr := &netlink.Route{
		LinkIndex: dev,
		Dst:       &net.IPNet{IP: r.destination.Addr().AsSlice(), Mask: net.CIDRMask(r.destination.Bits(), r.destination.Addr().BitLen())},
		Table:     unix.RT_TABLE_MAIN,
	}
	if r.gateway.IsValid() {
		nr.Gw = r.gateway.AsSlice()
	} else if r.destination.Addr().Is4() {
		// As ip-route does for a route without gateway; IPv6 routes have
		// no scope.
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.source.IsValid() {
		nr.Src = r.source.AsSlice()
	}
	err := a.handle.RouteAdd(nr)
	if errors.Is(err, unix.EEXIST) {
		exists, listErr := a.routeExists(nr, family(r.destination.Addr()))
		if listErr != nil {
			return fmt.Errorf("%s: add: %w (and listing the routes to compare: %w)", r, err, listErr)
		}
		if exists {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("%s: add: %w", r, err)
	}
	a.routes = append(a.routes, nr)
	return nil
}

// routeExists tells whether the main table has want's prefix on want's link
// with want's gateway and (if it names one) source.
func (a *applier) routeExists(want *netlink.Route, family int) (bool, error) {
	routes, err := a.handle.RouteListFiltered(family, &netlink.Route{LinkIndex: want.LinkIndex, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, err
	}
	for _, r := range routes {
		if sameNet(r.Dst, want.Dst) && r.Gw.Equal(want.Gw) && (want.Src == nil || r.Src.Equal(want.Src)) {
			return true, nil
		}
	}
	return false, nil
}

// sameNet compares prefixes; nil is the default route, as netlink may
// report it.
func sameNet(x, y *net.IPNet) bool {
	ones := func(n *net.IPNet) int {
		o, _ := n.Mask.Size()
		return o
	}
	switch {
	case x == nil && y == nil:
		return true
	case x == nil:
		return ones(y) == 0
	case y == nil:
		return ones(x) == 0
	}
	return x.IP.Equal(y.IP) && ones(x) == ones(y)
}

// undo removes what apply added, newest first, and leaves the links down
// with their old names and MTUs. It goes on after an error and returns all.
func (a *applier) undo() error {
	var errs []error
	gone := func(err error) bool {
		return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EADDRNOTAVAIL)
	}
	for _, n := range slices.Backward(a.neighbors) {
		if err := a.handle.NeighDel(n); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", n.IP, err))
		}
	}
	for _, r := range slices.Backward(a.routes) {
		if err := a.handle.RouteDel(r); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	for _, ad := range slices.Backward(a.addresses) {
		if err := a.handle.AddrDel(a.link(ad.link), ad.addr); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", ad.addr.IPNet, ad.link.name, err))
		}
	}
	for _, l := range a.links {
		if err := a.handle.LinkSetDown(a.link(l)); err != nil {
			errs = append(errs, fmt.Errorf("set link %s down: %w", l.name, err))
		}
		if l.want.mtu != 0 && l.want.mtu != l.oldMTU {
			if err := a.handle.LinkSetMTU(a.link(l), l.oldMTU); err != nil {
				errs = append(errs, fmt.Errorf("restore MTU %d of link %s: %w", l.oldMTU, l.name, err))
			}
		}
	}
	if err := a.rename(func(l *touchedLink) string { return l.oldName }); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
