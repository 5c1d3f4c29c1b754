package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/contrast-vm/contrast/integration/harness"
)

// TestFivePods starts five pods at once, runs an exec in each, removes
// them all at once, and checks that no process, mount, socket, network
// device or state directory remains. It is the one test that runs more
// than two VMs at a time (five CPU-bound TCG guests on two cores): its
// timeouts are generous.
func TestFivePods(t *testing.T) {
	const n = 5
	slow := func(c *harness.ShimConfig) { c.AgentReady = 5 * time.Minute }
	matrixWith(t, slow, func(t *testing.T, s *suite, handler string) {
		s.cri.Timeout = 10 * time.Minute
		ctx, cancel := context.WithTimeout(s.ctx, 15*time.Minute)
		defer cancel()
		before := s.snapshot(t)
		pods := make([]*harness.Pod, n)
		ctrs := make([]*harness.Container, n)
		errs := make([]error, n)
		begin := time.Now()
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = func() error {
					name := fmt.Sprintf("pod%d", i)
					pod, err := s.cri.RunPod(ctx, harness.PodConfig{Name: name, Handler: handler})
					if err != nil {
						return fmt.Errorf("runp %s: %w", name, err)
					}
					pods[i] = pod
					c, err := s.cri.CreateContainer(ctx, pod, harness.ContainerConfig{Name: "main", Command: []string{"sleep", "100000"}})
					if err != nil {
						return fmt.Errorf("create in %s: %w", name, err)
					}
					ctrs[i] = c
					if err := s.cri.StartContainer(ctx, c.ID); err != nil {
						return fmt.Errorf("start in %s: %w", name, err)
					}
					r, err := s.cri.Exec(ctx, c.ID, false, "hostname")
					if err != nil {
						return fmt.Errorf("exec in %s: %w", name, err)
					}
					if got := strings.TrimSpace(r.Stdout); got != name || r.ExitCode != 0 {
						return fmt.Errorf("exec hostname in %s: %q exit %d", name, got, r.ExitCode)
					}
					return nil
				}()
			}()
		}
		wg.Wait()
		for _, p := range pods {
			if p != nil {
				t.Cleanup(func() { s.cleanupPod(p) })
			}
		}
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("five pods at once:\n%v", err)
		}
		t.Logf("%d pods up, each with a container that answered an exec, in %s", n, time.Since(begin).Round(time.Millisecond))
		traces := make([]harness.PodTrace, n)
		for i, p := range pods {
			traces[i] = s.trace(t, p, ctrs[i])
		}

		begin = time.Now()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = func() error {
					if err := s.cri.StopContainer(ctx, ctrs[i].ID, time.Second); err != nil {
						return fmt.Errorf("stop in pod%d: %w", i, err)
					}
					if err := removeStoppedContainer(ctx, t, s, ctrs[i].ID); err != nil {
						return fmt.Errorf("rm in pod%d: %w", i, err)
					}
					if err := s.cri.StopPod(ctx, pods[i].ID); err != nil {
						return fmt.Errorf("stopp pod%d: %w", i, err)
					}
					if err := s.cri.RemovePod(ctx, pods[i].ID); err != nil {
						return fmt.Errorf("rmp pod%d: %w", i, err)
					}
					return nil
				}()
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("removing five pods at once:\n%v", err)
		}
		t.Logf("%d pods removed in %s", n, time.Since(begin).Round(time.Millisecond))
		for i := range n {
			traces[i].IDs = append(traces[i].IDs, ctrs[i].ID)
			s.checkRemoved(t, pods[i], traces[i], nil)
		}
		s.expectNoLeftovers(t, "five pods (instance state)", func() (harness.Leftovers, error) { return s.c.NewSince(*before) })
	})
}

// removeStoppedContainer removes a container that StopContainer returned
// for. containerd 2.4's CRI can still call it running for a moment when
// several stop at once on a loaded machine (seen with the runc baseline:
// its shim exits while the stop is still under way, and the stop returns
// before the exit is recorded): then it stops it again and retries, for a
// few seconds, saying so.
func removeStoppedContainer(ctx context.Context, t *testing.T, s *suite, id string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.cri.RemoveContainer(ctx, id)
		if err == nil || !strings.Contains(cmdErrText(err), "is running, please stop it first") || time.Now().After(deadline) {
			return err
		}
		t.Logf("container %s still running after its stop returned; stopping it again", id)
		if err := s.cri.StopContainer(ctx, id, time.Second); err != nil {
			return fmt.Errorf("stop again: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
