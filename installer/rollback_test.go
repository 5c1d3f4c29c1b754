package installer

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testStamp is the fixed clock of the rollback tests, so the backup of the
// main config has a name known in advance.
var testStamp = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const testBackup = DefaultContainerdConfig + ".contrast-backup-20260102T030405.000000000Z"

// blockWith puts a non-empty directory where the installer wants to write
// the file rel (a host path): reading it fails and nothing renames over
// it. Root ignores permission bits, not this.
func blockWith(t *testing.T, h *testHost, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(h.root, rel)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(h.root, rel, "blocker"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// makeImmutable sets the immutable flag on the host file rel, so that
// renaming a new file over it fails, and clears it at the end of the test.
func makeImmutable(t *testing.T, h *testHost, rel string) {
	t.Helper()
	p := filepath.Join(h.root, rel)
	if out, err := exec.Command("chattr", "+i", p).CombinedOutput(); err != nil {
		t.Skipf("cannot make %s immutable: %v: %s", p, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("chattr", "-i", p).CombinedOutput(); err != nil {
			t.Errorf("chattr -i %s: %v: %s", p, err, out)
		}
	})
}

// TestInstallRollsBackEachStep fails an install at each of its steps in
// turn: the error names the step, and the host's files are exactly as
// before (the step's own work and that of every step before it undone).
func TestInstallRollsBackEachStep(t *testing.T) {
	type step struct {
		name string
		// inject makes the step fail; handler is the name the install uses.
		inject func(t *testing.T, h *testHost, handler string)
		want   string // in the error
		// restarts: 0 when failing before the restart, else 2 (one for
		// the install, one on the restored files).
		restarts int
		// mainOnly: the step is taken only when the main config changes,
		// which on version 2 it does not beside an older handler (the
		// shared drop-in is imported already).
		mainOnly bool
	}
	steps := func(dropIn func(handler string) string) []step {
		return []step{
			{name: "prefix", inject: func(t *testing.T, h *testHost, _ string) {
				if err := os.WriteFile(filepath.Join(h.root, "opt"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}, want: "/opt/contrast"},
			{name: "handler drop-in", inject: func(t *testing.T, h *testHost, handler string) {
				blockWith(t, h, dropIn(handler))
			}, want: dropIn("<handler>")},
			{name: "alias drop-in", inject: func(t *testing.T, h *testHost, _ string) {
				blockWith(t, h, dropIn("contrast"))
			}, want: dropIn("contrast")},
			{name: "backup of the main config", inject: func(t *testing.T, h *testHost, _ string) {
				blockWith(t, h, testBackup)
			}, want: "back up containerd config", mainOnly: true},
			{name: "main config", inject: func(t *testing.T, h *testHost, _ string) {
				makeImmutable(t, h, DefaultContainerdConfig)
			}, want: "write containerd config", mainOnly: true},
			{name: "restart", inject: func(_ *testing.T, h *testHost, _ string) {
				h.failRst = errors.New("systemctl: unit not found")
			}, want: "restart containerd: systemctl: unit not found", restarts: 2},
			{name: "wait", inject: func(_ *testing.T, h *testHost, _ string) {
				h.failWait = context.DeadlineExceeded
			}, want: "after restart", restarts: 2},
		}
	}
	perName := func(name string) string { return "/etc/containerd/conf.d/contrast-" + name + ".toml" }
	shared := func(string) string { return "/etc/containerd/conf.d/contrast.toml" }

	for _, dialect := range []struct {
		name, main string
		steps      []step
	}{
		{"v3", testMainV3, steps(perName)},
		{"v2", testMainV2, steps(shared)},
	} {
		// On a fresh host the install creates the prefix and the drop-in
		// directory; beside an older handler with the alias it replaces
		// files, imports and a handler directory that is not what the
		// payload says.
		for _, fresh := range []bool{true, false} {
			for _, st := range dialect.steps {
				if dialect.name == "v2" && st.name == "alias drop-in" {
					continue // the handler's drop-in holds the alias too
				}
				if !fresh && st.name == "prefix" || dialect.name == "v2" && !fresh && st.mainOnly {
					continue
				}
				host := "fresh"
				if !fresh {
					host = "older"
				}
				t.Run(dialect.name+"/"+host+"/"+st.name, func(t *testing.T) {
					testInstallRollback(t, dialect.main, fresh, st.inject, st.want, st.restarts)
				})
			}
		}
	}
}

func testInstallRollback(t *testing.T, main string, fresh bool, inject func(t *testing.T, h *testHost, handler string), want string, restarts int) {
	ctx := context.Background()
	h := newTestHost(t, main)
	opts := h.opts(writePayload(t, "shim"))
	opts.Alias = "contrast"
	opts.Now = func() time.Time { return testStamp }
	handler, err := HandlerName(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !fresh {
		older := h.opts(writePayload(t, "older shim"))
		older.Alias = "contrast"
		if _, err := Install(ctx, older); err != nil {
			t.Fatal(err)
		}
		tampered := filepath.Join(h.root, DefaultPrefix, handler, ShimPath)
		if err := os.MkdirAll(filepath.Dir(tampered), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tampered, []byte("tampered"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.restarts = 0
	inject(t, h, handler)
	before := snapshot(t, h.root)

	_, err = Install(ctx, opts)
	want = strings.ReplaceAll(want, "<handler>", handler)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Install: %v, want an error naming %q", err, want)
	}
	if strings.Contains(err.Error(), "roll back") {
		t.Errorf("the rollback failed: %v", err)
	}
	if d := diffSnapshots(before, snapshot(t, h.root)); d != "" {
		t.Errorf("failed install left the host changed: %s", d)
	}
	if h.restarts != restarts {
		t.Errorf("%d restarts, want %d", h.restarts, restarts)
	}
}

// TestUninstallRollsBackEachStep fails an uninstall at each of its steps
// in turn, of the only handler (with an alias) and of one beside another.
func TestUninstallRollsBackEachStep(t *testing.T) {
	type step struct {
		name     string
		inject   func(t *testing.T, h *testHost)
		want     string
		restarts int
		mainOnly bool // as in TestInstallRollsBackEachStep
	}
	steps := []step{
		{name: "backup of the main config", inject: func(t *testing.T, h *testHost) {
			blockWith(t, h, testBackup)
		}, want: "back up containerd config", mainOnly: true},
		{name: "main config", inject: func(t *testing.T, h *testHost) {
			makeImmutable(t, h, DefaultContainerdConfig)
		}, want: "write containerd config", mainOnly: true},
		{name: "restart", inject: func(_ *testing.T, h *testHost) {
			h.failRst = errors.New("boom")
		}, want: "restart containerd: boom", restarts: 2},
	}
	for _, main := range []struct{ name, text string }{{"v3", testMainV3}, {"v2", testMainV2}} {
		for _, beside := range []bool{false, true} {
			for _, st := range steps {
				if main.name == "v2" && beside && st.mainOnly {
					continue
				}
				host := "alone"
				if beside {
					host = "beside"
				}
				t.Run(main.name+"/"+host+"/"+st.name, func(t *testing.T) {
					testUninstallRollback(t, main.text, beside, st.inject, st.want, st.restarts)
				})
			}
		}
	}
}

func testUninstallRollback(t *testing.T, main string, beside bool, inject func(t *testing.T, h *testHost), want string, restarts int) {
	ctx := context.Background()
	h := newTestHost(t, main)
	if beside {
		if _, err := Install(ctx, h.opts(writePayload(t, "other shim"))); err != nil {
			t.Fatal(err)
		}
	}
	opts := h.opts(writePayload(t, "shim"))
	opts.Alias = "contrast"
	res, err := Install(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Now = func() time.Time { return testStamp }
	h.restarts = 0
	inject(t, h)
	before := snapshot(t, h.root)

	_, err = Uninstall(ctx, opts, res.Handler)
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "roll back") {
		t.Fatalf("Uninstall: %v, want an error naming %q and no failed rollback", err, want)
	}
	if d := diffSnapshots(before, snapshot(t, h.root)); d != "" {
		t.Errorf("failed uninstall left the host changed: %s", d)
	}
	if h.restarts != restarts {
		t.Errorf("%d restarts, want %d", h.restarts, restarts)
	}
}

func TestUndoStackRunsInReverseAndReportsEveryFailure(t *testing.T) {
	var u undoStack
	var order []string
	for _, name := range []string{"first", "second", "third"} {
		u.push(name, func() error {
			order = append(order, name)
			if name != "second" {
				return errors.New(name + " failed")
			}
			return nil
		})
	}
	err := u.rollback()
	if strings.Join(order, " ") != "third second first" {
		t.Errorf("undo order %v, want the last step first", order)
	}
	if err == nil || !strings.Contains(err.Error(), "undo third: third failed") || !strings.Contains(err.Error(), "undo first: first failed") {
		t.Errorf("rollback error %v, want both failures named by their step", err)
	}
	order = nil
	if err := u.rollback(); err != nil || len(order) != 0 {
		t.Errorf("a second rollback ran %v (%v): the steps must be spent", order, err)
	}
}
