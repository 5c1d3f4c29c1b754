package integration

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestNetwork runs pods on the instance's bridge CNI network: a pod gets its
// CNI address (in the VM, for contrast), serves HTTP to the host and to
// another pod, resolves names through the DNS server its CRI config names,
// and after removal the sandbox's namespace holds nothing of ours.
func TestNetwork(t *testing.T) {
	matrix(t, func(t *testing.T, s *suite, handler string) { s.network(t, handler) })
}

// testDomain is the search domain the pods get; testDNSAnswer is what the
// test's DNS server answers for every A query in it.
const testDomain = "contrast.test"

var testDNSAnswer = [4]byte{192, 0, 2, 42}

func (s *suite) network(t *testing.T, handler string) {
	before := s.snapshot(t)
	dns := &harness.DNSConfig{Servers: []string{s.c.Gateway}, Searches: []string{testDomain}, Options: []string{"ndots:1"}}
	web := s.runPodWith(t, harness.PodConfig{Name: "web", Handler: handler, DNS: dns})
	// CNI has created the bridge with the gateway address: the DNS server
	// can listen there now.
	served := serveDNS(t, s.c.Gateway)
	webStatus, err := s.cri.InspectPod(s.ctx, web.ID)
	if err != nil {
		t.Fatalf("inspectp web: %v", err)
	}
	if net.ParseIP(webStatus.IP) == nil || webStatus.NetNS == "" {
		t.Fatalf("pod web has IP %q and network namespace %q; want both from CNI", webStatus.IP, webStatus.NetNS)
	}
	probe := holdNetNS(t, webStatus.NetNS)
	httpd := s.startContainer(t, web, "httpd", "sh", "-c",
		"mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www")

	// The address CNI gave the pod is the container's (in the VM's kernel).
	r, err := s.cri.Exec(s.ctx, httpd.ID, false, "ip", "-o", "addr", "show")
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("ip addr in web: exit %d %v %s", r.ExitCode, err, r.Stderr)
	}
	if !strings.Contains(r.Stdout, " "+webStatus.IP+"/24 ") {
		t.Errorf("ip addr in the container does not show the pod IP %s/24:\n%s", webStatus.IP, r.Stdout)
	}
	if handler == contrastHandler {
		if !probe.hasTap() {
			t.Errorf("sandbox namespace %s has no tap device while the pod VM runs: links %v", webStatus.NetNS, probe.linkNames())
		}
	}

	// Host to pod: HTTP on the pod IP.
	url := "http://" + net.JoinHostPort(webStatus.IP, "8080") + "/"
	body, err := harness.HTTPGet(s.ctx, url, time.Minute)
	if err != nil {
		t.Fatalf("GET %s from the host: %v", url, err)
	}
	if strings.TrimSpace(body) != "hello from web" {
		t.Errorf("GET %s from the host: %q, want %q", url, body, "hello from web")
	}

	// Pod to pod.
	client := s.runPodWith(t, harness.PodConfig{Name: "client", Handler: handler, DNS: dns})
	clientStatus, err := s.cri.InspectPod(s.ctx, client.ID)
	if err != nil {
		t.Fatalf("inspectp client: %v", err)
	}
	if clientStatus.IP == webStatus.IP {
		t.Fatalf("both pods have IP %s", webStatus.IP)
	}
	sleeper := s.startContainer(t, client, "sleeper", "sleep", "100000")
	// (busybox's nc: its static wget crashes without the NSS libraries)
	r, err = s.cri.Exec(s.ctx, sleeper.ID, false, "sh", "-c",
		fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 %s 8080`, webStatus.IP))
	if err != nil || r.ExitCode != 0 || !strings.HasSuffix(r.Stdout, "\r\n\r\nhello from web\n") {
		t.Errorf("GET %s from pod client: exit %d, %q, stderr %q, %v", url, r.ExitCode, r.Stdout, r.Stderr, err)
	}

	// Names resolve through the resolv.conf CRI wrote from the pod's DNS
	// config, and the query reaches the test's server over the pod network.
	r, err = s.cri.Exec(s.ctx, sleeper.ID, false, "cat", "/etc/resolv.conf")
	if err != nil || !strings.Contains(r.Stdout, "nameserver "+s.c.Gateway) || !strings.Contains(r.Stdout, "search "+testDomain) {
		t.Errorf("resolv.conf in pod client: %q %v; want nameserver %s and search %s", r.Stdout, err, s.c.Gateway, testDomain)
	}
	r, err = s.cri.Exec(s.ctx, sleeper.ID, false, "nslookup", "web")
	want := net.IP(testDNSAnswer[:]).String()
	if err != nil || r.ExitCode != 0 || !strings.Contains(r.Stdout, want) {
		t.Errorf("nslookup web in pod client: exit %d, %q, stderr %q, %v; want address %s", r.ExitCode, r.Stdout, r.Stderr, err, want)
	}
	if q := served(); !containsAny(strings.Join(q, " "), "web."+testDomain+".") {
		t.Errorf("the DNS server at %s saw the queries %q, none for web.%s", s.c.Gateway, q, testDomain)
	}

	traceWeb := s.trace(t, web, httpd)
	traceClient := s.trace(t, client, sleeper)
	s.removeContainer(t, httpd)
	s.removeContainer(t, sleeper)
	s.removePod(t, client, traceClient, nil)
	s.removePod(t, web, traceWeb, before)
	probe.expectClean(t)
}

// netnsProbe holds a sandbox's network namespace open, so that it can be
// inspected after CRI removed the pod and unmounted it.
type netnsProbe struct {
	path   string
	ns     netns.NsHandle
	handle *netlink.Handle
}

// holdPodNetNS holds the network namespace of a running pod.
func (s *suite) holdPodNetNS(t testing.TB, pod *harness.Pod) *netnsProbe {
	t.Helper()
	st, err := s.cri.InspectPod(s.ctx, pod.ID)
	if err != nil {
		t.Fatalf("inspectp %s: %v", pod.Config.Name, err)
	}
	if st.NetNS == "" {
		t.Fatalf("pod %s has no network namespace of its own", pod.Config.Name)
	}
	return holdNetNS(t, st.NetNS)
}

func holdNetNS(t testing.TB, path string) *netnsProbe {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", path, err)
	}
	handle, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink in %s: %v", path, err)
	}
	p := &netnsProbe{path: path, ns: ns, handle: handle}
	t.Cleanup(func() {
		handle.Close()
		ns.Close()
	})
	return p
}

func (p *netnsProbe) links() []netlink.Link {
	links, err := p.handle.LinkList()
	if err != nil {
		return nil
	}
	return links
}

func (p *netnsProbe) linkNames() []string {
	var names []string
	for _, l := range p.links() {
		names = append(names, l.Attrs().Name+"("+l.Type()+")")
	}
	return names
}

func (p *netnsProbe) hasTap() bool {
	for _, l := range p.links() {
		if l.Type() == "tuntap" {
			return true
		}
	}
	return false
}

// expectClean checks that the namespace holds no tap device, no ingress
// qdisc and no link but loopback: CNI removed its interface, the shim
// everything it added.
func (p *netnsProbe) expectClean(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, l := range p.links() {
			if l.Attrs().Name != "lo" {
				left = append(left, "link "+l.Attrs().Name+" ("+l.Type()+")")
			}
			qdiscs, _ := p.handle.QdiscList(l)
			for _, q := range qdiscs {
				if q.Type() == "ingress" {
					left = append(left, "ingress qdisc on "+l.Attrs().Name)
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("network namespace %s still holds after the pod was removed: %s", p.path, strings.Join(left, ", "))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// serveDNS answers every A query under testDomain with testDNSAnswer on
// addr:53/udp until the test ends, and NXDOMAIN for other names. The
// returned function lists the names asked so far.
func serveDNS(t testing.TB, addr string) func() []string {
	t.Helper()
	conn, err := net.ListenPacket("udp", net.JoinHostPort(addr, "53"))
	if err != nil {
		t.Fatalf("DNS server on %s: %v", addr, err)
	}
	asked := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			reply, name, err := dnsReply(buf[:n])
			if err != nil {
				continue
			}
			select {
			case asked <- name:
			default:
			}
			_, _ = conn.WriteTo(reply, from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	var names []string
	return func() []string {
		for {
			select {
			case n := <-asked:
				names = append(names, n)
			default:
				return names
			}
		}
	}
}

// dnsReply answers one query; it also returns the name asked.
func dnsReply(query []byte) ([]byte, string, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, "", err
	}
	q, err := p.Question()
	if err != nil {
		return nil, "", err
	}
	name := q.Name.String()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	inDomain := strings.HasSuffix(strings.ToLower(name), "."+testDomain+".")
	if !inDomain {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, "", err
	}
	if err := b.Question(q); err != nil {
		return nil, "", err
	}
	if inDomain && q.Type == dnsmessage.TypeA {
		if err := b.StartAnswers(); err != nil {
			return nil, "", err
		}
		if err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: testDNSAnswer}); err != nil {
			return nil, "", err
		}
	}
	reply, err := b.Finish()
	if err != nil {
		return nil, "", errors.Join(errors.New("build DNS reply"), err)
	}
	return reply, name, nil
}

// TestHostNetworkRefused: a pod in the node's network namespace cannot be a
// pod VM; runp fails, naming hostNetwork, and leaves nothing behind.
func TestHostNetworkRefused(t *testing.T) {
	versions(t, func(t *testing.T, v harness.Version) {
		s := newSuiteVersion(t, v, handlerSpec{name: contrastHandler})
		for _, c := range []struct {
			name string
			pod  harness.PodConfig
			want []string
		}{
			{"hostNetwork", harness.PodConfig{Name: "hostnet", HostNetwork: true}, []string{"hostNetwork", "node's network namespace"}},
			{"hostIPC", harness.PodConfig{Name: "hostipc", HostIPC: true}, []string{"hostIPC", "node's IPC namespace"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				before := s.snapshot(t)
				c.pod.Handler = contrastHandler
				_, err := s.cri.RunPod(s.ctx, c.pod)
				if err == nil {
					t.Fatalf("runp of a %s pod succeeded; want it refused", c.name)
				}
				for _, w := range c.want {
					if msg := cmdErrText(err); !strings.Contains(msg, w) {
						t.Errorf("runp error does not say %q: %s", w, msg)
					}
				}
				s.expectNoLeftovers(t, "refused "+c.name+" pod", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
			})
		}
	})
}
