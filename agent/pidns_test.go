package agent

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/internal/testenv"
)

// pidHolderTestEnv makes the test binary the holder of a PID namespace
// (see TestMain) instead of running tests.
const pidHolderTestEnv = "CONTRAST_TEST_PID_HOLDER"

// TestPIDHolderReapsOrphans starts the holder as PID 1 of a new PID
// namespace, orphans a process there, and expects the holder to reap it
// once it ends: no zombie is left among the holder's children.
func TestPIDHolderReapsOrphans(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a new PID namespace needs root")
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		testenv.Missing(t, "deps", "nsenter (util-linux) enters the holder's PID namespace: %v", err)
	}
	holder := exec.Command("/proc/self/exe")
	holder.Env = append(os.Environ(), pidHolderTestEnv+"=1")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	holder.Stdout, holder.Stderr = os.Stderr, os.Stderr
	holderExit, err := testReaper.Start(holder)
	if err != nil {
		t.Fatalf("start the holder: %v", err)
	}
	defer func() {
		_ = holder.Process.Kill()
		<-holderExit
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// sh, in the holder's namespace, leaves sleep behind as an orphan,
	// which the kernel gives to the namespace's PID 1: the holder.
	orphaner := exec.Command(nsenter, "--target", strconv.Itoa(holder.Process.Pid), "--pid", "--",
		"sh", "-c", "sleep 3 & exit 0")
	orphaner.Stderr = os.Stderr
	if ex, err := testReaper.Run(ctx, orphaner); err != nil || ex.Code() != 0 {
		t.Fatalf("orphan a process in the holder's namespace: %v, %v", ex, err)
	}
	adopted := false
	for ctx.Err() == nil {
		children := childrenOf(t, holder.Process.Pid)
		if len(children) > 0 {
			adopted = true
		} else if adopted {
			return // the orphan ended and is reaped
		} else {
			t.Fatal("the orphan never became the holder's child")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the holder left its ended child unreaped: children %v", childrenOf(t, holder.Process.Pid))
}

// childrenOf lists the processes (zombies too) whose parent is pid.
func childrenOf(t *testing.T, pid int) []string {
	t.Helper()
	text, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
	if err != nil {
		t.Fatalf("children of the holder: %v", err)
	}
	return strings.Fields(string(text))
}
