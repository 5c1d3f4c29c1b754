package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a host process as /proc shows it.
type Process struct {
	PID  int
	PPID int
	// Start is the start time in clock ticks since boot; with PID it
	// identifies a process across PID reuse.
	Start   uint64
	Cmdline string
}

func (p Process) String() string {
	cmd := p.Cmdline
	// A VM monitor's command line runs to kilobytes; its head says enough.
	if len(cmd) > 300 {
		cmd = cmd[:300] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", p.PID, cmd)
}

// Processes lists every process on the host. Processes that exit while
// /proc is read are left out.
func Processes() ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var ps []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProcess(pid)
		if err != nil {
			continue // exited meanwhile
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ProcessOf is the running process pid.
func ProcessOf(pid int) (Process, error) {
	p, err := readProcess(pid)
	if err != nil {
		return Process{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return p, nil
}

func readProcess(pid int) (Process, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Process{}, err
	}
	// comm may contain spaces and parentheses: the fields after it start
	// after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return Process{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return Process{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return Process{}, err
	}
	cmdline := strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	if cmdline == "" {
		// Kernel threads and zombies have no command line.
		if j := bytes.IndexByte(stat, '('); j >= 0 {
			cmdline = "[" + string(stat[j+1:i]) + "]"
		}
	}
	return Process{PID: pid, PPID: ppid, Start: start, Cmdline: cmdline}, nil
}

// Alive tells whether p (same PID, same start time) still exists and is
// not a zombie.
func (p Process) Alive() bool {
	q, err := readProcess(p.PID)
	if err != nil || q.Start != p.Start {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i < 0 || i+2 >= len(st) || st[i+2] != 'Z'
}

// Memory is what a process holds in memory, in KiB: its resident set
// (RSS) and its proportional share of it (PSS), which splits each page
// among the processes that map it (a pod's guest RAM is mapped by QEMU
// and by the shim's vsock backend).
type Memory struct {
	RSS, PSS int64
}

// MemoryOf reads a process's RSS and PSS from /proc/<pid>/smaps_rollup.
func MemoryOf(pid int) (Memory, error) {
	text, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	var m Memory
	var seen int
	for _, line := range strings.Split(string(text), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || (key != "Rss" && key != "Pss") {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("memory of pid %d: %q: %w", pid, line, err)
		}
		if key == "Rss" {
			m.RSS = kib
		} else {
			m.PSS = kib
		}
		seen++
	}
	if seen != 2 {
		return Memory{}, fmt.Errorf("memory of pid %d: smaps_rollup has no Rss and Pss", pid)
	}
	return m, nil
}

// CPUTime is the CPU time (user and system, all threads) a process has
// used so far.
func CPUTime(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time of pid %d: %w", pid, err)
	}
	// comm may hold spaces: utime and stime are the 12th and 13th fields
	// after its closing parenthesis.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("CPU time of pid %d: malformed stat %q", pid, stat)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("CPU time of pid %d: malformed stat %q", pid, stat)
		}
		ticks += n
	}
	// The unit is USER_HZ, which Linux fixes at 100.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// matching returns the processes whose command line contains any of
// needles, plus all their descendants (a VM monitor or device backend a
// shim started need not name the pod), except the calling process.
func matching(ps []Process, needles []string, exclude func(Process) bool) []Process {
	children := map[int][]Process{}
	for _, p := range ps {
		children[p.PPID] = append(children[p.PPID], p)
	}
	seen := map[int]bool{}
	var out []Process
	var add func(p Process)
	add = func(p Process) {
		if seen[p.PID] || p.PID == os.Getpid() {
			return
		}
		seen[p.PID] = true
		out = append(out, p)
		for _, c := range children[p.PID] {
			add(c)
		}
	}
	for _, p := range ps {
		if exclude != nil && exclude(p) {
			continue
		}
		for _, n := range needles {
			if n != "" && strings.Contains(p.Cmdline, n) {
				add(p)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Point  string
	Source string
	FSType string
}

func (m Mount) String() string { return fmt.Sprintf("%s on %s (%s)", m.Source, m.Point, m.FSType) }

// Mounts lists the mounts of the calling process's mount namespace.
func Mounts() ([]Mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var ms []Mount
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		// Optional fields end with "-"; fstype and source follow.
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		ms = append(ms, Mount{Point: unescapeMount(f[4]), FSType: f[sep+1], Source: unescapeMount(f[sep+2])})
	}
	return ms, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Leftovers is what remains on the host of something that should be gone.
type Leftovers struct {
	Processes []Process
	Mounts    []Mount
	Paths     []string
	// Sockets are bound unix sockets (from /proc/net/unix: a socket
	// still listening, whether or not its file remains).
	Sockets []string
	// Netdevs are host network devices: tun/tap devices and ports of the
	// instance's bridge.
	Netdevs []string
}

// Empty tells whether nothing is left.
func (l Leftovers) Empty() bool {
	return len(l.Processes) == 0 && len(l.Mounts) == 0 && len(l.Paths) == 0 &&
		len(l.Sockets) == 0 && len(l.Netdevs) == 0
}

func (l Leftovers) String() string {
	var b strings.Builder
	for _, p := range l.Processes {
		fmt.Fprintf(&b, "process: %s\n", p)
	}
	for _, m := range l.Mounts {
		fmt.Fprintf(&b, "mount: %s\n", m)
	}
	for _, p := range l.Paths {
		fmt.Fprintf(&b, "path: %s\n", p)
	}
	for _, p := range l.Sockets {
		fmt.Fprintf(&b, "socket: %s\n", p)
	}
	for _, p := range l.Netdevs {
		fmt.Fprintf(&b, "network device: %s\n", p)
	}
	return b.String()
}

// killProcesses sends SIGKILL to each process still alive and waits up to
// timeout for them to go; it returns those that did not.
func killProcesses(ps []Process, timeout time.Duration) []Process {
	for _, p := range ps {
		if p.Alive() {
			_ = syscall.Kill(p.PID, syscall.SIGKILL) // gone already is fine
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		var alive []Process
		for _, p := range ps {
			if p.Alive() {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	ms, err := Mounts()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range ms {
		if within(m.Point, dir) {
			points = append(points, m.Point)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []string
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
			errs = append(errs, fmt.Sprintf("%s: %v", p, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("unmount under %s: %s", dir, strings.Join(errs, "; "))
	}
	return nil
}

func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// listDir returns the absolute paths of dir's entries (none if dir does
// not exist).
func listDir(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, filepath.Join(dir, e.Name()))
	}
	return out
}

// cgroupRoots are the mount points of the cgroup hierarchies (v1 and v2).
func cgroupRoots() ([]string, error) {
	ms, err := Mounts()
	if err != nil {
		return nil, err
	}
	var roots []string
	for _, m := range ms {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			roots = append(roots, m.Point)
		}
	}
	return roots, nil
}

// createCgroup creates the cgroup rel (and its parents) in every
// hierarchy.
func createCgroup(rel string) error {
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	for _, root := range roots {
		if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	return nil
}

// removeCgroups removes the cgroup rel (and every cgroup below it) from
// every hierarchy, deepest first; their processes must be gone.
func removeCgroups(rel string) error {
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	var errs []string
	for _, root := range roots {
		top := filepath.Join(root, rel)
		var dirs []string
		_ = filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && err != syscall.ENOENT {
				errs = append(errs, fmt.Sprintf("%s: %v", dirs[i], err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove cgroups: %s", strings.Join(errs, "; "))
	}
	return nil
}
