// Package netnstest makes throwaway network namespaces for tests that need
// real kernel objects (links, addresses, routes, tc). Only tests import it.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot fails the test unless it runs as root, as `make test` does.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root to create network namespaces (make test runs as root)")
	}
}

// New makes an anonymous network namespace of the test's own and returns a
// netlink handle in it; the namespace goes when the test ends.
func New(t testing.TB) *netlink.Handle {
	t.Helper()
	requireRoot(t)
	// netns.New moves the calling thread into the new namespace: move it
	// back before another goroutine can run on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		ns.Close()
		t.Fatalf("back to the original network namespace: %v", err)
	}
	handle, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink in the test namespace: %v", err)
	}
	t.Cleanup(func() {
		handle.Close()
		ns.Close() // the last reference: the kernel removes the namespace
	})
	return handle
}

// Named makes a named network namespace (`ip netns add`, mounted under
// /run/netns) with loopback up, as CNI runtimes make them, and returns its
// name and path; it is deleted when the test ends.
func Named(t testing.TB, prefix string) (name, path string) {
	t.Helper()
	requireRoot(t)
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	name = prefix + hex.EncodeToString(suffix)
	IP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	IP(t, "-n", name, "link", "set", "lo", "up")
	return name, filepath.Join("/run/netns", name)
}

// IP runs the ip command (iproute2) and returns its output.
func IP(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", args...)
}

// TC runs the tc command (iproute2) and returns its output.
func TC(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "tc", args...)
}

func run(t testing.TB, tool string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("needs the %s command: apt install iproute2 (hack/deps.sh installs it)", tool)
	}
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}
