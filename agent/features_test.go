package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	api "github.com/contrast-vm/contrast/api/agent"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// sandbox creates the pod.
func (h *harness) sandbox() {
	h.t.Helper()
	if _, err := h.client.CreateSandbox(context.Background(), &api.CreateSandboxRequest{SandboxId: "pod1"}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) start(id string) {
	h.t.Helper()
	if _, err := h.client.StartContainer(context.Background(), &api.ContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatalf("start %s: %v", id, err)
	}
}

func (h *harness) remove(id string) {
	h.t.Helper()
	if _, err := h.client.RemoveContainer(context.Background(), &api.RemoveContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatalf("remove %s: %v", id, err)
	}
}

// waitExit waits for a process and checks its exit status.
func (h *harness) waitExit(id, exec string, want uint32) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := h.wait(ctx, id, exec)
	if err != nil {
		h.t.Fatalf("wait %s/%s: %v", id, exec, err)
	}
	if w.ExitStatus != want {
		h.t.Fatalf("%s/%s exited with %d, want %d", id, exec, w.ExitStatus, want)
	}
}

// execSpec starts an exec process described by p.
func (h *harness) execSpec(id, execID string, st *api.Stdio, p specs.Process) error {
	if p.Env == nil {
		p.Env = []string{"PATH=/bin"}
	}
	p.Cwd = "/"
	if p.Capabilities == nil {
		// CRI copies the container's; the agent refuses a process
		// without any (runc would leave it every capability).
		p.Capabilities = &specs.LinuxCapabilities{}
	}
	raw, _ := json.Marshal(p)
	_, err := h.client.ExecProcess(context.Background(), &api.ExecProcessRequest{ContainerId: id, ExecId: execID, Process: raw, Stdio: st})
	return err
}

// readUntil reads from r until what it read ends with want.
func readUntil(t *testing.T, r net.Conn, want string) string {
	t.Helper()
	var got []byte
	buf := make([]byte, 4096)
	r.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer r.SetReadDeadline(time.Time{})
	for !bytes.HasSuffix(got, []byte(want)) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read %q, waiting for %q: %v", got, want, err)
		}
	}
	return string(got)
}

// readAllWithin reads to EOF, failing after d.
func readAllWithin(t *testing.T, r net.Conn, d time.Duration) string {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %q: %v", b, err)
	}
	return string(b)
}

func ttySpec(args ...string) *specs.Spec {
	s := podSpec(args...)
	s.Process.Terminal = true
	return s
}

