package shim

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/contrast-vm/contrast/policy"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// cniLikeNamespaces is what a bridge CNI plugin leaves, without the bridge:
// the pod's namespace holds eth0 (10.77.0.5/24, default route via .1) and
// the peer namespace the veth's other end with 10.77.0.1/24.
func cniLikeNamespaces(t *testing.T) (pod, podPath, peer string) {
	t.Helper()
	pod, podPath = netnstest.Named(t, "cshim-")
	peer, _ = netnstest.Named(t, "cshim-")
	netnstest.IP(t, "-n", pod, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "veth0", "netns", peer)
	netnstest.IP(t, "-n", peer, "addr", "add", "10.77.0.1/24", "dev", "veth0")
	netnstest.IP(t, "-n", peer, "link", "set", "veth0", "up")
	netnstest.IP(t, "-n", pod, "addr", "add", "10.77.0.5/24", "dev", "eth0")
	netnstest.IP(t, "-n", pod, "link", "set", "eth0", "up")
	netnstest.IP(t, "-n", pod, "route", "add", "default", "via", "10.77.0.1", "dev", "eth0")
	return pod, podPath, peer
}

// namespaceLinks lists a namespace's links and qdiscs, as `ip` shows them.
func namespaceLinks(t *testing.T, ns string) string {
	t.Helper()
	return netnstest.IP(t, "-n", ns, "-o", "link", "show") + netnstest.TC(t, "-n", ns, "qdisc", "show")
}

func bootWithNetwork(t *testing.T, cfg Config, id, netnsPath string) (*pod, error) {
	ctx := context.Background()
	hv, err := NewQEMU(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return bootPod(ctx, hv, cfg, podLaunch{
		Namespace: "test", ID: id, Hostname: "h-" + id, NetNS: netnsPath,
		Size:     vmSize{VCPUs: cfg.Hypervisor.VCPUs, MemoryMiB: cfg.Hypervisor.MemoryMiB},
		Initdata: testInitdata(t, policy.AllowAll()), PolicySource: "test",
	})
}

// TestBootPodNetwork boots a pod VM into a CNI-like namespace: the guest
// answers on the pod's address from the other end of the veth, and stopping
// the pod leaves the namespace as CNI made it.
func TestBootPodNetwork(t *testing.T) {
	pod, podPath, peer := cniLikeNamespaces(t)
	before := namespaceLinks(t, pod)
	cfg := testConfig(t)
	p, err := bootWithNetwork(t, cfg, "net", podPath)
	if err != nil {
		t.Fatal(err)
	}
	if during := namespaceLinks(t, pod); !strings.Contains(during, podTapName) || !strings.Contains(during, "ingress") {
		t.Errorf("while the VM runs, the namespace shows no tap %s with an ingress qdisc:\n%s", podTapName, during)
	}
	out, err := exec.Command("ip", "netns", "exec", peer, "busybox", "ping", "-c", "1", "-W", "10", "10.77.0.5").CombinedOutput()
	if err != nil {
		t.Errorf("ping the pod VM at 10.77.0.5 from the peer: %v\n%s", err, out)
	}
	if err := p.stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, cfg, "net")
	if after := namespaceLinks(t, pod); after != before {
		t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestBootPodNetworkErrors: a namespace the VM cannot join fails the boot
// before any VM starts, names the problem, and leaves the namespace as it was.
func TestBootPodNetworkErrors(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T) (ns, path string)
		want  string
	}{
		{"namespace missing", func(t *testing.T) (string, string) {
			return "", "/run/netns/cshim-does-not-exist"
		}, "network namespace /run/netns/cshim-does-not-exist does not exist"},
		{"not a namespace", func(t *testing.T) (string, string) {
			return "", t.TempDir()
		}, "is not a network namespace"},
		{"no usable interface", func(t *testing.T) (string, string) {
			ns, path := netnstest.Named(t, "cshim-")
			// (this kernel has no dummy links)
			netnstest.IP(t, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
			return ns, path
		}, "has no interface with an address besides loopback"},
		{"tap name taken", func(t *testing.T) (string, string) {
			ns, path, _ := cniLikeNamespaces(t)
			netnstest.IP(t, "-n", ns, "link", "add", podTapName, "type", "veth", "peer", "name", "taken1")
			return ns, path
		}, "a link named " + podTapName + " exists already"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns, path := c.setup(t)
			var before string
			if ns != "" {
				before = namespaceLinks(t, ns)
			}
			cfg := testConfig(t)
			id := strings.ReplaceAll(c.name, " ", "-")
			p, err := bootWithNetwork(t, cfg, id, path)
			if err == nil {
				p.stop(context.Background())
				t.Fatal("boot succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "network of pod "+id) {
				t.Errorf("error %q does not say %q for pod %s", err, c.want, id)
			}
			assertNothingLeft(t, cfg, id)
			if ns != "" {
				if after := namespaceLinks(t, ns); after != before {
					t.Errorf("the namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
				}
			}
		})
	}
}

func TestPodNetworkNamespace(t *testing.T) {
	withNS := func(nss ...specs.LinuxNamespace) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: nss}}
	}
	cases := []struct {
		name    string
		spec    *specs.Spec
		want    string
		wantErr string
	}{
		{"CNI namespace", withNS(specs.LinuxNamespace{Type: specs.PIDNamespace}, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/cni-1"}), "/run/netns/cni-1", ""},
		{"new empty namespace", withNS(specs.LinuxNamespace{Type: specs.NetworkNamespace}), "", ""},
		{"node's network", withNS(specs.LinuxNamespace{Type: specs.PIDNamespace}), "", "hostNetwork"},
		{"no linux section", &specs.Spec{}, "", "node's network namespace"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := podNetworkNamespace("p", c.spec)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
