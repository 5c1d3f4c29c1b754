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
// kubelet, the controller manager, kine, libcni) or a contrast runtime
// writes to by default: a run must leave each as it found it.
var hostPaths = []string{
	"/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/var/lib/cni/results",
	"/etc/kubernetes", "/var/run/kubernetes", "/usr/libexec/kubernetes",
	"/run/contrast", "/var/cache/contrast", "/opt/contrast", "/etc/containerd",
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

// ChangedSince lists, one line each, what differs from before; links
// named by ignoreLink (other instances' bridges, veths and taps) are left
// out.
func (s HostState) ChangedSince(before HostState, ignoreLink func(string) bool) []string {
	var out []string
	diff := func(what string, now, was map[string]bool) {
		for k := range now {
			if !was[k] {
				out = append(out, fmt.Sprintf("new %s: %s", what, k))
			}
		}
		for k := range was {
			if !now[k] {
				out = append(out, fmt.Sprintf("gone %s: %s", what, k))
			}
		}
	}
	diff("mount", s.Mounts, before.Mounts)
	links, wasLinks := map[string]bool{}, map[string]bool{}
	for l := range s.Links {
		if ignoreLink == nil || !ignoreLink(l) {
			links[l] = true
		}
	}
	for l := range before.Links {
		if ignoreLink == nil || !ignoreLink(l) {
			wasLinks[l] = true
		}
	}
	diff("network link", links, wasLinks)
	diff("iptables rule", s.IPTables, before.IPTables)
	diff("path", s.Paths, before.Paths)
	for k, v := range s.Sysctls {
		if before.Sysctls[k] != v {
			out = append(out, fmt.Sprintf("sysctl %s: %s, was %s", k, v, before.Sysctls[k]))
		}
	}
	sort.Strings(out)
	return out
}