func TestTerminal(t *testing.T) {
	h := newHarness(t)
	h.sandbox()
	ctx := context.Background()

	t.Run("container output", func(t *testing.T) {
		out := h.openStdio("t1", "", api.StreamStdout)
		h.create("t1", ttySpec("/bin/sh", "-c", `printf 'one\ntwo\n'; tty; exit 2`), &api.Stdio{Terminal: true, Stdout: true})
		h.start("t1")
		h.waitExit("t1", "", 2)
		// The line discipline turned \n into \r\n (onlcr); all of it is
		// there once WaitProcess returned.
		got := readAllWithin(t, out, 5*time.Second)
		if !strings.HasPrefix(got, "one\r\ntwo\r\n/dev/pts/") || !strings.HasSuffix(got, "\r\n") {
			t.Errorf("terminal output %q", got)
		}
		if _, err := h.client.ResizePty(ctx, &api.ResizePtyRequest{ContainerId: "t1", Width: 80, Height: 24}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "exited") {
			t.Errorf("resize of an exited process: %v", err)
		}
		h.remove("t1")
	})

	// A long-running container without a terminal for the execs.
	h.create("c1", podSpec("/bin/sh", "-c", "while true; do sleep 1; done"), nil)
	h.start("c1")

	t.Run("exec with resize", func(t *testing.T) {
		in := h.openStdio("c1", "size", api.StreamStdin)
		out := h.openStdio("c1", "size", api.StreamStdout)
		err := h.execSpec("c1", "size", &api.Stdio{Terminal: true, Stdin: true, Stdout: true},
			specs.Process{Args: []string{"/bin/sh", "-c", `stty size; read x; stty size`}, Terminal: true, ConsoleSize: &specs.Box{Height: 24, Width: 80}})
		if err != nil {
			t.Fatal(err)
		}
		readUntil(t, out, "24 80\r\n")
		if _, err := h.client.ResizePty(ctx, &api.ResizePtyRequest{ContainerId: "c1", ExecId: "size", Width: 132, Height: 43}); err != nil {
			t.Fatal(err)
		}
		in.Write([]byte("go\n"))
		if got := readUntil(t, out, "43 132\r\n"); got != "go\r\n43 132\r\n" { // the echo, then stty
			t.Errorf("after resize: %q", got)
		}
		h.waitExit("c1", "size", 0)
	})

	t.Run("exec cat ends on CloseStdin", func(t *testing.T) {
		in := h.openStdio("c1", "cat", api.StreamStdin)
		out := h.openStdio("c1", "cat", api.StreamStdout)
		if err := h.execSpec("c1", "cat", &api.Stdio{Terminal: true, Stdin: true, Stdout: true}, specs.Process{Args: []string{"cat"}, Terminal: true}); err != nil {
			t.Fatal(err)
		}
		in.Write([]byte("hello\n"))
		readUntil(t, out, "hello\r\nhello\r\n") // the echo, then cat
		// An unterminated line: the first ^D hands it to cat, the second is EOF.
		in.Write([]byte("part"))
		readUntil(t, out, "part")
		if _, err := h.client.CloseStdin(ctx, &api.ProcessRequest{ContainerId: "c1", ExecId: "cat"}); err != nil {
			t.Fatal(err)
		}
		h.waitExit("c1", "cat", 0)
		if got := readAllWithin(t, out, 5*time.Second); got != "part" {
			t.Errorf("cat wrote %q after EOF", got)
		}
	})

	t.Run("exec cat ends when the host closes stdin", func(t *testing.T) {
		in := h.openStdio("c1", "cat2", api.StreamStdin)
		out := h.openStdio("c1", "cat2", api.StreamStdout)
		if err := h.execSpec("c1", "cat2", &api.Stdio{Terminal: true, Stdin: true, Stdout: true}, specs.Process{Args: []string{"cat"}, Terminal: true}); err != nil {
			t.Fatal(err)
		}
		in.Write([]byte("x\n"))
		in.CloseWrite()
		h.waitExit("c1", "cat2", 0)
		if got := readAllWithin(t, out, 5*time.Second); got != "x\r\nx\r\n" {
			t.Errorf("cat wrote %q", got)
		}
	})

	t.Run("pipe cat ends when the host closes stdin", func(t *testing.T) {
		in := h.openStdio("c1", "cat3", api.StreamStdin)
		out := h.openStdio("c1", "cat3", api.StreamStdout)
		if err := h.execSpec("c1", "cat3", &api.Stdio{Stdin: true, Stdout: true}, specs.Process{Args: []string{"cat"}}); err != nil {
			t.Fatal(err)
		}
		in.Write([]byte("x\n"))
		in.CloseWrite()
		h.waitExit("c1", "cat3", 0)
		if got := readAllWithin(t, out, 5*time.Second); got != "x\n" {
			t.Errorf("cat wrote %q", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			req  *api.ResizePtyRequest
			code codes.Code
			want string
		}{
			{"no terminal", &api.ResizePtyRequest{ContainerId: "c1", Width: 80, Height: 24}, codes.FailedPrecondition, "init process (pid"},
			{"unknown container", &api.ResizePtyRequest{ContainerId: "nope", Width: 80, Height: 24}, codes.NotFound, "container nope not found"},
			{"unknown exec", &api.ResizePtyRequest{ContainerId: "c1", ExecId: "nope", Width: 80, Height: 24}, codes.NotFound, "exec nope not found"},
			{"too wide", &api.ResizePtyRequest{ContainerId: "c1", ExecId: "size", Width: 70000, Height: 24}, codes.InvalidArgument, "70000x24 is out of range"},
		} {
			_, err := h.client.ResizePty(ctx, tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.code, tc.want)
			}
		}
		// A terminal exec must say so in its process too, and has no stderr.
		err := h.execSpec("c1", "bad", &api.Stdio{Terminal: true, Stdout: true}, specs.Process{Args: []string{"true"}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "exec bad in container c1") {
			t.Errorf("terminal mismatch: %v", err)
		}
		err = h.execSpec("c1", "bad", &api.Stdio{Terminal: true, Stdout: true, Stderr: true}, specs.Process{Args: []string{"true"}, Terminal: true})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "no stderr") {
			t.Errorf("terminal with stderr: %v", err)
		}
	})

	h.remove("c1")
	h.assertClean()
}

