// Package network connects a pod VM to the network namespace CNI set up for
// the sandbox, the way Kata's default "tcfilter" model does: a tap device is
// created beside the CNI interface in the namespace, tc redirects every frame
// between the two, QEMU gets the tap's file descriptor, and the guest NIC takes
// the CNI interface's MAC, addresses, routes and neighbours (read by Inspect).
package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentapi "github.com/contrast-vm/contrast/api/agent"
)

// Interface is the CNI interface of a network namespace, as the guest NIC
// must be configured to take its place.
type Interface struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int
	// Addresses are the interface's global-scope IPv4 and IPv6 addresses;
	// link-local ones are left out (every kernel makes its own).
	Addresses []net.IPNet
	// Routes are the main-table routes through the interface, without the
	// IPv6 link-local prefix route.
	Routes []Route
	// Neighbors are the permanent neighbour entries of the interface.
	Neighbors []Neighbor
}

// Route is one route through the CNI interface.
type Route struct {
	// Destination is 0.0.0.0/0 or ::/0 for a default route.
	Destination net.IPNet
	// Gateway is nil for a route whose destination is directly on the link.
	Gateway net.IP
	// Source is the preferred source address, nil if none is set.
	Source net.IP
	// LinkScoped is set for routes with scope link (dev-scoped, no gateway).
	LinkScoped bool
	// KernelAddressRoute is set for the prefix route the kernel adds with an
	// address: the guest kernel creates it again when the address is set.
	KernelAddressRoute bool
}

// Neighbor is a permanent neighbour (ARP or NDP) entry.
type Neighbor struct {
	IP  net.IP
	MAC net.HardwareAddr
}

// Tap is a tap device created by Attach.
type Tap struct {
	Name  string
	Index int
	// File is the tap's queue, opened with IFF_VNET_HDR and without
	// IFF_MULTI_QUEUE, for QEMU's "-netdev tap,fd=N". The caller closes it
	// once QEMU holds its own copy.
	File *os.File
	// GuestMAC is the MAC the guest NIC must use: the CNI interface's, so
	// the ARP and neighbour state CNI set up for it stays true.
	GuestMAC net.HardwareAddr
	MTU      int
}

// filterPriority marks the tc filters Attach adds, so that Detach removes
// those and no other filter on the same device.
const filterPriority = 0xc7a7

// ingressHandle is the fixed handle of an ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// errNamespaceGone reports a namespace path that does not exist or is no
// longer a network namespace (a mount point left after the namespace died).
var errNamespaceGone = errors.New("network namespace is gone")

// nsGetNSType is the NS_GET_NSTYPE ioctl (_IO(0xb7, 0x3)), missing from
// x/sys/unix: it tells whether a file is a namespace, and of which kind.
const nsGetNSType = 0xb703

// openNamespace opens the network namespace at path and checks that it is one.
func openNamespace(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), errors.New("network namespace path is empty")
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), fmt.Errorf("network namespace %s does not exist: %w", path, errNamespaceGone)
		}
		return netns.None(), fmt.Errorf("network namespace %s: %w", path, err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", path, err)
	}
	nsType, err := unix.IoctlRetInt(int(ns), nsGetNSType)
	if err != nil || nsType != unix.CLONE_NEWNET {
		ns.Close()
		return netns.None(), fmt.Errorf("%s is not a network namespace: %w", path, errNamespaceGone)
	}
	return ns, nil
}

// openNetlink opens the network namespace at path and a netlink handle in it.
// The caller closes both.
func openNetlink(path string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := openNamespace(path)
	if err != nil {
		return netns.None(), nil, err
	}
	handle, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return netns.None(), nil, fmt.Errorf("netlink in network namespace %s: %w", path, err)
	}
	return ns, handle, nil
}

