package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultCRISocket is containerd's socket, as the host sees it.
const DefaultCRISocket = "/run/containerd/containerd.sock"

// HostHasSystemd says whether the host under hostRoot is booted with
// systemd (what sd_booted checks).
func HostHasSystemd(hostRoot string) bool {
	st, err := os.Stat(filepath.Join(hostRoot, "run/systemd/system"))
	return err == nil && st.IsDir()
}

// SystemdRestart restarts a unit through the host's PID 1 namespaces
// (nsenter; the installer's pod needs hostPID and privileges).
func SystemdRestart(unit string) func(context.Context) error {
	return CommandRestart([]string{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl", "restart", unit})
}

// CommandRestart runs argv to restart containerd.
func CommandRestart(argv []string) func(context.Context) error {
	return func(ctx context.Context) error {
		if len(argv) == 0 {
			return errors.New("no restart command")
		}
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
}

// WaitCRI returns a WaitHandlers that polls the CRI socket (its path
// where the installer sees it) until the runtime is ready and reports
// every named handler.
func WaitCRI(socket string, interval time.Duration) func(context.Context, []string) error {
	return func(ctx context.Context, names []string) error {
		var last error
		for {
			handlers, err := CRIHandlers(ctx, socket)
			if err == nil {
				var missing []string
				for _, n := range names {
					if !slices.Contains(handlers, n) {
						missing = append(missing, n)
					}
				}
				if len(missing) == 0 {
					return nil
				}
				err = fmt.Errorf("containerd does not report runtime handler %s (it has %s)", strings.Join(missing, ", "), strings.Join(handlers, ", "))
			}
			last = err
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: %w", ctx.Err(), last)
			case <-time.After(interval):
			}
		}
	}
}

// CRIHandlers asks the CRI service at socket for its runtime handlers:
// those the status lists, and those of its configuration (containerd 1.7
// lists none in the status).
func CRIHandlers(ctx context.Context, socket string) ([]string, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI socket %s: %w", socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := cri.NewRuntimeServiceClient(conn).Status(ctx, &cri.StatusRequest{Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("CRI status at %s: %w", socket, err)
	}
	for _, c := range st.GetStatus().GetConditions() {
		if c.GetType() == cri.RuntimeReady && !c.GetStatus() {
			return nil, fmt.Errorf("CRI at %s: runtime not ready: %s %s", socket, c.GetReason(), c.GetMessage())
		}
	}
	var names []string
	for _, h := range st.GetRuntimeHandlers() {
		if h.GetName() != "" && !slices.Contains(names, h.GetName()) {
			names = append(names, h.GetName())
		}
	}
	if cfg, ok := st.GetInfo()["config"]; ok {
		var c struct {
			Containerd struct {
				Runtimes map[string]json.RawMessage `json:"runtimes"`
			} `json:"containerd"`
		}
		if err := json.Unmarshal([]byte(cfg), &c); err == nil {
			for n := range c.Containerd.Runtimes {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
	}
	slices.Sort(names)
	return names, nil
}