// cgroupFile is a file of the container's cgroup on this machine: v2, or
// the v1 hierarchy of its controller.
func (h *harness) cgroupFile(id, v1ctrl, name string) string {
	if cgroups.Mode() == cgroups.Unified {
		return filepath.Join(cgroupMount, h.cgroup, id, name)
	}
	return filepath.Join(cgroupMount, v1ctrl, h.cgroup, id, name)
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestPauseResume(t *testing.T) {
	h := newHarness(t)
	h.sandbox()
	ctx := context.Background()
	pid := h.create("p1", podSpec("/bin/sh", "-c", `i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done`), nil)
	h.start("p1")
	count := func() int {
		t.Helper()
		for range 100 {
			// The container's /tmp, seen from here through its init.
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/tmp/count", pid))
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return n
			}
			time.Sleep(10 * time.Millisecond) // absent or half-written
		}
		t.Fatal("no counter")
		return 0
	}
	advances := func() bool {
		a := count()
		time.Sleep(300 * time.Millisecond)
		return count() > a
	}
	if !advances() {
		t.Fatal("counter does not advance before pause")
	}
	if _, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "p1"}); err != nil {
		t.Fatal(err)
	}
	if advances() {
		t.Fatal("counter advances while paused")
	}
	if state := readTrim(t, h.cgroupFile("p1", "freezer", map[bool]string{true: "cgroup.freeze", false: "freezer.state"}[cgroups.Mode() == cgroups.Unified])); state != "1" && state != "FROZEN" {
		t.Errorf("freezer state %q", state)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		want string
	}{
		{"pause twice", func() error {
			_, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "p1"})
			return err
		}, codes.FailedPrecondition, "container p1 is paused, cannot become paused"},
		{"exec while paused", func() error {
			return h.execSpec("p1", "e1", nil, specs.Process{Args: []string{"true"}})
		}, codes.FailedPrecondition, "container p1 is paused, not running"},
		{"pause unknown", func() error {
			_, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound, "container nope not found"},
		{"resume unknown", func() error {
			_, err := h.client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound, "container nope not found"},
	} {
		if err := tc.call(); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.code, tc.want)
		}
	}
	if _, err := h.client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "p1"}); err != nil {
		t.Fatal(err)
	}
	if !advances() {
		t.Fatal("counter does not advance after resume")
	}
	if _, err := h.client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "p1"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("resume of a running container: %v", err)
	}
	// A paused container can be removed.
	if _, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "p1"}); err != nil {
		t.Fatal(err)
	}
	h.remove("p1")
	h.assertClean()
}

// metrics is what CRI reads from a task's stats, for either cgroup version.
type metrics struct {
	cpuNanos, memUsage, memLimit uint64
}

func decodeStats(t *testing.T, resp *api.StatsContainerResponse) metrics {
	t.Helper()
	v, err := typeurl.UnmarshalAny(&anypb.Any{TypeUrl: resp.TypeUrl, Value: resp.Value})
	if err != nil {
		t.Fatalf("decode stats of type %q: %v", resp.TypeUrl, err)
	}
	switch m := v.(type) {
	case *v2stats.Metrics:
		return metrics{cpuNanos: m.GetCPU().GetUsageUsec() * 1000, memUsage: m.GetMemory().GetUsage(), memLimit: m.GetMemory().GetUsageLimit()}
	case *v1stats.Metrics:
		return metrics{cpuNanos: m.GetCPU().GetUsage().GetTotal(), memUsage: m.GetMemory().GetUsage().GetUsage(), memLimit: m.GetMemory().GetUsage().GetLimit()}
	}
	t.Fatalf("stats are a %T", v)
	return metrics{}
}