// inNamespace runs fn on an OS thread switched into ns. It runs on a fresh
// goroutine: if the thread cannot be switched back to its original namespace,
// the goroutine exits with the thread still locked, and the Go runtime then
// destroys the thread instead of reusing it in the wrong namespace.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			result <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			result <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			result <- errors.Join(fnErr, fmt.Errorf("return to the original network namespace: %w", err))
			return // thread stays locked and is discarded
		}
		current, err := netns.Get()
		if err != nil {
			result <- errors.Join(fnErr, fmt.Errorf("check the original network namespace: %w", err))
			return
		}
		back := current.Equal(orig)
		current.Close()
		if !back {
			result <- errors.Join(fnErr, errors.New("thread did not return to the original network namespace"))
			return
		}
		runtime.UnlockOSThread()
		result <- fnErr
	}()
	return <-result
}

// Inspect reads the CNI interface of the network namespace at netnsPath: the
// one interface other than loopback with a global-scope address.
func Inspect(netnsPath string) (*Interface, error) {
	ns, handle, err := openNetlink(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer handle.Close()

	links, err := handle.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in network namespace %s: %w", netnsPath, err)
	}
	var (
		candidates []*Interface
		seen       []string
	)
	for _, link := range links {
		attrs := link.Attrs()
		if attrs.Flags&net.FlagLoopback != 0 {
			seen = append(seen, attrs.Name+" (loopback)")
			continue
		}
		addrs, err := globalAddresses(handle, link)
		if err != nil {
			return nil, fmt.Errorf("network namespace %s: %w", netnsPath, err)
		}
		if len(addrs) == 0 {
			seen = append(seen, attrs.Name+" (no address)")
			continue
		}
		seen = append(seen, attrs.Name)
		candidates = append(candidates, &Interface{
			Name:      attrs.Name,
			Index:     attrs.Index,
			MAC:       attrs.HardwareAddr,
			MTU:       attrs.MTU,
			Addresses: addrs,
		})
	}
	switch len(candidates) {
	case 0:
		return nil, fmt.Errorf("network namespace %s has no interface with an address besides loopback (found %q)", netnsPath, seen)
	case 1:
	default:
		return nil, fmt.Errorf("network namespace %s has several interfaces with an address, cannot tell which is the CNI one (found %q)", netnsPath, seen)
	}
	iface := candidates[0]
	link, err := handle.LinkByIndex(iface.Index)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: interface %s: %w", netnsPath, iface.Name, err)
	}
	if iface.Routes, err = linkRoutes(handle, link); err != nil {
		return nil, fmt.Errorf("network namespace %s: interface %s: %w", netnsPath, iface.Name, err)
	}
	if iface.Neighbors, err = permanentNeighbors(handle, iface.Index); err != nil {
		return nil, fmt.Errorf("network namespace %s: interface %s: %w", netnsPath, iface.Name, err)
	}
	return iface, nil
}

func globalAddresses(handle *netlink.Handle, link netlink.Link) ([]net.IPNet, error) {
	addrs, err := handle.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	var global []net.IPNet
	for _, addr := range addrs {
		if addr.Scope != unix.RT_SCOPE_UNIVERSE || addr.IPNet == nil {
			continue
		}
		global = append(global, *addr.IPNet)
	}
	return global, nil
}

func linkRoutes(handle *netlink.Handle, link netlink.Link) ([]Route, error) {
	routes, err := handle.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var result []Route
	for _, r := range routes {
		dst := r.Dst
		if dst == nil {
			dst = defaultDestination(r.Family)
		}
		if dst.IP.IsLinkLocalUnicast() || dst.IP.IsMulticast() {
			continue
		}
		result = append(result, Route{
			Destination:        *dst,
			Gateway:            r.Gw,
			Source:             r.Src,
			LinkScoped:         r.Scope == netlink.SCOPE_LINK,
			KernelAddressRoute: r.Protocol == unix.RTPROT_KERNEL,
		})
	}
	return result, nil
}

