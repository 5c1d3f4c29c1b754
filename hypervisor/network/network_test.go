package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// testEtherType is an IEEE "local experimental" EtherType, so the test frames
// are told apart from whatever else the kernel sends (IPv6 RS, MLD).
const testEtherType = 0x88b5

// virtioNetHdrLen is the size of the header a tap with IFF_VNET_HDR puts
// before every frame (struct virtio_net_hdr, no mergeable buffers).
const virtioNetHdrLen = 10

// podNetwork is what CNI's bridge plugin leaves: the pod namespace holds eth0
// with addresses, routes and a permanent neighbour; the peer namespace holds
// the other end of the veth (where the bridge would be).
type podNetwork struct {
	pod, podPath   string
	peer, peerPath string
	peerMAC        net.HardwareAddr
	podMAC         net.HardwareAddr
}

func newPodNetwork(t *testing.T, mtu int) *podNetwork {
	t.Helper()
	n := &podNetwork{}
	n.pod, n.podPath = netnstest.Named(t, "cvmtest-")
	n.peer, n.peerPath = netnstest.Named(t, "cvmtest-")
	n.podMAC, _ = net.ParseMAC("02:00:00:00:00:05")
	n.peerMAC, _ = net.ParseMAC("02:00:00:00:00:01")
	netnstest.IP(t, "-n", n.pod, "link", "add", "eth0", "address", n.podMAC.String(), "mtu", fmt.Sprint(mtu),
		"type", "veth", "peer", "name", "veth0", "address", n.peerMAC.String(), "mtu", fmt.Sprint(mtu), "netns", n.peer)
	netnstest.IP(t, "-n", n.peer, "addr", "add", "10.88.0.1/16", "dev", "veth0")
	netnstest.IP(t, "-n", n.peer, "addr", "add", "fd00:88::1/64", "dev", "veth0", "nodad")
	netnstest.IP(t, "-n", n.peer, "link", "set", "veth0", "up")
	netnstest.IP(t, "-n", n.pod, "addr", "add", "10.88.0.5/16", "dev", "eth0")
	netnstest.IP(t, "-n", n.pod, "addr", "add", "fd00:88::5/64", "dev", "eth0", "nodad")
	netnstest.IP(t, "-n", n.pod, "link", "set", "eth0", "up")
	netnstest.IP(t, "-n", n.pod, "route", "add", "default", "via", "10.88.0.1", "dev", "eth0")
	netnstest.IP(t, "-n", n.pod, "route", "add", "10.96.0.0/12", "via", "10.88.0.1", "dev", "eth0")
	netnstest.IP(t, "-n", n.pod, "-6", "route", "add", "default", "via", "fd00:88::1", "dev", "eth0")
	netnstest.IP(t, "-n", n.pod, "neigh", "add", "10.88.0.1", "lladdr", n.peerMAC.String(), "dev", "eth0", "nud", "permanent")
	return n
}

func routeStrings(routes []Route) []string {
	var out []string
	for _, r := range routes {
		out = append(out, fmt.Sprintf("%s gw=%v src=%v link=%v kernel=%v",
			r.Destination.String(), r.Gateway, r.Source, r.LinkScoped, r.KernelAddressRoute))
	}
	slices.Sort(out)
	return out
}