func TestUpdateAndStats(t *testing.T) {
	h := newHarness(t)
	h.sandbox()
	ctx := context.Background()
	// Some CPU work, then idle.
	h.create("u1", podSpec("/bin/sh", "-c", `i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done > /tmp/done; while true; do sleep 1; done`), nil)
	h.start("u1")

	wantURL := "io.containerd.cgroups.v1.Metrics"
	if cgroups.Mode() == cgroups.Unified {
		wantURL = "io.containerd.cgroups.v2.Metrics"
	}
	var m metrics
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		resp, err := h.client.StatsContainer(ctx, &api.ContainerRequest{ContainerId: "u1"})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(resp.TypeUrl, wantURL) {
			t.Fatalf("stats type %q, want %q", resp.TypeUrl, wantURL)
		}
		m = decodeStats(t, resp)
		if m.cpuNanos > 10_000_000 || time.Since(start) > 10*time.Second {
			break
		}
	}
	t.Logf("stats: %+v", m)
	if m.cpuNanos < 10_000_000 || m.memUsage == 0 {
		t.Errorf("stats %+v: want CPU time (at least 10 ms of busy loop) and memory", m)
	}

	// Update as CRI sends it: the whole resources section.
	res := `{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":67108864},"pids":{"limit":50}}`
	if _, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "u1", Resources: []byte(res)}); err != nil {
		t.Fatal(err)
	}
	memFile, want := h.cgroupFile("u1", "memory", "memory.limit_in_bytes"), "67108864"
	if cgroups.Mode() == cgroups.Unified {
		memFile = h.cgroupFile("u1", "memory", "memory.max")
	}
	if got := readTrim(t, memFile); got != want {
		t.Errorf("%s is %s after update, want %s", memFile, got, want)
	}
	if got := readTrim(t, h.cgroupFile("u1", "pids", "pids.max")); got != "50" {
		t.Errorf("pids.max is %s after update", got)
	}
	resp, err := h.client.StatsContainer(ctx, &api.ContainerRequest{ContainerId: "u1"})
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeStats(t, resp); m.memLimit != 64<<20 {
		t.Errorf("stats after update: memory limit %d", m.memLimit)
	}

	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		want []string
	}{
		{"malformed", func() error {
			_, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "u1", Resources: []byte(`{"memory":{"limit":"lots"}}`)})
			return err
		}, codes.InvalidArgument, []string{"UpdateContainer u1", "resources", "cannot unmarshal"}}, // the policy reads resources first
		{"empty", func() error {
			_, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "u1"})
			return err
		}, codes.InvalidArgument, []string{"update container u1", "no resources"}},
		{"cgroup core file", func() error {
			_, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "u1", Resources: []byte(`{"unified":{"cgroup.procs":"1"}}`)})
			return err
		}, codes.InvalidArgument, []string{"update container u1", "cgroup.procs"}},
		{"runc refuses", func() error {
			_, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "u1", Resources: []byte(`{"cpu":{"cpus":"999"}}`)})
			return err
		}, codes.Unknown, []string{"update container u1", "runc update"}},
		{"update unknown", func() error {
			_, err := h.client.UpdateContainer(ctx, &api.UpdateContainerRequest{ContainerId: "nope", Resources: []byte(`{}`)})
			return err
		}, codes.NotFound, []string{"container nope not found"}},
		{"stats unknown", func() error {
			_, err := h.client.StatsContainer(ctx, &api.ContainerRequest{ContainerId: "nope"})
			return err
		}, codes.NotFound, []string{"container nope not found"}},
	} {
		err := tc.call()
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", tc.name, err, w)
			}
		}
	}
	if got := readTrim(t, memFile); got != want {
		t.Errorf("a refused update changed %s to %s", memFile, got)
	}
	h.remove("u1")
	h.assertClean()
}

// oomSpec is a container limited to 16 MiB whose tail looks for the last
// line of /dev/zero: the kernel OOM-kills tail, the shell goes on. (tail
// alone allocates: a writer into a pipe to it would allocate pipe pages
// while tail's memory is being freed, and be a second victim.)
func oomSpec() *specs.Spec {
	s := podSpec("/bin/sh", "-c", `tail /dev/zero; echo "tail: $?"`)
	limit := int64(16 << 20)
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	return s
}

