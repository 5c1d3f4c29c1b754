package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestTaskAPI checks, in one pod per handler and containerd version,
// what a runc pod can do beyond the basic lifecycle: terminals and window
// resize, attach and stdin (with CloseIO), stats, pause and resume,
// resource updates, the container's process list, OOM kills and
// checkpoint. Each subtest uses its own containers; a failure names the
// feature that is missing.
func TestTaskAPI(t *testing.T) {
	matrix(t, func(t *testing.T, s *suite, handler string) {
		pod := s.runPodWith(t, harness.PodConfig{Name: "features", Handler: handler, Sysctls: podSysctls})
		// A container that stays up for exec.
		sleeper := s.startContainer(t, pod, "sleeper", "sleep", "100000")

		t.Run("tty-container", func(t *testing.T) { s.ttyContainer(t, pod) })
		t.Run("exec-terminal-resize", func(t *testing.T) { s.execTerminal(t, sleeper) })
		t.Run("attach-stdin", func(t *testing.T) { s.attachStdin(t, pod) })
		t.Run("exec-stdin", func(t *testing.T) { s.execStdin(t, sleeper) })
		t.Run("stats", func(t *testing.T) { s.stats(t, pod) })
		t.Run("pause-resume", func(t *testing.T) { s.pauseResume(t, pod) })
		t.Run("update", func(t *testing.T) { s.update(t, pod) })
		t.Run("pids", func(t *testing.T) { s.pids(t, pod) })
		t.Run("oom", func(t *testing.T) { s.oom(t, pod) })
		t.Run("checkpoint", func(t *testing.T) { s.checkpoint(t, handler, sleeper) })
		t.Run("sysctls", func(t *testing.T) { s.sysctls(t, sleeper) })
		t.Run("shared-pid-namespace", func(t *testing.T) { s.sharedPIDNamespace(t, pod, sleeper) })
		t.Run("stop-after-exit", func(t *testing.T) { s.stopAfterExit(t, handler) })
	})
}

// stopAfterExit: stopping a pod whose container exited a moment before
// succeeds (the kubelet would retry a failed stop forever), as with runc,
// whose shim takes signalling an exited process as done.
func (s *suite) stopAfterExit(t *testing.T, handler string) {
	for i := range 3 {
		pod := s.runPod(t, handler, fmt.Sprintf("exited-%d", i))
		c := s.startContainer(t, pod, "quick", "sh", "-c", "exit 0")
		s.waitExited(t, c, time.Minute)
		if err := s.cri.StopPod(s.ctx, pod.ID); err != nil {
			t.Fatalf("stop of a pod whose container exited: %v", err)
		}
		if err := s.cri.RemovePod(s.ctx, pod.ID); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
}

// sharedPIDNamespace: containers of a pod that shares its process
// namespace (shareProcessNamespace) see each other's processes; a
// container with its own does not see theirs.
func (s *suite) sharedPIDNamespace(t *testing.T, pod *harness.Pod, own *harness.Container) {
	var ids []string
	for i, name := range []string{"shared-a", "shared-b"} {
		c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{Name: name, SharePID: true, Command: []string{"sleep", fmt.Sprintf("7%d4242", i)}})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		defer s.removeContainer(t, c)
		if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		ids = append(ids, c.ID)
	}
	ps := func(id string) string {
		res, err := s.cri.Exec(s.ctx, id, true, "ps", "-o", "args")
		if err != nil {
			t.Fatalf("ps: %v", err)
		}
		return res.Stdout
	}
	if out := ps(ids[1]); !strings.Contains(out, "sleep 704242") {
		t.Errorf("shared-b does not see shared-a's process:\n%s", out)
	}
	if out := ps(ids[0]); !strings.Contains(out, "sleep 714242") {
		t.Errorf("shared-a does not see shared-b's process:\n%s", out)
	}
	if out := ps(own.ID); strings.Contains(out, "sleep 704242") {
		t.Errorf("a container with a PID namespace of its own sees the shared one's processes:\n%s", out)
	}
}

// podSysctls are a pod's securityContext.sysctls as the kubelet sends them:
// two safe ones (network, IPC) and one a node must allow (unsafe, but
// namespaced).
var podSysctls = map[string]string{
	"net.ipv4.ip_unprivileged_port_start": "1000",
	"kernel.shm_rmid_forced":              "1",
	"net.core.somaxconn":                  "2048",
}