func defaultDestination(family int) *net.IPNet {
	if family == netlink.FAMILY_V6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

func permanentNeighbors(handle *netlink.Handle, index int) ([]Neighbor, error) {
	neighs, err := handle.NeighList(index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	var result []Neighbor
	for _, n := range neighs {
		if n.State&netlink.NUD_PERMANENT == 0 || n.IP == nil {
			continue
		}
		result = append(result, Neighbor{IP: n.IP, MAC: n.HardwareAddr})
	}
	return result, nil
}

// Attach creates the tap device tapName in the network namespace at netnsPath
// and connects it to the interface ifName with tc: an ingress qdisc on each and
// a u32 match-all filter redirecting every frame to the other device. On error
// nothing it created is left behind.
func Attach(netnsPath, ifName, tapName string) (tap *Tap, err error) {
	if err := agentapi.ValidateLinkName(tapName); err != nil {
		return nil, fmt.Errorf("tap name: %w", err)
	}
	ns, handle, err := openNetlink(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer handle.Close()
	wrap := func(format string, args ...any) error {
		return fmt.Errorf("attach tap %s to %s in network namespace %s: %w", tapName, ifName, netnsPath, fmt.Errorf(format, args...))
	}

	cni, err := handle.LinkByName(ifName)
	if err != nil {
		return nil, wrap("find interface %s: %w", ifName, err)
	}
	if _, err := handle.LinkByName(tapName); err == nil {
		return nil, wrap("a link named %s exists already", tapName)
	}
	if hasIngress, err := hasIngressQdisc(handle, cni); err != nil {
		return nil, wrap("%w", err)
	} else if hasIngress {
		// Detach removes the ingress qdisc; one that is not ours must stay.
		return nil, wrap("interface %s has an ingress qdisc already", ifName)
	}

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if undoErr := undo[i](); undoErr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", undoErr))
			}
		}
	}()

	tuntap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: tapName},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// One queue, no packet-info header, virtio-net header: what QEMU's
		// "-netdev tap,fd=" expects of a single-queue tap.
		Flags:  netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues: 1,
	}
	// The tap is made by TUNSETIFF on /dev/net/tun, which creates it in the
	// calling thread's namespace.
	if err := inNamespace(ns, func() error { return handle.LinkAdd(tuntap) }); err != nil {
		return nil, wrap("create tap: %w", err)
	}
	file := tuntap.Fds[0]
	undo = append(undo, func() error {
		// Delete before close: the tap is persistent, closing alone keeps it.
		delErr := handle.LinkDel(tuntap)
		return errors.Join(delErr, file.Close())
	})
	tapLink, err := handle.LinkByName(tapName)
	if err != nil {
		return nil, wrap("find the new tap: %w", err)
	}
	mtu := cni.Attrs().MTU
	if err := handle.LinkSetMTU(tapLink, mtu); err != nil {
		return nil, wrap("set tap MTU to %d: %w", mtu, err)
	}
	if err := handle.LinkSetUp(tapLink); err != nil {
		return nil, wrap("set tap up: %w", err)
	}
	for _, pair := range [][2]netlink.Link{{cni, tapLink}, {tapLink, cni}} {
		from, to := pair[0], pair[1]
		qdisc := ingressQdisc(from.Attrs().Index)
		if err := handle.QdiscAdd(qdisc); err != nil {
			return nil, wrap("add ingress qdisc to %s: %w", from.Attrs().Name, err)
		}
		if from == cni {
			// The tap's qdisc goes with the tap; the CNI interface's does not.
			undo = append(undo, func() error { return handle.QdiscDel(qdisc) })
		}
		if err := handle.FilterAdd(redirectFilter(from.Attrs().Index, to.Attrs().Index)); err != nil {
			return nil, wrap("add redirect filter %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
		}
	}
	return &Tap{
		Name:     tapName,
		Index:    tapLink.Attrs().Index,
		File:     file,
		GuestMAC: cni.Attrs().HardwareAddr,
		MTU:      mtu,
	}, nil
}

func ingressQdisc(linkIndex int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: linkIndex,
		Parent:    netlink.HANDLE_INGRESS,
		Handle:    ingressHandle,
	}}
}

