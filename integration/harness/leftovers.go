package harness

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// cniCacheDir is libcni's default result cache; containerd does not let it
// be moved, so the files of this instance's network are told apart by name.
const cniCacheDir = "/var/lib/cni/results"

// objectDirs are the directories that gain one entry per pod, container,
// task or network namespace; a new entry that outlives its pod is a leak.
func (c *Containerd) objectDirs() []string {
	return []string{
		filepath.Join(c.State, "io.containerd.runtime.v2.task", "k8s.io"),
		// ctr's hand-made bundles run in the default namespace.
		filepath.Join(c.State, "io.containerd.runtime.v2.task", "default"),
		filepath.Join(c.RuncRoot, "default"),
		filepath.Join(c.Root, "io.containerd.grpc.v1.cri", "sandboxes"),
		filepath.Join(c.Root, "io.containerd.grpc.v1.cri", "containers"),
		filepath.Join(c.State, "io.containerd.grpc.v1.cri", "sandboxes"),
		filepath.Join(c.State, "io.containerd.grpc.v1.cri", "containers"),
		filepath.Join(c.State, "io.containerd.grpc.v1.cri", "netns"),
		filepath.Join(c.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots"),
		filepath.Join(c.RuncRoot, "k8s.io"),
		c.SocketDir,
		filepath.Join(c.ShimState, "k8s.io"),
		filepath.Join(c.ShimState, "default"),
		ShimSocketDir(c.ShimState),
		filepath.Join(c.Dir, "cni", "ipam", c.Network),
	}
}

// Snapshot is what an instance holds on the host at one moment.
type Snapshot struct {
	processes map[int]Process
	mounts    map[string]Mount
	paths     map[string]bool
	sockets   map[string]bool
	netdevs   map[string]bool
}

// socketDirs are where the instance's shims and VMs bind unix sockets.
func (c *Containerd) socketDirs() []string {
	dirs := []string{c.Dir, "/run/contrast"}
	if c.Version == Containerd17 {
		dirs = append(dirs, ShimSocketRoot)
	}
	return dirs
}

// unixSockets lists the bound unix sockets of the host's network
// namespace (/proc/net/unix) whose path lies under one of dirs.
func unixSockets(dirs ...string) (map[string]bool, error) {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil, fmt.Errorf("read /proc/net/unix: %w", err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue // unnamed socket
		}
		for _, d := range dirs {
			if within(f[7], d) {
				out[f[7]] = true
				break
			}
		}
	}
	return out, nil
}

// netdevs lists the host's network devices a pod can leave behind: tun
// and tap devices, and ports of the instance's bridge (veth ends).
func (c *Containerd) netdevs() map[string]bool {
	out := map[string]bool{}
	for _, p := range listDir("/sys/class/net") {
		if exists(filepath.Join(p, "tun_flags")) {
			out[p] = true
			continue
		}
		if m, err := os.Readlink(filepath.Join(p, "master")); err == nil && filepath.Base(m) == c.Bridge {
			out[p] = true
		}
	}
	return out
}

// Snapshot records the instance's processes, mounts and per-object state
// entries, to compare with NewSince later.
func (c *Containerd) Snapshot() (Snapshot, error) {
	s := Snapshot{processes: map[int]Process{}, mounts: map[string]Mount{}, paths: map[string]bool{}, netdevs: c.netdevs()}
	socks, err := unixSockets(c.socketDirs()...)
	if err != nil {
		return s, err
	}
	s.sockets = socks
	ps, err := c.InstanceProcesses()
	if err != nil {
		return s, err
	}
	for _, p := range ps {
		s.processes[p.PID] = p
	}
	ms, err := Mounts()
	if err != nil {
		return s, err
	}
	for _, m := range ms {
		if within(m.Point, c.Dir) {
			s.mounts[m.Point] = m
		}
	}
	dirs := c.objectDirs()
	if c.Version == Containerd17 {
		// Shared by every 1.7 instance on the host; only this harness's
		// tests run 1.7, one at a time.
		dirs = append(dirs, ShimSocketRoot)
	}
	for _, d := range dirs {
		for _, p := range listDir(d) {
			s.paths[p] = true
		}
	}
	// Pod and container cgroups, in every hierarchy.
	if roots, err := cgroupRoots(); err == nil {
		for _, r := range roots {
			for _, p := range listDir(filepath.Join(r, c.CgroupParent)) {
				if st, err := os.Stat(p); err == nil && st.IsDir() {
					s.paths[p] = true
				}
			}
		}
	}
	for _, p := range listDir(cniCacheDir) {
		if strings.HasPrefix(filepath.Base(p), c.Network+"-") {
			s.paths[p] = true
		}
	}
	return s, nil
}

// ignoredPath are state entries that persist by design once created.
func ignoredPath(p string) bool {
	base := filepath.Base(p)
	return strings.HasPrefix(base, "last_reserved_ip") || base == "lock" ||
		// The shim's per-namespace parent directories stay, like containerd's.
		base == "k8s.io" || base == "default"
}

