// Command nettool checks, from inside a privileged container, the kernel
// networking that CNI agents, VPN sidecars and service-mesh init
// containers use in a network namespace of their own: it makes a new
// network namespace and there creates a bridge with a veth pair, a tap
// device, and nftables tables, chains and rules; it also looks for the
// legacy iptables tables. Busybox has no nft, so the integration tests put
// this static binary into a test image.
//
// It prints "ok <check>" or "FAIL <check> (needs <kernel options>): <error>"
// per check and exits 1 when one failed.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// check is one capability and the kernel options it needs.
type check struct {
	name    string
	options string
	run     func(e *env) error
}

// env is the new network namespace the checks run in.
type env struct {
	links   *netlink.Handle
	nftConn *nftables.Conn
}

func main() {
	// The namespace belongs to this thread: keep main on it for good.
	runtime.LockOSThread()
	e, err := newEnv()
	if err != nil {
		fmt.Printf("FAIL netns (needs CONFIG_NET_NS): %v\n", err)
		os.Exit(1)
	}
	var failed []string
	for _, c := range checks {
		if err := c.run(e); err != nil {
			fmt.Printf("FAIL %s (needs %s): %v\n", c.name, c.options, err)
			failed = append(failed, c.name)
			continue
		}
		fmt.Printf("ok %s\n", c.name)
	}
	if len(failed) > 0 {
		fmt.Printf("nettool: %d of %d checks failed: %s\n", len(failed), len(checks), strings.Join(failed, ", "))
		os.Exit(1)
	}
	fmt.Printf("nettool: all %d checks passed\n", len(checks))
}

// newEnv moves the calling (locked) thread into a new network namespace
// and opens netlink and nftables connections bound to it.
func newEnv() (*env, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("unshare a network namespace: %w", err)
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open the new network namespace: %w", err)
	}
	links, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in the new network namespace: %w", err)
	}
	nftConn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables connection in the new network namespace: %w", err)
	}
	return &env{links: links, nftConn: nftConn}, nil
}

var checks = []check{
	{"loopback", "CONFIG_NET_NS", checkLoopback},
	{"bridge-veth", "CONFIG_BRIDGE, CONFIG_VETH", checkBridgeVeth},
	{"tap", "CONFIG_TUN", checkTap},
	{"nft-inet-filter", "CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET, CONFIG_NFT_CT, CONFIG_NFT_LIMIT, CONFIG_NFT_REJECT", checkNftFilter},
	{"nft-inet-nat", "CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NFT_REDIR", checkNftNAT},
	{"nft-ip-ip6", "CONFIG_NF_TABLES_IPV4, CONFIG_NF_TABLES_IPV6", checkNftFamilies},
	{"iptables-legacy", "CONFIG_IP_NF_IPTABLES, CONFIG_IP6_NF_IPTABLES", checkIptablesLegacy},
}

func checkLoopback(e *env) error {
	lo, err := e.links.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := e.links.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// checkBridgeVeth creates a bridge with an address and a veth pair with
// one end on the bridge, as the CNI bridge plugin does.
func checkBridgeVeth(e *env) error {
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "nt-br0"}}
	if err := e.links.LinkAdd(bridge); err != nil {
		return fmt.Errorf("create bridge nt-br0: %w", err)
	}
	addr, err := netlink.ParseAddr("10.213.0.1/24")
	if err != nil {
		return fmt.Errorf("parse the bridge address: %w", err)
	}
	if err := e.links.AddrAdd(bridge, addr); err != nil {
		return fmt.Errorf("address nt-br0: %w", err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nt-veth0"}, PeerName: "nt-veth1"}
	if err := e.links.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair nt-veth0/nt-veth1: %w", err)
	}
	if err := e.links.LinkSetMaster(veth, bridge); err != nil {
		return fmt.Errorf("put nt-veth0 on nt-br0: %w", err)
	}
	for _, l := range []netlink.Link{bridge, veth} {
		if err := e.links.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	got, err := e.links.LinkByName("nt-veth0")
	if err != nil {
		return fmt.Errorf("find nt-veth0: %w", err)
	}
	if got.Attrs().MasterIndex != bridge.Attrs().Index {
		return fmt.Errorf("nt-veth0 has master index %d, want nt-br0's %d", got.Attrs().MasterIndex, bridge.Attrs().Index)
	}
	return nil
}

// checkTap creates a tap device through /dev/net/tun, making the device
// node where the container has none.
func checkTap(e *env) error {
	path := "/dev/net/tun"
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		path = os.TempDir() + "/nettool-tun"
		if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(10, 200))); err != nil {
			return fmt.Errorf("no /dev/net/tun, and mknod %s: %w", path, err)
		}
		defer os.Remove(path)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("nt-tap0")
	if err != nil {
		return fmt.Errorf("ifreq for nt-tap0: %w", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF nt-tap0 on %s: %w", path, err)
	}
	// The device lives as long as fd: look for it in the namespace now.
	if _, err := e.links.LinkByName("nt-tap0"); err != nil {
		return fmt.Errorf("find nt-tap0 after creating it: %w", err)
	}
	return nil
}

