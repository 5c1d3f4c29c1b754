package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	api "github.com/contrast-vm/contrast/api/agent"
	"github.com/contrast-vm/contrast/api/lifecycle"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// settle is how long a test gives a request that must stay blocked to
// (wrongly) finish.
const settle = 300 * time.Millisecond

// holdUp is how long a request that must not wait may take at most.
const holdUp = 30 * time.Second

// TestContainerBookkeeping checks the container's reservations without
// runc: uses do not wait for each other, a change waits for the uses under
// way, and a use waits for the change under way.
func TestContainerBookkeeping(t *testing.T) {
	ctx := context.Background()
	c := newContainer("c1", t.TempDir(), nil, nil, "")
	c.state = lifecycle.Running
	allow := func(lifecycle.State) error { return nil }
	if err := c.beginUse(ctx, allow); err != nil {
		t.Fatal(err)
	}
	// A second use while the first is under way: no wait.
	quick, cancelQuick := context.WithTimeout(ctx, holdUp)
	defer cancelQuick()
	if err := c.beginUse(quick, allow); err != nil {
		t.Fatalf("second use: %v", err)
	}
	changed := make(chan error, 1)
	go func() { changed <- c.beginChange(ctx, allow) }()
	awaitChanging(t, c)
	c.endUse(nil)
	select {
	case err := <-changed:
		t.Fatalf("change began with a use under way (%v)", err)
	case <-time.After(settle):
	}
	// A new use waits for the change that waits.
	used := make(chan error, 1)
	go func() { used <- c.beginUse(ctx, allow) }()
	c.endUse(nil)
	if err := <-changed; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-used:
		t.Fatalf("use began during a change (%v)", err)
	case <-time.After(settle):
	}
	c.endChange(func() { c.state = lifecycle.Paused })
	if err := <-used; err != nil {
		t.Fatal(err)
	}
	c.endUse(nil)

	// A refused check reserves nothing; a caller that gives up leaves
	// nothing reserved either.
	refuse := func(from lifecycle.State) error { return lifecycle.Check("container c1", from, lifecycle.Paused) }
	if err := c.beginChange(ctx, refuse); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("pause of a paused container: %v", err)
	}
	if err := c.beginUse(ctx, allow); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, settle)
	defer cancel()
	if err := c.beginChange(short, allow); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("change given up: %v", err)
	}
	c.mu.Lock()
	changing, using := c.changing, c.using
	c.mu.Unlock()
	if changing || using != 1 {
		t.Fatalf("after a change given up: changing %v, using %d", changing, using)
	}
	c.endUse(nil)
	if err := c.beginChange(ctx, allow); err != nil {
		t.Fatal(err)
	}
	c.endChange(nil)
}

func TestCheckMove(t *testing.T) {
	for _, tc := range []struct {
		from, want, to lifecycle.State
		ok             bool
	}{
		{lifecycle.Created, lifecycle.Created, lifecycle.Running, true},
		{lifecycle.Paused, lifecycle.Created, lifecycle.Running, false}, // start of a paused container
		{lifecycle.Created, lifecycle.Paused, lifecycle.Running, false}, // resume of a created container
		{lifecycle.Running, lifecycle.Paused, lifecycle.Running, false}, // resume of a running container
		{lifecycle.Created, lifecycle.Running, lifecycle.Paused, false}, // pause of a created container
	} {
		err := lifecycle.CheckOp("container c1", tc.from, lifecycle.Op{From: tc.want, To: tc.to})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition)) {
			t.Errorf("%s (want %s) -> %s: %v", tc.from, tc.want, tc.to, err)
		}
	}
	for from, ok := range map[lifecycle.State]bool{
		lifecycle.Creating: false, lifecycle.Created: true, lifecycle.Running: true, lifecycle.Paused: true,
		lifecycle.Stopped: true, lifecycle.Deleting: true, lifecycle.Deleted: false,
	} {
		if err := checkRemove("container c1", from); (err == nil) != ok {
			t.Errorf("remove from %s: %v", from, err)
		}
	}
}

