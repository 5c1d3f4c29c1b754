package shim

import (
	"context"
	"fmt"
	"os"

	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

// Main runs the shim binary: `start` here (both bootstrap dialects), the
// rest (-info, delete, serving) through containerd's shim library.
func Main(newHypervisor HypervisorFactory) {
	ctx := context.Background()
	if IsStart(os.Args[1:]) {
		if err := RunStart(ctx, os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s", RuntimeName, err)
			os.Exit(1)
		}
		return
	}
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pub, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			svc := NewTaskService(ic.Context, pub.(cdshim.Publisher), sd.(shutdown.Service), newHypervisor)
			// where containerd serves its API: the content store holds the
			// image layers the pod's containers run
			svc.containerdAddress = ic.Properties[plugins.PropertyGRPCAddress]
			return svc, nil
		},
	})
	// The shim waits for what it starts (QEMU, mkfs, log programs) itself: a
	// process-wide reaper would steal their exit statuses.
	cdshim.RunShim(ctx, NewManager(newHypervisor), func(c *cdshim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