// checkNftFilter loads an inet table with a filter chain on the input hook
// and rules of the common expressions: meta, ct, counter, limit, reject.
func checkNftFilter(e *env) error {
	table := e.nftConn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "nettool"})
	chain := e.nftConn.AddChain(&nftables.Chain{
		Name: "input", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	})
	// ct state established,related counter accept
	e.nftConn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: nativeUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: nativeUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeUint32(0)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	// meta l4proto tcp limit rate 10/second burst 5 packets reject with icmpx port-unreachable
	e.nftConn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Limit{Type: expr.LimitTypePkts, Rate: 10, Unit: expr.LimitTimeSecond, Burst: 5},
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH},
	}})
	if err := e.nftConn.Flush(); err != nil {
		return fmt.Errorf("load inet table nettool with chain input and its rules: %w", err)
	}
	return expectRules(e, table, chain, 2)
}

// checkNftNAT adds nat chains with masquerade and redirect rules to the
// inet table, as a CNI plugin and a service-mesh init container do.
func checkNftNAT(e *env) error {
	// The filter check's table, made here too so that a failure there
	// does not show here as a missing table.
	table := e.nftConn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "nettool"})
	post := e.nftConn.AddChain(&nftables.Chain{
		Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	// oifname "nt-br0" masquerade
	e.nftConn.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("nt-br0")},
		&expr.Masq{},
	}})
	pre := e.nftConn.AddChain(&nftables.Chain{
		Name: "prerouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	// meta l4proto tcp redirect
	e.nftConn.AddRule(&nftables.Rule{Table: table, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Redir{},
	}})
	if err := e.nftConn.Flush(); err != nil {
		return fmt.Errorf("load nat chains postrouting (masquerade) and prerouting (redirect): %w", err)
	}
	if err := expectRules(e, table, post, 1); err != nil {
		return err
	}
	return expectRules(e, table, pre, 1)
}

// checkNftFamilies loads an ip and an ip6 table, each with a counting
// output chain.
func checkNftFamilies(e *env) error {
	for _, family := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		table := e.nftConn.AddTable(&nftables.Table{Family: family, Name: "nettool"})
		chain := e.nftConn.AddChain(&nftables.Chain{
			Name: "output", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
		})
		e.nftConn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{&expr.Counter{}}})
		if err := e.nftConn.Flush(); err != nil {
			return fmt.Errorf("load table nettool of family %s: %w", familyName(family), err)
		}
		if err := expectRules(e, table, chain, 1); err != nil {
			return err
		}
	}
	return nil
}

// checkIptablesLegacy looks for the legacy x_tables interfaces of this
// namespace, which iptables-legacy and ip6tables-legacy talk to.
func checkIptablesLegacy(*env) error {
	for _, name := range []string{"ip_tables_names", "ip6_tables_names"} {
		// thread-self: the namespace is this thread's, not the process's.
		if _, err := os.Stat("/proc/thread-self/net/" + name); err != nil {
			return fmt.Errorf("no %s in the namespace's /proc/net: %w", name, err)
		}
	}
	return nil
}

// expectRules reads the chain back from the kernel.
func expectRules(e *env, table *nftables.Table, chain *nftables.Chain, want int) error {
	rules, err := e.nftConn.GetRules(table, chain)
	if err != nil {
		return fmt.Errorf("list rules of %s chain %s: %w", table.Name, chain.Name, err)
	}
	if len(rules) != want {
		return fmt.Errorf("%s chain %s has %d rules after loading, want %d", table.Name, chain.Name, len(rules), want)
	}
	return nil
}

// nativeUint32: ct state is compared in host byte order.
func nativeUint32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// ifname is an interface name as meta oifname compares it (IFNAMSIZ, NUL padded).
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprint(int(f))
}
