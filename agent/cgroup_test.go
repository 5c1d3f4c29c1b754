package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseOOMKills(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", 2, true}, // v2 memory.events
		{"oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", 7, true},                // v1 memory.oom_control
		{"oom 1\n", 0, false},
		{"oom_kill x\n", 0, false},
		{"", 0, false},
	} {
		got, err := parseOOMKills([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%q: %d %v", tc.in, got, err)
		}
	}
}

func TestOOMEventsQueue(t *testing.T) {
	q := newOOMEvents()
	q.push("a")
	q.push("b")
	q.push("a") // still pending: one event is enough
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.wait(cancelled); err == nil {
		t.Fatal("a cancelled wait took an event")
	}
	ctx := context.Background()
	for _, want := range []string{"a", "b"} {
		if got, err := q.wait(ctx); err != nil || got != want {
			t.Fatalf("wait: %q %v, want %q", got, err, want)
		}
	}
	got := make(chan string)
	go func() {
		id, _ := q.wait(ctx)
		got <- id
	}()
	time.Sleep(20 * time.Millisecond)
	q.push("c")
	select {
	case id := <-got:
		if id != "c" {
			t.Fatalf("got %q", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
}

// A counter file without notifications is polled.
func TestOOMWatcherPolls(t *testing.T) {
	file := filepath.Join(t.TempDir(), "memory.oom_control")
	if err := os.WriteFile(file, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// In place, like the kernel's file: the watcher keeps it open.
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(s string) {
		if _, err := f.WriteAt([]byte(s), 0); err != nil {
			t.Fatal(err)
		}
	}
	q := newOOMEvents()
	w, err := watchOOMFile(context.Background(), "c1", file, false, q)
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*oomPollInterval)
	if id, err := q.wait(ctx); err == nil {
		t.Fatalf("event %q for kills from before the watch", id)
	}
	cancel()
	write("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if id, err := q.wait(ctx); err != nil || id != "c1" {
		t.Fatalf("wait: %q %v", id, err)
	}
	// check sees a change at once, without waiting for the poll.
	write("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
	w.check()
	ctx0, cancel0 := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel0()
	q.mu.Lock()
	n := len(q.queue)
	q.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d events queued after check", n)
	}
	if id, err := q.wait(ctx0); err != nil || id != "c1" {
		t.Fatalf("after check: %q %v", id, err)
	}
	w.stop()
	w.stop()
	var nilWatcher *oomWatcher
	nilWatcher.check() // a container without OOM reporting
}

func TestWatchOOMMissingFile(t *testing.T) {
	if _, err := watchOOMFile(context.Background(), "c1", filepath.Join(t.TempDir(), "nope"), true, newOOMEvents()); err == nil {
		t.Fatal("watch of a missing file started")
	}
}