// redirectFilter matches every frame entering linkIndex ("u32 match u8 0 0":
// the kernel here has neither matchall nor flower) and sends it out of target.
func redirectFilter(linkIndex, target int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: linkIndex,
			Parent:    ingressHandle,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Sel: &netlink.TcU32Sel{
			Flags: netlink.TC_U32_TERMINAL,
			Nkeys: 1,
			Keys:  []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}},
		},
		Actions: []netlink.Action{netlink.NewMirredAction(target)},
	}
}

func hasIngressQdisc(handle *netlink.Handle, link netlink.Link) (bool, error) {
	qdiscs, err := handle.QdiscList(link)
	if err != nil {
		return false, fmt.Errorf("list qdiscs of %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			return true, nil
		}
	}
	return false, nil
}

// Detach removes the tap tapName from the network namespace at netnsPath,
// with the redirect filters Attach added and the ingress qdisc it added to the
// CNI interface. It succeeds when there is nothing left to remove: the tap is
// gone (VM died, Detach ran before), or the namespace is.
func Detach(netnsPath, tapName string) error {
	ns, handle, err := openNetlink(netnsPath)
	if errors.Is(err, errNamespaceGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	defer handle.Close()
	wrap := func(err error) error {
		return fmt.Errorf("detach tap %s in network namespace %s: %w", tapName, netnsPath, err)
	}

	// Filters redirecting to the tap; once it is deleted, their target reads
	// as index 0, so those count as the tap's too.
	targets := map[int]bool{0: true}
	tap, err := handle.LinkByName(tapName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		tap = nil
	case err != nil:
		return wrap(fmt.Errorf("find tap: %w", err))
	default:
		targets[tap.Attrs().Index] = true
	}

	links, err := handle.LinkList()
	if err != nil {
		return wrap(fmt.Errorf("list links: %w", err))
	}
	for _, link := range links {
		if tap != nil && link.Attrs().Index == tap.Attrs().Index {
			continue
		}
		if err := removeRedirects(handle, link, targets); err != nil {
			return wrap(err)
		}
	}
	if tap != nil {
		if err := handle.LinkDel(tap); err != nil && !errors.Is(err, unix.ENODEV) {
			return wrap(fmt.Errorf("delete tap: %w", err))
		}
	}
	return nil
}

// removeRedirects deletes link's ingress filters of Attach that redirect to
// one of targets, then its ingress qdisc if that holds no filter any more.
func removeRedirects(handle *netlink.Handle, link netlink.Link, targets map[int]bool) error {
	hasIngress, err := hasIngressQdisc(handle, link)
	if err != nil || !hasIngress {
		return err
	}
	name := link.Attrs().Name
	filters, err := handle.FilterList(link, ingressHandle)
	if err != nil {
		return fmt.Errorf("list ingress filters of %s: %w", name, err)
	}
	removed := 0
	for _, f := range filters {
		if !isRedirectTo(f, targets) {
			continue
		}
		if err := handle.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete redirect filter of %s: %w", name, err)
		}
		removed++
	}
	if removed == 0 {
		return nil
	}
	// Deleting the last u32 filter of a priority takes the u32 hash table
	// with it, so an empty list means no filter of anyone else is left.
	remaining, err := handle.FilterList(link, ingressHandle)
	if err != nil {
		return fmt.Errorf("list ingress filters of %s: %w", name, err)
	}
	if len(remaining) > 0 {
		return nil
	}
	if err := handle.QdiscDel(ingressQdisc(link.Attrs().Index)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete ingress qdisc of %s: %w", name, err)
	}
	return nil
}

func isRedirectTo(f netlink.Filter, targets map[int]bool) bool {
	u32, ok := f.(*netlink.U32)
	if !ok || u32.Priority != filterPriority {
		return false
	}
	for _, a := range u32.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && targets[m.Ifindex] {
			return true
		}
	}
	return false
}