// sysctls: the pod's sysctls are what its container reads; for a pod VM
// the agent set them in the VM, whose kernel is the pod's.
func (s *suite) sysctls(t *testing.T, c *harness.Container) {
	for name, want := range podSysctls {
		res, err := s.cri.Exec(s.ctx, c.ID, true, "cat", "/proc/sys/"+strings.ReplaceAll(name, ".", "/"))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		if got := strings.TrimSpace(res.Stdout); got != want {
			t.Errorf("%s is %q in the container, the pod set %q", name, got, want)
		}
	}
}

// ttyContainer: a container created with tty=true has a terminal as its
// stdin and stdout, and its output reaches the log.
func (s *suite) ttyContainer(t *testing.T, pod *harness.Pod) {
	c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{
		Name: "tty", TTY: true, Stdin: true,
		Command: []string{"sh", "-c", `if [ -t 0 ] && [ -t 1 ]; then echo "terminal: $(tty)"; else echo "no terminal"; fi; sleep 100000`},
	})
	if err != nil {
		t.Fatalf("TTY container: crictl create with tty=true failed: %v", err)
	}
	defer s.removeContainer(t, c)
	if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
		t.Fatalf("TTY container: crictl start failed: %v", err)
	}
	out := waitLogMatch(t, s, c, regexp.MustCompile(`(terminal: \S+|no terminal)`), time.Minute)
	if !strings.HasPrefix(out, "terminal: /dev/pts/") {
		t.Errorf("TTY container: the process sees %q, want a terminal (/dev/pts/N) on stdin and stdout", out)
	}
}

