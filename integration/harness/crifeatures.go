package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ExecStdin runs `crictl exec -i` with stdin read from stdin; when it is
// exhausted crictl closes the stream, and the runtime must close the
// process's stdin (CloseIO) for a reader like cat to end.
func (c *CRI) ExecStdin(ctx context.Context, id string, stdin io.Reader, cmd ...string) (ExecResult, error) {
	args := append([]string{"exec", "-i", id}, cmd...)
	out, errOut, err := c.RunStdin(ctx, stdin, args...)
	res := ExecResult{Stdout: out, Stderr: errOut}
	var ce *CmdError
	if errors.As(err, &ce) {
		if m := streamExitRe.FindStringSubmatch(errOut); m != nil {
			res.ExitCode, _ = strconv.Atoi(m[1])
			return res, nil
		}
	}
	return res, err
}

// UpdateContainer runs `crictl update` with the non-zero fields of r.
func (c *CRI) UpdateContainer(ctx context.Context, id string, r Resources) error {
	args := []string{"update"}
	for _, f := range []struct {
		flag string
		v    int64
	}{{"--cpu-period", r.CPUPeriod}, {"--cpu-quota", r.CPUQuota}, {"--cpu-share", r.CPUShares}, {"--memory", r.MemoryLimit}} {
		if f.v != 0 {
			args = append(args, f.flag, strconv.FormatInt(f.v, 10))
		}
	}
	_, _, err := c.Run(ctx, append(args, id)...)
	return err
}

// Uint64 is a protobuf uint64 wrapper as protojson writes it
// ({"value": "123"}: 64-bit integers are strings).
type Uint64 struct {
	Value json.Number `json:"value"`
}

// Get returns the value (0 when absent).
func (u *Uint64) Get() uint64 {
	if u == nil || u.Value == "" {
		return 0
	}
	v, _ := strconv.ParseUint(string(u.Value), 10, 64)
	return v
}

// CPUStats and MemoryStats are the parts of CRI's usage figures the tests
// read.
type CPUStats struct {
	UsageCoreNanoSeconds *Uint64 `json:"usageCoreNanoSeconds"`
}

type MemoryStats struct {
	WorkingSetBytes *Uint64 `json:"workingSetBytes"`
	UsageBytes      *Uint64 `json:"usageBytes"`
}

// Nanoseconds is the cumulative CPU time (0 when not reported).
func (c *CPUStats) Nanoseconds() uint64 {
	if c == nil {
		return 0
	}
	return c.UsageCoreNanoSeconds.Get()
}

// WorkingSet is the working set in bytes (0 when not reported).
func (m *MemoryStats) WorkingSet() uint64 {
	if m == nil {
		return 0
	}
	return m.WorkingSetBytes.Get()
}

// ContainerStats is one container's entry of `crictl stats`.
type ContainerStats struct {
	Attributes struct {
		ID string `json:"id"`
	} `json:"attributes"`
	CPU    *CPUStats    `json:"cpu"`
	Memory *MemoryStats `json:"memory"`
}

// Stats runs `crictl stats` for one container.
func (c *CRI) Stats(ctx context.Context, id string) (ContainerStats, string, error) {
	out, _, err := c.Run(ctx, "stats", "-o", "json", "--id", id)
	if err != nil {
		return ContainerStats{}, out, err
	}
	var v struct {
		Stats []ContainerStats `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return ContainerStats{}, out, fmt.Errorf("parse crictl stats: %w", err)
	}
	for _, s := range v.Stats {
		if s.Attributes.ID == id {
			return s, out, nil
		}
	}
	return ContainerStats{}, out, fmt.Errorf("crictl stats lists no container %s", id)
}

// PodStats is one pod's entry of `crictl statsp`.
type PodStats struct {
	Attributes struct {
		ID string `json:"id"`
	} `json:"attributes"`
	Linux *struct {
		CPU        *CPUStats        `json:"cpu"`
		Memory     *MemoryStats     `json:"memory"`
		Containers []ContainerStats `json:"containers"`
	} `json:"linux"`
}

// PodStats runs `crictl statsp` for one pod.
func (c *CRI) PodStats(ctx context.Context, id string) (PodStats, string, error) {
	out, _, err := c.Run(ctx, "statsp", "-o", "json", "--id", id)
	if err != nil {
		return PodStats{}, out, err
	}
	var v struct {
		Stats []PodStats `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return PodStats{}, out, fmt.Errorf("parse crictl statsp: %w", err)
	}
	for _, s := range v.Stats {
		if s.Attributes.ID == id {
			return s, out, nil
		}
	}
	return PodStats{}, out, fmt.Errorf("crictl statsp lists no pod %s", id)
}

// TaskPIDs runs `ctr task ps` (crictl has no verb for the task API's
// Pids) and returns the listed process ids.
func (c *Containerd) TaskPIDs(ctx context.Context, id string) ([]int, string, error) {
	out, err := c.Ctr(ctx, "task", "ps", id)
	if err != nil {
		return nil, out, err
	}
	var pids []int
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 { // header: PID INFO
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, out, fmt.Errorf("ctr task ps %s: line %q has no pid", id, line)
		}
		pids = append(pids, pid)
	}
	return pids, out, nil
}

// TaskStatus is the status `ctr task ls` shows for a task (RUNNING,
// PAUSED, STOPPED, ...).
func (c *Containerd) TaskStatus(ctx context.Context, id string) (string, error) {
	out, err := c.Ctr(ctx, "task", "ls")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("ctr task ls lists no task %s:\n%s", id, out)
}
