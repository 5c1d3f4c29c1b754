// Package runc drives the runc command line. Every invocation goes through
// the reaper (see package reaper), never exec.Cmd.Wait.
package runc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/contrast-vm/contrast/agent/reaper"
	"golang.org/x/sys/unix"
)

// Runc runs one runc binary against one state directory.
type Runc struct {
	Binary string // path of the runc binary
	Root   string // runc --root: where runc keeps container state
	// NoPivot makes create use chroot instead of pivot_root, which fails
	// when the agent's root is the initramfs itself.
	NoPivot bool
	Reaper  *reaper.Reaper
}

// IO is the stdio runc hands to the container process (runc passes its own
// stdio fds on). Nil means /dev/null.
type IO struct {
	Stdin, Stdout, Stderr *os.File
	// ConsoleSocket, for a process with a terminal, is the unix socket
	// runc sends the pty master to (--console-socket).
	ConsoleSocket string
}

// Process is a container process runc started: its pid and a channel that
// receives its exit.
type Process struct {
	Pid  int
	Exit <-chan reaper.Exit
}

// ErrNotExist is returned for a container runc does not know.
var ErrNotExist = errors.New("container does not exist in runc")

// Create runs `runc create` for the bundle and returns the container's init
// process. Errors carry runc's own message (from its log file in the bundle).
func (r *Runc) Create(ctx context.Context, id, bundle string, stdio IO) (Process, error) {
	pidFile := filepath.Join(bundle, "init.pid")
	args := []string{"create", "--bundle", bundle, "--pid-file", pidFile}
	if r.NoPivot {
		args = append(args, "--no-pivot")
	}
	if stdio.ConsoleSocket != "" {
		args = append(args, "--console-socket", stdio.ConsoleSocket)
	}
	return r.startProcess(ctx, "create", id, filepath.Join(bundle, "create.log"), pidFile, stdio, append(args, id))
}

// Exec runs `runc exec --detach` with the process in processFile.
func (r *Runc) Exec(ctx context.Context, id, processFile, pidFile, logFile string, stdio IO) (Process, error) {
	args := []string{"exec", "--detach", "--pid-file", pidFile, "--process", processFile}
	if stdio.ConsoleSocket != "" {
		args = append(args, "--console-socket", stdio.ConsoleSocket)
	}
	return r.startProcess(ctx, "exec", id, logFile, pidFile, stdio, append(args, id))
}

// startProcess runs a runc command that leaves a process behind, whose pid
// it learns from pidFile. The subscription spans the whole command, so an
// exit of that process before the pid file is read is not lost.
func (r *Runc) startProcess(ctx context.Context, op, id, logFile, pidFile string, stdio IO, args []string) (Process, error) {
	// runc's own messages go to a log file: its stderr is the container's.
	_ = os.Remove(logFile)
	cmd := r.command(append([]string{"--log", logFile, "--log-format", "json"}, args...)...)
	// A nil *os.File in the interface would not be nil: set only real files.
	if stdio.Stdin != nil {
		cmd.Stdin = stdio.Stdin
	}
	if stdio.Stdout != nil {
		cmd.Stdout = stdio.Stdout
	}
	if stdio.Stderr != nil {
		cmd.Stderr = stdio.Stderr
	}
	sub := r.Reaper.Subscribe()
	defer sub.Close()
	e, err := r.Reaper.Run(ctx, cmd)
	if err != nil {
		return Process{}, fmt.Errorf("runc %s %s: %w", op, id, err)
	}
	if e.Code() != 0 {
		return Process{}, fmt.Errorf("runc %s %s: %s", op, id, logMessage(logFile, e))
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		return Process{}, fmt.Errorf("runc %s %s: %w", op, id, err)
	}
	return Process{Pid: pid, Exit: r.Reaper.Watch(sub, pid)}, nil
}

// Start runs `runc start`.
func (r *Runc) Start(ctx context.Context, id string) error {
	_, err := r.run(ctx, "start", id)
	return err
}

// Kill runs `runc kill [--all] id sig`.
func (r *Runc) Kill(ctx context.Context, id string, sig unix.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	_, err := r.run(ctx, append(args, id, strconv.Itoa(int(sig)))...)
	return err
}

// Pause runs `runc pause`: the container's cgroup is frozen.
func (r *Runc) Pause(ctx context.Context, id string) error {
	_, err := r.run(ctx, "pause", id)
	return err
}

// Resume runs `runc resume`.
func (r *Runc) Resume(ctx context.Context, id string) error {
	_, err := r.run(ctx, "resume", id)
	return err
}

// Update runs `runc update --resources file`; the file holds an OCI
// LinuxResources object as JSON.
func (r *Runc) Update(ctx context.Context, id, resourcesFile string) error {
	_, err := r.run(ctx, "update", "--resources", resourcesFile, id)
	return err
}

// Ps returns the pids of the container's processes.
func (r *Runc) Ps(ctx context.Context, id string) ([]int, error) {
	out, err := r.run(ctx, "ps", "--format", "json", id)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out, &pids); err != nil {
		return nil, fmt.Errorf("runc ps %s: parse %q: %w", id, out, err)
	}
	return pids, nil
}

// Delete runs `runc delete [--force]`. A container runc does not know is
// ErrNotExist.
func (r *Runc) Delete(ctx context.Context, id string, force bool) error {
	if _, err := os.Stat(filepath.Join(r.Root, id)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("runc delete %s: %w", id, ErrNotExist)
	}
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.run(ctx, append(args, id)...)
	return err
}

func (r *Runc) command(args ...string) *exec.Cmd {
	cmd := exec.Command(r.Binary, append([]string{"--root", r.Root}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// run runs a runc command that leaves nothing behind and returns its stdout.
// Output is captured in unlinked temporary files rather than pipes: a pipe
// would need exec.Cmd's copying goroutines, which only Wait ends.
func (r *Runc) run(ctx context.Context, args ...string) ([]byte, error) {
	what := "runc " + strings.Join(args, " ")
	stdout, err := tempFile()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer stdout.Close()
	stderr, err := tempFile()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer stderr.Close()
	cmd := r.command(args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	e, err := r.Reaper.Run(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, _ := readAll(stdout)
	if e.Code() != 0 {
		msg, _ := readAll(stderr)
		return nil, fmt.Errorf("%s: %s", what, describe(strings.TrimSpace(string(msg)), e))
	}
	return out, nil
}

func tempFile() (*os.File, error) {
	f, err := os.CreateTemp("", "runc-out-")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name())
	return f, nil
}

func readAll(f *os.File) ([]byte, error) {
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_, err := b.ReadFrom(f)
	return b.Bytes(), err
}

func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", path, b)
	}
	return pid, nil
}

// logMessage extracts the error messages from a runc JSON log file.
func logMessage(path string, e reaper.Exit) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return describe("", e)
	}
	var msgs []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(line, &entry) != nil {
			continue
		}
		if entry.Level == "error" || entry.Level == "fatal" {
			msgs = append(msgs, entry.Msg)
		}
	}
	if len(msgs) == 0 {
		return describe(strings.TrimSpace(string(b)), e)
	}
	return describe(strings.Join(msgs, "; "), e)
}

func describe(msg string, e reaper.Exit) string {
	if msg == "" {
		return e.String()
	}
	return fmt.Sprintf("%s (%v)", msg, e)
}
