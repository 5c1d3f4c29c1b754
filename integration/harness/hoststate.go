package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// hostPaths are the places outside its directory a Kubernetes node (the
// kubelet, the controller manager, kine, libcni) or the node installer
// writes to by default: a run must leave each as it found it. (The
// shim's default state and layer directories, /run/contrast and
// /var/cache/contrast, are left out: other tests on the same host use
// them; the test node's runtime configuration points both elsewhere.)
var hostPaths = []string{
	"/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/var/lib/cni/results",
	"/etc/kubernetes", "/var/run/kubernetes", "/usr/libexec/kubernetes",
	"/opt/contrast", "/etc/containerd",
}

// instanceDir matches the directories of harness instances (this run's and
// other tests' running beside it on the same host).
var instanceDir = regexp.MustCompile(`^/tmp/c[0-9a-f]{6}(/|$)`)

// HostState is what a Kubernetes node could change on the host, outside
// harness instance directories: mounts, network links, iptables rules
// naming Kubernetes or CNI, the entries of hostPaths, kubelet sysctls.
type HostState struct {
	Mounts   map[string]bool
	Links    map[string]bool
	IPTables map[string]bool
	Paths    map[string]bool
	Sysctls  map[string]string
}

// ReadHostState records the host's state now.
func ReadHostState() (HostState, error) {
	s := HostState{Mounts: map[string]bool{}, Links: map[string]bool{}, IPTables: map[string]bool{}, Paths: map[string]bool{}, Sysctls: map[string]string{}}
	ms, err := Mounts()
	if err != nil {
		return s, err
	}
	for _, m := range ms {
		if !instanceDir.MatchString(m.Point) {
			s.Mounts[m.String()] = true
		}
	}
	for _, p := range listDir("/sys/class/net") {
		s.Links[filepath.Base(p)] = true
	}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); err == nil {
			s.Paths[p] = true
		}
		for _, e := range listDir(p) {
			s.Paths[e] = true
		}
	}
	for p := range kubeletTunables {
		b, err := os.ReadFile(filepath.Join("/proc/sys", p))
		if err != nil {
			return s, fmt.Errorf("read sysctl %s: %w", p, err)
		}
		s.Sysctls[p] = strings.TrimSpace(string(b))
	}
	if ipt, err := exec.LookPath("iptables-save"); err == nil {
		out, err := exec.Command(ipt).Output()
		if err != nil {
			return s, fmt.Errorf("iptables-save: %w", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "KUBE") || strings.Contains(l, "CNI") {
				s.IPTables[l] = true
			}
		}
	}
	return s, nil
}

// ChangedSince lists, one line each, what differs from before. Other
// tests run on the same host: what belongs to another harness instance
// (instance is this run's number, the hex digits of its directory name)
// is left out: network links (bridges, veths, taps) not named by
// instance, network namespaces of other instances' pods under /run/netns,
// libcni results of other instances' networks.
func (s HostState) ChangedSince(before HostState, instance string) []string {
	var out []string
	diff := func(what string, now, was map[string]bool, ignore func(string) bool) {
		for k := range now {
			if !was[k] && !ignore(k) {
				out = append(out, fmt.Sprintf("new %s: %s", what, k))
			}
		}
		for k := range was {
			if !now[k] && !ignore(k) {
				out = append(out, fmt.Sprintf("gone %s: %s", what, k))
			}
		}
	}
	none := func(string) bool { return false }
	diff("mount", s.Mounts, before.Mounts, func(m string) bool {
		return strings.Contains(m, " on /run/netns/") && !strings.Contains(m, instance)
	})
	diff("network link", s.Links, before.Links, func(l string) bool {
		if strings.Contains(l, instance) {
			return false
		}
		for _, p := range []string{"cb", "kn", "veth", "tap", "vm"} {
			if strings.HasPrefix(l, p) {
				return true
			}
		}
		return false
	})
	diff("iptables rule", s.IPTables, before.IPTables, none)
	others := map[string]bool{}
	for _, ps := range []map[string]bool{s.Paths, before.Paths} {
		for p := range ps {
			if m := cniResult.FindStringSubmatch(filepath.Base(p)); m != nil && m[1] != instance {
				others[m[2]] = true
			}
		}
	}
	diff("path", s.Paths, before.Paths, func(p string) bool {
		if filepath.Dir(p) != cniCacheDir {
			return false
		}
		if m := cniResult.FindStringSubmatch(filepath.Base(p)); m != nil {
			return m[1] != instance
		}
		if m := cniLoopback.FindStringSubmatch(filepath.Base(p)); m != nil {
			return others[m[1]]
		}
		return false
	})
	for k, v := range s.Sysctls {
		if before.Sysctls[k] != v {
			out = append(out, fmt.Sprintf("sysctl %s: %s, was %s", k, v, before.Sysctls[k]))
		}
	}
	sort.Strings(out)
	return out
}

// libcni's result files of harness networks (c-<instance>-<sandbox>-<if>)
// and of containerd's loopback network (cni-loopback-<sandbox>-lo).
var (
	cniResult   = regexp.MustCompile(`^c-([0-9a-f]{6})-([0-9a-f]+)-`)
	cniLoopback = regexp.MustCompile(`^cni-loopback-([0-9a-f]+)-lo$`)
)
