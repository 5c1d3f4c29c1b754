package reaper

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testReaper is the one reaper of the test binary: two reapers would steal
// each other's exits, as two wait4(-1) loops in one process do.
var testReaper *Reaper

func TestMain(m *testing.M) {
	// Orphans of our children must come back to the test process.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		panic(err)
	}
	testReaper = Start(context.Background())
	os.Exit(m.Run())
}

func startReaper(*testing.T) *Reaper { return testReaper }

func TestRunExitCodes(t *testing.T) {
	r := startReaper(t)
	ctx := context.Background()
	for _, tc := range []struct {
		script string
		want   uint32
	}{
		{"exit 0", 0},
		{"exit 3", 3},
		{"kill -KILL $$", 137},
		{"kill -TERM $$", 143},
	} {
		e, err := r.Run(ctx, exec.Command("/bin/sh", "-c", tc.script))
		if err != nil {
			t.Fatalf("%s: %v", tc.script, err)
		}
		if e.Code() != tc.want {
			t.Errorf("%s: exit %d (%v), want %d", tc.script, e.Code(), e, tc.want)
		}
	}
}

func TestRunContextKills(t *testing.T) {
	r := startReaper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	e, err := r.Run(ctx, exec.Command("/bin/sleep", "30"))
	if err == nil {
		t.Fatal("Run of sleep 30 with a 200ms context returned no error")
	}
	if e.Code() != 137 || time.Since(start) > 5*time.Second {
		t.Fatalf("exit %v after %v, want SIGKILL soon", e, time.Since(start))
	}
}

// An orphan whose pid is learnt only after it may already have exited (like a
// container process from a pid file) is still reported.
func TestWatchOrphan(t *testing.T) {
	r := startReaper(t)
	for _, delay := range []string{"0", "0.3"} {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		sub := r.Subscribe()
		cmd := exec.Command("/bin/sh", "-c", "(sleep "+delay+"; exit 7) & echo $!")
		cmd.Stdout = pw
		e, err := r.Run(context.Background(), cmd)
		pw.Close()
		if err != nil || e.Code() != 0 {
			t.Fatalf("parent shell: %v %v", e, err)
		}
		line, err := bufio.NewReader(pr).ReadString('\n')
		pr.Close()
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			t.Fatal(err)
		}
		if delay == "0" {
			time.Sleep(200 * time.Millisecond) // let it exit before Watch
		}
		ch := r.Watch(sub, pid)
		sub.Close()
		select {
		case e := <-ch:
			if e.Pid != pid || e.Code() != 7 {
				t.Fatalf("delay %s: got %v, want pid %d exit 7", delay, e, pid)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("delay %s: exit of orphan %d never reported", delay, pid)
		}
	}
}
