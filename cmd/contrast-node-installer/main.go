// Command contrast-node-installer installs the Contrast runtime on a
// Kubernetes node: the shim, the guest image and the runtime
// configuration under a versioned prefix, and a containerd runtime
// handler for them; it runs in a privileged DaemonSet with the host's
// root filesystem mounted (see deploy/).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/contrast-vm/contrast/installer"
)

// DefaultSource is where the installer image carries its payload.
const DefaultSource = "/payload"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: contrast-node-installer install|uninstall|status [flags]

install    copy the payload to <prefix>/<handler>, configure containerd, restart it
           and wait until it serves the handler (a second run changes nothing)
uninstall  remove a handler (--handler, default the payload's), its drop-ins and files
status     list the installed handlers

flags:
`

// run is main without the process: exit status 0, 1 on failure, 2 for usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("contrast-node-installer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		opts       installer.Options
		restartCmd string
		unit       string
		criSocket  string
		wait       bool
		handler    string
		stay       bool
	)
	fs.StringVar(&opts.HostRoot, "host-root", installer.DefaultHostRoot, "where the host's root filesystem is mounted")
	fs.StringVar(&opts.Prefix, "prefix", installer.DefaultPrefix, "host directory holding one directory per installed handler")
	fs.StringVar(&opts.Source, "source", DefaultSource, "payload directory (bin/containerd-shim-contrast-v2, image/, runtime.toml template)")
	fs.StringVar(&opts.HandlerBase, "handler-base", installer.DefaultHandlerBase, "handler name before the content hash")
	fs.StringVar(&opts.Alias, "alias", "", "stable second handler name for this install (optional)")
	fs.StringVar(&opts.ContainerdConfig, "containerd-config", installer.DefaultContainerdConfig, "containerd's main configuration, as the host sees it")
	fs.StringVar(&opts.DropInDir, "drop-in-dir", installer.DefaultDropInDir, "host directory for the installer's containerd drop-ins")
	fs.StringVar(&opts.Snapshotter, "snapshotter", "", "snapshotter of the handler (default: containerd's)")
	fs.DurationVar(&opts.WaitTimeout, "timeout", installer.DefaultWaitTimeout, "how long containerd may take to come back with the handler")
	fs.StringVar(&restartCmd, "restart-cmd", "", "command (split at spaces) that restarts containerd; default: systemctl restart through the host's PID 1 when the host runs systemd")
	fs.StringVar(&unit, "systemd-unit", "containerd", "containerd's systemd unit")
	fs.StringVar(&criSocket, "cri-socket", installer.DefaultCRISocket, "containerd's socket, as the host sees it")
	fs.BoolVar(&wait, "wait", true, "wait until containerd serves the handler after the restart")
	fs.StringVar(&handler, "handler", "", "uninstall: the handler to remove (default: the one the payload installs)")
	fs.BoolVar(&stay, "stay", false, "install: keep running afterwards until signalled (a DaemonSet's pod)")

	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	verb := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	switch {
	case restartCmd != "":
		opts.Restart = installer.CommandRestart(strings.Fields(restartCmd))
	case installer.HostHasSystemd(opts.HostRoot):
		opts.Restart = installer.SystemdRestart(unit)
	default:
		opts.Restart = func(context.Context) error {
			return errors.New("the host does not run systemd: say how to restart containerd with --restart-cmd")
		}
	}
	if wait {
		opts.WaitHandlers = installer.WaitCRI(filepath.Join(opts.HostRoot, criSocket), 500*time.Millisecond)
	}

	var err error
	switch verb {
	case "install":
		var res *installer.Result
		if res, err = installer.Install(ctx, opts); err == nil {
			report(stdout, "installed", res)
			if stay {
				<-ctx.Done()
			}
		}
	case "uninstall":
		var res *installer.Result
		if res, err = installer.Uninstall(ctx, opts, handler); err == nil {
			report(stdout, "uninstalled", res)
		}
	case "status":
		err = status(stdout, opts)
	case "-h", "-help", "--help", "help":
		fs.Usage()
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q\n", verb)
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "contrast-node-installer %s: %v\n", verb, err)
		return 1
	}
	return 0
}

func report(w io.Writer, did string, res *installer.Result) {
	if !res.Changed {
		did = "unchanged"
	}
	fmt.Fprintf(w, "%s: handler %s in %s\n", did, res.Handler, res.Dir)
	if res.Alias != "" {
		fmt.Fprintf(w, "alias: %s\n", res.Alias)
	}
	for _, d := range res.DropIns {
		fmt.Fprintf(w, "drop-in: %s\n", d)
	}
	if res.Backup != "" {
		fmt.Fprintf(w, "containerd config backup: %s\n", res.Backup)
	}
}

func status(w io.Writer, opts installer.Options) error {
	st, err := installer.Status(opts)
	if err != nil {
		return err
	}
	if len(st) == 0 {
		fmt.Fprintln(w, "no handlers installed")
		return nil
	}
	for _, in := range st {
		state := "configured"
		switch {
		case in.DropIn == "":
			state = "files only, no drop-in"
		case !in.Imported:
			state = "drop-in not imported by the containerd config"
		}
		fmt.Fprintf(w, "%s\t%s\t%s", in.Handler, in.Dir, state)
		if len(in.Aliases) > 0 {
			fmt.Fprintf(w, "\taliases: %s", strings.Join(in.Aliases, ", "))
		}
		fmt.Fprintln(w)
	}
	return nil
}
