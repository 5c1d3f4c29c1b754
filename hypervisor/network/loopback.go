package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// loopbackTable is the nftables table ListenLoopback adds to a sandbox's
// network namespace; the namespace is the pod's alone, so one name serves
// every pod.
const loopbackTable = "contrast_loopback"

// ListenLoopback opens a TCP listener on 127.0.0.1 in the network
// namespace at netnsPath and has the namespace's own TCP connections to
// 127.0.0.1, on any port, redirected to it: an nftables nat table with one
// rule in the output hook. OriginalPort tells each accepted connection's
// port. This is how containerd's CRI, which serves kubectl port-forward by
// dialling localhost:<port> inside the sandbox's namespace, reaches the
// shim of a pod whose containers run in a VM. Nothing else in that
// namespace uses its loopback. On error nothing is left in the namespace.
func ListenLoopback(netnsPath string) (_ *net.TCPListener, retErr error) {
	ns, handle, err := openNetlink(netnsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer handle.Close()
	wrap := func(err error) error {
		return fmt.Errorf("loopback redirect in network namespace %s: %w", netnsPath, err)
	}
	// CNI's loopback plugin brings lo up; a namespace made without it has
	// lo down, where nothing can listen.
	lo, err := handle.LinkByName("lo")
	if err != nil {
		return nil, wrap(fmt.Errorf("find lo: %w", err))
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := handle.LinkSetUp(lo); err != nil {
			return nil, wrap(fmt.Errorf("bring lo up: %w", err))
		}
	}
	var l net.Listener
	err = inNamespace(ns, func() error {
		var err error
		l, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		return nil, wrap(fmt.Errorf("listen on 127.0.0.1: %w", err))
	}
	defer func() {
		if retErr != nil {
			l.Close()
		}
	}()
	port := uint16(l.Addr().(*net.TCPAddr).Port)

	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, wrap(fmt.Errorf("nftables: %w", err))
	}
	defer conn.CloseLasting()
	// Flushed as one batch: the table appears with its rule or not at all.
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: loopbackTable})
	chain := conn.AddChain(&nftables.Chain{
		Name: "output", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
	})
	var portBytes [2]byte
	binary.BigEndian.PutUint16(portBytes[:], port)
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		// meta l4proto tcp
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// ip daddr 127.0.0.1 (the destination: offset 16 of the IPv4 header)
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.IPv4(127, 0, 0, 1).To4()},
		// redirect to :port
		&expr.Immediate{Register: 1, Data: portBytes[:]},
		&expr.Redir{RegisterProtoMin: 1},
	}})
	if err := conn.Flush(); err != nil {
		return nil, wrap(fmt.Errorf("add nftables table %s: %w", loopbackTable, err))
	}
	return l.(*net.TCPListener), nil
}

// RemoveLoopbackRedirect deletes what ListenLoopback added to the network
// namespace at netnsPath. It succeeds when there is nothing to remove: no
// table, or no namespace.
func RemoveLoopbackRedirect(netnsPath string) error {
	ns, err := openNamespace(netnsPath)
	if errors.Is(err, errNamespaceGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables in network namespace %s: %w", netnsPath, err)
	}
	defer conn.CloseLasting()
	table, err := conn.ListTableOfFamily(loopbackTable, nftables.TableFamilyIPv4)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find nftables table %s in network namespace %s: %w", loopbackTable, netnsPath, err)
	}
	conn.DelTable(table)
	if err := conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("delete nftables table %s in network namespace %s: %w", loopbackTable, netnsPath, err)
	}
	return nil
}

// OriginalPort is the port a connection accepted by ListenLoopback's
// listener was addressed to before the redirect (SO_ORIGINAL_DST).
func OriginalPort(c *net.TCPConn) (uint16, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var addr *unix.IPv6Mreq // a struct sockaddr_in fits in its 20 bytes
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		addr, sockErr = unix.GetsockoptIPv6Mreq(int(fd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST)
	}); err != nil {
		return 0, err
	}
	if sockErr != nil {
		return 0, fmt.Errorf("original destination of %v: %w", c.RemoteAddr(), sockErr)
	}
	// struct sockaddr_in: family (host order), port (network order), address.
	if family := binary.NativeEndian.Uint16(addr.Multiaddr[0:2]); family != unix.AF_INET {
		return 0, fmt.Errorf("original destination of %v: address family %d, want IPv4", c.RemoteAddr(), family)
	}
	return binary.BigEndian.Uint16(addr.Multiaddr[2:4]), nil
}
