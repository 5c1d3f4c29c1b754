package harness

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// What the shim logs at debug level about a pod's figures, read back from
// containerd's log: benchmarks and the demo show them.

// logField is one key=value of a logrus text line; a value is bare or
// quoted.
var logField = regexp.MustCompile(`([\w.+-]+)=("(?:[^"\\]|\\.)*"|\S+)`)

// StartBreakdown reads the breakdown of container id's start from the
// shim's "container start breakdown" line: every field that is a duration
// (total, ours, runc, transport, host.* and guest.* steps).
func (c *Containerd) StartBreakdown(id string) (map[string]time.Duration, error) {
	data, err := os.ReadFile(c.Log)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, "container start breakdown") || !strings.Contains(line, "container="+id) {
			continue
		}
		steps := map[string]time.Duration{}
		for _, m := range logField.FindAllStringSubmatch(line, -1) {
			if d, err := time.ParseDuration(strings.Trim(m[2], `"`)); err == nil {
				steps[m[1]] = d
			}
		}
		if steps["total"] == 0 {
			return nil, fmt.Errorf("breakdown of container %s has no total: %s", id, line)
		}
		return steps, nil
	}
	return nil, fmt.Errorf("no start breakdown of container %s in %s (the shim logs it at debug level)", id, c.Log)
}

// PodBoot is the time the shim took from starting the pod's VM to its
// agent's first answer ("pod VM ready").
func (c *Containerd) PodBoot(podID string) (time.Duration, error) {
	for _, line := range strings.Split(c.LogGrep("pod VM ready"), "\n") {
		if !strings.Contains(line, "pod="+podID) {
			continue
		}
		for _, m := range logField.FindAllStringSubmatch(line, -1) {
			if m[1] == "boot" {
				return time.ParseDuration(strings.Trim(m[2], `"`))
			}
		}
	}
	return 0, fmt.Errorf("no \"pod VM ready\" line for pod %s in %s", podID, c.Log)
}

// guestExecRe matches the shim's debug line with the agent's runc exec time.
var guestExecRe = regexp.MustCompile(`guest_runc_exec_us=(\d+)`)

// GuestExecTimes returns, in log order, how long each exec in container id
// took in the guest, from the agent starting `runc exec` to the process's
// exit, as the shim logged it.
func (c *Containerd) GuestExecTimes(id string) []time.Duration {
	var ds []time.Duration
	for _, line := range strings.Split(c.LogGrep("guest_runc_exec_us="), "\n") {
		if !strings.Contains(line, id) {
			continue
		}
		if m := guestExecRe.FindStringSubmatch(line); m != nil {
			us, _ := strconv.ParseInt(m[1], 10, 64)
			ds = append(ds, time.Duration(us)*time.Microsecond)
		}
	}
	return ds
}