// NewSince returns what the instance holds now that it did not hold at
// before: the leftovers of whatever ran in between.
func (c *Containerd) NewSince(before Snapshot) (Leftovers, error) {
	now, err := c.Snapshot()
	if err != nil {
		return Leftovers{}, err
	}
	var l Leftovers
	for pid, p := range now.processes {
		if b, ok := before.processes[pid]; !ok || b.Start != p.Start {
			l.Processes = append(l.Processes, p)
		}
	}
	for pt, m := range now.mounts {
		if _, ok := before.mounts[pt]; !ok {
			l.Mounts = append(l.Mounts, m)
		}
	}
	for p := range now.paths {
		if !before.paths[p] && !ignoredPath(p) {
			l.Paths = append(l.Paths, p)
		}
	}
	for p := range now.sockets {
		if !before.sockets[p] {
			l.Sockets = append(l.Sockets, p)
		}
	}
	for p := range now.netdevs {
		if !before.netdevs[p] {
			l.Netdevs = append(l.Netdevs, filepath.Base(p))
		}
	}
	l.sort()
	return l, nil
}

func (l *Leftovers) sort() {
	sort.Slice(l.Processes, func(i, j int) bool { return l.Processes[i].PID < l.Processes[j].PID })
	sort.Slice(l.Mounts, func(i, j int) bool { return l.Mounts[i].Point < l.Mounts[j].Point })
	sort.Strings(l.Paths)
	sort.Strings(l.Sockets)
	sort.Strings(l.Netdevs)
}

// PodTrace is what a running pod holds on the host, recorded while it
// runs so that its removal can be checked against it.
type PodTrace struct {
	IDs []string // the pod id and its containers' ids
	// Processes are the shim, the VM monitor, device backends and
	// container processes: every process naming one of IDs, with
	// descendants.
	Processes []Process
	Mounts    []Mount
}

// TracePod records the processes and mounts of a running pod.
func (c *Containerd) TracePod(podID string, containerIDs ...string) (PodTrace, error) {
	ids := append([]string{podID}, containerIDs...)
	ps, err := Processes()
	if err != nil {
		return PodTrace{}, err
	}
	t := PodTrace{IDs: ids, Processes: matching(ps, ids, c.isClient)}
	ms, err := Mounts()
	if err != nil {
		return PodTrace{}, err
	}
	t.Mounts = mountsNaming(ms, ids)
	return t, nil
}

// isClient tells the harness's own crictl and ctr calls apart from the
// processes of a pod (they name its ids too).
func (c *Containerd) isClient(p Process) bool {
	return strings.HasPrefix(p.Cmdline, c.tools.Crictl) || strings.HasPrefix(p.Cmdline, c.tools.Ctr)
}

func mountsNaming(ms []Mount, ids []string) []Mount {
	var out []Mount
	for _, m := range ms {
		for _, id := range ids {
			if strings.Contains(m.Point, id) || strings.Contains(m.Source, id) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// PodLeftovers returns what remains of a pod: any traced process still
// alive, any process or mount naming its ids, and any file or directory
// named after them under the instance's directory, the shim state
// directory the contrast default uses, and the CNI cache.
func (c *Containerd) PodLeftovers(t PodTrace) (Leftovers, error) {
	var l Leftovers
	seen := map[int]bool{}
	for _, p := range t.Processes {
		if p.Alive() {
			l.Processes = append(l.Processes, p)
			seen[p.PID] = true
		}
	}
	ps, err := Processes()
	if err != nil {
		return l, err
	}
	for _, p := range matching(ps, t.IDs, c.isClient) {
		if !seen[p.PID] {
			l.Processes = append(l.Processes, p)
		}
	}
	ms, err := Mounts()
	if err != nil {
		return l, err
	}
	l.Mounts = mountsNaming(ms, t.IDs)
	socks, err := unixSockets("/")
	if err != nil {
		return l, err
	}
	for p := range socks {
		for _, id := range t.IDs {
			if strings.Contains(p, id) {
				l.Sockets = append(l.Sockets, p)
				break
			}
		}
	}
	for _, id := range t.IDs {
		if p := c.ShimSocket("k8s.io", id); p != "" && exists(p) {
			l.Paths = append(l.Paths, p)
		}
	}
	walkRoots := []string{c.Dir, "/run/contrast", cniCacheDir}
	cgRoots, err := cgroupRoots()
	if err != nil {
		return l, err
	}
	for _, r := range cgRoots {
		walkRoots = append(walkRoots, filepath.Join(r, c.CgroupParent))
	}
	for _, root := range walkRoots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // vanished meanwhile, or root absent
			}
			for _, id := range t.IDs {
				if strings.Contains(d.Name(), id) {
					l.Paths = append(l.Paths, path)
					if d.IsDir() {
						return filepath.SkipDir
					}
					break
				}
			}
			return nil
		})
		if err != nil {
			return l, fmt.Errorf("walk %s: %w", root, err)
		}
	}
	l.sort()
	return l, nil
}