// awaitChanging waits until a state change of c is under way.
func awaitChanging(t *testing.T, c *container) {
	t.Helper()
	for range 3000 {
		c.mu.Lock()
		changing := c.changing
		c.mu.Unlock()
		if changing {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no state change of container %s began", c.id)
}

// runcSpy wraps the test's runc in a script that logs every command and
// holds `runc exec` of an exec whose id starts with "held" until the test
// releases it, or ends: newSpiedHarness releases every exec before the
// harness removes what a failed test left.
type runcSpy struct {
	t   *testing.T
	dir string
}

// newSpiedHarness is newHarness with runc behind a runcSpy.
func newSpiedHarness(t *testing.T, opts ...func(*Config)) (*harness, *runcSpy) {
	spy := &runcSpy{t: t}
	h := newHarness(t, append([]func(*Config){withRuncSpy(spy)}, opts...)...)
	t.Cleanup(func() { spy.release("all") })
	return h, spy
}

func withRuncSpy(spy *runcSpy) func(*Config) {
	return func(cfg *Config) {
		spy.dir = spy.t.TempDir()
		script := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %[1]s/calls
for a do
	case "$a" in
	*/exec-held*.json)
		n=$(basename "$a" .json)
		touch %[1]s/$n.entered
		while [ ! -e %[1]s/$n.release ] && [ ! -e %[1]s/all.release ]; do sleep 0.02; done
		;;
	esac
done
exec %[2]s "$@"
`, spy.dir, cfg.RuncBinary)
		cfg.RuncBinary = filepath.Join(spy.dir, "runc")
		if err := os.WriteFile(cfg.RuncBinary, []byte(script), 0o755); err != nil {
			spy.t.Fatal(err)
		}
	}
}

// calls returns the runc commands (create, exec, pause...) run for the
// container id so far.
func (s *runcSpy) calls(id string) []string {
	s.t.Helper()
	f, err := os.Open(filepath.Join(s.dir, "calls"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	var cmds []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		args := strings.Fields(sc.Text())
		if len(args) == 0 || args[len(args)-1] != id && (len(args) < 2 || args[len(args)-2] != id) {
			continue // kill puts the signal after the id
		}
		for i := 0; i < len(args); i++ {
			switch a := args[i]; {
			case a == "--root" || a == "--log" || a == "--log-format":
				i++
			case !strings.HasPrefix(a, "-"):
				cmds = append(cmds, a)
				i = len(args)
			}
		}
	}
	return cmds
}

// await waits until the held exec execID is inside runc exec.
func (s *runcSpy) awaitHeld(execID string) {
	s.t.Helper()
	for range 1000 {
		if _, err := os.Stat(filepath.Join(s.dir, "exec-"+execID+".entered")); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.t.Fatalf("exec %s never reached runc", execID)
}

// release lets the held exec execID ("all": every one) go on.
func (s *runcSpy) release(execID string) {
	name := "exec-" + execID + ".release"
	if execID == "all" {
		name = "all.release"
	}
	if err := os.WriteFile(filepath.Join(s.dir, name), nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// heldDevices finds serial "held" only once the test closes release; it
// is then the device serial "img1" is.
type heldDevices struct {
	loopDevices
	entered, release chan struct{}
}

func (d heldDevices) Find(ctx context.Context, serial string) (string, error) {
	if serial == "held" {
		close(d.entered)
		<-d.release
		serial = "img1"
	}
	return d.loopDevices.Find(ctx, serial)
}

// async runs call in the background; its result arrives on the channel.
func async(call func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- call() }()
	return done
}

// mustFinish waits for a call that must not be held up.
func mustFinish(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(holdUp):
		t.Fatalf("%s is held up", what)
	}
}

// mustWait checks that a call is still blocked.
func mustWait(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s did not wait (%v)", what, err)
	case <-time.After(settle):
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: %v, want %v", what, err, code)
	}
}

// TestExecDuringOtherCreate checks that a create blocked on its device
// holds up no request on another container, and that a container being
// created refuses every other request before runc hears of it.
func TestExecDuringOtherCreate(t *testing.T) {
	devices := heldDevices{entered: make(chan struct{}), release: make(chan struct{})}
	h, spy := newSpiedHarness(t, func(cfg *Config) {
		devices.loopDevices = cfg.Devices.(loopDevices)
		cfg.Devices = devices
		cfg.DeviceTimeout = time.Minute
	})
	release := sync.OnceFunc(func() { close(devices.release) })
	t.Cleanup(release) // a test that failed half-way
	h.sandbox()
	ctx := context.Background()
	h.create("a", podSpec("/bin/sh", "-c", "while true; do sleep 1; done"), nil)
	h.start("a")

	raw := mustJSON(t, podSpec("true"))
	created := async(func() error {
		_, err := h.client.CreateContainer(ctx, &api.CreateContainerRequest{ContainerId: "b", Spec: raw,
			Rootfs:      &api.BlockDevice{Serial: "held", Fstype: "ext4", ReadOnly: true},
			SharedFiles: []*api.SharedFile{{Destination: "/etc/hosts", Content: []byte("x")}}})
		return err
	})
	select {
	case <-devices.entered:
	case err := <-created:
		t.Fatalf("create of b ended before its device wait: %v", err)
	}

	mustFinish(t, "exec in a", async(func() error {
		return h.execSpec("a", "e1", nil, specs.Process{Args: []string{"/bin/sh", "-c", "exit 7"}})
	}))
	h.waitExit("a", "e1", 7)
	mustFinish(t, "list processes of a", async(func() error {
		_, err := h.client.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "a"})
		return err
	}))

	// b is being created: everything else is refused, before runc.
	err := h.execSpec("b", "e1", nil, specs.Process{Args: []string{"true"}})
	wantCode(t, "exec in a container being created", err, codes.FailedPrecondition)
	_, err = h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "b"})
	wantCode(t, "start of a container being created", err, codes.FailedPrecondition)
	_, err = h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "b"})
	wantCode(t, "pause of a container being created", err, codes.FailedPrecondition)
	_, err = h.client.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "b"})
	wantCode(t, "remove of a container being created", err, codes.FailedPrecondition)
	if got := spy.calls("b"); len(got) > 0 {
		t.Errorf("runc ran %v for a container being created", got)
	}

	release()
	mustFinish(t, "create of b", created)
	if got := spy.calls("b"); strings.Join(got, " ") != "create" {
		t.Errorf("runc ran %v for b, want create", got)
	}
	h.remove("a")
	h.remove("b")
	h.assertClean()
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestConcurrentExecs checks that an exec held in runc holds up neither
// another exec nor the other requests on its container, while a pause
// and a remove wait for it.
func TestConcurrentExecs(t *testing.T) {
	h, spy := newSpiedHarness(t)
	h.sandbox()
	ctx := context.Background()
	h.create("c1", podSpec("/bin/sh", "-c", "while true; do sleep 1; done"), nil)
	h.start("c1")

	held := async(func() error {
		return h.execSpec("c1", "held1", nil, specs.Process{Args: []string{"/bin/sh", "-c", "exit 4"}})
	})
	spy.awaitHeld("held1")
	mustFinish(t, "second exec", async(func() error {
		return h.execSpec("c1", "e2", nil, specs.Process{Args: []string{"/bin/sh", "-c", "exit 5"}})
	}))
	h.waitExit("c1", "e2", 5)
	for name, call := range map[string]func() error{
		"list processes": func() error {
			_, err := h.client.ListProcesses(ctx, &api.ContainerRequest{ContainerId: "c1"})
			return err
		},
		"stats": func() error {
			_, err := h.client.StatsContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
			return err
		},
		"signal": func() error {
			_, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c1", Signal: uint32(28)}) // SIGWINCH: ignored
			return err
		},
	} {
		mustFinish(t, name, async(call))
	}
	err := h.execSpec("c1", "held1", nil, specs.Process{Args: []string{"true"}})
	wantCode(t, "exec with the id of an exec being started", err, codes.AlreadyExists)
	_, err = h.client.WaitProcess(ctx, &api.ProcessRequest{ContainerId: "c1", ExecId: "held1"})
	wantCode(t, "wait for an exec being started", err, codes.FailedPrecondition)

	// A pause waits until the exec started; execs asked for meanwhile
	// wait for the pause and are refused.
	paused := async(func() error {
		_, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
		return err
	})
	mustWait(t, "pause during an exec start", paused)
	h.svc.mu.Lock()
	c1 := h.svc.containers["c1"]
	h.svc.mu.Unlock()
	awaitChanging(t, c1)
	late := async(func() error {
		return h.execSpec("c1", "e3", nil, specs.Process{Args: []string{"true"}})
	})
	mustWait(t, "exec during a pause", late)
	spy.release("held1")
	mustFinish(t, "held exec", held)
	mustFinish(t, "pause", paused)
	select {
	case err := <-late:
		wantCode(t, "exec asked for during a pause", err, codes.FailedPrecondition)
	case <-time.After(holdUp):
		t.Fatal("exec asked for during a pause is held up")
	}
	if _, err := h.client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	h.waitExit("c1", "held1", 4)

	// A remove while an exec starts waits for it, then kills it.
	var held2Pid uint32
	held2 := async(func() error {
		raw := mustJSON(t, specs.Process{Args: []string{"sleep", "1000"}, Env: []string{"PATH=/bin"}, Cwd: "/", Capabilities: &specs.LinuxCapabilities{}})
		resp, err := h.client.ExecProcess(ctx, &api.ExecProcessRequest{ContainerId: "c1", ExecId: "held2", Process: raw})
		if err == nil {
			held2Pid = resp.Pid
		}
		return err
	})
	spy.awaitHeld("held2")
	removed := async(func() error {
		_, err := h.client.RemoveContainer(ctx, &api.RemoveContainerRequest{ContainerId: "c1"})
		return err
	})
	mustWait(t, "remove during an exec start", removed)
	spy.release("held2")
	mustFinish(t, "held exec", held2)
	mustFinish(t, "remove", removed)
	h.assertClean()
	// Reaped by the test's reaper by now, unless the remove left it running.
	if err := unix.Kill(int(held2Pid), 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("exec held2 (pid %d) outlived the remove: kill 0: %v", held2Pid, err)
	}
	if got := strings.Join(spy.calls("c1"), " "); !strings.HasSuffix(got, " pause resume exec delete") {
		t.Errorf("runc ran %s for c1", got)
	}
}

// TestIllegalMoves checks that a request its container's state does not
// allow is refused with FailedPrecondition before runc runs.
func TestIllegalMoves(t *testing.T) {
	h, spy := newSpiedHarness(t)
	h.sandbox()
	ctx := context.Background()
	h.create("c1", podSpec("/bin/sh", "-c", "while true; do sleep 1; done"), nil)
	pause := func() error {
		_, err := h.client.PauseContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
		return err
	}
	resume := func() error {
		_, err := h.client.ResumeContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
		return err
	}
	start := func() error {
		_, err := h.client.StartContainer(ctx, &api.ContainerRequest{ContainerId: "c1"})
		return err
	}
	exec := func() error { return h.execSpec("c1", "e1", nil, specs.Process{Args: []string{"true"}}) }
	refusedAll := func(state string, calls map[string]func() error) {
		t.Helper()
		before := spy.calls("c1")
		for name, call := range calls {
			err := call()
			wantCode(t, name+" of a "+state+" container", err, codes.FailedPrecondition)
			if err != nil && !strings.Contains(err.Error(), "container c1 is "+state) {
				t.Errorf("%s of a %s container: %q does not say the state", name, state, err)
			}
		}
		if after := spy.calls("c1"); len(after) != len(before) {
			t.Errorf("runc ran %v for refused requests on a %s container", after[len(before):], state)
		}
	}

	refusedAll("created", map[string]func() error{"pause": pause, "resume": resume, "exec": exec})
	h.start("c1")
	refusedAll("running", map[string]func() error{"start": start, "resume": resume})
	if err := pause(); err != nil {
		t.Fatal(err)
	}
	refusedAll("paused", map[string]func() error{"start": start, "pause": pause, "exec": exec})
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.SignalProcess(ctx, &api.SignalProcessRequest{ContainerId: "c1", Signal: 9, All: true}); err != nil {
		t.Fatal(err)
	}
	h.waitExit("c1", "", 137)
	refusedAll("stopped", map[string]func() error{"start": start, "pause": pause, "resume": resume, "exec": exec})
	if got, want := strings.Join(spy.calls("c1"), " "), "create start pause resume kill"; got != want {
		t.Errorf("runc ran %q for c1, want %q", got, want)
	}
	h.remove("c1")
	h.assertClean()
}