func TestInspect(t *testing.T) {
	n := newPodNetwork(t, 1400)

	iface, err := Inspect(n.podPath)
	if err != nil {
		t.Fatal(err)
	}
	if iface.Name != "eth0" || iface.MTU != 1400 || !bytes.Equal(iface.MAC, n.podMAC) {
		t.Errorf("Inspect: name %q MTU %d MAC %s, want eth0, 1400, %s", iface.Name, iface.MTU, iface.MAC, n.podMAC)
	}
	var addrs []string
	for _, a := range iface.Addresses {
		addrs = append(addrs, a.String())
	}
	slices.Sort(addrs)
	if want := []string{"10.88.0.5/16", "fd00:88::5/64"}; !slices.Equal(addrs, want) {
		t.Errorf("addresses %q, want %q", addrs, want)
	}
	wantRoutes := []string{
		"0.0.0.0/0 gw=10.88.0.1 src=<nil> link=false kernel=false",
		"10.88.0.0/16 gw=<nil> src=10.88.0.5 link=true kernel=true",
		"10.96.0.0/12 gw=10.88.0.1 src=<nil> link=false kernel=false",
		"::/0 gw=fd00:88::1 src=<nil> link=false kernel=false",
		"fd00:88::/64 gw=<nil> src=<nil> link=false kernel=true",
	}
	if got := routeStrings(iface.Routes); !slices.Equal(got, wantRoutes) {
		t.Errorf("routes\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRoutes, "\n"))
	}
	if len(iface.Neighbors) != 1 || !iface.Neighbors[0].IP.Equal(net.ParseIP("10.88.0.1")) ||
		!bytes.Equal(iface.Neighbors[0].MAC, n.peerMAC) {
		t.Errorf("neighbours %+v, want only 10.88.0.1 at %s", iface.Neighbors, n.peerMAC)
	}
}

func TestInspectErrors(t *testing.T) {
	_, loopbackOnly := netnstest.Named(t, "cvmtest-")
	twoIfaces, twoPath := netnstest.Named(t, "cvmtest-")
	netnstest.IP(t, "-n", twoIfaces, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	netnstest.IP(t, "-n", twoIfaces, "addr", "add", "10.1.0.2/24", "dev", "eth0")
	netnstest.IP(t, "-n", twoIfaces, "addr", "add", "10.2.0.2/24", "dev", "eth1")
	regularFile := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(regularFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")

	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"missing path", missing, []string{missing, "does not exist"}},
		{"empty path", "", []string{"empty"}},
		{"regular file", regularFile, []string{regularFile, "not a network namespace"}},
		{"loopback only", loopbackOnly, []string{loopbackOnly, "no interface", "lo (loopback)"}},
		{"two interfaces", twoPath, []string{twoPath, "several", "eth0", "eth1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iface, err := Inspect(tc.path)
			if err == nil {
				t.Fatalf("Inspect(%q) = %+v, want an error", tc.path, iface)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// testHandle is a netlink handle in the namespace at path, closed when the
// test ends.
func testHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, h, err := openNetlink(path)
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	t.Cleanup(h.Close)
	return h
}

// namespaceState lists links, qdiscs and filters of a namespace, to compare
// the namespace before Attach and after Detach.
func namespaceState(t *testing.T, path string) []string {
	t.Helper()
	h := testHandle(t, path)
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var state []string
	for _, l := range links {
		state = append(state, fmt.Sprintf("link %s %s mtu %d", l.Attrs().Name, l.Type(), l.Attrs().MTU))
		qdiscs, err := h.QdiscList(l)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qdiscs {
			state = append(state, fmt.Sprintf("qdisc %s %s %s", l.Attrs().Name, q.Type(), netlink.HandleStr(q.Attrs().Handle)))
		}
		for _, parent := range []uint32{ingressHandle, netlink.HANDLE_ROOT} {
			filters, err := h.FilterList(l, parent)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range filters {
				state = append(state, fmt.Sprintf("filter %s %s prio %d", l.Attrs().Name, f.Type(), f.Attrs().Priority))
			}
		}
	}
	return state
}

// redirectTargets returns the targets of the mirred redirects of link's ingress filters.
func redirectTargets(t *testing.T, path, link string) []int {
	t.Helper()
	h := testHandle(t, path)
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := hasIngressQdisc(h, l); err != nil || !ok {
		t.Fatalf("%s has no ingress qdisc (%v)", link, err)
	}
	filters, err := h.FilterList(l, ingressHandle)
	if err != nil {
		t.Fatal(err)
	}
	var targets []int
	for _, f := range filters {
		u32, ok := f.(*netlink.U32)
		if !ok {
			t.Errorf("%s: unexpected %s filter", link, f.Type())
			continue
		}
		for _, a := range u32.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				targets = append(targets, m.Ifindex)
			}
		}
	}
	return targets
}

// addIngressQdisc stands for another user of eth0's ingress hook.
func addIngressQdisc(t *testing.T, path, link string) {
	t.Helper()
	h := testHandle(t, path)
	if err := h.QdiscAdd(ingressQdisc(linkIndex(t, path, link))); err != nil {
		t.Fatalf("add ingress qdisc to %s: %v", link, err)
	}
}

func linkIndex(t *testing.T, path, name string) int {
	t.Helper()
	h := testHandle(t, path)
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// packetSocket opens an AF_PACKET socket bound to link in the namespace at path.
func packetSocket(t *testing.T, path, link string) int {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	index := linkIndex(t, path, link)
	var fd int
	err = inNamespace(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(testEtherType)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: index})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", link, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func testFrame(dst, src net.HardwareAddr, payload string) []byte {
	frame := append(append([]byte{}, dst...), src...)
	frame = binary.BigEndian.AppendUint16(frame, testEtherType)
	return append(frame, payload...)
}

// readTapFrame reads frames from the tap until one of the test EtherType arrives.
func readTapFrame(t *testing.T, tap *os.File) []byte {
	t.Helper()
	if err := tap.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	for {
		n, err := tap.Read(buf)
		if err != nil {
			t.Fatalf("read from tap: %v", err)
		}
		if n < virtioNetHdrLen+14 {
			continue
		}
		frame := buf[virtioNetHdrLen:n]
		if binary.BigEndian.Uint16(frame[12:14]) == testEtherType {
			return append([]byte{}, frame...)
		}
	}
}

func TestAttachDetach(t *testing.T) {
	n := newPodNetwork(t, 1400)
	before := namespaceState(t, n.podPath)

	tap, err := Attach(n.podPath, "eth0", "tap0_test")
	if err != nil {
		t.Fatal(err)
	}
	defer tap.File.Close()
	if tap.Name != "tap0_test" || tap.MTU != 1400 || !bytes.Equal(tap.GuestMAC, n.podMAC) {
		t.Errorf("tap %+v, want name tap0_test, MTU 1400, guest MAC %s", tap, n.podMAC)
	}
	eth0 := linkIndex(t, n.podPath, "eth0")
	if got := redirectTargets(t, n.podPath, "eth0"); !slices.Equal(got, []int{tap.Index}) {
		t.Errorf("eth0 redirects to %v, want [%d] (the tap)", got, tap.Index)
	}
	if got := redirectTargets(t, n.podPath, "tap0_test"); !slices.Equal(got, []int{eth0}) {
		t.Errorf("tap redirects to %v, want [%d] (eth0)", got, eth0)
	}
	var flags struct {
		Name  [unix.IFNAMSIZ]byte
		Flags uint16
		_     [22]byte
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, tap.File.Fd(), unix.TUNGETIFF, uintptr(unsafe.Pointer(&flags))); errno != 0 {
		t.Fatalf("TUNGETIFF: %v", errno)
	}
	if want := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR); flags.Flags&^unix.IFF_PERSIST != want {
		t.Errorf("tap flags %#x, want %#x (+IFF_PERSIST)", flags.Flags, want)
	}
	// The shim may inspect again after Attach (a restart): the tap, which
	// has no global address, must not make the namespace ambiguous.
	if iface, err := Inspect(n.podPath); err != nil || iface.Name != "eth0" {
		t.Errorf("Inspect after Attach = %+v, %v; want eth0", iface, err)
	}

	t.Run("veth to tap", func(t *testing.T) {
		peer := packetSocket(t, n.peerPath, "veth0")
		sent := testFrame(n.podMAC, n.peerMAC, "to the guest")
		if err := unix.Sendto(peer, sent, 0, &unix.SockaddrLinklayer{Ifindex: linkIndex(t, n.peerPath, "veth0"), Halen: 6}); err != nil {
			t.Fatal(err)
		}
		if got := readTapFrame(t, tap.File); !bytes.HasPrefix(got, sent) {
			t.Errorf("tap read %x, want %x", got, sent)
		}
	})
	t.Run("tap to veth", func(t *testing.T) {
		peer := packetSocket(t, n.peerPath, "veth0")
		sent := testFrame(n.peerMAC, tap.GuestMAC, "from the guest")
		if _, err := tap.File.Write(append(make([]byte, virtioNetHdrLen), sent...)); err != nil {
			t.Fatalf("write to tap: %v", err)
		}
		buf := make([]byte, 2048)
		got, _, err := unix.Recvfrom(peer, buf, 0)
		if err != nil {
			t.Fatalf("receive on veth0: %v", err)
		}
		if !bytes.HasPrefix(buf[:got], sent) {
			t.Errorf("veth0 received %x, want %x", buf[:got], sent)
		}
	})

	// The VM died: its tap fd is closed, the persistent tap stays.
	if err := tap.File.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Detach(n.podPath, tap.Name); err != nil {
		t.Fatal(err)
	}
	if after := namespaceState(t, n.podPath); !slices.Equal(before, after) {
		t.Errorf("namespace after Detach\n%s\nwant as before Attach\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if err := Detach(n.podPath, tap.Name); err != nil {
		t.Errorf("second Detach: %v", err)
	}
}

func TestDetachAfterTapVanished(t *testing.T) {
	n := newPodNetwork(t, 1500)
	before := namespaceState(t, n.podPath)
	tap, err := Attach(n.podPath, "eth0", "tap1")
	if err != nil {
		t.Fatal(err)
	}
	tap.File.Close()
	// Someone else deleted the tap: eth0's filter now points nowhere.
	netnstest.IP(t, "-n", n.pod, "link", "del", "tap1")
	if err := Detach(n.podPath, "tap1"); err != nil {
		t.Fatal(err)
	}
	if after := namespaceState(t, n.podPath); !slices.Equal(before, after) {
		t.Errorf("namespace after Detach\n%s\nwant\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
}

func TestDetachNamespaceGone(t *testing.T) {
	if err := Detach(filepath.Join(t.TempDir(), "gone"), "tap0"); err != nil {
		t.Errorf("Detach in a missing namespace: %v", err)
	}
}

func TestAttachErrors(t *testing.T) {
	n := newPodNetwork(t, 1500)
	// The tap's MTU cannot reach 65535 (65535 minus its Ethernet header is the
	// limit), so Attach fails after creating the tap and must remove it.
	huge := newPodNetwork(t, 65535)
	withIngress := newPodNetwork(t, 1500)
	netnstest.IP(t, "-n", withIngress.pod, "link", "add", "taken", "type", "veth", "peer", "name", "taken-peer")
	addIngressQdisc(t, withIngress.podPath, "eth0")
	_, loopbackOnly := netnstest.Named(t, "cvmtest-")

	for _, tc := range []struct {
		name, path, ifName, tap string
		want                    []string
	}{
		{"missing namespace", "/run/netns/cvmtest-missing", "eth0", "tap0", []string{"/run/netns/cvmtest-missing", "does not exist"}},
		{"loopback only", loopbackOnly, "eth0", "tap0", []string{loopbackOnly, "find interface eth0"}},
		{"tap name too long", n.podPath, "eth0", "tap-name-too-long", []string{"tap-name-too-long", "longer than 15"}},
		{"tap name with slash", n.podPath, "eth0", "tap/0", []string{"tap/0"}},
		{"tap name taken", withIngress.podPath, "eth0", "taken", []string{"taken", "exists already"}},
		{"ingress qdisc present", withIngress.podPath, "eth0", "tap0", []string{"ingress qdisc already"}},
		{"tap MTU refused", huge.podPath, "eth0", "tap0", []string{"set tap MTU to 65535"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before []string
			if _, err := os.Stat(tc.path); err == nil {
				before = namespaceState(t, tc.path)
			}
			tap, err := Attach(tc.path, tc.ifName, tc.tap)
			if err == nil {
				tap.File.Close()
				t.Fatalf("Attach = %+v, want an error", tap)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if before != nil {
				if after := namespaceState(t, tc.path); !slices.Equal(before, after) {
					t.Errorf("namespace after failed Attach\n%s\nwant\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
				}
			}
		})
	}
}

func TestInNamespaceReturns(t *testing.T) {
	_, path := netnstest.Named(t, "cvmtest-")
	target, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()

	var inside bool
	err = inNamespace(target, func() error {
		current, err := netns.Get()
		if err != nil {
			return err
		}
		defer current.Close()
		inside = current.Equal(target)
		return errors.New("fn failed")
	})
	if err == nil || err.Error() != "fn failed" {
		t.Errorf("inNamespace error %v, want fn's error", err)
	}
	if !inside {
		t.Error("fn did not run in the target namespace")
	}
	current, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer current.Close()
	if !current.Equal(orig) {
		t.Error("the calling thread changed namespace")
	}
}
