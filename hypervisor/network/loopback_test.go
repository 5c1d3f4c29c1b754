package network

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/contrast-vm/contrast/internal/netnstest"
)

// dialIn dials addr from inside the network namespace at path, as
// containerd's CRI dials a port-forward's localhost:<port>.
func dialIn(t *testing.T, path, addr string) (net.Conn, error) {
	t.Helper()
	ns, err := openNamespace(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var c net.Conn
	err = inNamespace(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	})
	return c, err
}

func hasLoopbackTable(t *testing.T, path string) bool {
	t.Helper()
	ns, err := openNamespace(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.ListTableOfFamily(loopbackTable, nftables.TableFamilyIPv4)
	if errors.Is(err, syscall.ENOENT) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func TestListenLoopbackRedirectsEveryPort(t *testing.T) {
	_, path := netnstest.Named(t, "cvmtest-")
	l, err := ListenLoopback(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if ip := l.Addr().(*net.TCPAddr).IP; !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("listener on %v, want 127.0.0.1 only", ip)
	}
	accepted := make(chan *net.TCPConn, 4)
	go func() {
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	listenPort := uint16(l.Addr().(*net.TCPAddr).Port)
	for _, port := range []uint16{8080, 1, 65535, listenPort} {
		c, err := dialIn(t, path, fmt.Sprintf("localhost:%d", port))
		if err != nil {
			t.Fatalf("dial localhost:%d in the namespace: %v", port, err)
		}
		got := <-accepted
		orig, err := OriginalPort(got)
		if err != nil || orig != port {
			t.Errorf("dialled port %d: OriginalPort %d, %v", port, orig, err)
		}
		// The bytes go through.
		c.Write([]byte("x"))
		b := make([]byte, 1)
		got.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := got.Read(b); err != nil || b[0] != 'x' {
			t.Errorf("port %d: read %q, %v", port, b, err)
		}
		c.Close()
		got.Close()
	}
	// The host's own loopback is not redirected.
	if c, err := net.DialTimeout("tcp4", l.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("the listener is reachable from the host's namespace")
	}

	if err := RemoveLoopbackRedirect(path); err != nil {
		t.Fatal(err)
	}
	if hasLoopbackTable(t, path) {
		t.Error("the nftables table is still there after RemoveLoopbackRedirect")
	}
	if c, err := dialIn(t, path, "127.0.0.1:8080"); err == nil {
		c.Close()
		t.Error("a connection is still redirected after RemoveLoopbackRedirect")
	}
	// Removing twice, or from a namespace that is gone, is no error.
	if err := RemoveLoopbackRedirect(path); err != nil {
		t.Errorf("second remove: %v", err)
	}
	if err := RemoveLoopbackRedirect(filepath.Join(t.TempDir(), "gone")); err != nil {
		t.Errorf("remove in a namespace that does not exist: %v", err)
	}
}

func TestListenLoopbackBringsLoUp(t *testing.T) {
	name, path := netnstest.Named(t, "cvmtest-")
	netnstest.IP(t, "-n", name, "link", "set", "lo", "down")
	l, err := ListenLoopback(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer RemoveLoopbackRedirect(path)
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := dialIn(t, path, "127.0.0.1:9000")
	if err != nil {
		t.Fatalf("dial in a namespace whose lo was down: %v", err)
	}
	c.Close()
}

func TestListenLoopbackBadNamespace(t *testing.T) {
	if _, err := ListenLoopback(filepath.Join(t.TempDir(), "nothing")); err == nil {
		t.Error("listen in a namespace that does not exist succeeded")
	}
}