// execTerminal drives `crictl exec -it` from a pseudo-terminal the test
// holds, as a person at a terminal would: the shell in the container
// sees a terminal of the client's size, a resize of the client's
// terminal reaches it (ResizePty), and the shell's exit code comes back.
func (s *suite) execTerminal(t *testing.T, c *harness.Container) {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	sess, err := s.cri.StartTerminalSession(ctx, 33, 101, "exec", "-it", c.ID, "sh")
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Kill()
	// ask types a command that prints the terminal's size and returns
	// it, "" when stty finds no size. The marker and the answer are
	// printed joined, so the echo of the typed line (with $(...) there)
	// never matches.
	ask := func(marker string) string {
		t.Helper()
		if err := sess.Write(fmt.Sprintf("echo \"%s=$(stty size) tty=$(tty)\"\r", marker)); err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(regexp.QuoteMeta(marker) + `=(\d+ \d+)? ?tty=(\S+)`)
		deadline := time.Now().Add(time.Minute)
		for {
			if m := re.FindStringSubmatch(sess.Output()); m != nil {
				if !strings.HasPrefix(m[2], "/dev/pts/") {
					t.Errorf("exec -it: the shell's stdin is %q, want a terminal", m[2])
				}
				return m[1]
			}
			if sess.Exited() {
				t.Fatalf("exec -it (terminal exec) ended before answering `stty size`; terminal shows %q", sess.Output())
			}
			if time.Now().After(deadline) {
				t.Fatalf("exec -it (terminal exec): no answer to `stty size` within a minute; terminal shows %q", sess.Output())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Sizes travel asynchronously (crictl, CRI, runtime; SIGWINCH for a
	// resize): ask until the expected one has arrived.
	waitSize := func(prefix, want string) string {
		t.Helper()
		var got string
		for i := 0; i < 40; i++ {
			if got = ask(fmt.Sprintf("%s%d", prefix, i)); got == want {
				if i > 0 {
					t.Logf("size %s arrived after %d queries", want, i+1)
				}
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		return got
	}
	if got := waitSize("first", "33 101"); got != "33 101" {
		t.Errorf("exec -it: stty size in the container is %q, want the client terminal's \"33 101\" (initial size, ResizePty right after start, lost)", got)
	}
	if err := sess.Resize(44, 120); err != nil {
		t.Fatal(err)
	}
	if got := waitSize("resized", "44 120"); got != "44 120" {
		t.Errorf("exec -it: after resizing the client terminal to 44x120, stty size in the container is still %q (window resize, ResizePty, not forwarded)", got)
	}
	if err := sess.Write("exit 3\r"); err != nil {
		t.Fatal(err)
	}
	code, err := sess.Wait(time.Minute)
	if err != nil {
		t.Fatalf("exec -it: the session did not end after `exit 3`: %v", err)
	}
	if code == 0 || !strings.Contains(sess.Output(), "exit code 3") {
		t.Errorf("exec -it: crictl exited %d with %q, want the shell's exit code 3 reported", code, lastLines(sess.Output(), 3))
	}
}

// attachStdin attaches to a container's stdin (stdin_once), sends a line
// and closes stdin: the container must see the line, then end of input.
func (s *suite) attachStdin(t *testing.T, pod *harness.Pod) {
	c, err := s.cri.CreateContainer(s.ctx, pod, harness.ContainerConfig{
		Name: "reader", Stdin: true, StdinOnce: true,
		Command: []string{"sh", "-c", `echo ready; while read line; do echo "got $line"; done; echo "stdin closed"`},
	})
	if err != nil {
		t.Fatalf("attach: crictl create with stdin=true failed: %v", err)
	}
	defer func() {
		if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
			t.Errorf("crictl rm: %v", err)
		}
	}()
	if err := s.cri.StartContainer(s.ctx, c.ID); err != nil {
		t.Fatalf("attach: crictl start of a container with stdin failed: %v", err)
	}
	waitLog(t, s, c, "ready", time.Minute)
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	sess, err := s.cri.StartSession(ctx, "attach", "-i", c.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Kill()
	if err := sess.Write("hello\n"); err != nil {
		t.Fatal(err)
	}
	if err := sess.WaitOutput("got hello", time.Minute); err != nil {
		t.Fatalf("attach: the line sent to the container's stdin did not come back: %v", err)
	}
	if err := sess.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	st, err := s.cri.WaitContainerState(s.ctx, c.ID, "CONTAINER_EXITED", time.Minute)
	if err != nil {
		t.Fatalf("attach: closing stdin (stdin_once) did not end the container's input (CloseIO): %v", err)
	}
	if st.ExitCode != 0 {
		t.Errorf("attach: container exited %d, want 0", st.ExitCode)
	}
	if log := s.logs(t, c); !strings.Contains(log, "got hello\n") || !strings.Contains(log, "stdin closed\n") {
		t.Errorf("attach: container log %q, want the echoed line and \"stdin closed\"", log)
	}
	if _, err := sess.Wait(30 * time.Second); err != nil {
		t.Errorf("attach: crictl did not end with the container: %v", err)
	}
}

// execStdin feeds `crictl exec -i` from a pipe: cat must echo its input
// and end when the input does (CloseIO), and a MiB must arrive intact.
func (s *suite) execStdin(t *testing.T, c *harness.Container) {
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	r, err := s.cri.ExecStdin(ctx, c.ID, strings.NewReader("hello\nworld\n"), "cat")
	if ctx.Err() != nil {
		t.Fatalf("exec -i: cat did not end within a minute after its input ended (stdin close, CloseIO, not forwarded); output %q", r.Stdout)
	}
	if err != nil {
		t.Fatalf("exec -i cat: %v", err)
	}
	if r.Stdout != "hello\nworld\n" || r.ExitCode != 0 {
		t.Errorf("exec -i cat: stdout %q exit %d, want the input back and 0", r.Stdout, r.ExitCode)
	}

	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	ctx, cancel = context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	// The copy on disk tells lost data (size) from damaged data (hash).
	r, err = s.cri.ExecStdin(ctx, c.ID, bytes.NewReader(data), "sh", "-c",
		`cat > /tmp/stdin.bin; echo "$(wc -c < /tmp/stdin.bin) $(sha256sum < /tmp/stdin.bin)"; rm /tmp/stdin.bin`)
	if ctx.Err() != nil {
		t.Fatalf("exec -i: copying 1 MiB of stdin did not end within 2 minutes (stdin close, CloseIO, not forwarded)")
	}
	if err != nil {
		t.Fatalf("exec -i of 1 MiB: %v", err)
	}
	var n int
	var hash string
	fmt.Sscan(r.Stdout, &n, &hash)
	switch {
	case n < len(data):
		t.Errorf("exec -i: of 1 MiB of stdin the container got %d bytes: the last %d were lost (stdin closed before the data in flight arrived?)", n, len(data)-n)
	case n != len(data) || hash != hex.EncodeToString(sum[:]):
		t.Errorf("exec -i: 1 MiB of stdin arrived as %q, want %d bytes with sha256 %x (data damaged)", r.Stdout, len(data), sum)
	}
}

// stats: `crictl stats` and `crictl statsp` report the CPU time and
// memory of a container that did some work, and of its pod.
func (s *suite) stats(t *testing.T, pod *harness.Pod) {
	c := s.startContainer(t, pod, "busy", "sh", "-c",
		`i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo done; sleep 100000`)
	defer s.removeContainer(t, c)
	waitLog(t, s, c, "done", 3*time.Minute)
	// 100,000 shell loop iterations take well over 20 ms of CPU; a
	// figure in the wrong unit (µs for ns) falls below it.
	const minCPU = 20 * time.Millisecond
	var st harness.ContainerStats
	var raw string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		st, raw, err = s.cri.Stats(s.ctx, c.ID)
		if err != nil {
			t.Fatalf("crictl stats: %v (container stats, Stats RPC)", err)
		}
		if st.CPU.Nanoseconds() >= uint64(minCPU) && st.Memory.WorkingSet() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("crictl stats: cpu %d ns, memory working set %d bytes; want cpu >= %d ns and memory > 0 (Stats RPC metrics missing or in the wrong unit):\n%s",
				st.CPU.Nanoseconds(), st.Memory.WorkingSet(), minCPU.Nanoseconds(), raw)
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("crictl stats: cpu %s, memory working set %d KiB", time.Duration(st.CPU.Nanoseconds()), st.Memory.WorkingSet()/1024)

	// CRI reads a pod's own figures from its cgroup on the host
	// (linux.cgroup_parent, which the harness creates as kubelet does):
	// a pod VM's monitor must run in it to be accounted.
	ps, raw, err := s.cri.PodStats(s.ctx, pod.ID)
	if err != nil {
		t.Fatalf("crictl statsp: %v (pod stats)", err)
	}
	if ps.Linux == nil || ps.Linux.CPU.Nanoseconds() == 0 || ps.Linux.Memory.WorkingSet() == 0 {
		t.Errorf("crictl statsp: want the pod's CPU time and memory (CRI reads them from the pod's host cgroup %s: the pod's processes, a VM's too, must run in it), got:\n%s", pod.CgroupParent, raw)
	}
	if ps.Linux != nil {
		t.Logf("crictl statsp: cpu %s, memory working set %d KiB, %d containers",
			time.Duration(ps.Linux.CPU.Nanoseconds()), ps.Linux.Memory.WorkingSet()/1024, len(ps.Linux.Containers))
	}
}

// pauseResume: a paused container (ctr task pause: crictl has no verb)
// stops making progress and shows as PAUSED; resumed, it goes on.
func (s *suite) pauseResume(t *testing.T, pod *harness.Pod) {
	c := s.startContainer(t, pod, "ticker", "sh", "-c",
		`i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done`)
	defer s.removeContainer(t, c)
	waitLog(t, s, c, "tick 3\n", time.Minute)
	events := s.events(t)
	if _, err := s.c.Ctr(s.ctx, "task", "pause", c.ID); err != nil {
		t.Fatalf("ctr task pause: %v (Pause, freezer in the guest)", err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_, _ = s.c.Ctr(context.Background(), "task", "resume", c.ID)
		}
	}()
	if st, err := s.c.TaskStatus(s.ctx, c.ID); err != nil || st != "PAUSED" {
		t.Errorf("ctr task ls after pause: status %q %v, want PAUSED", st, err)
	}
	// A write in flight when the freeze hit may still land.
	time.Sleep(500 * time.Millisecond)
	before := lastTick(t, s, c)
	time.Sleep(2 * time.Second)
	if after := lastTick(t, s, c); after != before {
		t.Errorf("paused container kept running: tick %d became %d in 2s", before, after)
	}
	if _, err := s.c.Ctr(s.ctx, "task", "resume", c.ID); err != nil {
		t.Fatalf("ctr task resume: %v (Resume)", err)
	}
	resumed = true
	if st, err := s.c.TaskStatus(s.ctx, c.ID); err != nil || st != "RUNNING" {
		t.Errorf("ctr task ls after resume: status %q %v, want RUNNING", st, err)
	}
	waitLog(t, s, c, fmt.Sprintf("tick %d\n", before+3), time.Minute)
	for _, topic := range []string{"/tasks/paused", "/tasks/resumed"} {
		if err := events.WaitOutput(eventLine(topic, c.ID), 10*time.Second); err != nil {
			t.Errorf("no %s event for the container: %v", topic, err)
		}
	}
}

// eventLine is how `ctr events` prints an event about a container:
// timestamp, namespace, topic, the event as JSON.
func eventLine(topic, id string) string {
	return fmt.Sprintf(`k8s.io %s {"container_id":%q`, topic, id)
}

// events starts `ctr events` (stopped when the test ends): containerd's
// event stream, as CRI and other clients receive it.
func (s *suite) events(t *testing.T) *harness.Session {
	t.Helper()
	ev, err := s.c.StartCtrSession(s.ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.Kill)
	// ctr subscribes before it prints anything; give it a moment.
	time.Sleep(300 * time.Millisecond)
	return ev
}

var tickRe = regexp.MustCompile(`tick (\d+)\n`)

// lastTick is the highest "tick N" in a container's log.
func lastTick(t *testing.T, s *suite, c *harness.Container) int {
	t.Helper()
	n := 0
	for _, m := range tickRe.FindAllStringSubmatch(s.logs(t, c), -1) {
		fmt.Sscan(m[1], &n)
	}
	return n
}

// update: `crictl update` changes a running container's memory and CPU
// limits, as the container's own cgroup shows them.
func (s *suite) update(t *testing.T, pod *harness.Pod) {
	const mib = 1 << 20
	c := s.startWith(t, pod, harness.ContainerConfig{
		Name: "limits", Command: []string{"sleep", "100000"},
		Resources: &harness.Resources{MemoryLimit: 128 * mib, CPUPeriod: 100000, CPUQuota: 100000},
	})
	defer s.removeContainer(t, c)
	if got := cgroupLimits(t, s, c); got != fmt.Sprintf("mem=%d cpu=100000 100000", 128*mib) {
		t.Errorf("limits at create: the container's cgroup shows %q, want 128 MiB and 1 CPU", got)
	}
	if err := s.cri.UpdateContainer(s.ctx, c.ID, harness.Resources{MemoryLimit: 64 * mib, CPUPeriod: 100000, CPUQuota: 50000}); err != nil {
		t.Fatalf("crictl update: %v (Update of container resources)", err)
	}
	if got := cgroupLimits(t, s, c); got != fmt.Sprintf("mem=%d cpu=50000 100000", 64*mib) {
		t.Errorf("after crictl update: the container's cgroup shows %q, want 64 MiB and half a CPU (Update not applied)", got)
	}
}

// cgroupLimits reads the memory limit and CPU quota and period from the
// container's own cgroup, v1 or v2, as "mem=<bytes> cpu=<quota> <period>".
func cgroupLimits(t *testing.T, s *suite, c *harness.Container) string {
	t.Helper()
	// Without a cgroup namespace the container sees the whole hierarchy:
	// then its own cgroup is where /proc/self/cgroup says.
	const script = `own=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
if [ -f /sys/fs/cgroup/memory.max ]; then
  echo "mem=$(cat /sys/fs/cgroup/memory.max) cpu=$(cat /sys/fs/cgroup/cpu.max)"
elif [ -f "$own/memory.max" ]; then
  echo "mem=$(cat $own/memory.max) cpu=$(cat $own/cpu.max) (no cgroup namespace: read from $own)"
elif [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
else
  echo "no cgroup files in /sys/fs/cgroup: $(ls /sys/fs/cgroup)" >&2; exit 1
fi`
	r, err := s.cri.Exec(s.ctx, c.ID, false, "sh", "-c", script)
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("read the container's cgroup limits: %v, exit %d, stderr %q (the container's cgroup must be visible at /sys/fs/cgroup)", err, r.ExitCode, r.Stderr)
	}
	out, note, _ := strings.Cut(strings.TrimSpace(r.Stdout), " (")
	if note != "" {
		t.Logf("note: %s", strings.TrimSuffix(note, ")"))
	}
	return out
}

// pids: `ctr task ps` (Pids) lists the processes of the container: a
// shell and its two children.
func (s *suite) pids(t *testing.T, pod *harness.Pod) {
	c := s.startContainer(t, pod, "family", "sh", "-c", `sleep 100000 & sleep 100001 & echo started; wait`)
	defer s.removeContainer(t, c)
	waitLog(t, s, c, "started", time.Minute)
	// Both children may still be between fork and exec: wait a moment for
	// the list to settle at three.
	var pids []int
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		pids, out, err = s.c.TaskPIDs(s.ctx, c.ID)
		if err != nil {
			t.Fatalf("ctr task ps: %v (Pids)", err)
		}
		if len(pids) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(pids) != 3 {
		t.Errorf("ctr task ps lists %d processes, want 3 (sh and two sleeps):\n%s", len(pids), out)
	}
}

// oom: a container limited to 16 MiB that allocates 64 MiB is killed, and
// CRI says why (TaskOOM event before the exit).
func (s *suite) oom(t *testing.T, pod *harness.Pod) {
	events := s.events(t)
	c := s.startWith(t, pod, harness.ContainerConfig{
		Name: "hog",
		// dd's 64 MiB block buffer is touched in full by the read from
		// /dev/zero; exec makes dd the container's init process. The
		// second's wait lets the runtime watch for OOM first (containerd
		// 1.7's runc shim misses an OOM right at start on cgroup v1).
		Command:   []string{"sh", "-c", `echo start; sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1`},
		Resources: &harness.Resources{MemoryLimit: 16 << 20},
	})
	defer func() {
		if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
			t.Errorf("crictl rm: %v", err)
		}
	}()
	st := s.waitExited(t, c, 2*time.Minute)
	// The OOM event and the exit travel separately; containerd 1.7 may
	// record the exit first and the reason a moment later.
	for deadline := time.Now().Add(10 * time.Second); st.Reason != "OOMKilled" && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		var err error
		if st, err = s.cri.InspectContainer(s.ctx, c.ID); err != nil {
			t.Fatal(err)
		}
	}
	if st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("container over its memory limit: exit code %d reason %q, want 137 OOMKilled (OOM event not reported); log %q",
			st.ExitCode, st.Reason, s.logs(t, c))
	}
	if err := events.WaitOutput(eventLine("/tasks/oom", c.ID), 10*time.Second); err != nil {
		t.Errorf("no TaskOOM event: %v", err)
	}
}

// checkpoint: `ctr task checkpoint` (CRI's checkpoint needs CRIU before
// it asks the runtime) fails, and the container runs on unharmed. runc
// fails for want of CRIU; the contrast runtime must answer Unimplemented
// with a message that says checkpointing is not supported.
func (s *suite) checkpoint(t *testing.T, handler string, c *harness.Container) {
	out, err := s.c.Ctr(s.ctx, "task", "checkpoint", c.ID)
	if err == nil {
		t.Fatalf("ctr task checkpoint succeeded (%q): this host has no CRIU and the contrast runtime does not checkpoint", out)
	}
	msg := cmdErrText(err)
	t.Logf("ctr task checkpoint: %s", strings.TrimSpace(msg))
	if handler != "runc" && !(containsAny(msg, "checkpoint") && containsAny(msg, "not implemented", "unimplemented", "not supported")) {
		t.Errorf("checkpoint error %q, want Unimplemented with a message that checkpointing is not supported", strings.TrimSpace(msg))
	}
	if st, err := s.c.TaskStatus(s.ctx, c.ID); err != nil || st != "RUNNING" {
		t.Errorf("after the failed checkpoint: task status %q %v, want RUNNING", st, err)
	}
	if r, err := s.cri.Exec(s.ctx, c.ID, false, "echo", "alive"); err != nil || r.Stdout != "alive\n" {
		t.Errorf("exec after the failed checkpoint: %q %v", r.Stdout, err)
	}
}

// waitLogMatch waits until a container's log matches re and returns the
// match (terminal output has \r\n line ends: \r is dropped).
func waitLogMatch(t *testing.T, s *suite, c *harness.Container, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, err := s.cri.Logs(s.ctx, c.ID)
		out = strings.ReplaceAll(out, "\r", "")
		if m := re.FindString(out); err == nil && m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s did not log a match for %s within %s (log %q, %v)", c.Config.Name, re, timeout, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestRuntimeFeatures: containerd 2.4's CRI introspects each runtime
// handler at start (containerd 1.7 does not): ours reports its features,
// recursive read-only mounts among them, and not user namespaces.
func TestRuntimeFeatures(t *testing.T) {
	s := newSuiteVersion(t, harness.Containerd24, handlerSpec{name: contrastHandler})
	quoted := `\"` + contrastHandler + `\"`
	if got := s.c.LogGrep("failed to introspect features of runtime " + quoted); got != "" {
		t.Errorf("containerd could not read our features: %s", got)
	}
	if got := s.c.LogGrep("runtime " + quoted + " supports recursive read-only mounts"); got == "" {
		t.Errorf("containerd's log does not say our runtime supports recursive read-only mounts:\n%s", s.c.LogGrep(contrastHandler))
	}
	if got := s.c.LogGrep("runtime " + quoted + " supports CRI userns: false"); got == "" {
		t.Errorf("containerd's log does not say our runtime lacks CRI user namespaces:\n%s", s.c.LogGrep(contrastHandler))
	}
}
