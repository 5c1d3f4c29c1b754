package shim

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// cniNamespace is a network namespace as CNI's bridge plugin leaves it:
// lo up, eth0 with an address and a default route, its peer elsewhere.
func cniNamespace(t *testing.T) (name, path string) {
	t.Helper()
	name, path = netnstest.Named(t, "cvmshim-")
	peer, _ := netnstest.Named(t, "cvmshim-")
	netnstest.IP(t, "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", peer)
	netnstest.IP(t, "-n", peer, "addr", "add", "10.88.0.1/16", "dev", "veth0")
	netnstest.IP(t, "-n", peer, "link", "set", "veth0", "up")
	netnstest.IP(t, "-n", name, "addr", "add", "10.88.0.5/16", "dev", "eth0")
	netnstest.IP(t, "-n", name, "link", "set", "eth0", "up")
	netnstest.IP(t, "-n", name, "route", "add", "default", "via", "10.88.0.1")
	return name, path
}

// dialInNamespace dials addr from inside the namespace at path, as
// containerd's CRI dials localhost:<port> for a port-forward.
func dialInNamespace(t *testing.T, path, addr string) (net.Conn, error) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		// This goroutine's thread is left in the namespace and, still
		// locked when the goroutine ends, discarded by the runtime.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			res <- result{nil, fmt.Errorf("enter %s: %w", path, err)}
			return
		}
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		res <- result{c, err}
	}()
	r := <-res
	return r.c, r.err
}

// upperEcho serves, on the host's 127.0.0.1 (the agent VM's "pod
// loopback": its agent is a host process), one answer per connection:
// what the client sent, in upper case, after the client's EOF.
func upperEcho(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(bytes.ToUpper(b))
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPortForward: a connection containerd's CRI opens to localhost:<port>
// in the sandbox's namespace reaches that port through the real agent,
// which the policy (allow-all here) lets connect; the pod's stop leaves
// nothing in the namespace.
func TestPortForward(t *testing.T) {
	e := newTaskEnv(t)
	name, path := cniNamespace(t)
	port := upperEcho(t)
	e.startSandboxWith("pod", path, nil)

	for i := range 3 {
		c, err := dialInNamespace(t, path, fmt.Sprintf("localhost:%d", port))
		if err != nil {
			t.Fatalf("dial localhost:%d in the sandbox's namespace: %v", port, err)
		}
		msg := fmt.Sprintf("forwarded %d", i)
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != strings.ToUpper(msg) {
			t.Fatalf("through the forward: %q, %v; want %q", got, err, strings.ToUpper(msg))
		}
	}
	if n := e.guestCalls("PortForward"); n != 3 {
		t.Errorf("the agent judged %d port forwards, want 3", n)
	}

	// Nothing listens on the port: the connection is reset, not left open.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c, err := dialInNamespace(t, path, fmt.Sprintf("127.0.0.1:%d", closed))
	if err == nil {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, rerr := c.Read(make([]byte, 1))
		c.Close()
		if n != 0 || rerr == nil || rerr == io.EOF {
			t.Errorf("forward to a closed port: read %d, %v; want a reset", n, rerr)
		}
	}

	if err := e.s.stopPod(e.ctx); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.IP(t, "-n", name, "link", "show"); strings.Contains(out, podTapName) {
		t.Errorf("tap left after the pod's stop: %s", out)
	}
	if c, err := dialInNamespace(t, path, fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.Close()
		t.Error("loopback connections are still redirected after the pod's stop")
	}
}
