package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestLifecycle runs the pod lifecycle with every handler on every
// containerd version. Against runc it proves the harness and is the
// baseline; in a pod VM, uname -r must be the guest image's kernel, not the
// host's.
func TestLifecycle(t *testing.T) {
	host, err := harness.HostKernelRelease()
	if err != nil {
		t.Fatal(err)
	}
	matrix(t, func(t *testing.T, s *suite, handler string) {
		if handler == "runc" {
			s.lifecycle(t, handler, host, false)
			return
		}
		guest, err := harness.GuestKernelRelease(s.env.ImageDir)
		if err != nil {
			t.Fatal(err)
		}
		if guest == host {
			t.Fatalf("guest kernel release %q equals the host's: uname -r could not tell a VM from the host", guest)
		}
		s.lifecycle(t, handler, guest, true)
	})
}

// lifecycle runs one pod with several containers: kernel release, 10,000
// log lines, exec, exit code 3, stop escalating to SIGKILL, then removes
// the pod and checks that nothing of it remains. With vm, the pod must
// run a QEMU process on the host.
func (s *suite) lifecycle(t *testing.T, handler, wantRelease string, vm bool) {
	before := s.snapshot(t)
	start := time.Now()
	pod := s.runPod(t, handler, "life")
	t.Logf("runp (%s): %s", handler, time.Since(start).Round(time.Millisecond))
	st, err := s.cri.InspectPod(s.ctx, pod.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "SANDBOX_READY" {
		t.Fatalf("pod state %s, want SANDBOX_READY", st.State)
	}
	var ctrs []*harness.Container
	// A container that stays up for exec, and whose processes the trace
	// below records.
	sleeper := s.startContainer(t, pod, "sleeper", "sleep", "100000")
	ctrs = append(ctrs, sleeper)
	trace := s.trace(t, pod, sleeper)
	t.Logf("pod processes while running:\n%s", harness.Leftovers{Processes: trace.Processes})
	if vm {
		qemu := false
		for _, p := range trace.Processes {
			qemu = qemu || strings.Contains(p.Cmdline, "qemu-system")
		}
		if !qemu {
			t.Fatalf("pod %s runs no QEMU process", pod.ID)
		}
	}

	t.Run("uname", func(t *testing.T) {
		c := s.startContainer(t, pod, "uname", "uname", "-r")
		ctrs = append(ctrs, c)
		if st := s.waitExited(t, c, time.Minute); st.ExitCode != 0 {
			t.Fatalf("uname exited %d", st.ExitCode)
		}
		if got := strings.TrimSpace(s.logs(t, c)); got != wantRelease {
			t.Errorf("uname -r in the container printed %q, want %q", got, wantRelease)
		}
	})

	t.Run("logs", func(t *testing.T) {
		const n = 10000
		c := s.startContainer(t, pod, "lines", "sh", "-c",
			fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "line $i"; i=$((i+1)); done`, n))
		ctrs = append(ctrs, c)
		if st := s.waitExited(t, c, 2*time.Minute); st.ExitCode != 0 {
			t.Fatalf("line writer exited %d", st.ExitCode)
		}
		// Once CRI reports the exit, every line must be there: the tail of a
		// process's output must not be lost.
		lines := strings.Split(strings.TrimSuffix(s.logs(t, c), "\n"), "\n")
		if len(lines) != n {
			t.Errorf("crictl logs has %d lines, want %d; last: %q", len(lines), n, lines[len(lines)-1])
		}
		for i, l := range lines {
			if want := fmt.Sprintf("line %d", i+1); l != want {
				t.Fatalf("log line %d is %q, want %q", i+1, l, want)
			}
		}
	})

	t.Run("exec", func(t *testing.T) {
		r, err := s.cri.Exec(s.ctx, sleeper.ID, false, "sh", "-c", "echo out; echo err >&2; exit 7")
		if err != nil {
			t.Fatalf("crictl exec: %v", err)
		}
		if r.Stdout != "out\n" || !strings.Contains(r.Stderr, "err\n") || r.ExitCode != 7 {
			t.Errorf("crictl exec: stdout %q, stderr %q, exit %d; want \"out\\n\", \"err\\n\", 7", r.Stdout, r.Stderr, r.ExitCode)
		}
		r, err = s.cri.Exec(s.ctx, sleeper.ID, false, "uname", "-r")
		if err != nil || strings.TrimSpace(r.Stdout) != wantRelease || r.ExitCode != 0 {
			t.Errorf("crictl exec uname -r: %q, exit %d, %v; want %q", r.Stdout, r.ExitCode, err, wantRelease)
		}
		r, err = s.cri.Exec(s.ctx, sleeper.ID, true, "sh", "-c", "echo sync; exit 0")
		if err != nil || !strings.HasPrefix(r.Stdout, "sync\n") || r.ExitCode != 0 {
			t.Errorf("crictl exec --sync: %q, exit %d, %v", r.Stdout, r.ExitCode, err)
		}
		r, err = s.cri.Exec(s.ctx, sleeper.ID, true, "sh", "-c", "exit 5")
		if err != nil || r.ExitCode != 5 {
			t.Errorf("crictl exec --sync exit 5: exit %d, %v", r.ExitCode, err)
		}
		// A command that does not exist is an error naming it.
		_, err = s.cri.Exec(s.ctx, sleeper.ID, false, "/no/such/binary")
		if err == nil || !strings.Contains(cmdErrText(err), "/no/such/binary") {
			t.Errorf("exec of a missing binary: %v, want an error naming it", err)
		}
	})

	t.Run("exit-code", func(t *testing.T) {
		c := s.startContainer(t, pod, "exit3", "sh", "-c", "exit 3")
		ctrs = append(ctrs, c)
		st := s.waitExited(t, c, time.Minute)
		if st.ExitCode != 3 {
			t.Errorf("crictl inspect shows exit code %d, want 3 (status %s)", st.ExitCode, st.Raw)
		}
	})

	t.Run("stop-escalates", func(t *testing.T) {
		c := s.startContainer(t, pod, "stubborn", "sh", "-c",
			`trap "" TERM; echo ready; while true; do sleep 1; done`)
		ctrs = append(ctrs, c)
		waitLog(t, s, c, "ready", time.Minute)
		const timeout = 3 * time.Second
		begin := time.Now()
		if err := s.cri.StopContainer(s.ctx, c.ID, timeout); err != nil {
			t.Fatalf("crictl stop: %v", err)
		}
		took := time.Since(begin)
		st, err := s.cri.InspectContainer(s.ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("stop took %s", took.Round(time.Millisecond))
		if st.State != "CONTAINER_EXITED" || st.ExitCode != 137 {
			t.Errorf("after stop: state %s exit %d, want CONTAINER_EXITED 137 (SIGKILL)", st.State, st.ExitCode)
		}
		if took < timeout-200*time.Millisecond {
			t.Errorf("stop returned after %s, before the %s grace period: SIGTERM was not ignored?", took, timeout)
		}
		if took > timeout+10*time.Second {
			t.Errorf("stop took %s, want SIGKILL soon after the %s grace period", took, timeout)
		}
	})

	t.Run("remove", func(t *testing.T) {
		if err := s.cri.StopContainer(s.ctx, sleeper.ID, time.Second); err != nil {
			t.Fatalf("crictl stop: %v", err)
		}
		for _, c := range ctrs {
			if err := s.cri.RemoveContainer(s.ctx, c.ID); err != nil {
				t.Errorf("crictl rm %s: %v", c.Config.Name, err)
			}
		}
		for _, c := range ctrs {
			trace.IDs = append(trace.IDs, c.ID)
		}
		s.removePod(t, pod, trace, before)
	})
}

// waitLog waits until a container's log contains want.
func waitLog(t *testing.T, s *suite, c *harness.Container, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, err := s.cri.Logs(s.ctx, c.ID)
		if err == nil && strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s did not log %q within %s (log %q, %v)", c.Config.Name, want, timeout, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