func TestOOM(t *testing.T) {
	h := newHarness(t)
	h.sandbox()
	ctx := context.Background()

	// Nobody waits while it happens: the event waits in the queue, and is
	// there by the time WaitProcess reports the exit.
	out := h.openStdio("oom1", "", api.StreamStdout)
	h.create("oom1", oomSpec(), &api.Stdio{Stdout: true})
	h.start("oom1")
	h.waitExit("oom1", "", 0)
	if got := readAllWithin(t, out, 5*time.Second); got != "tail: 137\n" {
		t.Errorf("output %q: tail was not OOM-killed", got)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	ev, err := h.client.WaitOOM(wctx, &api.Empty{})
	cancel()
	if err != nil || ev.ContainerId != "oom1" {
		t.Fatalf("WaitOOM: %+v %v", ev, err)
	}
	// Exactly one: the next wait ends when its caller gives up.
	wctx, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
	ev, err = h.client.WaitOOM(wctx, &api.Empty{})
	cancel()
	if err == nil {
		t.Fatalf("second OOM event %+v", ev)
	}
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("cancelled WaitOOM: %v", err)
	}

	// A waiter that is there first.
	got := make(chan string, 1)
	go func() {
		ev, err := h.client.WaitOOM(ctx, &api.Empty{})
		if err != nil {
			t.Errorf("WaitOOM: %v", err)
		}
		got <- ev.GetContainerId()
	}()
	h.create("oom2", oomSpec(), nil)
	h.start("oom2")
	select {
	case id := <-got:
		if id != "oom2" {
			t.Errorf("OOM event for %q, want oom2", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no OOM event")
	}
	h.waitExit("oom2", "", 0)
	// A container that was not OOM-killed reports nothing.
	h.create("fine", podSpec("true"), nil)
	h.start("fine")
	h.waitExit("fine", "", 0)
	wctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	if ev, err := h.client.WaitOOM(wctx, &api.Empty{}); err == nil {
		t.Errorf("OOM event %+v", ev)
	}
	cancel()
	for _, id := range []string{"oom1", "oom2", "fine"} {
		h.remove(id)
	}
	h.assertClean()
}

// TestReconnect drops the agent connection the way a restarted shim does:
// containers keep running, and a new connection picks up their exits and
// the OOM events a dropped waiter did not take.
func TestReconnect(t *testing.T) {
	h := newHarness(t)
	h.sandbox()
	ctx := context.Background()
	in := h.openStdio("r1", "", api.StreamStdin)
	pid := h.create("r1", podSpec("/bin/sh", "-c", "read x; exit 7"), &api.Stdio{Stdin: true})
	h.start("r1")

	conn, err := net.Dial("unix", h.agent)
	if err != nil {
		t.Fatal(err)
	}
	old := api.NewAgentClient(ttrpc.NewClient(conn))
	waits := make(chan error, 2)
	go func() {
		_, err := old.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "r1"})
		waits <- err
	}()
	go func() {
		_, err := old.WaitOOM(ctx, &api.Empty{})
		waits <- err
	}()
	time.Sleep(100 * time.Millisecond) // both calls reach the agent
	conn.Close()
	for range 2 {
		select {
		case err := <-waits:
			if err == nil {
				t.Error("a wait on a closed connection succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a wait on a closed connection did not end")
		}
	}
	// The agent notices the closed connection at once; the cancelled
	// waiter must not take the event that follows.
	time.Sleep(200 * time.Millisecond)

	conn, err = net.Dial("unix", h.agent)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	c := api.NewAgentClient(tc)
	ps, err := c.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "r1"})
	if err != nil || !slices.Contains(ps.Pids, pid) {
		t.Fatalf("container did not survive the dropped connection: %+v %v", ps, err)
	}
	h.create("oom", oomSpec(), nil)
	h.start("oom")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if ev, err := c.WaitOOM(wctx, &api.Empty{}); err != nil || ev.ContainerId != "oom" {
		t.Fatalf("OOM event after reconnect: %+v %v", ev, err)
	}
	in.Write([]byte("\n"))
	w, err := c.WaitProcess(wctx, &api.ProcessRequest{ContainerId: "r1"})
	if err != nil || w.ExitStatus != 7 {
		t.Fatalf("wait after reconnect: %+v %v", w, err)
	}
	h.waitExit("oom", "", 0)
	h.remove("r1")
	h.remove("oom")
	h.assertClean()
}
